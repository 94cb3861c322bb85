"""Injected time: the CSE asks a clock, so tests and accelerated runs can move time themselves.

Two readings. `now()` is the date: creation and modification times, expiration times,
timestamps sent to others. `monotonic()` only measures how long something took or how long
to wait (retention of request records, batching windows); it has no date and only moves
forward. A gateway without a real-time clock boots with a stale date and steps it when NTP
answers, and an operator may set it back by hand: see SystemClock for what such a step does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

_FORMAT = "%Y%m%dT%H%M%S"


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back."""
        ...


class SystemClock:
    """The system's date, except that it never runs backwards.

    A step of the wall clock forward is followed at once: it is usually NTP correcting a
    clock that booted stale, and the date it brings is the truth. When the wall clock steps
    back, `now()` does not: it goes on at half the pace of the monotonic clock until the wall
    clock has caught up (after twice the step), like an NTP slew. Resources made after the
    step are not dated before those made before it, and what was due to expire expires at
    most twice as late instead of a whole step late.
    """

    CATCH_UP_PACE = 0.5

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._last = wall()  # the last date reported
        self._last_at = monotonic()  # when it was reported

    def now(self) -> float:
        wall, at = self._wall(), self._monotonic()
        if wall >= self._last:
            date = wall
        else:  # the wall clock stepped back: wait for it at a slower pace
            date = self._last + (at - self._last_at) * self.CATCH_UP_PACE
        self._last, self._last_at = date, at
        return date

    def monotonic(self) -> float:
        return self._monotonic()


class ManualClock:
    """A clock that only moves when told to (tests); both readings move together."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


_second_cache: tuple[int, str] = (-1, "")
_LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second the format can hold


def format_timestamp(epoch: float) -> str:
    """oneM2M timestamp: YYYYMMDDThhmmss,ffffff in UTC (sorts as text in time order)."""
    global _second_cache
    epoch = min(epoch, _LATEST)  # a huge offset (et, mia) means "never", not a crash
    second = int(epoch // 1)
    micro = round((epoch - second) * 1_000_000)
    if micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    cached_second, text = _second_cache
    if cached_second != second:  # strftime is slow; most calls fall in the same second
        text = datetime.fromtimestamp(second, UTC).strftime(_FORMAT)
        _second_cache = (second, text)
    return f"{text},{micro:06d}"


def parse_timestamp(text: str) -> float:
    """Parse a oneM2M timestamp; a '.' fraction or a trailing 'Z' is tolerated."""
    if not isinstance(text, str):
        raise ValueError("timestamp must be a string")
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1]
    fraction = 0.0
    for separator in (",", "."):
        if separator in value:
            value, digits = value.split(separator, 1)
            if not digits.isdigit() or len(digits) > 9:
                raise ValueError(f"bad fraction in timestamp {text!r}")
            fraction = int(digits) / 10 ** len(digits)
            break
    day, time_of_day = value[:8], value[9:]
    if len(value) != 15 or value[8] != "T" or not (day + time_of_day).isascii():
        raise ValueError(f"timestamp {text!r} is not YYYYMMDDThhmmss")
    if not (day.isdigit() and time_of_day.isdigit()):
        raise ValueError(f"timestamp {text!r} is not YYYYMMDDThhmmss")
    # Fields by position: strptime costs ten times as much, and every instance has a dgt.
    moment = datetime(
        int(day[:4]), int(day[4:6]), int(day[6:]),
        int(time_of_day[:2]), int(time_of_day[2:4]), int(time_of_day[4:]),
        tzinfo=UTC,
    )  # fmt: skip
    return moment.timestamp() + fraction


def timestamp_or(value: Any, default: float) -> float:
    """Epoch seconds of a oneM2M timestamp, or `default` if `value` is not one."""
    try:
        return parse_timestamp(str(value))
    except ValueError:
        return default


def seconds_until(expiration: str, now: float) -> float:
    """Seconds from `now` to a request expiration (rqet): an absolute timestamp, or a number
    of milliseconds counted from arrival (TS-0004 m2m:timestamp or relative time)."""
    text = expiration.strip()
    if text.lstrip("-").isdigit():
        return int(text) / 1000.0
    return parse_timestamp(text) - now

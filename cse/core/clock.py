"""Injected time: the CSE asks a clock, so tests and accelerated runs can move time themselves."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

_FORMAT = "%Y%m%dT%H%M%S"


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


def format_timestamp(epoch: float) -> str:
    """oneM2M timestamp: YYYYMMDDThhmmss,ffffff in UTC (sorts as text in time order)."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment.strftime(_FORMAT)},{moment.microsecond:06d}"


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
    if len(value) != 15 or value[8] != "T":
        raise ValueError(f"timestamp {text!r} is not YYYYMMDDThhmmss")
    moment = datetime.strptime(value, _FORMAT).replace(tzinfo=UTC)
    return moment.timestamp() + fraction

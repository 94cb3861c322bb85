"""Schedule entries (TS-0004 m2m:scheduleEntry): the crontab-like time windows of an access
control rule's `actw`.

An entry has seven fields, in UTC: second minute hour day-of-month month day-of-week year
(day-of-week 0 is Sunday, 1-6 Monday to Saturday). Each field is `*`, a number, a range
`a-b`, a stepped range `a-b/n`, a step `*/n`, or a comma-separated list of those. This is the
format ACME reads; unlike ACME, a malformed entry is refused when it is written (`parse`
raises ValueError) instead of failing every later access check.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

# (lowest, highest) value of each field.
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
    ("year", 0, 9999),
)

# One field: None matches every value, else the set of values it matches.
Field = frozenset[int] | None


def _number(text: str, name: str, lowest: int, highest: int) -> int:
    if not text.isdigit():
        raise ValueError(f"{name} {text!r} is not a number")
    value = int(text)
    if not lowest <= value <= highest:
        raise ValueError(f"{name} {value} is outside {lowest}-{highest}")
    return value


def _step(text: str, name: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise ValueError(f"{name} step {text!r} must be a positive number")
    return int(text)


def _field(text: str, name: str, lowest: int, highest: int) -> Field:
    if text == "*":
        return None
    values: set[int] = set()
    for part in text.split(","):
        spec, slash, step_text = part.partition("/")
        step = _step(step_text, name) if slash else 1
        if spec == "*":
            if not slash:
                raise ValueError(f"{name} '*' cannot be part of a list")
            # ACME: */n matches values divisible by n (not counted from the lowest).
            values.update(v for v in range(lowest, highest + 1) if v % step == 0)
        elif "-" in spec:
            start_text, _, end_text = spec.partition("-")
            start = _number(start_text, name, lowest, highest)
            end = _number(end_text, name, lowest, highest)
            values.update(range(start, end + 1, step))
        elif slash:
            raise ValueError(f"{name} {part!r}: a step follows only '*' or a range")
        else:
            values.add(_number(spec, name, lowest, highest))
    return frozenset(values)


@lru_cache(maxsize=1024)
def parse(entry: str) -> tuple[Field, ...]:
    """The seven fields of a schedule entry; ValueError says what is wrong with it."""
    parts = entry.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(f"schedule entry {entry!r} must have 7 fields, it has {len(parts)}")
    return tuple(
        _field(part, name, lowest, highest)
        for part, (name, lowest, highest) in zip(parts, _FIELDS, strict=True)
    )


def matches(entry: str, epoch: float) -> bool:
    """Is the moment `epoch` (seconds since 1970, UTC) inside the window `entry`?"""
    moment = datetime.fromtimestamp(epoch, UTC)
    values = (
        moment.second,
        moment.minute,
        moment.hour,
        moment.day,
        moment.month,
        moment.isoweekday() % 7,  # ISO Sunday 7 is the crontab's 0
        moment.year,
    )
    return all(
        field is None or value in field for field, value in zip(parse(entry), values, strict=True)
    )

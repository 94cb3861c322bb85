"""What the MDMS store takes in, and the checks every record passes before anything is written.

`MeterMessage` and `CommandRecord` are the values the MDMS and the command service hand to the
store; `message_row` turns a message into the parameters of its INSERT plus what the summary
tables need from it (`summaries.py`). Both backends refuse the same input with the same
`InvalidRecord`, because both go through these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

# Families whose messages carry register values (see `_registers`).
REGISTER_FAMILIES = ("reading", "ondemand")
# Payload types that answer a command with an error: the command failed.
ERROR_TYPE = "cmd-err"
ALARM_TYPE = "alarm"
ALERT_TYPE = "alert"
MAX_LIMIT = 10_000  # the most rows one read may ask for
DAY_S = 86_400  # messages are kept (and on PostgreSQL partitioned) by UTC day of created_at

# The first register block of an interval read is the delivered-energy channel (OBIS 1.8.0);
# it carries the register at the start of its first interval (device_agents/agent/flows.py).
_OBIS_ENERGY_DELIVERED = "1.8.0"


class StoreError(Exception):
    """The store cannot do what was asked (not open, database unreachable, ...)."""


class InvalidRecord(StoreError, ValueError):
    """A message, command or status was refused before anything was written."""


@dataclass(frozen=True, slots=True)
class MeterMessage:
    """One flow message of a meter, as the MDMS received it."""

    # The content instance's identity (the MDMS uses its path below the IN-CSE's CSEBase):
    # the same key twice stores once. Every copy of an instance carries the same created_at
    # (it comes from the instance too), which PostgreSQL relies on: it looks a key up in the
    # day partition of its created_at.
    key: str
    dap: str
    meter: str
    family: str  # the container it was posted to: reading, ondemand, event, ...
    flow: str  # flow id, e.g. "mr-multi-interval" (device_agents/agent/flows.py)
    ptype: str  # payload type: resp-data, cmd-err, ack, cmd, alarm, alert, comm-err
    seq: int | None
    meter_ts: float | None  # meter clock (accelerated in tests and fleets)
    created_at: float  # when the gateway's CSE stored it (epoch s)
    received_at: float  # when the MDMS got it (epoch s)
    size: int  # payload bytes
    budget_s: float | None  # the flow's one-way latency budget
    priority: int
    content: dict[str, Any]
    # The command this message answers, when the MDMS worked it out from something other than
    # the content's `ref` (a DR answer names its event, not the command); None: use `ref`.
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command a head-end app issued to a meter's `command` container."""

    id: str  # comes back as `ref` in the meter's answer
    dap: str
    meter: str
    name: str  # read, switch, dr, han-join, han-unjoin, fw, price
    body: dict[str, Any]  # the command as sent
    issued_at: float
    issued_by: str


# ---- validation: everything is checked before the first write ------------------------------


def checked_text(owner: str, name: str, value: Any) -> str:
    # NUL cannot be stored in a PostgreSQL text column: refuse it on both backends alike.
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidRecord(f"{owner}: {name} must be a non-empty string, got {value!r}")
    return value


def checked_number(owner: str, name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def _integer(owner: str, name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    # Both databases store 64-bit integers; a bigger one would fail the whole batch there.
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise InvalidRecord(f"{owner}: {name} must be a 64-bit integer, got {value!r}")
    return value


def checked_json(owner: str, name: str, value: Any) -> str:
    if not isinstance(value, dict):
        raise InvalidRecord(f"{owner}: {name} must be a dict, got {type(value).__name__}")
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidRecord(f"{owner}: {name} is not JSON-serialisable: {exc}") from exc


def day_of(epoch_s: float) -> int:
    """The UTC day (days since 1970-01-01) holding `epoch_s`: the day whose [start, end)
    contains it, exactly as the partition bounds (day * DAY_S, whole numbers in a double)
    decide, where a division alone could round across midnight."""
    day = math.floor(epoch_s / DAY_S)
    if day * DAY_S > epoch_s:
        return day - 1
    if (day + 1) * DAY_S <= epoch_s:
        return day + 1
    return day


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _registers(family: str, content: dict[str, Any]) -> dict[str, float]:
    """The register values a message reports, by OBIS code (gas: Vm and Vb indexes)."""
    if family not in REGISTER_FAMILIES:
        return {}
    obis = content.get("obis")
    if isinstance(obis, dict):  # on-demand reads: {"1.8.0": Wh, "2.8.0": Wh, "32.7.0": dV}
        return {str(code): float(v) for code, v in obis.items() if _is_number(v)}
    channels = content.get("ch")
    if isinstance(channels, list) and channels and isinstance(channels[0], dict):
        # Interval read: the register at the start plus the intervals gives it at the end.
        first = channels[0]
        values = first.get("v")
        if (
            _is_number(first.get("r0"))
            and isinstance(values, list)
            and all(_is_number(v) for v in values)
        ):
            return {_OBIS_ENERGY_DELIVERED: float(first["r0"] + sum(values))}
        return {}
    records = content.get("recs")
    if isinstance(records, list) and records and isinstance(records[-1], dict):
        last = records[-1]  # gas volume corrector: indexes in litres at the period's end
        return {name: float(last[name]) for name in ("vm", "vb") if _is_number(last.get(name))}
    return {}


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A validated message with what the summary tables need from it."""

    message: MeterMessage
    params: tuple[Any, ...]  # for INSERT_MESSAGE (sql.py)
    latency: float
    ref: str | None
    registers: dict[str, float]
    switch: int | None
    reading_time: float  # orders readings of one meter: meter time, else gateway time
    day: int  # day_of(created_at): the day it is kept under


def message_row(message: Any) -> MessageRow:
    if not isinstance(message, MeterMessage):
        raise InvalidRecord(f"expected a MeterMessage, got {type(message).__name__}")
    m = message
    key = checked_text("message", "key", m.key)
    owner = f"message {key!r}"
    for name in ("dap", "meter", "family", "flow", "ptype"):
        checked_text(owner, name, getattr(m, name))
    seq = _integer(owner, "seq", m.seq, optional=True)
    meter_ts = checked_number(owner, "meter_ts", m.meter_ts, optional=True)
    created_at = checked_number(owner, "created_at", m.created_at)
    received_at = checked_number(owner, "received_at", m.received_at)
    size = _integer(owner, "size", m.size)
    if size is None or size < 0:
        raise InvalidRecord(f"{owner}: size must not be negative, got {m.size!r}")
    budget = checked_number(owner, "budget_s", m.budget_s, optional=True)
    priority = _integer(owner, "priority", m.priority)
    content = checked_json(owner, "content", m.content)
    assert created_at is not None and received_at is not None  # not optional above
    latency = received_at - created_at
    ref_value = m.ref if m.ref is not None else m.content.get("ref")
    ref = None
    if isinstance(ref_value, str) or (
        isinstance(ref_value, int) and not isinstance(ref_value, bool)
    ):
        ref = str(ref_value)  # meters accept string or integer command ids
    switch_value = m.content.get("sw")
    switch = switch_value if switch_value in (0, 1) and not isinstance(switch_value, bool) else None
    params = (
        key, m.dap, m.meter, m.family, m.flow, m.ptype, seq, meter_ts, created_at, received_at,
        latency, size, budget, priority, ref, content,
    )  # fmt: skip
    return MessageRow(
        message=m,
        params=params,
        latency=latency,
        ref=ref,
        registers=_registers(m.family, m.content),
        switch=switch,
        reading_time=meter_ts if meter_ts is not None else created_at,
        day=day_of(created_at),
    )


def command_params(command: Any) -> tuple[Any, ...]:
    if not isinstance(command, CommandRecord):
        raise InvalidRecord(f"expected a CommandRecord, got {type(command).__name__}")
    c = command
    owner = f"command {checked_text('command', 'id', c.id)!r}"
    for name in ("dap", "meter", "name", "issued_by"):
        checked_text(owner, name, getattr(c, name))
    issued_at = checked_number(owner, "issued_at", c.issued_at)
    body = checked_json(owner, "body", c.body)
    return (c.id, c.dap, c.meter, c.name, body, issued_at, c.issued_by)


def check_position(name: str, value: Any) -> None:
    """A paging position (the id or sequence number a reader saw last) must be an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


def check_limit(limit: Any, offset: Any = 0) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")

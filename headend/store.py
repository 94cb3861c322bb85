"""The MDMS store of the head-end: meter messages, commands and the gateways' status.

The MDMS AE receives each meter's flow messages (mirrored from the DAP gateway) and records
them here; head-end apps record the commands they issue, and a message whose content carries
`ref` = a command's id answers that command. The dashboard reads everything back.

Two backends share one schema, one set of queries and all the bookkeeping in `MdmsStore`:
`SQLiteMdmsStore` (one file, WAL) for a single head-end host, `PostgresMdmsStore` for a
utility's database server. Besides the raw messages the store keeps small summary tables,
updated in the same transaction as the messages they count, so that the dashboard's questions
(meters with their latest registers, counts per flow, latency statistics) never scan the
whole message history:

  meters     one row per meter: first/last seen, message and alarm counts, switch state
  registers  the latest value of each register of each meter (by meter time)
  flows      per (family, flow, payload type): count, count within the flow's latency
             budget, the worst latency and the tightest budget seen

Delivery latency is `received_at - created_at`: from the moment the gateway's MN-CSE stored
the message to the moment the MDMS got it, both on real clocks (the head-end and the gateway
are assumed NTP-synchronised). The meter's own timestamp (`meter_ts`) is not used for it: meter
agents run on an accelerated clock (an hour a second in tests), so it says when a reading was
taken in the meter's world, not when it left the meter.
"""

from __future__ import annotations

import abc
import asyncio
import math
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import orjson
import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.types.string import TextLoader

__all__ = [
    "CommandRecord",
    "InvalidRecord",
    "MdmsStore",
    "MeterMessage",
    "PostgresMdmsStore",
    "SQLiteMdmsStore",
    "StoreError",
    "open_store",
]

# Families whose messages carry register values (see `_registers`).
REGISTER_FAMILIES = ("reading", "ondemand")
# Payload types that answer a command with an error: the command failed.
ERROR_TYPE = "cmd-err"
ALARM_TYPE = "alarm"
ALERT_TYPE = "alert"
COMMAND_STATES = ("pending", "answered", "failed")
PERCENTILES = (50, 95, 99)
MAX_LIMIT = 10_000

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

    key: str  # unique; the same key twice stores once (idempotent)
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


def _text(owner: str, name: str, value: Any) -> str:
    # NUL cannot be stored in a PostgreSQL text column: refuse it on both backends alike.
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InvalidRecord(f"{owner}: {name} must be a non-empty string, got {value!r}")
    return value


def _number(owner: str, name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def _integer(owner: str, name: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecord(f"{owner}: {name} must be an integer, got {value!r}")
    return value


def _json(owner: str, name: str, value: Any) -> str:
    if not isinstance(value, dict):
        raise InvalidRecord(f"{owner}: {name} must be a dict, got {type(value).__name__}")
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidRecord(f"{owner}: {name} is not JSON-serialisable: {exc}") from exc


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
class _MessageRow:
    """A validated message with what the summary tables need from it."""

    message: MeterMessage
    params: tuple[Any, ...]  # for _INSERT_MESSAGE
    latency: float
    ref: str | None
    registers: dict[str, float]
    switch: int | None
    reading_time: float  # orders readings of one meter: meter time, else gateway time


def _message_row(message: Any) -> _MessageRow:
    if not isinstance(message, MeterMessage):
        raise InvalidRecord(f"expected a MeterMessage, got {type(message).__name__}")
    m = message
    key = _text("message", "key", m.key)
    owner = f"message {key!r}"
    for name in ("dap", "meter", "family", "flow", "ptype"):
        _text(owner, name, getattr(m, name))
    seq = _integer(owner, "seq", m.seq, optional=True)
    meter_ts = _number(owner, "meter_ts", m.meter_ts, optional=True)
    created_at = _number(owner, "created_at", m.created_at)
    received_at = _number(owner, "received_at", m.received_at)
    size = _integer(owner, "size", m.size)
    if size is None or size < 0:
        raise InvalidRecord(f"{owner}: size must not be negative, got {m.size!r}")
    budget = _number(owner, "budget_s", m.budget_s, optional=True)
    priority = _integer(owner, "priority", m.priority)
    content = _json(owner, "content", m.content)
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
    return _MessageRow(
        message=m,
        params=params,
        latency=latency,
        ref=ref,
        registers=_registers(m.family, m.content),
        switch=switch,
        reading_time=meter_ts if meter_ts is not None else created_at,
    )


def _command_params(command: Any) -> tuple[Any, ...]:
    if not isinstance(command, CommandRecord):
        raise InvalidRecord(f"expected a CommandRecord, got {type(command).__name__}")
    c = command
    owner = f"command {_text('command', 'id', c.id)!r}"
    for name in ("dap", "meter", "name", "issued_by"):
        _text(owner, name, getattr(c, name))
    issued_at = _number(owner, "issued_at", c.issued_at)
    body = _json(owner, "body", c.body)
    return (c.id, c.dap, c.meter, c.name, body, issued_at, c.issued_by)


def _check_limit(limit: Any, offset: Any = 0) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")


# ---- schema and queries ----------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id          {id},  -- increasing, never reused: feeds page by id
    key         TEXT NOT NULL UNIQUE,
    dap         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    family      TEXT NOT NULL,
    flow        TEXT NOT NULL,
    ptype       TEXT NOT NULL,
    seq         {int},
    meter_ts    {real},
    created_at  {real} NOT NULL,
    received_at {real} NOT NULL,
    latency     {real} NOT NULL,
    size        {int} NOT NULL,
    budget_s    {real},
    priority    {int} NOT NULL,
    ref         TEXT,
    content     {json} NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_meter ON messages (meter, id);
CREATE INDEX IF NOT EXISTS messages_by_family ON messages (family, id);
CREATE INDEX IF NOT EXISTS messages_by_latency ON messages (family, latency);
CREATE INDEX IF NOT EXISTS messages_by_ref ON messages (ref) WHERE ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS meters (
    meter        TEXT PRIMARY KEY,
    dap          TEXT NOT NULL,
    first_seen   {real} NOT NULL,
    last_seen    {real} NOT NULL,
    messages     {int} NOT NULL,
    alarms       {int} NOT NULL,
    switch_state {int},
    switch_at    {real}
);
CREATE INDEX IF NOT EXISTS meters_by_last_seen ON meters (last_seen);
CREATE TABLE IF NOT EXISTS registers (
    meter   TEXT NOT NULL,
    code    TEXT NOT NULL,
    value   {real} NOT NULL,
    read_at {real} NOT NULL,
    PRIMARY KEY (meter, code)
);
CREATE TABLE IF NOT EXISTS flows (
    family        TEXT NOT NULL,
    flow          TEXT NOT NULL,
    ptype         TEXT NOT NULL,
    messages      {int} NOT NULL,
    within_budget {int} NOT NULL,
    max_latency   {real} NOT NULL,
    budget_s      {real},
    PRIMARY KEY (family, flow, ptype)
);
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    dap         TEXT NOT NULL,
    meter       TEXT NOT NULL,
    name        TEXT NOT NULL,
    body        {json} NOT NULL,
    issued_at   {real} NOT NULL,
    issued_by   TEXT NOT NULL,
    status      TEXT NOT NULL,
    result      {json},
    answered_at {real}
);
CREATE INDEX IF NOT EXISTS commands_by_time ON commands (issued_at, id);
CREATE INDEX IF NOT EXISTS commands_by_meter ON commands (meter, issued_at);
CREATE INDEX IF NOT EXISTS commands_by_status ON commands (status);
CREATE TABLE IF NOT EXISTS gateways (
    dap         TEXT PRIMARY KEY,
    reported_at {real} NOT NULL,
    status      {json} NOT NULL
);
"""

_SQLITE_SCHEMA = _SCHEMA.format(
    id="INTEGER PRIMARY KEY AUTOINCREMENT", int="INTEGER", real="REAL", json="TEXT"
)
# JSON columns are `json` in PostgreSQL: kept as sent, and queryable with ->>.
_POSTGRES_SCHEMA = _SCHEMA.format(
    id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    int="BIGINT",
    real="DOUBLE PRECISION",
    json="JSON",
)

# Queries are written once with `?` placeholders (SQLite's); PostgresMdmsStore turns them into
# psycopg's `%s`. Both databases take ON CONFLICT ... DO UPDATE with `excluded` and RETURNING,
# and CASE instead of the min/max (SQLite) or LEAST/GREATEST (PostgreSQL) that differ.
_INSERT_MESSAGE = """
INSERT INTO messages (key, dap, meter, family, flow, ptype, seq, meter_ts, created_at,
                      received_at, latency, size, budget_s, priority, ref, content)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO NOTHING
RETURNING id
"""

_UPSERT_METER = """
INSERT INTO meters (meter, dap, first_seen, last_seen, messages, alarms, switch_state, switch_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (meter) DO UPDATE SET
    dap = CASE WHEN excluded.last_seen >= meters.last_seen THEN excluded.dap ELSE meters.dap END,
    first_seen = CASE WHEN excluded.first_seen < meters.first_seen
                      THEN excluded.first_seen ELSE meters.first_seen END,
    last_seen = CASE WHEN excluded.last_seen > meters.last_seen
                     THEN excluded.last_seen ELSE meters.last_seen END,
    messages = meters.messages + excluded.messages,
    alarms = meters.alarms + excluded.alarms,
    switch_state = CASE WHEN excluded.switch_at IS NOT NULL
                          AND (meters.switch_at IS NULL OR excluded.switch_at >= meters.switch_at)
                        THEN excluded.switch_state ELSE meters.switch_state END,
    switch_at = CASE WHEN excluded.switch_at IS NOT NULL
                       AND (meters.switch_at IS NULL OR excluded.switch_at >= meters.switch_at)
                     THEN excluded.switch_at ELSE meters.switch_at END
"""

_UPSERT_REGISTER = """
INSERT INTO registers (meter, code, value, read_at) VALUES (?, ?, ?, ?)
ON CONFLICT (meter, code) DO UPDATE SET value = excluded.value, read_at = excluded.read_at
WHERE excluded.read_at >= registers.read_at
"""

_UPSERT_FLOW = """
INSERT INTO flows (family, flow, ptype, messages, within_budget, max_latency, budget_s)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (family, flow, ptype) DO UPDATE SET
    messages = flows.messages + excluded.messages,
    within_budget = flows.within_budget + excluded.within_budget,
    max_latency = CASE WHEN excluded.max_latency > flows.max_latency
                       THEN excluded.max_latency ELSE flows.max_latency END,
    budget_s = CASE WHEN flows.budget_s IS NULL
                      OR (excluded.budget_s IS NOT NULL AND excluded.budget_s < flows.budget_s)
                    THEN excluded.budget_s ELSE flows.budget_s END
"""

# A message answers the command whose id is its `ref`. A command sent to a group of meters is
# recorded once per meter as "<id>@<meter>" (the meters all answer with ref = <id>), so a
# message also answers "<ref>@<its meter>". The first answer completes a command; later ones
# (a switch answers with an ack and then its metrology) stay in the history, linked by `ref`.
_COMPLETE_COMMAND = """
UPDATE commands SET status = ?, result = ?, answered_at = ?
WHERE id = ? AND status = 'pending'
"""

_INSERT_COMMAND = """
INSERT INTO commands (id, dap, meter, name, body, issued_at, issued_by, status)
VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')
ON CONFLICT (id) DO NOTHING
"""

# The answers of a command: parameters (id, group id, meter) from `_answer_params`.
_IS_ANSWER = "(ref = ? OR (ref = ? AND meter = ?))"

# An answer can be mirrored before the app got round to recording its command.
_COMPLETE_FROM_EARLIER_ANSWER = f"""
WITH answer AS (
    SELECT ptype, content, received_at FROM messages WHERE {_IS_ANSWER} ORDER BY id LIMIT 1
)
UPDATE commands SET
    status = CASE WHEN answer.ptype = '{ERROR_TYPE}' THEN 'failed' ELSE 'answered' END,
    result = answer.content,
    answered_at = answer.received_at
FROM answer
WHERE commands.id = ? AND commands.status = 'pending'
"""


def _answer_params(command_id: str) -> tuple[str, str | None, str | None]:
    group_id, at, meter = command_id.partition("@")
    return (command_id, group_id, meter) if at else (command_id, None, None)


_UPSERT_GATEWAY = """
INSERT INTO gateways (dap, reported_at, status) VALUES (?, ?, ?)
ON CONFLICT (dap) DO UPDATE SET reported_at = excluded.reported_at, status = excluded.status
WHERE excluded.reported_at >= gateways.reported_at
"""

_MESSAGE_COLUMNS = (
    "id, key, dap, meter, family, flow, ptype, seq, meter_ts, created_at, received_at, latency, "
    "size, budget_s, priority, content"
)
_METER_COLUMNS = "meter, dap, first_seen, last_seen, messages, alarms, switch_state, switch_at"
_COMMAND_COLUMNS = "id, dap, meter, name, body, issued_at, issued_by, status, result, answered_at"

Statement = tuple[str, list[tuple[Any, ...]]]  # one query, run once per parameter tuple
Query = tuple[str, tuple[Any, ...]]


def _summary_statements(new: Sequence[_MessageRow]) -> list[Statement]:
    """The summary-table updates for the messages that were new in a batch.

    Rows are aggregated per meter, register and flow, and sorted, so that concurrent writers
    lock rows in the same order.
    """
    meters: dict[str, list[Any]] = {}
    registers: dict[tuple[str, str], tuple[float, float]] = {}
    flows: dict[tuple[str, str, str], list[Any]] = {}
    completions: dict[str, tuple[Any, ...]] = {}
    for row in new:
        m = row.message
        entry = meters.get(m.meter)
        if entry is None:
            entry = meters[m.meter] = [m.dap, m.received_at, m.received_at, 0, 0, None, None]
        if m.received_at >= entry[2]:
            entry[0] = m.dap
        entry[1] = min(entry[1], m.received_at)
        entry[2] = max(entry[2], m.received_at)
        entry[3] += 1
        entry[4] += m.ptype == ALARM_TYPE
        if row.switch is not None and (entry[6] is None or row.reading_time >= entry[6]):
            entry[5], entry[6] = row.switch, row.reading_time
        for code, value in row.registers.items():
            known = registers.get((m.meter, code))
            if known is None or row.reading_time >= known[1]:
                registers[(m.meter, code)] = (value, row.reading_time)
        stats = flows.get((m.family, m.flow, m.ptype))
        if stats is None:
            stats = flows[(m.family, m.flow, m.ptype)] = [0, 0, row.latency, m.budget_s]
        stats[0] += 1
        stats[1] += m.budget_s is not None and row.latency <= m.budget_s
        stats[2] = max(stats[2], row.latency)
        if m.budget_s is not None and (stats[3] is None or m.budget_s < stats[3]):
            stats[3] = m.budget_s
        if row.ref is not None:
            status = "failed" if m.ptype == ERROR_TYPE else "answered"
            for command_id in (row.ref, f"{row.ref}@{m.meter}"):
                if command_id not in completions:
                    completions[command_id] = (status, row.params[-1], m.received_at, command_id)
    return [
        (_UPSERT_METER, [(meter, *meters[meter]) for meter in sorted(meters)]),
        (_UPSERT_REGISTER, [(*key, *registers[key]) for key in sorted(registers)]),
        (_UPSERT_FLOW, [(*key, *flows[key]) for key in sorted(flows)]),
        (_COMPLETE_COMMAND, [completions[ref] for ref in sorted(completions)]),
    ]


def _plain_number(value: Any) -> Any:
    # Registers are stored as floating point; meters report scaled integers.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _message_dict(row: Sequence[Any]) -> dict[str, Any]:
    names = _MESSAGE_COLUMNS.split(", ")
    out = dict(zip(names, row, strict=True))
    out["content"] = orjson.loads(out["content"])
    return out


def _command_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_COMMAND_COLUMNS.split(", "), row, strict=True))
    out["body"] = orjson.loads(out["body"])
    out["result"] = None if out["result"] is None else orjson.loads(out["result"])
    return out


def _meter_dicts(
    rows: Sequence[Sequence[Any]], register_rows: Sequence[Sequence[Any]]
) -> list[dict[str, Any]]:
    meters: dict[str, dict[str, Any]] = {}
    for meter, dap, first, last, messages, alarms, switch, switch_at in rows:
        meters[meter] = {
            "meter": meter,
            "dap": dap,
            "first_seen": first,
            "last_seen": last,
            "messages": messages,
            "alarms": alarms,
            "registers": {},
            "read_at": None,
            "switch": switch,
            "switch_at": switch_at,
        }
    for meter, code, value, read_at in register_rows:
        entry = meters.get(meter)
        if entry is None:
            continue
        entry["registers"][code] = _plain_number(value)
        if entry["read_at"] is None or read_at > entry["read_at"]:
            entry["read_at"] = read_at
    return list(meters.values())


# ---- the store -------------------------------------------------------------------------------


class MdmsStore(abc.ABC):
    """What the head-end keeps. Use as `async with store:` or call open() and close().

    Backends provide three primitives (`_insert_messages`, `_execute`, `_read`); everything
    else, including the live-update version, is here.
    """

    def __init__(self) -> None:
        self._version = 0
        self._changed = asyncio.Event()

    # ---- lifecycle and backend primitives -----------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the tables if they are missing."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; calling it twice is harmless."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def _insert_messages(self, rows: Sequence[_MessageRow]) -> int:
        """In one transaction: insert the rows (skipping known keys), then run
        `_summary_statements` for the new ones. Returns how many were new."""

    @abc.abstractmethod
    async def _execute(self, statements: Sequence[Statement]) -> None:
        """Run the statements in one transaction."""

    @abc.abstractmethod
    async def _read(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
        """Run read-only queries on one consistent snapshot; the rows of each."""

    async def _read_one(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return (await self._read([(query, params)]))[0]

    # ---- live updates ---------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Increases on every write that changed something (in this process)."""
        return self._version

    def _bump(self) -> None:
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, after: int, timeout: float) -> int:
        """Wait until `version` is past `after` or `timeout` seconds passed; the version."""
        try:
            async with asyncio.timeout(timeout):
                while self._version <= after:
                    await self._changed.wait()
        except TimeoutError:
            pass
        return self._version

    # ---- writes ---------------------------------------------------------------------------

    async def record_messages(self, messages: Sequence[MeterMessage]) -> int:
        """Store a batch atomically; how many were new (a known key is skipped).

        A new message whose content has `ref` = a recorded command's id (or "<ref>@<its
        meter>", a group command's record for that meter) completes that command: status
        "failed" when its payload type is cmd-err, else "answered". Raises
        InvalidRecord, writing nothing, if any message of the batch is malformed.
        """
        rows = [_message_row(m) for m in messages]
        if not rows:
            return 0
        new = await self._insert_messages(rows)
        if new:
            self._bump()
        return new

    async def record_command(self, command: CommandRecord) -> None:
        """Record an issued command as pending (a known id is kept as it is).

        If the meter's answer is already stored, the command is completed at once.
        """
        params = _command_params(command)
        await self._execute(
            [
                (_INSERT_COMMAND, [params]),
                (_COMPLETE_FROM_EARLIER_ANSWER, [(*_answer_params(command.id), command.id)]),
            ]
        )
        self._bump()

    async def record_gateway_status(self, dap: str, at: float, status: dict[str, Any]) -> None:
        """Keep the latest status report of a gateway (an older report is ignored)."""
        _text("gateway status", "dap", dap)
        owner = f"gateway status of {dap!r}"
        reported_at = _number(owner, "at", at)
        body = _json(owner, "status", status)
        await self._execute([(_UPSERT_GATEWAY, [(dap, reported_at, body)])])
        self._bump()

    # ---- reads ----------------------------------------------------------------------------

    async def command(self, command_id: str) -> dict[str, Any] | None:
        """A command with its status, result and every message that answered it."""
        rows, answers = await self._read(
            [
                (f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = ?", (command_id,)),
                (f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {_IS_ANSWER} ORDER BY id",
                 _answer_params(command_id)),
            ]
        )  # fmt: skip
        if not rows:
            return None
        out = _command_dict(rows[0])
        out["answers"] = [_message_dict(row) for row in answers]
        return out

    async def commands(self, limit: int = 100, meter: str | None = None) -> list[dict[str, Any]]:
        """The latest commands, newest first (of one meter if given)."""
        _check_limit(limit)
        where, params = ("WHERE meter = ?", (meter,)) if meter is not None else ("", ())
        rows = await self._read_one(
            f"SELECT {_COMMAND_COLUMNS} FROM commands {where} "
            "ORDER BY issued_at DESC, id DESC LIMIT ?",
            *params,
            limit,
        )
        return [_command_dict(row) for row in rows]

    async def gateway_status(self) -> dict[str, dict[str, Any]]:
        """{dap: {"at": when reported, "status": the latest report}}."""
        rows = await self._read_one("SELECT dap, reported_at, status FROM gateways ORDER BY dap")
        return {dap: {"at": at, "status": orjson.loads(status)} for dap, at, status in rows}

    async def meters(self, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        """Meters in id order: dap, first/last seen, message and alarm counts, latest
        register values ({} if none yet) and when they were read, switch state (1 connected,
        0 disconnected, None if never reported)."""
        _check_limit(limit, offset)
        page = f"SELECT {_METER_COLUMNS} FROM meters ORDER BY meter LIMIT ? OFFSET ?"
        rows, register_rows = await self._read(
            [
                (page, (limit, offset)),
                (
                    "SELECT meter, code, value, read_at FROM registers WHERE meter IN "
                    "(SELECT meter FROM meters ORDER BY meter LIMIT ? OFFSET ?) ORDER BY code",
                    (limit, offset),
                ),
            ]
        )
        return _meter_dicts(rows, register_rows)

    async def meter(self, meter: str, recent: int = 50) -> dict[str, Any] | None:
        """One meter as in `meters()`, plus its latest messages and commands."""
        _check_limit(recent)
        rows, register_rows, messages, commands = await self._read(
            [
                (f"SELECT {_METER_COLUMNS} FROM meters WHERE meter = ?", (meter,)),
                ("SELECT meter, code, value, read_at FROM registers WHERE meter = ? "
                 "ORDER BY code", (meter,)),
                (f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE meter = ? "
                 "ORDER BY id DESC LIMIT ?", (meter, recent)),
                (f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE meter = ? "
                 "ORDER BY issued_at DESC, id DESC LIMIT ?", (meter, recent)),
            ]
        )  # fmt: skip
        if not rows:
            return None
        out = _meter_dicts(rows, register_rows)[0]
        out["recent"] = [_message_dict(row) for row in messages]
        out["commands"] = [_command_dict(row) for row in commands]
        return out

    async def recent_messages(
        self,
        meter: str | None = None,
        family: str | None = None,
        after_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The latest messages, newest first, each with its increasing integer `id`.

        `after_id` keeps only messages stored after that one (a live feed passes the highest
        id it has); with more than `limit` of them, the newest `limit` are returned.
        """
        _check_limit(limit)
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (("meter", meter), ("family", family)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if after_id is not None:
            if isinstance(after_id, bool) or not isinstance(after_id, int):
                raise ValueError(f"after_id must be an integer, got {after_id!r}")
            conditions.append("id > ?")
            params.append(after_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._read_one(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages {where} ORDER BY id DESC LIMIT ?",
            *params,
            limit,
        )
        return [_message_dict(row) for row in rows]

    async def counts_by_flow(self) -> dict[str, int]:
        """Messages stored per flow id."""
        rows = await self._read_one(
            "SELECT flow, SUM(messages) FROM flows GROUP BY flow ORDER BY flow"
        )
        return {flow: int(count) for flow, count in rows}

    async def latency_by_family(self) -> dict[str, dict[str, Any]]:
        """Delivery latency (received_at - created_at, seconds) per family.

        {family: {count, p50, p95, p99, max, budget_s (the tightest budget of its flows),
        within_budget (messages with latency <= their flow's budget)}}. Percentiles are
        nearest-rank: the value at rank ceil(p/100 * count) in increasing order.
        """
        families = await self._read_one(
            "SELECT family, SUM(messages), SUM(within_budget), MAX(max_latency), MIN(budget_s) "
            "FROM flows GROUP BY family ORDER BY family"
        )
        # Each percentile is one walk of the (family, latency) index, not a sort of the family.
        # A write between the two reads can shift a rank by what it added: no harm here.
        queries: list[Query] = []
        for family, count, *_ in families:
            for pct in PERCENTILES:
                rank = max(1, (pct * int(count) + 99) // 100)
                queries.append(
                    (
                        "SELECT latency FROM messages WHERE family = ? "
                        "ORDER BY latency LIMIT 1 OFFSET ?",
                        (family, rank - 1),
                    )
                )
        values = iter(await self._read(queries)) if queries else iter(())
        out: dict[str, dict[str, Any]] = {}
        for family, count, within, worst, budget in families:
            stats: dict[str, Any] = {"count": int(count)}
            for pct in PERCENTILES:
                rows = next(values)
                stats[f"p{pct}"] = rows[0][0] if rows else None
            stats.update(max=worst, budget_s=budget, within_budget=int(within))
            out[family] = stats
        return out

    async def overview(self, online_since: float) -> dict[str, Any]:
        """Totals for a dashboard: meters (all, and heard from since `online_since`),
        messages per family, alarms and alerts, commands per status."""
        meters, online, per_family, per_type, commands = await self._read(
            [
                ("SELECT COUNT(*) FROM meters", ()),
                ("SELECT COUNT(*) FROM meters WHERE last_seen >= ?", (online_since,)),
                ("SELECT family, SUM(messages) FROM flows GROUP BY family ORDER BY family", ()),
                ("SELECT ptype, SUM(messages) FROM flows GROUP BY ptype", ()),
                ("SELECT status, COUNT(*) FROM commands GROUP BY status", ()),
            ]
        )
        types = {ptype: int(count) for ptype, count in per_type}
        return {
            "meters": {"total": meters[0][0], "online": online[0][0]},
            "messages": {family: int(count) for family, count in per_family},
            "alarms": types.get(ALARM_TYPE, 0),
            "alerts": types.get(ALERT_TYPE, 0),
            "commands": {
                state: next((n for s, n in commands if s == state), 0) for state in COMMAND_STATES
            },
        }


# ---- SQLite ----------------------------------------------------------------------------------

_T = TypeVar("_T")


class SQLiteMdmsStore(MdmsStore):
    """One SQLite file in WAL mode, with synchronous=FULL (a recorded message survives a
    power cut, so the MDMS may acknowledge its notification).

    The standard sqlite3 module on two worker threads (one connection each), not aiosqlite:
    a whole write transaction - the batch's inserts, the summary updates that depend on which
    rows were new, the commit - runs as one function on the writer thread, one hand-off per
    batch where aiosqlite would take one per statement. Reads have their own connection and
    thread, so a dashboard query never waits behind a commit (WAL lets them run side by
    side) and never blocks the event loop that the IN-CSE shares. ":memory:" uses a single
    connection for both.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        # Each connection is used only on its own thread.
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._writer is not None:
            return
        in_memory = self.path == ":memory:"
        if not in_memory:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot open the MDMS database {self.path}: {exc}") from exc
        writer = ThreadPoolExecutor(1, thread_name_prefix="mdms-sqlite-writer")
        reader = (
            writer if in_memory else ThreadPoolExecutor(1, thread_name_prefix="mdms-sqlite-reader")
        )
        self._writer, self._reader = writer, reader
        try:
            self._write_conn = await self._run(writer, self._connect_writer)
            if in_memory:
                self._read_conn = self._write_conn
            else:
                self._read_conn = await self._run(reader, self._connect_reader)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StoreError(f"cannot open the MDMS database {self.path}: {exc}") from exc

    def _connect_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.executescript(_SQLITE_SCHEMA)
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        write_conn, read_conn = self._write_conn, self._read_conn
        # Calls from now on fail with StoreError; calls already queued on a thread still run,
        # with the connection they captured, before that thread closes it.
        self._writer = self._reader = None
        self._write_conn = self._read_conn = None
        loop = asyncio.get_running_loop()
        if reader is not None and reader is not writer:
            if read_conn is not None:
                await loop.run_in_executor(reader, read_conn.close)
            reader.shutdown()
        if writer is not None:
            if write_conn is not None:
                await loop.run_in_executor(writer, write_conn.close)
            writer.shutdown()

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        conn, pool = self._write_conn, self._writer
        if conn is None or pool is None:
            raise StoreError("the MDMS store is not open")

        def transaction() -> _T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        try:
            return await self._run(pool, transaction)
        except sqlite3.Error as exc:
            raise StoreError(f"MDMS database error: {exc}") from exc

    async def _insert_messages(self, rows: Sequence[_MessageRow]) -> int:
        def work(conn: sqlite3.Connection) -> int:
            new = [row for row in rows if conn.execute(_INSERT_MESSAGE, row.params).fetchall()]
            for query, params in _summary_statements(new):
                conn.executemany(query, params)
            return len(new)

        return await self._write(work)

    async def _execute(self, statements: Sequence[Statement]) -> None:
        def work(conn: sqlite3.Connection) -> None:
            for query, params in statements:
                conn.executemany(query, params)

        await self._write(work)

    async def _read(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
        conn, pool = self._read_conn, self._reader
        if conn is None or pool is None:
            raise StoreError("the MDMS store is not open")

        def snapshot() -> list[list[tuple[Any, ...]]]:
            conn.execute("BEGIN")  # one snapshot for all the queries
            try:
                return [conn.execute(query, params).fetchall() for query, params in queries]
            finally:
                conn.execute("COMMIT")

        try:
            return await self._run(pool, snapshot)
        except sqlite3.Error as exc:
            raise StoreError(f"MDMS database error: {exc}") from exc


# ---- PostgreSQL ------------------------------------------------------------------------------


def _postgres_query(query: str) -> str:
    return query.replace("?", "%s")


class PostgresMdmsStore(MdmsStore):
    """PostgreSQL through psycopg 3 (async) and its connection pool.

    `schema` puts the tables in their own schema (created if missing), e.g. one per head-end
    sharing a database. Writes of this process go one at a time: message ids are then
    committed in increasing order, which the `after_id` feed relies on.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.url = url
        self.schema = schema
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._write_lock = asyncio.Lock()

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.set_autocommit(True)
        # JSON columns come back as text, as from SQLite: one decoding path for both.
        conn.adapters.register_loader("json", TextLoader)
        if self.schema is not None:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self.schema is not None:
            _text("PostgreSQL", "schema", self.schema)
        pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]
        pool = psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            configure=self._configure,
            kwargs={"connect_timeout": max(1, int(self._connect_timeout))},
            name="mdms",
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
            async with pool.connection() as conn, conn.transaction():
                if self.schema is not None:
                    create = sql.SQL("CREATE SCHEMA IF NOT EXISTS {}")
                    await conn.execute(create.format(sql.Identifier(self.schema)))
                await conn.execute(_POSTGRES_SCHEMA)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise StoreError(f"cannot open the MDMS database on PostgreSQL: {exc}") from exc
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _ready(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreError("the MDMS store is not open")
        return self._pool

    async def _insert_messages(self, rows: Sequence[_MessageRow]) -> int:
        pool = self._ready()
        async with self._write_lock, pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            await cur.executemany(
                _postgres_query(_INSERT_MESSAGE), [row.params for row in rows], returning=True
            )
            new: list[_MessageRow] = []
            for row in rows:  # one result set per row: empty when the key was known
                if await cur.fetchone() is not None:
                    new.append(row)
                cur.nextset()
            await self._run_statements(conn, _summary_statements(new))
        return len(new)

    @staticmethod
    async def _run_statements(
        conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
    ) -> None:
        cur = conn.cursor()
        for query, params in statements:
            if params:
                await cur.executemany(_postgres_query(query), params)

    async def _execute(self, statements: Sequence[Statement]) -> None:
        pool = self._ready()
        async with self._write_lock, pool.connection() as conn, conn.transaction():
            await self._run_statements(conn, statements)

    async def _read(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]:
        pool = self._ready()
        async with pool.connection() as conn, conn.transaction():
            if len(queries) > 1:  # one snapshot for all the queries
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            out = []
            for query, params in queries:
                cur = await conn.execute(_postgres_query(query), params)
                out.append(await cur.fetchall())
            return out


def open_store(sqlite_path: str, postgres_url: str | None = None) -> MdmsStore:
    """The store the head-end is configured for: PostgreSQL when a URL is given, else the
    SQLite file. Not opened yet: `async with open_store(...) as store:` or `await open()`."""
    if postgres_url:
        return PostgresMdmsStore(postgres_url)
    return SQLiteMdmsStore(sqlite_path)

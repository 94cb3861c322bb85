"""The MDMS store's interface, and everything both backends share.

The MDMS AE receives each meter's flow messages (mirrored from the DAP gateway) and records
them here; head-end apps record the commands they issue, and a message whose content carries
`ref` = a command's id answers that command. The dashboard reads everything back.

`MdmsStore` holds the bookkeeping, the queries and the live-update version; a backend
(`sqlite.py`, `postgres.py`) only connects and runs three primitives: insert a batch of
messages with its summary updates, run statements in one transaction, and read on one
snapshot.

Delivery latency is `received_at - created_at`: from the moment the gateway's MN-CSE stored
the message to the moment the MDMS got it, both on real clocks (the head-end and the gateway
are assumed NTP-synchronised). The meter's own timestamp (`meter_ts`) is not used for it: meter
agents run on an accelerated clock (an hour a second in tests), so it says when a reading was
taken in the meter's world, not when it left the meter.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import orjson

from headend.store.bulk_reads import BulkReadRecords
from headend.store.records import (
    ALARM_TYPE,
    ALERT_TYPE,
    CommandRecord,
    MessageRow,
    MeterMessage,
    check_limit,
    check_position,
    checked_json,
    checked_number,
    checked_text,
    command_params,
    message_row,
)
from headend.store.sql import (
    COMMAND_COLUMNS,
    COMMAND_REACHED_DAP,
    COMMANDS_AFTER,
    COMPLETE_FROM_EARLIER_ANSWER,
    INSERT_COMMAND,
    IS_ANSWER,
    MESSAGE_COLUMNS,
    METER_COLUMNS,
    PENDING_ISSUED_BEFORE,
    TIME_OUT_COMMAND,
    UPSERT_GATEWAY,
    Query,
    Statement,
    answer_params,
)

COMMAND_STATES = ("pending", "answered", "failed", "timed-out")
PERCENTILES = (50, 95, 99)


def _plain_number(value: Any) -> Any:
    # Registers are stored as floating point; meters report scaled integers.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def message_dict(row: Sequence[Any]) -> dict[str, Any]:
    names = MESSAGE_COLUMNS.split(", ")
    out = dict(zip(names, row, strict=True))
    out["content"] = orjson.loads(out["content"])
    return out


def command_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(COMMAND_COLUMNS.split(", "), row, strict=True))
    out["body"] = orjson.loads(out["body"])
    out["result"] = None if out["result"] is None else orjson.loads(out["result"])
    return out


def meter_dicts(
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


class MdmsStore(BulkReadRecords, abc.ABC):
    """What the head-end keeps. Use as `async with store:` or call open() and close().

    Backends provide three primitives (`_insert_messages`, `_execute`, `_read`); everything
    else, including the live-update version, is here (and, for CIS/Billing's bulk reads, in
    `BulkReadRecords`).
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
    async def _insert_messages(self, rows: Sequence[MessageRow]) -> int:
        """In one transaction: insert the rows (skipping known keys), then run
        `summary_statements` for the new ones. Returns how many were new."""

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
        rows = [message_row(m) for m in messages]
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
        params = command_params(command)
        await self._execute(
            [
                (INSERT_COMMAND, [params]),
                (COMPLETE_FROM_EARLIER_ANSWER, [(*answer_params(command.id), command.id)]),
            ]
        )
        self._bump()

    async def record_gateway_status(self, dap: str, at: float, status: dict[str, Any]) -> None:
        """Keep the latest status report of a gateway (an older report is ignored)."""
        checked_text("gateway status", "dap", dap)
        owner = f"gateway status of {dap!r}"
        reported_at = checked_number(owner, "at", at)
        body = checked_json(owner, "status", status)
        await self._execute([(UPSERT_GATEWAY, [(dap, reported_at, body)])])
        self._bump()

    # ---- reads ----------------------------------------------------------------------------

    async def command(self, command_id: str) -> dict[str, Any] | None:
        """A command with its status, result and every message that answered it."""
        rows, answers = await self._read(
            [
                (f"SELECT {COMMAND_COLUMNS} FROM commands WHERE id = ?", (command_id,)),
                (f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {IS_ANSWER} ORDER BY id",
                 answer_params(command_id)),
            ]
        )  # fmt: skip
        if not rows:
            return None
        out = command_dict(rows[0])
        out["answers"] = [message_dict(row) for row in answers]
        return out

    async def commands(self, limit: int = 100, meter: str | None = None) -> list[dict[str, Any]]:
        """The latest commands, newest first (of one meter if given)."""
        check_limit(limit)
        where, params = ("WHERE meter = ?", (meter,)) if meter is not None else ("", ())
        rows = await self._read_one(
            f"SELECT {COMMAND_COLUMNS} FROM commands {where} "
            "ORDER BY issued_at DESC, id DESC LIMIT ?",
            *params,
            limit,
        )
        return [command_dict(row) for row in rows]

    async def time_out_commands(
        self, issued_before: float, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Mark the commands still pending that were issued before `issued_before` as
        timed out, and return those this call marked (as `command` shows them). An answer
        that comes later still completes a command."""
        check_limit(limit)
        rows = await self._read_one(PENDING_ISSUED_BEFORE, float(issued_before), limit)
        ids = [str(row[0]) for row in rows]
        if not ids:
            return []
        await self._execute([(TIME_OUT_COMMAND, [(command_id,) for command_id in ids])])
        self._bump()
        marked = [await self.command(command_id) for command_id in ids]
        # One answered between the read and the update stays answered.
        return [c for c in marked if c is not None and c.get("status") == "timed-out"]

    async def record_command_reached_dap(self, reached: Sequence[tuple[str, float]]) -> None:
        """When the DAP created each (command id, time) command's instance, as its answer
        to the head-end's CREATE said; an interop run measures head-end → DAP rows by it."""
        if reached:
            await self._execute([(COMMAND_REACHED_DAP, [(at, cid) for cid, at in reached])])

    async def commands_in_order(
        self, after: tuple[float, str] | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Commands in the order they were issued, after the (issued_at, id) of the last
        one a reader saw: a reader pages through all of them with the last row's cursor."""
        check_limit(limit)
        at, last_id = after if after is not None else (-1.0, "")
        rows = await self._read_one(COMMANDS_AFTER, at, at, last_id, limit)
        return [command_dict(row) for row in rows]

    async def gateway_status(self) -> dict[str, dict[str, Any]]:
        """{dap: {"at": when reported, "status": the latest report}}."""
        rows = await self._read_one("SELECT dap, reported_at, status FROM gateways ORDER BY dap")
        return {dap: {"at": at, "status": orjson.loads(status)} for dap, at, status in rows}

    async def meters(self, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        """Meters in id order: dap, first/last seen, message and alarm counts, latest
        register values ({} if none yet) and when they were read, switch state (1 connected,
        0 disconnected, None if never reported)."""
        check_limit(limit, offset)
        page = f"SELECT {METER_COLUMNS} FROM meters ORDER BY meter LIMIT ? OFFSET ?"
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
        return meter_dicts(rows, register_rows)

    async def meter(self, meter: str, recent: int = 50) -> dict[str, Any] | None:
        """One meter as in `meters()`, plus its latest messages and commands."""
        check_limit(recent)
        rows, register_rows, messages, commands = await self._read(
            [
                (f"SELECT {METER_COLUMNS} FROM meters WHERE meter = ?", (meter,)),
                ("SELECT meter, code, value, read_at FROM registers WHERE meter = ? "
                 "ORDER BY code", (meter,)),
                (f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE meter = ? "
                 "ORDER BY id DESC LIMIT ?", (meter, recent)),
                (f"SELECT {COMMAND_COLUMNS} FROM commands WHERE meter = ? "
                 "ORDER BY issued_at DESC, id DESC LIMIT ?", (meter, recent)),
            ]
        )  # fmt: skip
        if not rows:
            return None
        out = meter_dicts(rows, register_rows)[0]
        out["recent"] = [message_dict(row) for row in messages]
        out["commands"] = [command_dict(row) for row in commands]
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
        check_limit(limit)
        conditions: list[str] = []
        params: list[Any] = []
        for column, value in (("meter", meter), ("family", family)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if after_id is not None:
            check_position("after_id", after_id)
            conditions.append("id > ?")
            params.append(after_id)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._read_one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages {where} ORDER BY id DESC LIMIT ?",
            *params,
            limit,
        )
        return [message_dict(row) for row in rows]

    async def messages_in_order(self, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Messages stored after the one with `after_id`, oldest first: a reader pages
        through all of them with the last id of each page (the interop runner does)."""
        check_limit(limit)
        check_position("after_id", after_id)
        rows = await self._read_one(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
            after_id,
            limit,
        )
        return [message_dict(row) for row in rows]

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
        nearest-rank: the value at rank ceil(p/100 * count) in increasing order, over the
        messages kept (all of them unless a retention is set); the rest count every message.
        """
        families, kept_rows = await self._read(
            [
                ("SELECT family, SUM(messages), SUM(within_budget), MAX(max_latency), "
                 "MIN(budget_s) FROM flows GROUP BY family ORDER BY family", ()),
                ("SELECT family, SUM(messages) FROM message_days GROUP BY family", ()),
            ]
        )  # fmt: skip
        # The percentiles rank the messages still kept (retention may have removed old days);
        # the other figures count every message received.
        kept = {family: int(count) for family, count in kept_rows}
        # Each percentile is one walk of the (family, latency) index, not a sort of the family.
        # A write between the two reads can shift a rank by what it added: no harm here.
        queries: list[Query] = []
        for family, *_ in families:
            for pct in PERCENTILES:
                rank = max(1, (pct * kept.get(family, 0) + 99) // 100)
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

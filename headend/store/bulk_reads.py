"""The store's record of CIS/Billing's bulk meter reads, both sides of each request.

  cis_requests  what CIS sent (a request naming a billing cycle) and what it received back
                (the meters' reads, put together from the answer's segments)
  bulk_reads    how the MDMS handled the request: when it arrived, the bulk read command
                each meter got, and how and when it was answered

The two tables share the request id; `cis_requests()` joins them for the head-end's API,
which is where the interop runner reads its evidence. The reads CIS received are kept with its
request (`data`); the MDMS keeps none of its own, as they are its messages already.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from headend.store.records import (
    InvalidRecord,
    check_limit,
    check_position,
    checked_json,
    checked_number,
    checked_text,
)
from headend.store.sql import Query, Statement

BULK_READ_STATES = ("open", "complete", "partial", "refused", "undelivered")
CIS_STATES = ("sent", "failed", "answered", "refused")


@dataclass(frozen=True, slots=True)
class CisRequest:
    """A bulk meter read request as CIS sent it."""

    id: str
    cycle: str  # the billing cycle it names
    meters: int  # how many meters that cycle holds
    sent_at: float  # wall clock, just before the CREATE
    utility_ts: float  # the utility clock then (the one the 18:00-06:00 window is read on)
    size: int  # payload bytes of the request (interop/sizes.py)
    status: str = "sent"  # or "failed": the IN-CSE refused the CREATE (detail says why)
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CisAnswer:
    """Bulk read data as CIS received it: every segment of one answer."""

    id: str
    received_at: float  # when the last segment arrived
    size: int  # payload bytes of all segments together
    segments: int
    reads: dict[str, Any]  # meter -> its read
    missing: dict[str, str]  # meter -> why it has no read
    error: str | None = None  # the MDMS refused the request (unknown cycle, ...)


@dataclass(frozen=True, slots=True)
class BulkReadReceived:
    """A request as the MDMS took it on: its meters' commands, and those it could not send."""

    id: str
    cycle: str
    received_at: float
    deadline_at: float
    commands: dict[str, str]  # meter -> the id of its bulk read command
    missing: dict[str, str] = field(default_factory=dict)  # meter -> why it got none
    status: str = "open"  # or "refused" (detail says why), answered at once
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class BulkReadAnswered:
    """How the MDMS answered a request."""

    id: str
    status: str  # complete, partial (some meters missing), refused, undelivered
    ready_at: float  # the last read arrived, or the deadline passed
    answered_at: float  # the last segment was written to CIS's container
    size: int
    segments: int
    missing: dict[str, str]
    detail: str | None = None


_INSERT_CIS_REQUEST = """
INSERT INTO cis_requests (id, cycle, meters, sent_at, utility_ts, size, status, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""
_CIS_ANSWERED = """
UPDATE cis_requests SET status = ?, detail = ?, data_received_at = ?, data_size = ?,
                        segments = ?, missing = ?, data = ?
WHERE id = ? AND data_received_at IS NULL
"""
_INSERT_BULK_READ = """
INSERT INTO bulk_reads (id, cycle, received_at, deadline_at, commands, status, detail, missing)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""
_BULK_READ_ANSWERED = """
UPDATE bulk_reads SET status = ?, detail = ?, ready_at = ?, answered_at = ?, data_size = ?,
                      segments = ?, missing = ?
WHERE id = ? AND answered_at IS NULL
"""
_BULK_READ_COLUMNS = (
    "id, cycle, received_at, deadline_at, commands, status, detail, ready_at, answered_at, "
    "data_size, segments, missing"
)
# One request with both sides, for the API: CIS's columns, then the MDMS's (prefixed mdms_).
_JOINED = """
SELECT c.seq, c.id, c.cycle, c.meters, c.sent_at, c.utility_ts, c.size, c.status, c.detail,
       c.data_received_at, c.data_size, c.segments, c.missing,
       b.received_at, b.deadline_at, b.status, b.detail, b.ready_at, b.answered_at,
       b.data_size, b.segments
FROM cis_requests c LEFT JOIN bulk_reads b ON b.id = c.id
"""
_JOINED_NAMES = (
    "seq", "id", "cycle", "meters", "sent_at", "utility_ts", "size", "status", "detail",
    "data_received_at", "data_size", "segments", "missing",
    "mdms_received_at", "mdms_deadline_at", "mdms_status", "mdms_detail", "mdms_ready_at",
    "mdms_answered_at", "mdms_data_size", "mdms_segments",
)  # fmt: skip


def _checked_state(owner: str, status: str, states: Sequence[str]) -> None:
    if status not in states:
        raise InvalidRecord(f"{owner}: status must be one of {', '.join(states)}, got {status!r}")


def _checked_count(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidRecord(f"{owner}: {name} must be a non-negative integer, got {value!r}")
    return value


def _json_or_none(text: Any) -> Any:
    return None if text is None else orjson.loads(text)


def _joined_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_JOINED_NAMES, row, strict=True))
    out["missing"] = _json_or_none(out["missing"])
    return out


class BulkReadRecords(abc.ABC):
    """The bulk read tables' writes and reads, over the store's primitives (`MdmsStore`)."""

    @abc.abstractmethod
    async def _execute(self, statements: Sequence[Statement]) -> None: ...

    @abc.abstractmethod
    async def _read(self, queries: Sequence[Query]) -> list[list[tuple[Any, ...]]]: ...

    @abc.abstractmethod
    def _bump(self) -> None: ...

    # ---- CIS's side ----------------------------------------------------------------------

    async def record_cis_request(self, request: CisRequest) -> None:
        """A request CIS sent (a known id is kept as it is)."""
        owner = f"CIS request {checked_text('CIS request', 'id', request.id)!r}"
        checked_text(owner, "cycle", request.cycle)
        _checked_state(owner, request.status, ("sent", "failed"))
        params = (
            request.id,
            request.cycle,
            _checked_count(owner, "meters", request.meters),
            checked_number(owner, "sent_at", request.sent_at),
            checked_number(owner, "utility_ts", request.utility_ts),
            _checked_count(owner, "size", request.size),
            request.status,
            request.detail,
        )
        await self._execute([(_INSERT_CIS_REQUEST, [params])])
        self._bump()

    async def record_cis_answer(self, answer: CisAnswer) -> None:
        """The data CIS received for one of its requests (only the first answer counts)."""
        owner = f"CIS answer {checked_text('CIS answer', 'id', answer.id)!r}"
        params = (
            "refused" if answer.error else "answered",
            answer.error,
            checked_number(owner, "received_at", answer.received_at),
            _checked_count(owner, "size", answer.size),
            _checked_count(owner, "segments", answer.segments),
            checked_json(owner, "missing", answer.missing),
            checked_json(owner, "reads", answer.reads),
            answer.id,
        )
        await self._execute([(_CIS_ANSWERED, [params])])
        self._bump()

    async def cis_requests(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Requests in the order CIS sent them (`seq` past `after`), each with how the MDMS
        handled it (the `mdms_` fields, None until it had the request); no reads."""
        check_limit(limit)
        check_position("after", after)
        query = f"{_JOINED} WHERE c.seq > ? ORDER BY c.seq LIMIT ?"
        rows = (await self._read([(query, (after, limit))]))[0]
        return [_joined_dict(row) for row in rows]

    async def cis_request(self, request_id: str) -> dict[str, Any] | None:
        """One request as `cis_requests` shows it, plus the reads CIS received (`reads`)."""
        rows, data = await self._read(
            [
                (f"{_JOINED} WHERE c.id = ?", (request_id,)),
                ("SELECT data FROM cis_requests WHERE id = ?", (request_id,)),
            ]
        )
        if not rows:
            return None
        out = _joined_dict(rows[0])
        out["reads"] = _json_or_none(data[0][0])
        return out

    # ---- the MDMS's side -----------------------------------------------------------------

    async def record_bulk_read(self, received: BulkReadReceived) -> bool:
        """A request the MDMS took on; False if it had it already (nothing is changed)."""
        owner = f"bulk read {checked_text('bulk read', 'id', received.id)!r}"
        checked_text(owner, "cycle", received.cycle)
        _checked_state(owner, received.status, ("open", "refused"))
        if await self.bulk_read(received.id) is not None:
            return False
        params = (
            received.id,
            received.cycle,
            checked_number(owner, "received_at", received.received_at),
            checked_number(owner, "deadline_at", received.deadline_at),
            checked_json(owner, "commands", received.commands),
            received.status,
            received.detail,
            checked_json(owner, "missing", received.missing),
        )
        await self._execute([(_INSERT_BULK_READ, [params])])
        self._bump()
        return True

    async def record_bulk_read_answered(self, answered: BulkReadAnswered) -> None:
        """How the MDMS answered (only the first answer of a request is kept)."""
        owner = f"bulk read {checked_text('bulk read', 'id', answered.id)!r}"
        _checked_state(owner, answered.status, BULK_READ_STATES[1:])
        params = (
            answered.status,
            answered.detail,
            checked_number(owner, "ready_at", answered.ready_at),
            checked_number(owner, "answered_at", answered.answered_at),
            _checked_count(owner, "size", answered.size),
            _checked_count(owner, "segments", answered.segments),
            checked_json(owner, "missing", answered.missing),
            answered.id,
        )
        await self._execute([(_BULK_READ_ANSWERED, [params])])
        self._bump()

    async def bulk_read(self, request_id: str) -> dict[str, Any] | None:
        query = f"SELECT {_BULK_READ_COLUMNS} FROM bulk_reads WHERE id = ?"
        rows = (await self._read([(query, (request_id,))]))[0]
        return _bulk_read_dict(rows[0]) if rows else None

    async def open_bulk_reads(self) -> list[dict[str, Any]]:
        """The requests the MDMS has not answered yet, oldest first."""
        query = (
            f"SELECT {_BULK_READ_COLUMNS} FROM bulk_reads WHERE status = 'open' "
            "ORDER BY received_at"
        )
        rows = (await self._read([(query, ())]))[0]
        return [_bulk_read_dict(row) for row in rows]


def _bulk_read_dict(row: Sequence[Any]) -> dict[str, Any]:
    out = dict(zip(_BULK_READ_COLUMNS.split(", "), row, strict=True))
    out["commands"] = orjson.loads(out["commands"])
    out["missing"] = _json_or_none(out["missing"])
    return out

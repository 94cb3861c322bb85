"""The MDMS's side of CIS/Billing's bulk meter reads (rows 1Aa and 1B of the tables).

  CIS  --request-->  MDMS  --bulk read commands-->  head-end --> DAPs --> meters
  CIS  <--reads----  MDMS  <--mr-multi-interval answers------------------------

The MDMS owns the request container (`headend/billing.py` has the resources and payloads),
which an access control policy opens to CIS's CREATE and to nobody else. For each request it
reads the billing cycle's meters, issues a bulk read to each through the head-end's command
service (a group per DAP), and follows the answers as the MDMS stores them (their `ref` is the
command's id). When every meter has answered, or `bulk_read_deadline` seconds after the request
arrived, it writes the reads to CIS's data container, listing the meters without a read and
why. Requests in progress are in the store, so a restarted head-end picks them up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from cse.core.types import Operation, ResourceType
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import content_object
from headend.apps import HeadendApps
from headend.billing import (
    CIS_NAME,
    CYCLES_CONTAINER,
    DATA_CONTAINER,
    REQUESTS_CONTAINER,
    REQUESTS_POLICY,
    BillingMessageError,
    checked_name,
    data_segments,
    instance,
    parse_cycle,
    parse_request,
    payload_size,
    read_of,
)
from headend.config import CIS_AE, MDMS_AE
from headend.local_ae import LocalAe
from headend.mdms import Mdms
from headend.store import BulkReadAnswered, BulkReadReceived, MdmsStore, MeterMessage
from headend.store.records import ERROR_TYPE

logger = logging.getLogger(__name__)

NO_ANSWER = "no answer by the deadline"
REQUESTS_KEPT = 1000  # mni of the request container: the MDMS has handled older ones
_CREATE, _ALL = 1, 63  # acop bits


@dataclass
class _OpenRead:
    """A request the MDMS is collecting reads for."""

    id: str
    cycle: str
    deadline_at: float
    commands: dict[str, str]  # meter -> its command id
    reads: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # meter -> why it has no read

    def waiting_for(self) -> list[str]:
        return [m for m in self.commands if m not in self.reads and m not in self.missing]


class BulkReads:
    def __init__(
        self,
        mdms: Mdms,
        apps: HeadendApps,
        store: MdmsStore,
        *,
        deadline_s: float,
        segment_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.mdms = mdms
        self.apps = apps
        self.store = store
        self.deadline_s = deadline_s
        self.segment_bytes = segment_bytes
        self.clock = clock
        self._send = LocalAe(mdms.cse, MDMS_AE).request
        self._open: dict[str, _OpenRead] = {}
        self._by_command: dict[str, tuple[str, str]] = {}  # command id -> (request, meter)
        self._taking: set[str] = set()  # requests being taken on (a redelivery waits its turn)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def _base(self) -> str:
        return self.mdms.cse.settings.cse_name

    @property
    def requests_path(self) -> str:
        return f"{self._base}/mdms/{REQUESTS_CONTAINER}"

    async def start(self) -> None:
        policy = await self._request_policy()
        await self._ensure(
            f"{self._base}/mdms",
            REQUESTS_CONTAINER,
            ResourceType.CONTAINER,
            {"m2m:cnt": {"rn": REQUESTS_CONTAINER, "acpi": [policy], "mni": REQUESTS_KEPT}},
            {"m2m:cnt": {"acpi": [policy]}},  # an UPDATE of acpi changes nothing else
        )
        self.mdms.message_listeners.append(self.on_messages)
        await self.mdms.watch_own_container(self.requests_path, self.on_requests)

    async def resume(self) -> None:
        """Go on with the requests that were open when the head-end stopped (once CIS is
        there to be answered): their reads so far are in the store."""
        for record in await self.store.open_bulk_reads():
            await self._resume(record)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _request_policy(self) -> str:
        """The ACP of the request container: CIS may CREATE there, the MDMS do anything,
        nobody else anything (the default rule would let only the MDMS in)."""
        rules = {
            "pv": {"acr": [{"acor": [CIS_AE], "acop": _CREATE}, {"acor": [MDMS_AE], "acop": _ALL}]},
            "pvs": {"acr": [{"acor": [MDMS_AE], "acop": _ALL}]},
        }
        reply = await self._ensure(
            f"{self._base}/mdms",
            REQUESTS_POLICY,
            ResourceType.ACCESS_CONTROL_POLICY,
            {"m2m:acp": {"rn": REQUESTS_POLICY, **rules}},
            {"m2m:acp": rules},
        )
        return str(reply["m2m:acp"]["ri"])

    async def _ensure(
        self,
        parent: str,
        name: str,
        resource_type: ResourceType,
        create: dict[str, Any],
        update: dict[str, Any],
    ) -> dict[str, Any]:
        """Create a resource of the MDMS's, or bring the one a previous start made up to date."""
        reply = await self._send(
            Operation.CREATE, parent, resource_type=resource_type, content=create
        )
        if reply.status == RSC.CONFLICT:
            reply = await self._send(Operation.UPDATE, f"{parent}/{name}", content=update)
        if reply.status not in (RSC.CREATED, RSC.UPDATED) or not isinstance(reply.content, dict):
            raise RuntimeError(f"the MDMS could not make {parent}/{name}: {int(reply.status)}")
        return reply.content

    # ---- requests ---------------------------------------------------------------------------

    async def on_requests(self, instances: list[dict[str, Any]]) -> None:
        for item in instances:
            received_at = self.clock()
            content = content_object(item.get("con"))
            try:
                request_id = checked_name("a request's id", content.get("id"))
            except BillingMessageError as error:
                logger.warning("a bulk read request CIS cannot be told about: %s", error)
                continue
            if request_id in self._taking:
                continue
            self._taking.add(request_id)
            try:
                if await self.store.bulk_read(request_id) is None:
                    await self._take_on(request_id, content, received_at)
            finally:
                self._taking.discard(request_id)

    async def _take_on(self, request_id: str, content: dict[str, Any], received_at: float) -> None:
        cycle = str(content.get("cycle", ""))
        try:
            request = parse_request(content)
            meters = await self._cycle_meters(request.cycle)
        except BillingMessageError as error:
            await self._refuse(request_id, cycle or "-", received_at, str(error))
            return
        sent = await self.apps.bulk_read_each(meters)
        read = _OpenRead(request_id, cycle, received_at + self.deadline_s, sent.commands)
        read.missing.update(sent.not_sent)
        await self.store.record_bulk_read(
            BulkReadReceived(
                request_id, cycle, received_at, read.deadline_at, sent.commands, sent.not_sent
            )
        )
        await self._follow(read)

    async def _cycle_meters(self, cycle: str) -> list[str]:
        path = f"{self._base}/{CIS_NAME}/{CYCLES_CONTAINER}/{cycle}"
        reply = await self._send(Operation.RETRIEVE, path)
        found = reply.content.get("m2m:cin") if isinstance(reply.content, dict) else None
        if reply.status != RSC.OK or not isinstance(found, dict):
            raise BillingMessageError(f"no billing cycle {cycle} ({int(reply.status)})")
        return parse_cycle(cycle, found.get("con"))

    async def _refuse(self, request_id: str, cycle: str, received_at: float, why: str) -> None:
        logger.info("bulk read request %s refused: %s", request_id, why)
        await self.store.record_bulk_read(
            BulkReadReceived(
                request_id, cycle, received_at, received_at, {}, status="refused", detail=why
            )
        )
        await self._answer(request_id, cycle, {}, {}, "refused", received_at, error=why)

    async def _follow(self, read: _OpenRead) -> None:
        """Wait for the request's reads: those already stored now, the others as they come."""
        self._open[read.id] = read
        for meter, command_id in read.commands.items():
            self._by_command[command_id] = (read.id, meter)
        for meter, command_id in read.commands.items():
            record = await self.store.command(command_id) or {}
            if record.get("status") in ("answered", "failed") and record.get("answers"):
                answer = record["answers"][0]
                _settle(read, meter, str(answer.get("ptype")), answer.get("content") or {})
        if not read.waiting_for():
            self._spawn(self._finish(read.id))
            return
        self._arm(read)

    def _arm(self, read: _OpenRead) -> None:
        delay = max(0.0, read.deadline_at - self.clock())
        self._timers[read.id] = asyncio.get_running_loop().call_later(
            delay, self._deadline_passed, read.id
        )

    def _deadline_passed(self, request_id: str) -> None:
        read = self._open.get(request_id)
        if read is None:
            return
        if self.clock() < read.deadline_at:
            # The loop's timer runs on the monotonic clock, the deadline is wall time: a timer
            # a little early waits for the rest, so no meter is given up before its time.
            self._arm(read)
            return
        self._spawn(self._finish(request_id, deadline=True))

    async def _resume(self, record: dict[str, Any]) -> None:
        read = _OpenRead(
            str(record["id"]),
            str(record["cycle"]),
            float(record["deadline_at"]),
            dict(record["commands"]),
        )
        read.missing.update(record.get("missing") or {})
        await self._follow(read)

    async def on_messages(self, messages: Sequence[MeterMessage]) -> None:
        """Meter messages the MDMS stored: the answers among them settle their meters."""
        done: set[str] = set()
        for message in messages:
            ref = message.ref if message.ref is not None else message.content.get("ref")
            if ref is None:
                continue
            found = self._by_command.get(str(ref)) or self._by_command.get(f"{ref}@{message.meter}")
            read = self._open.get(found[0]) if found is not None else None
            if found is None or read is None or found[1] != message.meter:
                continue
            _settle(read, message.meter, message.ptype, message.content)
            if not read.waiting_for():
                done.add(read.id)
        for request_id in done:
            # Not awaited: the MDMS takes its next meter data meanwhile. Should the head-end
            # stop before the answer is written, the open request is resumed at its start.
            self._spawn(self._finish(request_id))

    # ---- answers ----------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, request_id: str, *, deadline: bool = False) -> None:
        read = self._open.pop(request_id, None)
        if read is None:
            return  # answered already (the last read and the deadline came together)
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()
        for command_id in read.commands.values():
            self._by_command.pop(command_id, None)
        ready_at = self.clock()
        if deadline:
            read.missing.update(dict.fromkeys(read.waiting_for(), NO_ANSWER))
        status = "partial" if read.missing else "complete"
        await self._answer(read.id, read.cycle, read.reads, read.missing, status, ready_at)

    async def _answer(
        self,
        request_id: str,
        cycle: str,
        reads: dict[str, Any],
        missing: dict[str, str],
        status: str,
        ready_at: float,
        *,
        error: str | None = None,
    ) -> None:
        segments = data_segments(request_id, cycle, reads, missing, self.segment_bytes, error)
        path = f"{self._base}/{CIS_NAME}/{DATA_CONTAINER}"
        detail = error
        for segment in segments:
            reply = await self._send(
                Operation.CREATE,
                path,
                resource_type=ResourceType.CONTENT_INSTANCE,
                content=instance(segment),
            )
            if reply.status != RSC.CREATED:
                status, detail = "undelivered", f"{path} answered {int(reply.status)}"
                logger.error("bulk read data for %s not delivered: %s", request_id, detail)
                break
        await self.store.record_bulk_read_answered(
            BulkReadAnswered(
                request_id,
                status,
                ready_at,
                self.clock(),
                sum(payload_size(s) for s in segments),
                len(segments),
                missing,
                detail,
            )
        )


def _settle(read: _OpenRead, meter: str, ptype: str, content: dict[str, Any]) -> None:
    """A meter's answer: its read, or (a command error) the reason it has none."""
    if ptype == ERROR_TYPE:
        read.missing[meter] = f"the meter refused the read ({content.get('e', 'error')})"
    else:
        read.reads[meter] = read_of(content)

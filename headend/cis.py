"""CIS/Billing: the utility application that asks the MDMS for bulk meter reads (rows 1Aa).

An AE (`Ccis`) on the head-end's IN-CSE, in the head-end's process, and held to access control
like any utility application (it is not one of the IN-CSE's trusted originators). It keeps

  <cse>/cis/billing-cycles   its billing cycles: the meters in batches of `batch_size`
  <cse>/cis/bulk-read-data   where the MDMS writes the answers (the default access rule:
                             CIS itself, and the head-end's own applications, which the
                             IN-CSE trusts)

and sends its requests into the MDMS's request container (`headend/billing.py`). It sends
them only between 18:00 and 06:00 on the utility clock, `batches_per_day` a day evenly spread
over those 12 hours (the first at 18:00), each for the next billing cycle in turn. The meters
are a roster given through the API, or else every meter the MDMS knows, in id order; when
they change, the cycles are written again. The answers are put together from their segments
and stored with the request (`headend/store/bulk_reads.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cse.core.handler import CommonServicesEntity
from cse.core.types import Operation, ResourceType, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from headend.billing import (
    CIS_NAME,
    CYCLES_CONTAINER,
    DATA_CONTAINER,
    REQUESTS_CONTAINER,
    BillingMessageError,
    DataSegment,
    cycle_content,
    instance,
    parse_cycle,
    parse_segment,
    payload_size,
    request_content,
)
from headend.commands import base36
from headend.config import CIS_AE, CisConfig
from headend.local_ae import LocalAe
from headend.store import CisAnswer, CisRequest, MdmsStore

logger = logging.getLogger(__name__)

DAY_S = 86400
WINDOW_FROM_S = 18 * 3600  # the tables' clock for the bulk read rows: 6PM - 6AM
WINDOW_S = 12 * 3600
ANSWERS_KEPT = 100  # mni of the data container: CIS has stored what it received
_UNFINISHED_KEPT = 64  # answers whose segments are still coming, held in memory
_SUBSCRIPTION = "cis-sub"
# The least wall time between two scheduled requests: a schedule set too fast (an accelerated
# clock, thousands a day) cannot make CIS flood the MDMS, each request reading up to 1000
# meters. A run's 24 a day at a day a minute are 2.5 s apart.
MIN_GAP_S = 1.0


class CisError(Exception):
    """CIS cannot send a request now (outside its window, no meters); says why."""


@dataclass(frozen=True, slots=True)
class UtilityClock:
    """The clock the billing window is read on: `start_ts` at wall time `t0_wall`, running
    `speed` times the wall clock (an interop run's fleet runs a day a minute)."""

    speed: float
    start_ts: float
    t0_wall: float

    def now(self, wall: float) -> float:
        return self.start_ts + (wall - self.t0_wall) * self.speed

    def wall_at(self, utility_ts: float) -> float:
        return self.t0_wall + (utility_ts - self.start_ts) / self.speed


def in_window(utility_ts: float) -> bool:
    """Between 18:00 and 06:00 (UTC, as the meters' clock windows)."""
    return (utility_ts - WINDOW_FROM_S) % DAY_S < WINDOW_S


def slot_from(utility_ts: float, batches_per_day: int) -> float:
    """The first sending time at or after `utility_ts`: 18:00 + k x 12 h / batches_per_day,
    k = 0 .. batches_per_day - 1, every day."""
    step = WINDOW_S / batches_per_day
    day_start = math.floor((utility_ts - WINDOW_FROM_S) / DAY_S) * DAY_S + WINDOW_FROM_S
    k = max(0, math.ceil((utility_ts - day_start) / step - 1e-9))
    return day_start + DAY_S if k >= batches_per_day else day_start + k * step


@dataclass(frozen=True, slots=True)
class CisSchedule:
    batches_per_day: int
    batch_size: int
    clock: UtilityClock
    roster: tuple[str, ...] | None = None  # None: the meters the MDMS knows
    until: float | None = None  # wall time after which nothing more is sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches_per_day": self.batches_per_day,
            "batch_size": self.batch_size,
            "clock": {
                "speed": self.clock.speed,
                "start_ts": self.clock.start_ts,
                "t0_wall": self.clock.t0_wall,
            },
            "roster": None if self.roster is None else len(self.roster),
            "until": self.until,
        }


@dataclass(frozen=True, slots=True)
class SentRequest:
    id: str
    cycle: str
    meters: int
    utility_ts: float
    size: int
    status: int  # the CREATE's response status code (2001: the MDMS has it)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "cycle": self.cycle,
            "meters": self.meters,
            "utility_ts": self.utility_ts,
            "size": self.size,
            "rsc": self.status,
        }


class Cis:
    def __init__(
        self,
        cse: CommonServicesEntity,
        store: MdmsStore,
        notify_url: str,
        config: CisConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cse = cse
        self.store = store
        self.notify_url = notify_url
        self.enabled = config.enabled
        self.clock = clock
        started = clock()
        utility = UtilityClock(
            config.clock_speed,
            started if config.clock_start_ts is None else config.clock_start_ts,
            started if config.clock_t0_wall is None else config.clock_t0_wall,
        )
        self.schedule = CisSchedule(config.batches_per_day, config.batch_size, utility)
        self._send = LocalAe(cse, CIS_AE).request
        self._cycles: dict[str, list[str]] = {}
        self._next_cycle = 0
        self._last_slot: float | None = None  # utility time of the slot served last
        self._last_sent = -math.inf  # wall time of the last scheduled request
        self._id_stem = base36(int.from_bytes(os.urandom(2)) % 1296).rjust(2, "0")
        self._counter = itertools.count(1)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._unfinished: dict[str, dict[int, DataSegment]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def _base(self) -> str:
        return self.cse.settings.cse_name

    @property
    def _own(self) -> str:
        return f"{self._base}/{CIS_NAME}"

    # ---- start and stop -----------------------------------------------------------------------

    async def start(self) -> None:
        ae = {
            "rn": CIS_NAME,
            "api": "Ngridm2m.cis",
            "rr": True,
            "poa": [self.notify_url],
            "srv": ["3"],
        }
        reply = await self._send(
            Operation.CREATE, self._base, resource_type=ResourceType.AE, content={"m2m:ae": ae}
        )
        if reply.status == RSC.ORIGINATOR_HAS_ALREADY_REGISTERED:
            reply = await self._send(
                Operation.UPDATE, CIS_AE, content={"m2m:ae": {"poa": [self.notify_url]}}
            )
        if reply.status not in (RSC.CREATED, RSC.UPDATED):
            raise RuntimeError(f"CIS could not register: {int(reply.status)} {reply.content}")
        for name, limits in ((CYCLES_CONTAINER, {}), (DATA_CONTAINER, {"mni": ANSWERS_KEPT})):
            reply = await self._send(
                Operation.CREATE,
                self._own,
                resource_type=ResourceType.CONTAINER,
                content={"m2m:cnt": {"rn": name, **limits}},
            )
            if reply.status not in (RSC.CREATED, RSC.CONFLICT):
                raise RuntimeError(f"CIS could not make its {name}: {int(reply.status)}")
        await self._subscribe()
        for cin in await self._instances(f"{self._own}/{CYCLES_CONTAINER}"):
            name = str(cin.get("rn"))
            with contextlib.suppress(BillingMessageError):  # one that is not is written again
                self._cycles[name] = parse_cycle(name, cin.get("con"))
        # Answers written while CIS was not running (the store skips those it has).
        for cin in await self._instances(f"{self._own}/{DATA_CONTAINER}"):
            await self._take_segment(cin.get("con"))
        if self.enabled:
            self._task = asyncio.create_task(self._run_schedule(), name="cis-schedule")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _subscribe(self) -> None:
        subscription = {
            "rn": _SUBSCRIPTION,
            "nu": [CIS_AE],
            "enc": {"net": [3], "chty": [int(ResourceType.CONTENT_INSTANCE)]},
            "pn": 2,  # sendAllPending: keep what could not be delivered
        }
        reply = await self._send(
            Operation.CREATE,
            f"{self._own}/{DATA_CONTAINER}",
            resource_type=ResourceType.SUBSCRIPTION,
            content={"m2m:sub": subscription},
        )
        if reply.status not in (RSC.CREATED, RSC.CONFLICT):
            raise RuntimeError(f"CIS could not subscribe to its answers: {int(reply.status)}")

    async def _instances(self, path: str) -> list[dict[str, Any]]:
        reply = await self._send(
            Operation.RETRIEVE, path, result_content=ResultContent.ATTRIBUTES_AND_CHILD_RESOURCES
        )
        content = reply.content.get("m2m:cnt", {}) if isinstance(reply.content, dict) else {}
        found = content.get("m2m:cin", [])
        return [cin for cin in found if isinstance(cin, dict)] if isinstance(found, list) else []

    # ---- the schedule -----------------------------------------------------------------------

    def configure(self, **changes: Any) -> CisSchedule:
        """Change the schedule (fields of CisSchedule) and start it if it was not running."""
        before = self.schedule
        self.schedule = replace(before, **changes)
        if self.schedule.clock != before.clock:
            self._last_slot = None  # a slot of the old clock means nothing on the new one
        self.enabled = True
        if self._task is None:
            self._task = asyncio.create_task(self._run_schedule(), name="cis-schedule")
        self._changed.set()
        return self.schedule

    def _next_due(self) -> tuple[float, float] | None:
        """(utility time, wall time) of the next slot to serve; None if none is due."""
        schedule, wall = self.schedule, self.clock()
        if schedule.batches_per_day == 0 or (schedule.until is not None and wall >= schedule.until):
            return None
        after = schedule.clock.now(wall)
        if self._last_slot is not None:
            # Half a step past the slot served last: slots are a step apart or more.
            step = WINDOW_S / schedule.batches_per_day
            after = max(after, self._last_slot + step / 2)
        slot = slot_from(after, schedule.batches_per_day)
        at = schedule.clock.wall_at(slot)
        if schedule.until is not None and at >= schedule.until:
            return None
        return slot, at

    async def _run_schedule(self) -> None:
        while True:
            self._changed.clear()
            due = self._next_due()
            if due is None:
                await self._changed.wait()
                continue
            slot, at = due
            # However the schedule is set, at most a request a MIN_GAP_S of wall time.
            at = max(at, self._last_sent + MIN_GAP_S)
            try:
                async with asyncio.timeout(max(0.0, at - self.clock())):
                    await self._changed.wait()
                continue  # the schedule changed: work the next slot out again
            except TimeoutError:
                pass  # the slot's time has come
            self._last_slot, self._last_sent = slot, self.clock()
            try:
                await self.send_request()
            except CisError as error:
                logger.info("CIS sends no request at its slot: %s", error)
            except Exception:  # a store or CSE failure must not end the schedule
                logger.exception("CIS could not send its bulk read request")

    # ---- cycles and requests ------------------------------------------------------------------

    async def _roster(self) -> list[str]:
        if self.schedule.roster is not None:
            return list(self.schedule.roster)
        meters: list[str] = []
        while True:
            page = await self.store.meters(limit=1000, offset=len(meters))
            meters.extend(str(m["meter"]) for m in page)
            if len(page) < 1000:
                return meters

    async def _define_cycles(self) -> None:
        """Write the billing cycles again where the roster or the batch size changed them."""
        roster, size = await self._roster(), self.schedule.batch_size
        wanted = {
            f"c{number}": roster[start : start + size]
            for number, start in enumerate(range(0, len(roster), size), 1)
        }
        path = f"{self._own}/{CYCLES_CONTAINER}"
        for name in [n for n in self._cycles if n not in wanted]:
            await self._send(Operation.DELETE, f"{path}/{name}")
            del self._cycles[name]
        for name, meters in wanted.items():
            if self._cycles.get(name) == meters:
                continue
            # A contentInstance cannot be changed: the cycle's old one goes first.
            await self._send(Operation.DELETE, f"{path}/{name}")
            self._cycles.pop(name, None)
            reply = await self._send(
                Operation.CREATE,
                path,
                resource_type=ResourceType.CONTENT_INSTANCE,
                content=instance(cycle_content(name, meters), name),
            )
            if reply.status != RSC.CREATED:
                raise CisError(f"cannot write billing cycle {name}: {int(reply.status)}")
            self._cycles[name] = meters

    async def _new_id(self) -> str:
        while True:
            request_id = f"b{self._id_stem}{base36(next(self._counter))}"
            if await self.store.cis_request(request_id) is None:
                return request_id

    async def send_request(self, cycle: str | None = None) -> SentRequest:
        """A bulk read request for `cycle`, or the next cycle in turn; CisError outside the
        18:00-06:00 window, or with no meters to read."""
        async with self._lock:
            utility_ts = self.schedule.clock.now(self.clock())
            if not in_window(utility_ts):
                clock = time.strftime("%H:%M", time.gmtime(utility_ts))
                raise CisError(f"CIS sends only between 18:00 and 06:00 (it is {clock})")
            await self._define_cycles()
            if not self._cycles:
                raise CisError("no billing cycle: CIS has no meters to read")
            names = sorted(self._cycles, key=lambda n: int(n[1:]))
            if cycle is None:
                cycle = names[self._next_cycle % len(names)]
                self._next_cycle += 1
            elif cycle not in self._cycles:
                raise CisError(f"no billing cycle {cycle}; CIS has c1 to c{len(names)}")
            request_id = await self._new_id()
            content = request_content(request_id, cycle, utility_ts)
            sent_at = self.clock()
            reply = await self._send(
                Operation.CREATE,
                f"{self._base}/mdms/{REQUESTS_CONTAINER}",
                resource_type=ResourceType.CONTENT_INSTANCE,
                content=instance(content),
            )
            sent = reply.status == RSC.CREATED
            meters, size = len(self._cycles[cycle]), payload_size(content)
            await self.store.record_cis_request(
                CisRequest(
                    request_id,
                    cycle,
                    meters,
                    sent_at,
                    utility_ts,
                    size,
                    "sent" if sent else "failed",
                    None if sent else f"the IN-CSE answered {int(reply.status)}",
                )
            )
            return SentRequest(request_id, cycle, meters, utility_ts, size, int(reply.status))

    # ---- answers ----------------------------------------------------------------------------

    async def on_notify(self, content: Any) -> RSC:
        """A NOTIFY from CIS's subscription: a segment of an answer."""
        if not isinstance(content, dict) or not isinstance(content.get("m2m:sgn"), dict):
            return RSC.BAD_REQUEST
        notice = content["m2m:sgn"]
        if notice.get("vrq"):
            return RSC.SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE  # not a subscription of CIS's
        representation = (notice.get("nev") or {}).get("rep") or {}
        cin = representation.get("m2m:cin") if isinstance(representation, dict) else None
        if isinstance(cin, dict):
            await self._take_segment(cin.get("con"))
        return RSC.OK

    async def _take_segment(self, con: Any) -> None:
        received_at = self.clock()
        try:
            segment = parse_segment(con)
        except BillingMessageError as error:
            logger.warning("CIS ignores bulk read data: %s", error)
            return
        known = await self.store.cis_request(segment.id)
        if known is None or known["data_received_at"] is not None:
            return  # not a request of CIS's, or answered already
        parts = self._unfinished.setdefault(segment.id, {})
        parts[segment.number] = segment
        if len(self._unfinished) > _UNFINISHED_KEPT:
            self._unfinished.pop(next(iter(self._unfinished)))  # the oldest gives way
        if len(parts) < segment.of:
            return
        del self._unfinished[segment.id]
        ordered = [parts[number] for number in sorted(parts)]
        reads: dict[str, Any] = {}
        missing: dict[str, str] = {}
        for part in ordered:
            reads.update(part.reads)
            missing.update(part.missing)
        await self.store.record_cis_answer(
            CisAnswer(
                segment.id,
                received_at,
                sum(part.size for part in ordered),
                len(ordered),
                reads,
                missing,
                next((part.error for part in ordered if part.error), None),
            )
        )

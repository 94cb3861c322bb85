"""Missing data detection of <timeSeries> (TS-0001 9.6.36, 10.2.4.x; TS-0004 enc.md).

A timeSeries with `mdd` true, a periodic interval `pei` and a detect timer `mdt` expects a
data point every `pei` milliseconds. Detection starts with the first instance that arrives
while it is on: its `dgt` anchors a grid of expected times E = anchor + k * pei. A point is
present when an instance whose `dgt` lies in (E - peid, E + peid] has arrived by the
deadline E + mdt; otherwise it is missing: E is added to the timeSeries' `mdlt` (the newest
`mdn` kept) and `mdc` counts them. Each subscription to the timeSeries with event type 8
collects the missing points detected within its window `enc.md.dur` and is notified
(`m2m:tsn`) once it has `enc.md.num` of them, as ACME does.

Judgement is exact and does not depend on when it runs: a point is judged at its deadline
from what had arrived by then, whether that happens when the next instance arrives (the
timeSeries judges the points due before it records the new one) or in the periodic check
(`check()`, run by a supervised task every `expiry_check_interval`; tests call it after
moving the clock). Both run under the write lock, so they see instances in arrival order.

What is kept in memory is the grid and the points that arrived ahead of their deadline. It
is rebuilt when the CSE starts: from the newest instances and the newest missing point, so
points whose deadline passed while the CSE was down are found at the first check (points
that arrived early, before the restart, are not known again and may be judged missing).
An instance that arrives after its point's deadline does not undo the judgement; an
instance whose first deadline has already passed when it arrives (old data) does not start
detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cse.core.clock import format_timestamp, timestamp_or
from cse.core.subscriptions import event_types, parse_duration
from cse.core.types import NotificationEventType as NET
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Put, Resource, StorageError

if TYPE_CHECKING:
    from cse.core.context import Context

logger = logging.getLogger(__name__)

# mdlt never holds more entries than this, whatever mdn asks (or when mdn is absent): the
# timeSeries is rewritten with its list at every detection.
MAX_MISSING_LIST = 1000
# After a long outage (or a clock step) at most this many periods are judged at once; the
# earlier ones are skipped rather than listed one by one.
_CATCH_UP = 1000
# Instances for points further ahead than this many periods are not remembered.
_HORIZON = 10_000
# Instances read at a restart to find where detection resumes.
_RESUME_PAGE = 100


def detection_parameters(attributes: dict[str, Any]) -> tuple[int, int, int] | None:
    """(pei, peid, mdt) in milliseconds when detection is on for these attributes."""
    pei, mdt = attributes.get("pei"), attributes.get("mdt")
    if attributes.get("mdd") is not True or not pei or not mdt:
        return None
    return int(pei), int(attributes.get("peid", pei // 2)), int(mdt)


def _millis(timestamp: Any) -> int | None:
    moment = timestamp_or(timestamp, math.nan)
    return None if math.isnan(moment) else round(moment * 1000)


@dataclass
class _Window:
    """What one event-type-8 subscription has collected since its last notification."""

    points: list[str] = field(default_factory=list)
    ends: int | None = None  # ms: the window (enc.md.dur) started by the first point


@dataclass
class _Watch:
    """The grid of one timeSeries: expected points anchor + k * pei, k from `next`."""

    parameters: tuple[int, int, int]
    anchor: int  # ms
    next: int = 1
    arrived: set[int] = field(default_factory=set)  # k of points present ahead of deadline
    windows: dict[str, _Window] = field(default_factory=dict)

    @property
    def pei(self) -> int:
        return self.parameters[0]

    def deadline(self, k: int) -> int:
        return self.anchor + k * self.pei + self.parameters[2]

    def due(self, now: int) -> list[int]:
        """The expected times (ms) judged missing by `now`; moves the grid on."""
        last = (now - self.parameters[2] - self.anchor) // self.pei
        if last < self.next:
            return []
        if last - self.next + 1 > _CATCH_UP:
            self.next = last - _CATCH_UP + 1
        missing = [
            self.anchor + k * self.pei for k in range(self.next, last + 1) if k not in self.arrived
        ]
        self.arrived = {k for k in self.arrived if k > last}
        self.next = last + 1
        return missing

    def record(self, dgt: int) -> None:
        """An instance generated at `dgt` (ms) arrived before its point's deadline."""
        k = round((dgt - self.anchor) / self.pei)
        expected, delta = self.anchor + k * self.pei, self.parameters[1]
        in_window = expected - delta < dgt <= expected + delta or dgt == expected
        if self.next <= k < self.next + _HORIZON and in_window:
            self.arrived.add(k)


class MissingDataMonitor:
    def __init__(self, cse: Context) -> None:
        self._cse = cse
        self._watches: dict[str, _Watch] = {}
        self._task: asyncio.Task[None] | None = None
        self.detected = 0  # missing points found since start

    # ---- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = self._cse.supervisor.start("missing data detection", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await self.resume()
        while True:
            with contextlib.suppress(StorageError):  # the storage reports its own failures
                await self.check()
            await asyncio.sleep(self._cse.settings.expiry_check_interval)

    async def resume(self) -> None:
        """Watch every timeSeries that detects missing data and has instances (at start)."""
        seq = 0
        while True:
            page = await self._cse.storage.created_since(seq, T.TIME_SERIES, 500)
            for series in page:
                async with self._cse.write_lock:
                    await self._resume_one(series.ri)
            if len(page) < 500:
                return
            seq = page[-1].seq

    async def _resume_one(self, ri: str) -> None:
        series = await self._cse.storage.get(ri)
        if series is None or ri in self._watches:
            return
        parameters = detection_parameters(series.attributes)
        if parameters is None:
            return
        newest = await self._cse.storage.instances(
            ri, newest=True, limit=_RESUME_PAGE, resource_type=T.TIME_SERIES_INSTANCE
        )
        known = [_millis(instance.attributes.get("dgt")) for instance in newest]
        known += [_millis(point) for point in series.attributes.get("mdlt") or []]
        anchors = [moment for moment in known if moment is not None]
        if anchors:
            self._watches[ri] = _Watch(parameters, max(anchors))

    # ---- what the timeSeries tells (under the write lock) --------------------------------

    def restart(self, ri: str) -> None:
        """Detection was switched (back) on or off: it starts again with the next instance."""
        self._watches.pop(ri, None)

    async def due(self, series: Resource, now: float) -> tuple[dict[str, Any], list[Change]]:
        """Judge the points of `series` whose deadline has passed by `now`: its changed
        attributes (mdlt, mdc; empty if nothing is missing) and the notifications owed."""
        watch = self._current_watch(series)
        if watch is None:
            return {}, []
        missing = watch.due(math.floor(now * 1000))
        if not missing:
            return {}, []
        self.detected += len(missing)
        listed = [format_timestamp(moment / 1000) for moment in missing]
        kept = [*(series.attributes.get("mdlt") or []), *listed]
        limit = min(int(series.attributes.get("mdn") or MAX_MISSING_LIST), MAX_MISSING_LIST)
        kept = kept[-limit:]
        notices = await self._notices(series, watch, missing)
        return {"mdlt": kept, "mdc": len(kept)}, notices

    def arrived(self, series: Resource, dgt: str, now: float) -> None:
        """An instance generated at `dgt` arrived at `now` (after `due` for the same now)."""
        parameters = detection_parameters(series.attributes)
        generated = _millis(dgt)
        if parameters is None or generated is None:
            return
        watch = self._watches.get(series.ri)
        if watch is not None:
            watch.record(generated)
            return
        first = _Watch(parameters, generated)
        if first.deadline(1) > math.floor(now * 1000):  # old data starts nothing
            self._watches[series.ri] = first

    def _current_watch(self, series: Resource) -> _Watch | None:
        watch = self._watches.get(series.ri)
        if watch is not None and watch.parameters != detection_parameters(series.attributes):
            del self._watches[series.ri]  # switched off, or changed while off
            return None
        return watch

    # ---- subscriptions (event type 8) -----------------------------------------------------

    async def _notices(self, series: Resource, watch: _Watch, missing: list[int]) -> list[Change]:
        ctx = self._cse
        subscribers = [
            s
            for s in await ctx.storage.children(series.ri, [T.SUBSCRIPTION])
            if not ctx.is_expired(s)
            and NET.REPORT_ON_GENERATED_MISSING_DATA_POINTS in event_types(s.attributes)
        ]
        watch.windows = {s.ri: watch.windows.get(s.ri, _Window()) for s in subscribers}
        changes: list[Change] = []
        for subscription in subscribers:
            reports = _collect(watch, subscription, missing)
            for report in reports:
                changes += await ctx.notifier.on_missing_data(subscription, report)
        return changes

    # ---- the periodic check ---------------------------------------------------------------

    async def check(self) -> int:
        """Judge every watched timeSeries whose next deadline has passed; returns how many
        missing points were found."""
        ctx = self._cse
        now = ctx.clock.now()
        before = self.detected
        for ri, watch in list(self._watches.items()):
            if watch.deadline(watch.next) > math.floor(now * 1000):
                continue
            async with ctx.write_lock:
                series = await ctx.storage.get(ri)
                if series is None or ctx.is_expired(series):
                    self._watches.pop(ri, None)
                    continue
                changes = await self._judged(series, now)
                if changes:
                    await ctx.storage.apply(changes)
            if changes:
                ctx.notifier.accept(changes)
        await ctx.storage.sync()
        return self.detected - before

    async def _judged(self, series: Resource, now: float) -> list[Change]:
        updates, notices = await self.due(series, now)
        if not updates:
            return []
        return [Put(series.with_attributes(**updates, lt=format_timestamp(now))), *notices]


def _collect(watch: _Watch, subscription: Resource, missing: list[int]) -> list[dict[str, Any]]:
    """Add the missing points to a subscription's window; the reports (m2m:tsn) it is owed."""
    criteria = (subscription.attributes.get("enc") or {}).get("md") or {}
    number = int(criteria.get("num", 1))
    duration = round(parse_duration(criteria["dur"]) * 1000) if "dur" in criteria else None
    window = watch.windows[subscription.ri]
    reports: list[dict[str, Any]] = []
    for moment in missing:
        detected = moment + watch.parameters[2]  # its deadline: when it was found missing
        if window.ends is not None and window.ends <= detected:
            window.points, window.ends = [], None  # the window passed without enough points
        window.points.append(format_timestamp(moment / 1000))
        if window.ends is None and duration is not None:
            window.ends = detected + duration
        if len(window.points) >= number:
            reports.append({"mdlt": window.points, "mdc": len(window.points)})
            window.points, window.ends = [], None
    return reports

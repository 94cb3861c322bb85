"""Interval reads as time series: each meter's intervals in a <timeSeries> that finds gaps.

Opt-in (`[gateway.series] enabled`, docs/gateway.md). Every contentInstance a meter posts
to a container in `series.containers` (`reading`) whose content is an interval read (the
mr-multi-interval shape: `t0`, `ip`, `n` and channels `ch` of `n` values each; or the gas
shape: `ip` and `recs`, one record per interval ending at its `t`) becomes one
<timeSeriesInstance> per interval in `<meter AE>/<series.name>` on the gateway's own CSE:
`dgt` = the end of the interval, `con` = its values by reading type (a gas record as it is),
`snr` = the interval's number since the epoch. The timeSeries is made with the meter's first
read: `pei` = the read's interval, `mdd` true, `mdt` = `series.detect_after`, so the CSE
lists the intervals that never arrived in its `mdlt` and tells subscribers to event type 8
(cse/core/missing_data.py). The uplink mirrors the reads themselves, not these instances.

A read that repeats intervals already written adds only the newer ones: the newest interval
written per meter is remembered (read back from the timeSeries' `la` after a restart). Reads
stored while the gateway was not running this are not written, so their intervals show as
missing. The instances are created through the CSE as its own CSE-ID, 16 at a time, so they
share group commits without holding a meter's request behind a whole read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from typing import Any

from cse.core.clock import format_timestamp, timestamp_or
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.core.types import ResourceType as T
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import content_object
from cse.storage.base import Change, Put, Resource, StorageError
from gateway.config import SeriesConfig

logger = logging.getLogger(__name__)

_FEED_BATCH = 200
# At most this many intervals are taken from one read (two days of 15-minute data, twice).
_MAX_INTERVALS = 384
_GROUP = 16  # instances created at once
Interval = tuple[int, dict[str, Any]]  # (end, epoch seconds; values)


def intervals(message: dict[str, Any]) -> tuple[int, list[Interval]] | None:
    """(interval length in seconds, the intervals) of an interval read; None for other data."""
    length = message.get("ip")
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        return None
    if isinstance(message.get("recs"), list):
        records = [_record(record) for record in message["recs"][:_MAX_INTERVALS]]
        return length, [interval for interval in records if interval is not None]
    start, count, channels = message.get("t0"), message.get("n"), message.get("ch")
    if not (isinstance(start, int) and isinstance(count, int) and isinstance(channels, list)):
        return None
    named = [c for c in channels if isinstance(c, dict) and isinstance(c.get("v"), list)]
    found = []
    for i in range(min(count, _MAX_INTERVALS)):
        values = {str(c.get("rt")): c["v"][i] for c in named if i < len(c["v"])}
        if values:
            found.append((start + (i + 1) * length, values))
    return length, found


def _record(record: Any) -> Interval | None:
    if not isinstance(record, dict) or not isinstance(record.get("t"), int):
        return None
    return record["t"], {name: value for name, value in record.items() if name != "t"}


class IntervalSeries:
    def __init__(self, cse: CommonServicesEntity, settings: SeriesConfig) -> None:
        self.cse = cse
        self.settings = settings
        self.written = 0  # intervals written since start
        self._mark = 0  # sequence number of the last contentInstance looked at
        self._durable = 0
        self._newest: dict[str, int] = {}  # meter -> end of the newest interval written
        self._fed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._request_ids = itertools.count(1)

    async def start(self) -> None:
        # What was stored before this start is not written (see the module docstring).
        self._mark = self._durable = await self.cse.storage.last_seq()
        self.cse.durable_listeners.append(self._on_durable)
        self._task = self.cse.supervisor.start("interval series", self._run)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.cse.durable_listeners.remove(self._on_durable)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_durable(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if isinstance(change, Put) and change.resource.ty == T.CONTENT_INSTANCE:
                self._durable = max(self._durable, change.resource.seq)
                self._fed.set()

    async def _run(self) -> None:
        while True:
            await self._fed.wait()
            self._fed.clear()
            try:
                await self.catch_up()
            except StorageError:  # reported by the storage; try again at the next batch
                await asyncio.sleep(1.0)
                self._fed.set()

    async def catch_up(self) -> int:
        """Write the interval reads made durable since the last call; intervals written."""
        written = 0
        async with self._lock:
            while True:
                found = await self.cse.storage.created_since(
                    self._mark, T.CONTENT_INSTANCE, _FEED_BATCH
                )
                found = [r for r in found if r.seq <= self._durable]
                for resource in found:
                    written += await self._write(resource)
                    self._mark = resource.seq
                if len(found) < _FEED_BATCH:
                    return written

    async def _write(self, reading: Resource) -> int:
        parts = reading.path.split("/")
        # <cse>/<meter AE>/<container>/<instance>: anything else is not a meter's read.
        if len(parts) != 4 or parts[2] not in self.settings.containers:
            return 0
        found = intervals(content_object(reading.attributes.get("con")))
        if not found or not found[1]:
            return 0
        length, read = found
        series = f"{parts[0]}/{parts[1]}/{self.settings.name}"
        newest = await self._newest_written(parts[1], series, length)
        if newest is None:
            return 0
        fresh = sorted((end, values) for end, values in read if end > newest)
        if not fresh:
            return 0
        made = 0
        # A few at a time: each group shares a commit, and a meter's alarm waits for the
        # write lock behind one group, not behind a whole day of intervals.
        for first in range(0, len(fresh), _GROUP):
            replies = await asyncio.gather(
                *(
                    self._create(series, T.TIME_SERIES_INSTANCE, self._instance(end, length, v))
                    for end, v in fresh[first : first + _GROUP]
                )
            )
            made += sum(1 for status in replies if status == RSC.CREATED)
        self._newest[parts[1]] = fresh[-1][0]
        self.written += made
        return made

    async def _newest_written(self, meter: str, series: str, length: int) -> int | None:
        """The end of the newest interval in the meter's timeSeries (made now if need be);
        None if it cannot be made (the meter is gone)."""
        if meter in self._newest:
            return self._newest[meter]
        latest = await self.cse.handle(self._request(Operation.RETRIEVE, f"{series}/la"))
        if latest.status == RSC.OK:
            dgt = latest.content["m2m:tsi"]["dgt"]
            newest = round(timestamp_or(dgt, 0.0))
        elif (
            await self._create(series.rsplit("/", 1)[0], T.TIME_SERIES, self._series(length))
        ) in (
            RSC.CREATED,
            RSC.CONFLICT,  # made before, still empty
        ):
            newest = 0
        else:
            return None
        self._newest[meter] = newest
        return newest

    def _series(self, length: int) -> dict[str, Any]:
        settings = self.settings
        return {
            "m2m:ts": {
                "rn": settings.name,
                "pei": length * 1000,
                "mdd": True,
                "mdt": round(settings.detect_after * 1000),
                "mdn": settings.max_missing,
                "mni": settings.max_instances,
                "cnf": "application/json:0",
            }
        }

    @staticmethod
    def _instance(end: int, length: int, values: dict[str, Any]) -> dict[str, Any]:
        return {"m2m:tsi": {"dgt": format_timestamp(end), "con": values, "snr": end // length}}

    async def _create(self, to: str, resource_type: int, content: dict[str, Any]) -> RSC:
        request = self._request(Operation.CREATE, to, resource_type, content)
        reply = await self.cse.handle(request)
        if reply.status not in (RSC.CREATED, RSC.CONFLICT):
            logger.info("interval series: a CREATE under %s refused (%d)", to, reply.status)
        return reply.status

    def _request(
        self,
        operation: Operation,
        to: str,
        resource_type: int | None = None,
        content: dict[str, Any] | None = None,
    ) -> Request:
        return Request(
            operation=operation,
            to=to,
            originator=self.cse.settings.cse_id,  # the gateway's CSE itself
            request_id=f"series-{next(self._request_ids)}",
            release_version="3",
            resource_type=resource_type,
            content=content,
        )

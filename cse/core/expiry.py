"""Expiration: resources whose et has passed are deleted, with their subtrees.

Reads already treat an expired resource as absent; this sweeper removes it from storage
(and tells subscribers) soon after, polling an index on et at a fixed interval. It runs
under the CSE's supervisor; a storage failure (a full disk) is reported by the storage and
the sweep is tried again at the next interval.

The sweeper also forgets request records (redelivery detection) once they are older than
`request_log_retention`. That age is measured on the monotonic clock from when this process
started sweeping: a step of the wall clock forward (NTP correcting a gateway that booted
with a stale date) must not forget the records of requests a broker is about to redeliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from cse.core.delete import deletion_changes
from cse.storage.base import Change, ForgetRequests, Resource, StorageError

if TYPE_CHECKING:
    from cse.core.context import Context

logger = logging.getLogger(__name__)


class ExpirySweeper:
    def __init__(self, cse: Context) -> None:
        self._cse = cse
        self._task: asyncio.Task[None] | None = None
        self._started: tuple[float, float] | None = None  # (date, monotonic) at the first sweep
        self.removed = 0

    def start(self) -> None:
        self._task = self._cse.supervisor.start("expiry sweeper", self._run)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(StorageError):  # the storage reports its own failures
                # One process at a time sweeps a database several share.
                if await self._cse.storage.lead("expiry sweep"):
                    await self.sweep()
            await asyncio.sleep(self._cse.settings.expiry_check_interval)

    def _records_older_than(self) -> float:
        """The date before which request records are forgotten (see the module doc)."""
        clock = self._cse.clock
        if self._started is None:
            self._started = (clock.now(), clock.monotonic())
        date, at = self._started
        return date + (clock.monotonic() - at) - self._cse.settings.request_log_retention

    async def _delete(self, resource: Resource) -> list[Change]:
        async with self._cse.write_lock:
            changes = await deletion_changes(self._cse, resource)
            await self._cse.storage.apply(changes)
        return changes

    async def sweep(self, batch: int = 500) -> int:
        """Delete what has expired by now; returns how many resources were removed."""
        cse = self._cse
        removed = 0
        while True:
            expired = await cse.storage.expired(cse.timestamp(), batch)
            if not expired:
                break
            for resource in expired:
                changes = await cse.retrying(functools.partial(self._delete, resource))
                cse.notifier.accept(changes)
                removed += 1
            await cse.storage.sync()
            if len(expired) < batch:
                break
        await cse.storage.apply([ForgetRequests(self._records_older_than())])
        self.removed += removed
        return removed

"""Expiration: resources whose et has passed are deleted, with their subtrees.

Reads already treat an expired resource as absent; this sweeper removes it from storage
(and tells subscribers) soon after, polling an index on et at a fixed interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from cse.core.delete import deletion_changes
from cse.storage.base import ForgetRequests

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

logger = logging.getLogger(__name__)


class ExpirySweeper:
    def __init__(self, cse: CommonServicesEntity) -> None:
        self._cse = cse
        self._task: asyncio.Task[None] | None = None
        self.removed = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="expiry")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                logger.exception("expiry sweep failed")
            await asyncio.sleep(self._cse.settings.expiry_check_interval)

    async def sweep(self, batch: int = 500) -> int:
        """Delete what has expired by now; returns how many resources were removed."""
        cse = self._cse
        removed = 0
        while True:
            expired = await cse.storage.expired(cse.timestamp(), batch)
            if not expired:
                break
            for resource in expired:
                async with cse.write_lock:
                    changes = await deletion_changes(cse, resource)
                    await cse.storage.apply(changes)
                cse.notifier.accept(changes)
                removed += 1
            await cse.storage.sync()
            if len(expired) < batch:
                break
        retention = cse.settings.request_log_retention
        await cse.storage.apply([ForgetRequests(cse.clock.now() - retention)])
        self.removed += removed
        return removed

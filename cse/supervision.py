"""Supervision of long-lived tasks: a task that fails is logged, counted and restarted.

Every background task of the CSE and the gateway (the SQLite committer, notification
delivery, the expiry sweeper, the uplink's feeder and sender, the status report, the
registration check) runs under one `Supervisor`. An exception that escapes a task is a bug
or a condition nobody handled: it is logged once with its traceback, counted per task name,
and the task is started again after a backoff (doubling up to `backoff_max`, reset once the
task has run longer than that). From the failure until the restart the task is *down*, and
`down()` says so with the reason, which `/health` turns into HTTP 503.

A task made with `forever=True` is not expected to return; returning counts as a failure. A
task made with `forever=False` (a delivery to one target) is done when it returns.
Backoff waits use the event loop's clock, which is monotonic: a wall-clock step does not
stretch or cut them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class EndedUnexpectedly(Exception):
    """A task that should run for the life of the process returned."""


@dataclass(frozen=True, slots=True)
class Outage:
    """A supervised task that failed and waits to be restarted."""

    name: str
    reason: str
    since: float  # loop time (monotonic) of the failure


class Supervisor:
    def __init__(self, *, backoff_min: float = 0.5, backoff_max: float = 30.0) -> None:
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.failures: Counter[str] = Counter()  # failures per task name since start
        self._down: dict[asyncio.Task[None], Outage] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    def start(
        self, name: str, run: Callable[[], Awaitable[None]], *, forever: bool = True
    ) -> asyncio.Task[None]:
        """Run `run()` as a supervised task named `name`; cancel the task to stop it."""
        task = asyncio.get_running_loop().create_task(self._keep(name, run, forever), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    async def stop(self) -> None:
        """Cancel every supervised task still running and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def down(self) -> list[Outage]:
        """Tasks that failed and have not been restarted yet."""
        return list(self._down.values())

    async def wait_for_change(self) -> None:
        """Return at the next failure or restart (for tests and watchers)."""
        await self._changed.wait()

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._down.pop(task, None) is not None:
            self._signal()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]], forever: bool) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.backoff_min
        task = asyncio.current_task()
        assert task is not None
        while True:
            started = loop.time()
            try:
                await run()
                if not forever:
                    return
                raise EndedUnexpectedly(f"the {name} task returned")
            except Exception as error:  # the point of a supervisor: catch what nobody did
                logger.exception("task %r failed; restarting it", name)
                failure = error
            if loop.time() - started > self.backoff_max:
                backoff = self.backoff_min  # it had been running well: a fresh failure
            self.failures[name] += 1
            reason = f"{type(failure).__name__}: {failure}"[:300]
            self._down[task] = Outage(name, reason, loop.time())
            self._signal()
            await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
            backoff = min(backoff * 2, self.backoff_max)
            del self._down[task]
            self._signal()

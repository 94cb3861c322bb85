"""The uplink: every contentInstance a meter posts is mirrored to the head-end, by priority.

Two tasks. The feeder wakes when the gateway's CSE has made a batch durable, reads the new
contentInstances in sequence order (`Storage.created_since`, so a restart resumes from the
outbox's high-water mark and nothing acknowledged is skipped), classifies them and queues
them in the outbox. The sender takes due items, most urgent first, and CREATEs each under
`<our remoteCSE on the upstream>/<family>` with a resource name made of the meter and the
original instance's ID, so a retry after a lost answer gets "already exists" (4105), which
counts as delivered.

When the upstream cannot be reached the sender stops sending and probes with one request at
a time, with exponential backoff and jitter, so a head-end coming back is not flooded by
every retry at once and what is queued leaves in priority order. Any answer from the
upstream (the registration check and the status report go through the same link) ends the
backoff and wakes the sender at once.

Both tasks run under the CSE's supervisor. A write to the outbox that fails (a full disk)
is not a crash: the outbox reports it once, the feeder tries the same batch again after a
backoff, and the sender keeps what was delivered in memory until it can be recorded. Waits
and retry times are monotonic (the event loop's clock); the wall clock only dates messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any

from cse.core.clock import timestamp_or
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import content_object
from cse.storage.base import Change, Put, ReserveSequence, Resource, Storage, StorageError
from gateway.config import MirrorConfig, OutboxConfig
from gateway.metrics import GatewayMetrics
from gateway.outbox import Alignment, NewItem, Outbox, QueuedItem
from gateway.registration import Registrar, RegistrationError
from gateway.upstream import UpstreamLink, UpstreamUnavailable

logger = logging.getLogger(__name__)

_DELIVERED = (RSC.CREATED, RSC.CONFLICT, RSC.ALREADY_EXISTS)
# Answers that say "not now" rather than "never".
_TRANSIENT = frozenset({RSC.REQUEST_TIMEOUT, RSC.TARGET_NOT_REACHABLE})
_FEED_BATCH = 500

ALARM_TYPES = frozenset({"alarm", "alert"})
ACK_TYPES = frozenset({"cmd-err", "ack", "comm-err", "cmd"})


async def align_with_database(outbox: Outbox, storage: Storage) -> Alignment:
    """Run before the CSE serves anyone: make the outbox's mark agree with the database
    (see gateway/outbox.py), so no acknowledged message is skipped."""
    alignment = outbox.follow(await storage.database_id(), await storage.last_seq())
    if alignment == Alignment.RESTORED:
        await storage.apply([ReserveSequence(outbox.high_water_seq)])
        await storage.sync()
    return alignment


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def classify(family: str, message: dict[str, Any], bulk_containers: Sequence[str]) -> int:
    """Priority 0 alarms and alerts, 1 command errors/acks/comm errors, 2 on-demand and other
    data, 3 bulk interval data."""
    payload_type = message.get("type")
    if payload_type in ALARM_TYPES:
        return 0
    if payload_type in ACK_TYPES:
        return 1
    if family in bulk_containers:
        return 3
    return 2


class Uplink:
    def __init__(
        self,
        cse: CommonServicesEntity,
        link: UpstreamLink,
        registrar: Registrar,
        outbox: Outbox,
        metrics: GatewayMetrics,
        *,
        mirror: MirrorConfig,
        settings: OutboxConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cse = cse
        self.link = link
        self.registrar = registrar
        self.outbox = outbox
        self.metrics = metrics
        self.mirror = mirror
        self.settings = settings
        self.clock = clock
        self.last_heard: dict[str, float] = {}  # meter AE name -> when it last posted
        self._durable_seq = 0
        self._fed = asyncio.Event()
        self._queued = asyncio.Event()
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._in_flight_priority: dict[int, int] = {}
        self._finished: list[QueuedItem] = []
        self._rejected = 0
        self._link_down_until = 0.0  # monotonic
        self._link_backoff = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Condition()
        link.answer_listeners.append(self._upstream_answered)

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self.cse.durable_listeners.append(self._on_durable)
        # Catch up from the high-water mark with what is durable now: what was applied before
        # this sync() is committed when it returns; later batches arrive through the listener.
        # (The bindings already serve meters, so a batch may be applied but not yet committed.)
        applied = await self.cse.storage.last_seq()
        await self.cse.storage.sync()
        self._durable_seq = max(self._durable_seq, applied)
        self._fed.set()
        supervisor = self.cse.supervisor
        self._tasks = [
            supervisor.start("uplink feeder", self._feed_forever),
            supervisor.start("uplink sender", self._send_forever),
        ]

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.cse.durable_listeners.remove(self._on_durable)
        with contextlib.suppress(ValueError):
            self.link.answer_listeners.remove(self._upstream_answered)
        for task in [*self._tasks, *self._in_flight.values()]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._in_flight.values(), return_exceptions=True)
        self._flush_finished()

    def _on_durable(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if isinstance(change, Put) and change.resource.ty == ResourceType.CONTENT_INSTANCE:
                self._durable_seq = max(self._durable_seq, change.resource.seq)
                self._fed.set()

    # ---- feeder --------------------------------------------------------------------------

    async def _feed_forever(self) -> None:
        self._fed.set()  # after a restart by the supervisor: catch up first
        delay = self.settings.retry_min
        while True:
            await self._fed.wait()
            self._fed.clear()
            try:
                while await self._feed_once():
                    pass
                delay = self.settings.retry_min
            except (sqlite3.Error, StorageError):
                # A full disk (or a damaged database): reported once by the outbox or the
                # storage. The same instances are read again after the backoff.
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                self._fed.set()

    async def _feed_once(self) -> bool:
        """Queue one batch of new instances; True if there may be more."""
        high_water = self.outbox.high_water_seq
        found = await self.cse.storage.created_since(
            high_water, ResourceType.CONTENT_INSTANCE, _FEED_BATCH
        )
        # Only what is durable: a later batch may be applied but not yet committed.
        found = [r for r in found if r.seq <= self._durable_seq]
        if not found:
            return False
        items = [item for item in map(self._item_for, found) if item is not None]
        shed = self.outbox.add(items, found[-1].seq)
        for item in shed:
            logger.warning("outbox full: shed %s (priority %d)", item.name, item.priority)
        self.metrics.observe_outbox(self.outbox)
        if items:
            self._queued.set()
        await self._announce()
        return len(found) == _FEED_BATCH

    def _item_for(self, resource: Resource) -> NewItem | None:
        parts = resource.path.split("/")
        # <cse>/<meter AE>/<container>/<instance>: anything else is not meter data.
        if len(parts) != 4 or parts[2] in self.mirror.exclude_containers:
            return None
        meter, family = parts[1], parts[2]
        attributes = resource.attributes
        created = timestamp_or(attributes.get("ct"), self.clock())
        self.last_heard[meter] = max(self.last_heard.get(meter, 0.0), created)
        message = content_object(attributes.get("con"))
        priority = classify(family, message, self.mirror.bulk_containers)
        labels = [f"meter:{meter}", f"created:{attributes.get('ct', '')}"]
        flow = message.get("flow")
        if isinstance(flow, str):
            labels.append(f"flow:{flow}")
        mirrored: dict[str, Any] = {"rn": f"{meter}_{resource.ri}", "lbl": labels}
        for name in ("cnf", "con"):
            if name in attributes:
                mirrored[name] = attributes[name]
        return NewItem(
            priority=priority,
            seq=resource.seq,
            container=self.registrar.container_address(family),
            name=mirrored["rn"],
            attributes=mirrored,
            created=created,
        )

    # ---- sender --------------------------------------------------------------------------

    async def _send_forever(self) -> None:
        outbox_retry = self.settings.retry_min
        while True:
            self._queued.clear()  # anything that happens from here on wakes the wait below
            if not self._flush_finished():
                # The outbox cannot record deliveries (a full disk): send nothing more until
                # it can; what was delivered waits in memory.
                await asyncio.sleep(outbox_retry)
                outbox_retry = min(outbox_retry * 2, self.settings.retry_max)
                continue
            outbox_retry = self.settings.retry_min
            now = _monotonic()
            if now < self._link_down_until:
                await self._wait(self._link_down_until - now)
                continue
            # While the link is in doubt, one probe at a time; otherwise fill the window.
            window = 1 if self._link_backoff else self.settings.concurrency
            room = window - len(self._in_flight)
            if room > 0 and self.registrar.registered.is_set():
                # Strict priority: nothing less urgent starts while something more urgent is
                # still on its way, so alarms reach the head-end before the bulk behind them.
                ceiling = min(self._in_flight_priority.values(), default=3)
                for item in self.outbox.due(now, room, skip=self._in_flight, ceiling=ceiling):
                    self._in_flight_priority[item.id] = item.priority
                    self._in_flight[item.id] = asyncio.create_task(self._deliver(item))
            next_due = self.outbox.next_due(now)
            if next_due is None or next_due <= now:
                await self._wait(None if next_due is None else 1.0)
            else:
                await self._wait(next_due - now)

    async def _wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._queued.wait()

    async def _deliver(self, item: QueuedItem) -> None:
        try:
            await self._attempt(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("delivering %s failed unexpectedly", item.name)
            self._retry(item)
        finally:
            self._in_flight.pop(item.id, None)
            self._in_flight_priority.pop(item.id, None)
            self._queued.set()

    async def _attempt(self, item: QueuedItem) -> None:
        request = self.link.create(
            item.container, ResourceType.CONTENT_INSTANCE, {"m2m:cin": item.attributes}
        )
        try:
            reply = await self.link.send(request)
        except UpstreamUnavailable as error:
            self._link_failed(str(error))
            # No backoff of its own: the link's holds everything back, and ends as soon as
            # the upstream answers anyone.
            self._retry(item, held=False)
            await self._announce()  # link_up changed
            return
        status = reply.status
        if status in _DELIVERED:
            self._finished.append(item)
            self.metrics.delivered(item.priority, self.clock() - item.created, item.attempts)
            return
        self.metrics.upstream_error(int(status))
        if status == RSC.NOT_FOUND:
            # The family container (or our whole registration) is missing upstream.
            family = item.container.rsplit("/", 1)[-1]
            try:
                await self.registrar.ensure_container(family)
            except RegistrationError:
                self.registrar.suspect_lost()
            self._retry(item)
        elif status in (RSC.ORIGINATOR_HAS_NO_PRIVILEGE, RSC.ORIGINATOR_NOT_REGISTERED):
            # A head-end that forgot us answers 4103 (GridM2M, ACME); some CSEs answer 4106.
            self.registrar.suspect_lost()
            self._retry(item)
        elif int(status) >= 5000 or status in _TRANSIENT:
            self._retry(item)
        else:
            logger.error("upstream refused %s for good (%d); dropping it", item.name, int(status))
            self._rejected += 1
            self._finished.append(item)
            self.metrics.rejected(item.priority)

    def _retry(self, item: QueuedItem, *, held: bool = True) -> None:
        base = min(self.settings.retry_max, self.settings.retry_min * 2 ** min(item.attempts, 16))
        delay = base * random.uniform(0.5, 1.5) if held else 0.0
        with contextlib.suppress(sqlite3.Error):  # held back in memory all the same
            self.outbox.postpone(item, _monotonic() + delay)
        self.metrics.retried(item.priority)

    def _link_failed(self, reason: str) -> None:
        if not self._link_backoff:
            logger.warning("upstream unreachable (%s); queueing", reason)
        self._link_backoff = min(
            self.settings.retry_max, max(self.settings.retry_min, self._link_backoff * 2)
        )
        self._link_down_until = _monotonic() + self._link_backoff * random.uniform(0.5, 1.5)

    def _upstream_answered(self) -> None:
        """The upstream answered a request (ours, the registration check or the status
        report): it is back, so stop waiting out the backoff."""
        if self._link_backoff or self._link_down_until:
            logger.info("upstream reachable again; sending")
            self._link_backoff = 0.0
            self._link_down_until = 0.0
            self._queued.set()

    def _flush_finished(self) -> bool:
        """Record deliveries in the outbox; False (and they stay in memory) if it fails."""
        if not self._finished and not self._rejected:
            return True
        try:
            self.outbox.delivered(self._finished, rejected=self._rejected)
        except sqlite3.Error:
            asyncio.get_running_loop().create_task(self._announce())  # the outbox reported it
            return False
        self._finished, self._rejected = [], 0
        self.metrics.observe_outbox(self.outbox)
        asyncio.get_running_loop().create_task(self._announce())
        return True

    async def _announce(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[Outbox], bool], timeout: float) -> None:
        """Wait until the outbox satisfies `predicate` (checked after every change)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self.outbox))

    # ---- state for metrics and status ----------------------------------------------------

    def meters_online(self) -> int:
        horizon = self.clock() - self.mirror.online_window
        return sum(1 for heard in self.last_heard.values() if heard >= horizon)

    @property
    def link_up(self) -> bool:
        return not self._link_backoff

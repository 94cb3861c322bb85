"""Notifications: from an event to a durable outbox entry to a delivered NOTIFY.

Every notification an event causes is written to the outbox in the same atomic batch as the
change that caused it, so an acknowledged change never loses its notification to a crash.
A delivery task per target sends entries in order. When a target cannot be reached the entry
is kept or dropped by the subscription's pendingNotification (pn): none drops it (the spec's
default), 1 (sendLatest) keeps only the newest per subscription, 2 (sendAllPending) keeps all;
the target is retried with exponential backoff. Batch notify (bn) waits for `num` entries or
`dur`, then sends one aggregated notification (only the newest with latestNotify, ln; at once
when the subscription is deleted). A subscription's notificationEventCat (nec) is the event
category of its notifications; with nse its statistics are counted (notification_stats.py).

Besides event types (net), a subscription may monitor operations (enc/om): a CREATE below,
a RETRIEVE, UPDATE or DELETE of the subscribed resource by a given originator. Blocking
UPDATE subscriptions (cse/core/blocking.py) are asked at once, outside the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cse.core import notification_stats, polling, subscription_targets, subscriptions
from cse.core.blocking import BlockingUpdates
from cse.core.errors import DeliveryError
from cse.core.types import NotificationEventType as NET
from cse.core.types import Operation
from cse.core.types import ResourceType as T
from cse.storage.base import (
    Change,
    DeleteTree,
    Dequeue,
    Enqueue,
    Put,
    QueuedNotification,
    Resource,
    StorageError,
)

if TYPE_CHECKING:
    from cse.core.context import Context

logger = logging.getLogger(__name__)

__all__ = ["DeliveryError", "Notifier", "Sender"]

_LATEST = 4  # the event category (ec) "latest"
# How often a process sharing the outbox asks for entries handed off to it (seconds): the
# most a head-end worker's notification to the in-process MDMS waits to be taken.
HAND_OFF_POLL_S = 0.2


class Sender(Protocol):
    """Sends one NOTIFY primitive to a URL and returns the response status code."""

    async def send(self, url: str, primitive: dict[str, Any]) -> int: ...


class Notifier:
    def __init__(self, cse: Context, senders: dict[str, Sender]) -> None:
        self._cse = cse
        self.senders = senders
        self._queues: dict[str, deque[QueuedNotification]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}
        self._retry_delay: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._next_id = 1
        self._counter = 0
        self._rqi_stem = ""  # this process's, where several share the database
        self.delivered = 0
        self.dropped = 0
        self.failed_attempts = 0
        self._changed = asyncio.Event()
        # Resources that may have operation-monitoring subscriptions (some may have lost
        # them since): a RETRIEVE of any other resource costs nothing more.
        self._monitored: set[str] = set()
        # Deleted subscriptions whose queued batches go at once instead of waiting (as ACME).
        self._flushing: set[str] = set()
        self.blocking = BlockingUpdates(cse, self)

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        storage = self._cse.storage
        queued = await storage.queued_notifications(limit=10_000_000)
        for item in queued:
            self._queues.setdefault(item.target, deque()).append(item)
        # Where several processes share the outbox, each numbers from its own floor (the
        # entries it took over from a stopped one lie below it).
        floor = await storage.notification_id_floor()
        self._next_id = max((item.id for item in queued if item.id > floor), default=floor) + 1
        if storage.shared:
            self._rqi_stem = f"{self._cse.id_stem}-"
        await self.note_all_subscriptions()
        if storage.claim_interval is not None:
            self._cse.supervisor.start("outbox claims", self._claim_loop)
        if storage.shared:
            self._cse.supervisor.start("outbox hand-offs", self._hand_off_loop)
        self.wake()

    async def note_all_subscriptions(self) -> None:
        every = await self._cse.storage.descendants(self._cse.settings.cse_name, [T.SUBSCRIPTION])
        for subscription in every:
            self._note(subscription)

    def note_subscription(self, subscription: Resource) -> None:
        """A subscription another process made: RETRIEVEs and UPDATEs here heed it too."""
        self._note(subscription)

    async def _claim_loop(self) -> None:
        """Take over, from time to time, what a stopped process sharing the outbox left."""
        storage = self._cse.storage
        assert storage.claim_interval is not None
        while True:
            await asyncio.sleep(storage.claim_interval)
            with contextlib.suppress(StorageError):  # asked again at the next interval
                claimed = await storage.claim_notifications(limit=10_000)
                for item in claimed:
                    self._queues.setdefault(item.target, deque()).append(item)
                if claimed:
                    self.wake()

    async def _hand_off_loop(self) -> None:
        """Take what other processes sharing the outbox handed off for a binding this one has
        (the in-process MDMS's notifications, written by head-end workers)."""
        storage = self._cse.storage
        while True:
            with contextlib.suppress(StorageError):  # asked again at the next interval
                claimed = await storage.claim_handed_off(list(self.senders), limit=10_000)
                for item in claimed:
                    self._queues.setdefault(item.target, deque()).append(item)
                if claimed:
                    self.wake()
                    continue  # there may be more: ask again at once
            await asyncio.sleep(HAND_OFF_POLL_S)  # a poll: the delay a handed-off entry waits

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def pending_count(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def _signal_change(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until the delivery state satisfies `predicate` (woken on every change)."""
        while not predicate():
            await self._changed.wait()

    def heard_from(self, originator: str) -> None:
        """An entity that just sent a request is reachable again: retry what waits for it."""
        if originator in self._retry_at:
            del self._retry_at[originator]
            self.wake()

    def retry_now(self) -> None:
        """Forget every backoff and try all waiting targets at once."""
        self._retry_at.clear()
        self.wake()

    # ---- events → outbox entries -----------------------------------------------------------

    def _primitive(
        self, to: str, content: dict[str, Any], category: int | None = None
    ) -> dict[str, Any]:
        self._counter += 1
        settings = self._cse.settings
        primitive = {
            "op": int(Operation.NOTIFY),
            "to": to,
            "fr": settings.cse_id,
            "rqi": f"ntf-{int(self._cse.clock.now() * 1000)}-{self._rqi_stem}{self._counter}",
            "rvi": "3",
            "pc": content,
        }
        if category is not None:
            primitive["ec"] = category  # the subscriber's notificationEventCat (nec)
        return primitive

    async def _entries_for(
        self,
        subscription: Resource,
        notification: dict[str, Any],
        targets: Iterable[str],
        *,
        notice: bool = False,
    ) -> list[Change]:
        """Outbox entries of one notification to each target; a deletion `notice` is neither
        batched nor counted in the statistics."""
        attributes = subscription.attributes
        return await self.entries(
            subscription.ri,
            {"m2m:sgn": notification},
            targets,
            pn=attributes.get("pn"),
            bn=None if notice else attributes.get("bn"),
            category=attributes.get("nec"),
            latest_only=bool(attributes.get("ln")) and not notice,
            counted=bool(attributes.get("nse")) and not notice,
        )

    async def entries(
        self,
        source: str,
        content: dict[str, Any],
        targets: Iterable[str],
        *,
        pn: Any = None,
        bn: Any = None,
        category: Any = None,
        latest_only: bool = False,
        counted: bool = False,
    ) -> list[Change]:
        """Outbox entries that NOTIFY each target of `content`, on behalf of `source` (a
        subscription, or a <request> whose result an rt 2 originator is sent)."""
        changes: list[Change] = []
        for target in targets:
            url = await self.resolve_target(target)
            if url is None:
                logger.warning("notification target %s has no point of access", target)
                continue
            body = {
                "primitive": self._primitive(target, content, category),
                "pn": pn,
                "bn": bn,
                "ln": latest_only,
                "nse": counted,
            }
            # Queued under the target as subscribed (an AE-ID stays an AE-ID): its point of
            # access is looked up again at each attempt, so an AE that moved is still reached.
            item = QueuedNotification(self._next_id, target, source, self._cse.clock.now(), body)
            self._next_id += 1
            changes.append(Enqueue(item, hand_off=self._hand_off_scheme(url)))
        return changes

    def _hand_off_scheme(self, url: str) -> str | None:
        """The scheme of `url` when this process cannot send there but another sharing the
        outbox may (a head-end worker has no in-process MDMS: the head-end process takes
        its notifications); None when this process sends it."""
        if not self._cse.storage.shared or self._sender_for(url) is not None:
            return None
        return url.split("://", 1)[0].lower()

    def _subscription_ref(self, subscription: Resource) -> str:
        return f"{self._cse.settings.cse_id}/{subscription.ri}"

    async def _notify_subscribers(
        self,
        subscribed: Resource,
        event: NET | None,
        subject: Resource,
        modified: dict[str, Any] | None = None,
        operation: tuple[Operation, str] | None = None,
    ) -> list[Change]:
        """Outbox entries for the subscriptions on `subscribed` that want `event` (or monitor
        the `operation`, with its originator), and what counting them changes."""
        changes: list[Change] = []
        for subscription in await self._cse.storage.children(subscribed.ri, [T.SUBSCRIPTION]):
            # A subscription is never told of its own making or removal (as in ACME).
            if subscription.ri == subject.ri or self._cse.is_expired(subscription):
                continue
            attributes = subscription.attributes
            monitoring = None if operation is None else (*operation, self._cse.settings.cse_id)
            happened = subscriptions.notification_event(
                attributes, event, subject, modified, monitoring
            )
            if happened is None:
                continue
            notification = {"nev": happened, "sur": self._subscription_ref(subscription)}
            if "cr" in attributes:
                notification["cr"] = attributes["cr"]
            changes.extend(await self._entries_for(subscription, notification, attributes["nu"]))
            changes.extend(await self._count(subscription))
        return changes

    async def _count(self, subscription: Resource) -> list[Change]:
        """expirationCounter (exc): one less per event, the last one ends the subscription;
        and the statistics' event count (nse/nsi)."""
        attributes = subscription.attributes
        remaining = attributes.get("exc")
        if remaining is not None and remaining <= 1:
            return [DeleteTree(subscription), *(await self.deletion_notices([subscription]))]
        counted: dict[str, Any] = {}
        if remaining is not None:
            counted["exc"] = remaining - 1
        stats = notification_stats.count_event(attributes)
        if stats is not None:
            counted["nsi"] = stats
        return [Put(subscription.with_attributes(**counted))] if counted else []

    async def on_missing_data(self, subscription: Resource, report: dict[str, Any]) -> list[Change]:
        """A timeSeries found the missing data points an event type 8 subscription waits
        for: `report` is the m2m:tsn (mdlt, mdc) it is sent (cse/core/missing_data.py)."""
        notification: dict[str, Any] = {
            "nev": {
                "rep": {"m2m:tsn": report},
                "net": int(NET.REPORT_ON_GENERATED_MISSING_DATA_POINTS),
            },
            "sur": self._subscription_ref(subscription),
        }
        if "cr" in subscription.attributes:
            notification["cr"] = subscription.attributes["cr"]
        changes = await self._entries_for(subscription, notification, subscription.attributes["nu"])
        return changes + await self._count(subscription)

    async def on_child_created(
        self, parent: Resource, child: Resource, originator: str | None = None
    ) -> list[Change]:
        operation = (Operation.CREATE, originator) if originator else None
        return await self._notify_subscribers(
            parent, NET.CREATE_OF_DIRECT_CHILD, child, operation=operation
        )

    async def on_updated(
        self, resource: Resource, modified: dict[str, Any], originator: str | None = None
    ) -> list[Change]:
        operation = (Operation.UPDATE, originator) if originator else None
        return await self._notify_subscribers(
            resource, NET.UPDATE_OF_RESOURCE, resource, modified, operation=operation
        )

    async def on_deleted(
        self,
        resource: Resource,
        parent: Resource | None,
        doomed_subscriptions: list[Resource],
        originator: str | None = None,
    ) -> list[Change]:
        operation = (Operation.DELETE, originator) if originator else None
        changes = await self._notify_subscribers(
            resource, NET.DELETE_OF_RESOURCE, resource, operation=operation
        )
        if parent is not None:
            changes += await self._notify_subscribers(parent, NET.DELETE_OF_DIRECT_CHILD, resource)
        changes += await self.deletion_notices(doomed_subscriptions)
        return changes

    async def on_retrieved(self, resource: Resource, originator: str) -> None:
        """A RETRIEVE is news only to subscriptions monitoring operations (enc/om)."""
        if resource.ri not in self._monitored:
            return
        watching = await self._cse.storage.children(resource.ri, [T.SUBSCRIPTION])
        if not any(subscriptions.monitors(sub.attributes) for sub in watching):
            self._monitored.discard(resource.ri)
            return
        async with self._cse.write_lock:
            operation = (Operation.RETRIEVE, originator)
            changes = await self._notify_subscribers(resource, None, resource, operation=operation)
            if changes:
                await self._cse.storage.apply(changes)
        if changes:
            await self._cse.durable(changes)

    async def deletion_notices(self, doomed: Sequence[Resource]) -> list[Change]:
        """A deleted subscription tells its subscriber (su), if it named one, and sends what
        it holds back in a batch at once."""
        changes: list[Change] = []
        for subscription in doomed:
            if subscription.attributes.get("bn"):
                self._flushing.add(subscription.ri)
            subscriber = subscription.attributes.get("su")
            if subscriber:
                notice = {"sud": True, "sur": self._subscription_ref(subscription)}
                if "cr" in subscription.attributes:
                    notice["cr"] = subscription.attributes["cr"]
                changes += await self._entries_for(subscription, notice, [subscriber], notice=True)
        return changes

    def accept(self, changes: Sequence[Change]) -> None:
        """Queue the outbox entries of a batch that has been applied, and start delivery."""
        for change in changes:
            if isinstance(change, Enqueue) and change.hand_off is None:
                item = change.notification
                self._queues.setdefault(item.target, deque()).append(item)
            elif isinstance(change, Put) and change.resource.ty == T.SUBSCRIPTION:
                self._note(change.resource)
            elif isinstance(change, DeleteTree):
                self._monitored.discard(change.resource.ri)
                self.blocking.forget(change.resource.ri)
        self.wake()

    def _note(self, subscription: Resource) -> None:
        """Remember where RETRIEVEs and UPDATEs need a look at the subscriptions."""
        if subscriptions.monitors(subscription.attributes):
            self._monitored.add(subscription.pi)
        self.blocking.note(subscription)

    # ---- targets and senders ---------------------------------------------------------------

    async def resolve_target(self, target: str) -> str | None:
        """A URL as it is; an AE-ID or CSE-ID through that entity's first point of access,
        in its preferred serialization."""
        if "://" in target:
            return target
        entity = await self._cse.find(target)
        if entity is None or entity.ty not in (T.AE, T.REMOTE_CSE):
            return None
        return await self.point_of_access(entity)

    async def point_of_access(self, entity: Resource) -> str | None:
        """An AE's or remoteCSE's first poa; its pollingChannel instead when it has one and
        no poa, or says it cannot be reached (rr false), as ACME routes (TS-0001 10.2.5.12)."""
        points = entity.attributes.get("poa") or []
        if points and entity.attributes.get("rr") is not False:
            return subscription_targets.in_preferred_serialization(str(points[0]), entity)
        channel = await self._cse.polling.channel_of(entity)
        if channel is not None:
            return polling.channel_url(channel)
        if not points:
            return None
        return subscription_targets.in_preferred_serialization(str(points[0]), entity)

    def _sender_for(self, url: str) -> Sender | None:
        scheme = url.split("://", 1)[0].lower()
        return self.senders.get(scheme)

    async def _send(self, url: str, primitive: dict[str, Any]) -> int:
        sender = self._sender_for(url)
        if sender is None:
            raise DeliveryError(f"no binding can send to {url}")
        try:
            return await asyncio.wait_for(
                sender.send(url, primitive), self._cse.settings.notification_timeout
            )
        except TimeoutError as error:
            raise DeliveryError(f"{url} did not answer in time") from error

    async def relay(self, url: str, primitive: dict[str, Any]) -> int:
        """Send a request primitive to `url` now and return the answer's status code (a NOTIFY
        relayed to an AE; raises DeliveryError if nobody answered)."""
        return await self._send(url, primitive)

    async def exchange(self, target: str, notification: dict[str, Any]) -> int:
        """Send one notification now (not through the outbox) and return the answer's status
        code; DeliveryError if the target has no point of access or does not answer in time."""
        url = await self.resolve_target(target)
        if url is None:
            raise DeliveryError(f"{target} has no point of access")
        return await self._send(url, self._primitive(target, {"m2m:sgn": notification}))

    async def verify(self, target: str, creator: str, subscription_ri: str) -> bool:
        """The verification request (TS-0004 7.3.7): vrq, the subscription, its creator."""
        ref = f"{self._cse.settings.cse_id}/{subscription_ri}"
        try:
            status = await self.exchange(target, {"vrq": True, "sur": ref, "cr": creator})
        except DeliveryError as error:
            logger.info("verification of %s failed: %s", target, error)
            return False
        return 2000 <= status < 3000

    # ---- delivery --------------------------------------------------------------------------

    def wake(self) -> None:
        now = time.monotonic()
        for target, queue in self._queues.items():
            running = self._running.get(target)
            if not queue or (running and not running.done()) or self._retry_at.get(target, 0) > now:
                continue
            # Supervised: a delivery task that fails is logged and tried again after a backoff,
            # and stays this target's task meanwhile, so no second one starts beside it.
            task = self._cse.supervisor.start(
                "notification delivery", functools.partial(self._drain, target), forever=False
            )
            self._running[target] = task
            task.add_done_callback(functools.partial(self._drained, target))

    def _drained(self, target: str, task: asyncio.Task[None]) -> None:
        if self._running.get(target) is task:
            del self._running[target]
        if not self._queues.get(target, True):
            self._queues.pop(target, None)

    def _wake_later(self, target: str, delay: float) -> None:
        if target in self._timers:
            self._timers[target].cancel()
        self._timers[target] = asyncio.get_running_loop().call_later(delay, self.wake)

    async def _drain(self, target: str) -> None:
        queue = self._queues.get(target)
        while queue:
            batch, wait = self._next_batch(queue)
            if not batch:
                self._wake_later(target, wait)
                return
            primitive = self._batch_primitive(batch)
            try:
                url = await self.resolve_target(target)
            except StorageError as error:
                # Our database, not the target, failed (PostgreSQL restarting, say): nothing
                # is dropped, whatever the subscription's pn; the queue waits for a backoff.
                self._retry_later(target, f"cannot read its point of access: {error}")
                return
            try:
                if url is None:
                    raise DeliveryError(f"{target} has no point of access now")
                try:
                    status = await self._send(url, primitive)
                except DeliveryError:
                    await self._record(target, batch, primitive, answered=False)
                    raise
            except DeliveryError as error:
                await self._on_failure(target, queue, error)
                return
            if not 2000 <= status < 3000:
                logger.info("%s answered a notification with %s", target, status)
            await self._record(target, batch, primitive, answered=True)
            self._sent(target, queue, batch)
            await self._forget([item.id for item in batch])
            self.delivered += len(batch)
            self._signal_change()

    def _sent(
        self, target: str, queue: deque[QueuedNotification], batch: list[QueuedNotification]
    ) -> None:
        # A batch holds one subscription's entries, which need not be the first ones in the
        # queue (several subscriptions can notify the same target).
        sent = {item.id for item in batch}
        remaining = [item for item in queue if item.id not in sent]
        queue.clear()
        queue.extend(remaining)
        self._retry_delay.pop(target, None)
        self._retry_at.pop(target, None)
        subscription = batch[0].subscription
        if subscription in self._flushing and not any(
            item.subscription == subscription
            for waiting in self._queues.values()
            for item in waiting
        ):
            self._flushing.discard(subscription)

    async def _record(
        self,
        target: str,
        batch: list[QueuedNotification],
        primitive: dict[str, Any],
        *,
        answered: bool,
    ) -> None:
        """Count a delivery in the subscription's statistics (nse/nsi), if it keeps them."""
        if not batch[0].body.get("nse"):
            return
        content = primitive.get("pc") or {}
        sent = len(content["m2m:agn"]["m2m:sgn"]) if "m2m:agn" in content else 1
        cse = self._cse

        async def count() -> None:
            async with cse.write_lock:
                subscription = await cse.storage.get(batch[0].subscription)
                if subscription is None:
                    return
                stats = notification_stats.count_delivery(
                    subscription.attributes, target, sent, answered
                )
                if stats is not None:
                    await cse.storage.apply([Put(subscription.with_attributes(nsi=stats))])

        with contextlib.suppress(StorageError):  # figures, not data: never fail a delivery
            await cse.retrying(count)

    async def _forget(self, ids: list[int]) -> None:
        """Remove entries from the durable outbox. If the disk refuses (the storage reports
        that), they stay there and are sent again after a restart: at least once."""
        with contextlib.suppress(StorageError):
            await self._cse.storage.apply([Dequeue(tuple(ids))])

    def _next_batch(
        self, queue: deque[QueuedNotification]
    ) -> tuple[list[QueuedNotification], float]:
        """What to send now; or nothing and how long to wait for a batch to fill."""
        first = queue[0]
        batching = first.body.get("bn")
        if not batching:
            return [first], 0.0
        number = int(batching.get("num") or 1)
        same = [
            item
            for item in queue
            if item.subscription == first.subscription and item.body.get("bn")  # not a notice
        ][:number]
        age = self._cse.clock.now() - first.created
        limit = subscriptions.parse_duration(batching["dur"]) if "dur" in batching else None
        # An entry dated in the future was queued before the date stepped back (across a
        # restart): its age is unknown, and sending a batch early beats holding it that long.
        # A deleted subscription's batch goes at once (ACME flushes it too).
        if (
            len(same) >= number
            or (limit is not None and not 0 <= age < limit)
            or first.subscription in self._flushing
        ):
            return same, 0.0
        if limit is None:
            return [], 3600.0
        return [], max(0.01, limit - age)

    def _batch_primitive(self, batch: list[QueuedNotification]) -> dict[str, Any]:
        first = batch[0].body["primitive"]
        if len(batch) == 1 and not batch[0].body.get("bn"):
            return dict(first)
        notifications = [item.body["primitive"]["pc"]["m2m:sgn"] for item in batch]
        primitive = dict(first)
        if batch[0].body.get("ln"):
            # latestNotify: of a batch only the newest, sent as event category "latest".
            notifications = notifications[-1:]
            primitive["ec"] = _LATEST
        primitive["pc"] = {"m2m:agn": {"m2m:sgn": notifications}}
        return primitive

    def _retry_later(self, target: str, error: object) -> None:
        """Hold the target's queue back for its next backoff."""
        delay = min(
            self._retry_delay.get(target, 0.5) * 2, self._cse.settings.notification_retry_max
        )
        self._retry_delay[target] = delay
        self._retry_at[target] = time.monotonic() + delay
        logger.info("notification to %s failed (%s); retry in %.1fs", target, error, delay)
        self._wake_later(target, delay)

    async def _on_failure(
        self, target: str, queue: deque[QueuedNotification], error: DeliveryError
    ) -> None:
        self.failed_attempts += 1
        self._retry_later(target, error)
        keep: deque[QueuedNotification] = deque()
        dropped: list[int] = []
        newest: dict[str, QueuedNotification] = {}
        for item in queue:
            policy = item.body.get("pn")
            if policy == 2:
                keep.append(item)
            elif policy == 1:
                previous = newest.get(item.subscription)
                if previous is not None:
                    dropped.append(previous.id)
                newest[item.subscription] = item
            else:
                dropped.append(item.id)
        kept = sorted([*keep, *newest.values()], key=lambda item: item.id)
        queue.clear()
        queue.extend(kept)
        if dropped:
            self.dropped += len(dropped)
            await self._forget(dropped)
        self._signal_change()

"""Notifications: from an event to a durable outbox entry to a delivered NOTIFY.

Every notification an event causes is written to the outbox in the same atomic batch as the
change that caused it, so an acknowledged change never loses its notification to a crash.
A delivery task per target sends entries in order. When a target cannot be reached the entry
is kept or dropped by the subscription's pendingNotification (pn): none drops it (the spec's
default), 1 (sendLatest) keeps only the newest per subscription, 2 (sendAllPending) keeps all;
the target is retried with exponential backoff. Batch notify (bn) waits for `num` entries or
`dur`, then sends one aggregated notification.
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

from cse.core import subscriptions
from cse.core.addressing import Address
from cse.core.errors import DeliveryError, OriginatorHasNoPrivilege
from cse.core.primitives import Request, Response
from cse.core.types import NotificationEventType as NET
from cse.core.types import Operation, ResponseStatusCode
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
    from cse.core.handler import CommonServicesEntity

logger = logging.getLogger(__name__)

__all__ = ["DeliveryError", "Notifier", "Sender"]


class Sender(Protocol):
    """Sends one NOTIFY primitive to a URL and returns the response status code."""

    async def send(self, url: str, primitive: dict[str, Any]) -> int: ...


class Notifier:
    def __init__(self, cse: CommonServicesEntity, senders: dict[str, Sender]) -> None:
        self._cse = cse
        self.senders = senders
        self._queues: dict[str, deque[QueuedNotification]] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._retry_at: dict[str, float] = {}
        self._retry_delay: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._next_id = 1
        self._counter = 0
        self.delivered = 0
        self.dropped = 0
        self.failed_attempts = 0
        self._changed = asyncio.Event()

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        queued = await self._cse.storage.queued_notifications(limit=10_000_000)
        for item in queued:
            self._queues.setdefault(item.target, deque()).append(item)
        self._next_id = max((item.id for item in queued), default=0) + 1
        self.wake()

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

    def _primitive(self, to: str, content: dict[str, Any]) -> dict[str, Any]:
        self._counter += 1
        settings = self._cse.settings
        return {
            "op": int(Operation.NOTIFY),
            "to": to,
            "fr": settings.cse_id,
            "rqi": f"ntf-{int(self._cse.clock.now() * 1000)}-{self._counter}",
            "rvi": "3",
            "pc": content,
        }

    async def _entries_for(
        self, subscription: Resource, notification: dict[str, Any], targets: Iterable[str]
    ) -> list[Change]:
        changes: list[Change] = []
        attributes = subscription.attributes
        for target in targets:
            url = await self.resolve_target(target)
            if url is None:
                logger.warning("notification target %s has no point of access", target)
                continue
            body = {
                "primitive": self._primitive(target, {"m2m:sgn": notification}),
                "pn": attributes.get("pn"),
                "bn": attributes.get("bn"),
            }
            # Queued under the target as subscribed (an AE-ID stays an AE-ID): its point of
            # access is looked up again at each attempt, so an AE that moved is still reached.
            item = QueuedNotification(
                self._next_id, target, subscription.ri, self._cse.clock.now(), body
            )
            self._next_id += 1
            changes.append(Enqueue(item))
        return changes

    def _subscription_ref(self, subscription: Resource) -> str:
        return f"{self._cse.settings.cse_id}/{subscription.ri}"

    async def _notify_subscribers(
        self,
        subscribed: Resource,
        event: NET,
        subject: Resource,
        modified: dict[str, Any] | None = None,
        skip: set[str] | None = None,
    ) -> list[Change]:
        changes: list[Change] = []
        for subscription in await self._cse.storage.children(subscribed.ri, [T.SUBSCRIPTION]):
            if (skip and subscription.ri in skip) or self._cse.is_expired(subscription):
                continue
            attributes = subscription.attributes
            if not subscriptions.wants(attributes, event, subject):
                continue
            notification = {
                "nev": {
                    "rep": subscriptions.representation(attributes, subject, modified),
                    "net": int(event),
                },
                "sur": self._subscription_ref(subscription),
            }
            if "cr" in attributes:
                notification["cr"] = attributes["cr"]
            changes.extend(await self._entries_for(subscription, notification, attributes["nu"]))
            changes.extend(await self._count_down(subscription))
        return changes

    async def _count_down(self, subscription: Resource) -> list[Change]:
        """expirationCounter (exc): one less per notification; the last one ends the sub."""
        remaining = subscription.attributes.get("exc")
        if remaining is None:
            return []
        if remaining > 1:
            return [Put(subscription.with_attributes(exc=remaining - 1))]
        return [DeleteTree(subscription), *(await self.deletion_notices([subscription]))]

    async def on_child_created(self, parent: Resource, child: Resource) -> list[Change]:
        return await self._notify_subscribers(parent, NET.CREATE_OF_DIRECT_CHILD, child)

    async def on_updated(self, resource: Resource, modified: dict[str, Any]) -> list[Change]:
        return await self._notify_subscribers(resource, NET.UPDATE_OF_RESOURCE, resource, modified)

    async def on_deleted(
        self, resource: Resource, parent: Resource | None, doomed_subscriptions: list[Resource]
    ) -> list[Change]:
        changes = await self._notify_subscribers(resource, NET.DELETE_OF_RESOURCE, resource)
        if parent is not None:
            skip = {resource.ri} if resource.ty == T.SUBSCRIPTION else None
            changes += await self._notify_subscribers(
                parent, NET.DELETE_OF_DIRECT_CHILD, resource, skip=skip
            )
        changes += await self.deletion_notices(doomed_subscriptions)
        return changes

    async def deletion_notices(self, doomed: Sequence[Resource]) -> list[Change]:
        """A deleted subscription tells its subscriber (su), if it named one."""
        changes: list[Change] = []
        for subscription in doomed:
            subscriber = subscription.attributes.get("su")
            if subscriber:
                notice = {"sud": True, "sur": self._subscription_ref(subscription)}
                changes += await self._entries_for(subscription, notice, [subscriber])
        return changes

    def accept(self, changes: Sequence[Change]) -> None:
        """Queue the outbox entries of a batch that has been applied, and start delivery."""
        for change in changes:
            if isinstance(change, Enqueue):
                item = change.notification
                self._queues.setdefault(item.target, deque()).append(item)
        self.wake()

    # ---- targets and senders ---------------------------------------------------------------

    async def resolve_target(self, target: str) -> str | None:
        """A URL as it is; an AE-ID or CSE-ID through that entity's first point of access."""
        if "://" in target:
            return target
        entity = await self._cse.find(target)
        if entity is None or entity.ty not in (T.AE, T.REMOTE_CSE):
            return None
        points = entity.attributes.get("poa") or []
        return str(points[0]) if points else None

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

    async def verify(self, target: str, creator: str) -> bool:
        url = await self.resolve_target(target)
        if url is None:
            return False
        primitive = self._primitive(target, {"m2m:sgn": {"vrq": True, "sur": "", "cr": creator}})
        try:
            status = await self._send(url, primitive)
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
                if url is None:
                    raise DeliveryError(f"{target} has no point of access now")
                status = await self._send(url, primitive)
            except DeliveryError as error:
                await self._on_failure(target, queue, error)
                return
            if not 2000 <= status < 3000:
                logger.info("%s answered a notification with %s", target, status)
            # A batch holds one subscription's entries, which need not be the first ones
            # in the queue (several subscriptions can notify the same target).
            sent = {item.id for item in batch}
            remaining = [item for item in queue if item.id not in sent]
            queue.clear()
            queue.extend(remaining)
            await self._forget([item.id for item in batch])
            self.delivered += len(batch)
            self._retry_delay.pop(target, None)
            self._retry_at.pop(target, None)
            self._signal_change()

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
        same = [item for item in queue if item.subscription == first.subscription][:number]
        age = self._cse.clock.now() - first.created
        limit = subscriptions.parse_duration(batching["dur"]) if "dur" in batching else None
        # An entry dated in the future was queued before the date stepped back (across a
        # restart): its age is unknown, and sending a batch early beats holding it that long.
        if len(same) >= number or (limit is not None and not 0 <= age < limit):
            return same, 0.0
        if limit is None:
            return [], 3600.0
        return [], max(0.01, limit - age)

    def _batch_primitive(self, batch: list[QueuedNotification]) -> dict[str, Any]:
        first = batch[0].body["primitive"]
        if len(batch) == 1 and not batch[0].body.get("bn"):
            return dict(first)
        notifications = [item.body["primitive"]["pc"]["m2m:sgn"] for item in batch]
        return {**first, "pc": {"m2m:agn": {"m2m:sgn": notifications}}}

    async def _on_failure(
        self, target: str, queue: deque[QueuedNotification], error: DeliveryError
    ) -> None:
        self.failed_attempts += 1
        delay = min(
            self._retry_delay.get(target, 0.5) * 2, self._cse.settings.notification_retry_max
        )
        self._retry_delay[target] = delay
        self._retry_at[target] = time.monotonic() + delay
        logger.info("notification to %s failed (%s); retry in %.1fs", target, error, delay)
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
        self._wake_later(target, delay)
        self._signal_change()

    # ---- NOTIFY requests addressed to this CSE ----------------------------------------------

    async def handle_incoming(
        self, request: Request, originator: str, address: Address
    ) -> Response:
        """A NOTIFY to a resource here: an AE gets it relayed to its point of access."""
        target = await self._cse.lookup(address)
        if not await self._cse.access.allowed(originator, Operation.NOTIFY, target):
            raise OriginatorHasNoPrivilege(f"{originator} may not notify {target.path}")
        if target.ty == T.AE and target.attributes.get("poa"):
            url = str(target.attributes["poa"][0])
            primitive = {
                "op": 5,
                "to": target.ri,  # the AE-ID: what an MQTT or CoAP AE recognises as itself
                "fr": originator,
                "rqi": request.request_id,
                "rvi": request.release_version,
                "pc": request.content,
            }
            try:
                status = await self._send(url, primitive)
            except DeliveryError as error:
                from cse.core.errors import TargetNotReachable

                raise TargetNotReachable(str(error)) from error
            return self._cse.response(
                request,
                ResponseStatusCode(status)
                if status in ResponseStatusCode._value2member_map_
                else ResponseStatusCode.OK,
            )
        return self._cse.response(request, ResponseStatusCode.OK)

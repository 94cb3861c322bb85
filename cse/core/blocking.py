"""Blocking UPDATE (notificationEventType 7, blockingUpdate: TS-0001 9.6.8 from Release 4; its
response codes in TS-0004 Table 6.6.3.3-1): an UPDATE of a resource with such a subscription
is first notified to the subscription's one target, and made only if the target answers
positively.

The notification goes at once, not through the outbox, and the UPDATE waits at most the
CSE's notification timeout. While it waits, other UPDATEs of the same resource that would be
notified wait behind it (the spec asks the hosting CSE to hold them). The answer decides, as
in ACME: a success lets the UPDATE go on; a target that cannot be reached, or answers that
its own target could not be (5103, 5107), or not in time, is 5107
REMOTE_ENTITY_NOT_REACHABLE; any other answer is 4127 OPERATION_DENIED_BY_REMOTE_ENTITY.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from cse.core import subscriptions
from cse.core.errors import DeliveryError, OperationDeniedByRemoteEntity, RemoteEntityNotReachable
from cse.core.registry import SPECS
from cse.core.types import NotificationEventType as NET
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.notifications import Notifier

logger = logging.getLogger(__name__)

_UNREACHABLE = {5103, 5107}  # TARGET_NOT_REACHABLE, REMOTE_ENTITY_NOT_REACHABLE


class BlockingUpdates:
    def __init__(self, ctx: Context, notifier: Notifier) -> None:
        self._ctx = ctx
        self._notifier = notifier
        # One gate per resource with an UPDATE waiting for its target, and how many use it.
        self._gates: dict[str, tuple[asyncio.Lock, int]] = {}
        # Resources that may have a blocking subscription (some may have lost it since): an
        # UPDATE of any other resource costs nothing more.
        self._guarded: set[str] = set()

    def note(self, subscription: Resource) -> None:
        """A subscription was made or changed (the notifier sees every one)."""
        if subscriptions.is_blocking(subscription.attributes):
            self._guarded.add(subscription.pi)

    def forget(self, ri: str) -> None:
        self._guarded.discard(ri)

    @contextlib.asynccontextmanager
    async def hold(self, resource: Resource, changes: dict[str, Any]) -> AsyncIterator[None]:
        """Around an UPDATE of `resource`: ask each blocking subscription's target first
        (M2MError if one does not agree), and keep other such UPDATEs waiting until done."""
        if resource.ri not in self._guarded:
            yield
            return
        blocking = [
            sub
            for sub in await self._ctx.storage.children(resource.ri, [T.SUBSCRIPTION])
            if not self._ctx.is_expired(sub) and subscriptions.is_blocking(sub.attributes)
        ]
        if not blocking:
            self._guarded.discard(resource.ri)
        guards = [sub for sub in blocking if _guards(sub.attributes, changes)]
        if not guards:
            yield
            return
        async with self._gate(resource.ri):
            for subscription in guards:
                await self._ask(subscription, resource, changes)
            yield

    @contextlib.asynccontextmanager
    async def _gate(self, ri: str) -> AsyncIterator[None]:
        lock, users = self._gates.get(ri) or (asyncio.Lock(), 0)
        self._gates[ri] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._gates[ri]
            if users > 1:
                self._gates[ri] = (lock, users - 1)
            else:
                del self._gates[ri]

    async def _ask(
        self, subscription: Resource, resource: Resource, changes: dict[str, Any]
    ) -> None:
        attributes = subscription.attributes
        (target,) = attributes["nu"][:1]
        notification: dict[str, Any] = {
            "nev": {
                "net": int(NET.BLOCKING_UPDATE),
                "rep": {SPECS[resource.ty].key: changes},  # modified attributes (nct 2)
            },
            "sur": f"{self._ctx.settings.cse_id}/{subscription.ri}",
        }
        if "cr" in attributes:
            notification["cr"] = attributes["cr"]
        try:
            status = await self._notifier.exchange(target, notification)
        except DeliveryError as error:
            raise RemoteEntityNotReachable(
                f"the blocking update target {target[:100]} did not answer: {error}"
            ) from None
        if 2000 <= status < 3000:
            return
        logger.info("blocking update target %s refused an update with %s", target, status)
        if status in _UNREACHABLE:
            raise RemoteEntityNotReachable(f"the blocking update target answered {status}")
        raise OperationDeniedByRemoteEntity(
            f"the blocking update target {target[:100]} refused the update ({status})"
        )


def _guards(subscription: dict[str, Any], changes: dict[str, Any]) -> bool:
    """Does this blocking subscription hold up an UPDATE of these attributes (enc/atr)?"""
    names = (subscription.get("enc") or {}).get("atr")
    return not names or subscriptions.touches(names, changes)

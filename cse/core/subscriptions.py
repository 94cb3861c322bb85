"""Subscriptions: checking a new or changed one, and deciding who hears about an event."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from cse.core.egress import EgressRefused, same_origin
from cse.core.errors import BadRequest, OriginatorHasNoPrivilege, SubscriptionVerificationFailed
from cse.core.types import NotificationContentType as NCT
from cse.core.types import NotificationEventType as NET
from cse.core.types import Operation
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

_SUPPORTED_EVENTS = {int(e) for e in NET}
_DURATION = re.compile(r"^P(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)$")


def parse_duration(value: Any) -> float:
    """Seconds from an ISO 8601 duration (PT5S, PT1M30S) or a number of milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000.0
    if isinstance(value, str):
        if value.isdigit():
            return int(value) / 1000.0
        match = _DURATION.match(value)
        if match and any(match.groups()):
            hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
            return hours * 3600 + minutes * 60 + seconds
    raise BadRequest(f"duration {value!r} is not PTnHnMnS or milliseconds")


def event_types(subscription: dict[str, Any]) -> list[int]:
    criteria = subscription.get("enc") or {}
    return list(criteria.get("net") or [int(NET.UPDATE_OF_RESOURCE)])


def check_subscription(attributes: dict[str, Any]) -> None:
    """Reject criteria, content types and batching this CSE cannot honour (4000)."""
    criteria = attributes.get("enc")
    events = [int(NET.UPDATE_OF_RESOURCE)]
    if criteria is not None:
        net = criteria.get("net", events)
        if not isinstance(net, list) or not all(
            isinstance(e, int) and not isinstance(e, bool) and e in _SUPPORTED_EVENTS for e in net
        ):
            raise BadRequest("enc.net must be a list of event types 1..4")
        events = net or events
        chty = criteria.get("chty")
        if chty is not None and (
            not isinstance(chty, list) or not all(isinstance(t, int) for t in chty)
        ):
            raise BadRequest("enc.chty must be a list of resource types")
    content_type = attributes.get("nct")
    if content_type is not None:
        if content_type not in {int(c) for c in NCT}:
            raise BadRequest("nct must be 1 (all attributes), 2 (modified) or 3 (resource ID)")
        if content_type == NCT.MODIFIED_ATTRIBUTES and set(events) - {1}:
            raise BadRequest("nct 2 (modified attributes) is only valid for event type 1")
    pending = attributes.get("pn")
    if pending is not None and pending not in (1, 2):
        raise BadRequest("pn must be 1 (sendLatest) or 2 (sendAllPending)")
    count = attributes.get("exc")
    if count is not None and count < 1:
        raise BadRequest("exc must be at least 1")
    batch = attributes.get("bn")
    if batch is not None:
        number = batch.get("num")
        if number is not None and (not isinstance(number, int) or number < 1):
            raise BadRequest("bn.num must be a positive integer")
        if "dur" in batch:
            parse_duration(batch["dur"])
    nu = attributes.get("nu")
    if nu is not None and not nu:
        raise BadRequest("nu must list at least one notification target")


async def prepare(
    cse: CommonServicesEntity,
    originator: str,
    subscribed: Resource,
    attributes: dict[str, Any],
) -> None:
    """Checks before a subscription is created: rights, criteria, and target verification."""
    if not await cse.access.allowed(originator, Operation.RETRIEVE, subscribed):
        raise OriginatorHasNoPrivilege(
            f"originator {originator} may not retrieve {subscribed.path}, so not subscribe to it"
        )
    check_subscription(attributes)
    if attributes.get("su"):
        await check_target(cse, originator, attributes["su"])
    await verify_targets(cse, originator, attributes["nu"])


async def verify_targets(cse: CommonServicesEntity, originator: str, targets: list[str]) -> None:
    # Every target is checked before any is sent a verification request: a refused one
    # fails the request with nothing sent anywhere.
    for target in targets:
        await check_target(cse, originator, target)
    for target in targets:
        if target == originator:
            continue  # the subscriber itself needs no verification
        if not await cse.notifier.verify(target, originator):
            raise SubscriptionVerificationFailed(
                f"notification target {target} did not accept the verification request"
            )


async def check_target(cse: CommonServicesEntity, originator: str, target: str) -> None:
    """5204 without sending anything if the egress policy will not let the CSE reach a target.

    A bare URL must be at a registered entity's point of access or be allowed by config; an
    AE-ID or CSE-ID is reached through its point of access, checked at its registration.
    TS-0004 has no code for "the hosting CSE will not send there"; 5204 is what it answers
    when it cannot initiate the verification, and what ACME answers for any target it cannot
    reach (docs/conformance.md).
    """
    egress = cse.egress
    if "://" in target:
        if not (
            await egress.allows_unannounced(target) or await _announced(cse, originator, target)
        ):
            refusal = egress.refuse_unannounced(target)
            raise SubscriptionVerificationFailed(
                f"the CSE does not send to {target[:100]}: {refusal.detail}"
            )
        url = target
    else:
        point = await cse.notifier.resolve_target(target)
        if point is None:
            return  # nowhere to send: verify() says so, or the subscriber has no poa yet
        url = point
    if egress.is_local(url):
        return  # an application in this process: no network involved
    try:
        await egress.destination(url)
    except EgressRefused as refusal:
        raise SubscriptionVerificationFailed(
            f"the CSE does not send to {target[:100]}: {refusal.detail}"
        ) from None


async def _announced(cse: CommonServicesEntity, originator: str, url: str) -> bool:
    """Is `url` at the scheme, host and port of a registered AE's or remoteCSE's poa?
    (The subscriber's own first: the usual case, and no scan of every registration.)"""
    own = await cse.find(originator) if originator else None
    if own is not None and own.ty in (T.AE, T.REMOTE_CSE) and _announces(own, url):
        return True
    entities = await cse.storage.children(cse.settings.cse_ri, [T.AE, T.REMOTE_CSE])
    return any(not cse.is_expired(entity) and _announces(entity, url) for entity in entities)


def _announces(entity: Resource, url: str) -> bool:
    return any(same_origin(url, str(point)) for point in entity.attributes.get("poa") or [])


def representation(
    subscription: dict[str, Any], subject: Resource, modified: dict[str, Any] | None
) -> dict[str, Any]:
    from cse.core.registry import SPECS

    content_type = subscription.get("nct", int(NCT.ALL_ATTRIBUTES))
    if content_type == NCT.RESOURCE_ID:
        return {"m2m:uri": subject.path}
    if content_type == NCT.MODIFIED_ATTRIBUTES and modified is not None:
        return {SPECS[subject.ty].key: modified}
    return {SPECS[subject.ty].key: subject.attributes}


def wants(subscription: dict[str, Any], event: NET, subject: Resource) -> bool:
    if int(event) not in event_types(subscription):
        return False
    if event in (NET.CREATE_OF_DIRECT_CHILD, NET.DELETE_OF_DIRECT_CHILD):
        child_types = (subscription.get("enc") or {}).get("chty")
        if child_types and subject.ty not in child_types:
            return False
        # A sibling subscription coming or going is news only to a subscriber that named
        # subscriptions in chty (then, as in ACME, every other one hears of it). Otherwise
        # each new subscription would notify all earlier ones: n subscriptions, n²/2 notices.
        if subject.ty == T.SUBSCRIPTION and not child_types:
            return False
    return True

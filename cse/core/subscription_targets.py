"""Notification targets of a subscription: may the CSE send there, do they agree (the
verification request, TS-0004 7.3.7), and in which serialization they are sent.

Every target is checked against the egress policy before anything is sent to any of them
(docs/security.md, "Egress policy")."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from cse.core.egress import EgressRefused, same_origin
from cse.core.errors import OriginatorHasNoPrivilege, SubscriptionVerificationFailed
from cse.core.types import Operation
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context

# What a `ct` query parameter of a notification URL may ask for (as ACME reads it).
SERIALIZATIONS = ("json", "cbor")


async def check_rights(ctx: Context, originator: str, subscribed: Resource) -> None:
    if not await ctx.access.allowed(originator, Operation.RETRIEVE, subscribed):
        raise OriginatorHasNoPrivilege(
            f"originator {originator} may not retrieve {subscribed.path}, so not subscribe to it"
        )


async def verify_targets(
    ctx: Context, originator: str, targets: list[str], subscription_ri: str
) -> None:
    # Every target is checked before any is sent a verification request: a refused one
    # fails the request with nothing sent anywhere.
    for target in targets:
        await check_target(ctx, originator, target)
    for target in targets:
        if target == originator:
            continue  # the subscriber itself needs no verification
        if not await ctx.notifier.verify(target, originator, subscription_ri):
            raise SubscriptionVerificationFailed(
                f"notification target {target} did not accept the verification request"
            )


async def check_target(ctx: Context, originator: str, target: str) -> None:
    """5204 without sending anything if the egress policy will not let the CSE reach a target,
    or it asks for a serialization the CSE cannot send.

    A bare URL must be at a registered entity's point of access or be allowed by config; an
    AE-ID or CSE-ID is reached through its point of access, checked at its registration.
    TS-0004 has no code for "the hosting CSE will not send there"; 5204 is what it answers
    when it cannot initiate the verification, and what ACME answers for any target it cannot
    reach (docs/conformance.md).
    """
    egress = ctx.egress
    if "://" in target:
        if not (
            await egress.allows_unannounced(target) or await _announced(ctx, originator, target)
        ):
            refusal = egress.refuse_unannounced(target)
            raise SubscriptionVerificationFailed(
                f"the CSE does not send to {target[:100]}: {refusal.detail}"
            )
        url = target
    else:
        point = await ctx.notifier.resolve_target(target)
        if point is None:
            return  # nowhere to send: verify() says so, or the subscriber has no poa yet
        url = point
    asked = asked_serialization(url)
    if asked is not None and asked not in SERIALIZATIONS:
        raise SubscriptionVerificationFailed(
            f"the CSE cannot send {asked[:20]!r} to {target[:100]} (only json or cbor)"
        )
    if egress.is_local(url):
        return  # an application in this process: no network involved
    try:
        await egress.destination(url)
    except EgressRefused as refusal:
        raise SubscriptionVerificationFailed(
            f"the CSE does not send to {target[:100]}: {refusal.detail}"
        ) from None


def asked_serialization(url: str) -> str | None:
    """The `ct` a notification URL names (`?ct=cbor`), if any."""
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name == "ct":
            return value.lower()
    return None


def in_preferred_serialization(point: str, entity: Resource) -> str:
    """A point of access that names no serialization, with the entity's preferred one: the
    first of its contentSerialization (csz) the CSE can send (TS-0001 9.6.5, as ACME does)."""
    if asked_serialization(point) is not None:
        return point
    for media in entity.attributes.get("csz") or []:
        name = str(media).lower()
        if name.endswith("cbor"):
            parts = urlsplit(point)
            query = f"{parts.query}&ct=cbor" if parts.query else "ct=cbor"
            return urlunsplit(parts._replace(query=query))
        if name.endswith("json"):
            break
    return point


async def _announced(ctx: Context, originator: str, url: str) -> bool:
    """Is `url` at the scheme, host and port of a registered AE's or remoteCSE's poa?
    (The subscriber's own first: the usual case, and no scan of every registration.)"""
    own = await ctx.find(originator) if originator else None
    if own is not None and own.ty in (T.AE, T.REMOTE_CSE) and _announces(own, url):
        return True
    entities = await ctx.storage.children(ctx.settings.cse_ri, [T.AE, T.REMOTE_CSE])
    return any(not ctx.is_expired(entity) and _announces(entity, url) for entity in entities)


def _announces(entity: Resource, url: str) -> bool:
    return any(same_origin(url, str(point)) for point in entity.attributes.get("poa") or [])

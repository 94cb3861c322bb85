"""<subscription> (TS-0001 9.6.8): checks of criteria and targets when made or changed, and
the attributes the CSE fills in.

Who hears about which event is decided in cse/core/subscriptions.py and delivered by
cse/core/notifications.py; blocking UPDATE subscriptions act through cse/core/blocking.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import notification_stats, subscription_targets, subscriptions
from cse.core.errors import BlockingSubscriptionAlreadyExists
from cse.core.resources.base import NP, Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request


class SubscriptionRules(TypeRules):
    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        await subscription_targets.check_rights(ctx, originator, parent)
        subscriptions.check_subscription(attributes)
        subscriptions.check_child_types(attributes.get("enc"), _child_types(parent))
        subscriptions.check_subscribed(attributes, parent)
        if attributes.get("su"):
            await subscription_targets.check_target(ctx, originator, attributes["su"])

    async def confirm_create(
        self,
        ctx: Context,
        originator: str,
        parent: Resource,
        attributes: dict[str, Any],
        resource_id: str,
    ) -> None:
        # The verification request names the subscription being made (its sur).
        await subscription_targets.verify_targets(ctx, originator, attributes["nu"], resource_id)

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        if subscriptions.is_blocking(new):
            # Under the write lock: two requests cannot both make the first one.
            for sibling in await ctx.storage.children(parent.ri, [T.SUBSCRIPTION]):
                if not ctx.is_expired(sibling) and subscriptions.is_blocking(sibling.attributes):
                    raise BlockingSubscriptionAlreadyExists(
                        f"{parent.path} already has a blocking subscription"
                    )
        new.update(subscriptions.defaults(new, ctx.settings.batch_notify_duration))
        return []

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        subscriptions.check_change(changes)
        merged = {**resource.attributes, **{k: v for k, v in changes.items() if v is not None}}
        subscriptions.check_subscription(merged)
        if changes.get("enc"):
            parent = await ctx.storage.get(resource.pi)
            allowed = _child_types(parent) if parent is not None else frozenset()
            subscriptions.check_child_types(changes["enc"], allowed)
        subscribed = await ctx.storage.get(resource.pi)
        if subscribed is not None:
            subscriptions.check_subscribed(merged, subscribed)
        new_targets = [t for t in changes.get("nu") or [] if t not in resource.attributes["nu"]]
        await subscription_targets.verify_targets(ctx, originator, new_targets, resource.ri)

    async def on_update(
        self, ctx: Context, resource: Resource, values: dict[str, Any]
    ) -> list[Change]:
        # What the UPDATE removed or changed gets its default again (enc, nct, bn/dur).
        kept = {**resource.attributes, **values}
        merged = {name: value for name, value in kept.items() if value is not None}
        filled = subscriptions.defaults(merged, ctx.settings.batch_notify_duration)
        values.update({name: filled[name] for name in filled if name in values})
        notification_stats.on_update(resource.attributes, values)
        return []


def _child_types(parent: Resource) -> frozenset[int]:
    from cse.core.registry import SPECS  # the registry imports this module

    return frozenset(int(t) for t in SPECS[parent.ty].children)


SPEC = resource_spec(
    T.SUBSCRIPTION,
    "sub",
    {
        "nu": Attribute(Kind.STRINGS, M, O),
        "enc": Attribute(Kind.OBJECT),
        "exc": Attribute(Kind.COUNT),
        "nct": Attribute(Kind.INTEGER),
        "su": Attribute(Kind.STRING, O, NP),
        "bn": Attribute(Kind.OBJECT),
        "rl": Attribute(Kind.OBJECT),
        "pn": Attribute(Kind.INTEGER),
        "ln": Attribute(Kind.BOOLEAN),
        "nec": Attribute(Kind.INTEGER),
        "nfu": Attribute(Kind.STRINGS),
        "gpi": Attribute(Kind.STRING, O, NP),
        "psn": Attribute(Kind.COUNT),
        "nse": Attribute(Kind.BOOLEAN),
        "nsi": Attribute(Kind.ANY, NP, NP),
    },
    set(),
    rules=SubscriptionRules(),
    subscribable=False,
)

"""<pollingChannel> (TS-0001 9.6.21): where an AE or CSE that cannot be reached collects the
requests meant for it, by long-polling the virtual child `pcu` (cse/core/polling.py).

Only the entity it belongs to makes one, and only one: ACME refuses everybody else, even the
admin (4103), and a second channel (4000). It has no accessControlPolicyIDs; the resource
itself is governed by its parent's rights, its pcu by its owner alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest, OriginatorHasNoPrivilege
from cse.core.resources.base import TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context


class PollingChannelRules(TypeRules):
    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        if originator != parent.owner:
            raise OriginatorHasNoPrivilege(
                f"only {parent.owner} may make a pollingChannel for {parent.path}"
            )

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        # Under the write lock, so two concurrent CREATEs cannot both pass.
        if await ctx.polling.channel_of(parent) is not None:
            raise BadRequest(f"{parent.path} already has a pollingChannel")
        return []


SPEC = resource_spec(
    T.POLLING_CHANNEL,
    "pch",
    {},
    set(),
    rules=PollingChannelRules(),
    has_acpi=False,
    has_creator=False,  # as in ACME: no cr on a pollingChannel
    subscribable=False,
)

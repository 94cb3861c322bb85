"""<group> (TS-0001 9.6.13): members resolved and counted; fan-out is in cse/core/groups.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import groups
from cse.core.errors import MaxMembersExceeded
from cse.core.resources.base import NP, Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.types import ConsistencyStrategy
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request


class GroupRules(TypeRules):
    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        await groups.prepare(ctx, attributes)

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        new["cnm"] = len(new["mid"])
        new["mtv"] = True
        # Defaults TS-0001 9.6.13 gives and ACME shows: abandon a member of the wrong type,
        # and no semantic support.
        new.setdefault("csy", int(ConsistencyStrategy.ABANDON_MEMBER))
        new.setdefault("ssi", False)
        await ctx.memberships.add(ctx.storage, new["ri"], new["mid"])
        return []

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        if changes.get("mid") is not None:
            merged = {**resource.attributes, **changes}
            await groups.prepare(ctx, merged)
            changes["mid"] = merged["mid"]

    async def on_update(
        self, ctx: Context, resource: Resource, values: dict[str, Any]
    ) -> list[Change]:
        members = values.get("mid", resource.attributes["mid"])
        values["cnm"] = len(members)
        if values["cnm"] > values.get("mnm", resource.attributes["mnm"]):
            raise MaxMembersExceeded("the group would have more members than mnm allows")
        before = set(resource.attributes["mid"])
        added = [member for member in members if member not in before]
        await ctx.memberships.add(ctx.storage, resource.ri, added)
        return []


SPEC = resource_spec(
    T.GROUP,
    "grp",
    {
        "mt": Attribute(Kind.INTEGER, O, NP),
        "cnm": Attribute(Kind.COUNT, NP, NP),
        "mnm": Attribute(Kind.COUNT, M, O),
        "mid": Attribute(Kind.STRINGS, M, O),
        "macp": Attribute(Kind.STRINGS),
        "mtv": Attribute(Kind.BOOLEAN, NP, NP),
        "csy": Attribute(Kind.INTEGER, O, NP),
        "ssi": Attribute(Kind.BOOLEAN, O, NP),
        "gn": Attribute(Kind.STRING),
    },
    {T.SUBSCRIPTION},
    rules=GroupRules(),
)

"""<container> (TS-0001 9.6.6): instance counters, retention limits and eviction.

Every rule about a container's content lives here: the counters (`cni`, `cbs`, `st`) kept
exact as instances come and go, the limits (`mni`, `mbs`, `mia`), and one eviction function
that serves both a new instance (create) and lowered limits (update). A <timeSeries> holds
its instances by the same rules (time_series.py uses the functions here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import groups
from cse.core.errors import NotAcceptable
from cse.core.resources.base import NP, Attribute, Kind, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Change, DeleteTree, Put, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request

_EVICTION_PAGE = 32
_INSTANCES = frozenset({int(T.CONTENT_INSTANCE)})


async def evict_to_fit(
    ctx: Context,
    container: Resource,
    count: int,
    total: int,
    max_count: int | None,
    max_size: int | None,
    instance_type: int = T.CONTENT_INSTANCE,
) -> tuple[list[Change], int, int]:
    """Delete the oldest instances until `count` instances of `total` bytes fit the limits.
    Returns the deletions and the count and size left."""

    def over_limits() -> bool:
        return (max_count is not None and count > max_count) or (
            max_size is not None and total > max_size
        )

    changes: list[Change] = []
    victims: list[tuple[Resource, bool]] = []
    evicted = 0
    # A full container evicts one instance per new one: read only what mni says must go,
    # then pages, so a container lowered from 10,000 to 10 instances is not read at once.
    wanted = count - max_count if max_count is not None and count > max_count else 1
    while over_limits():
        page = await ctx.storage.instances(
            container.ri,
            newest=False,
            limit=evicted + min(wanted, _EVICTION_PAGE),
            resource_type=instance_type,
        )
        page = page[evicted:]
        if not page:
            break
        for victim in page:
            if not over_limits():
                break
            changes.append(DeleteTree(victim))
            victims.append((victim, False))
            evicted += 1
            count -= 1
            total -= int(victim.attributes.get("cs", 0))
        wanted = _EVICTION_PAGE
    changes.extend(await groups.forget_deleted_members(ctx, victims))  # an instance may be one
    return changes, count, total


async def admit_instance(
    ctx: Context, holder: Resource, child: dict[str, Any], instance_type: int
) -> tuple[list[Change], dict[str, Any]]:
    """What every holder of instances (container, timeSeries) does with a new one: refuse it
    if it cannot fit, cap its lifetime by `mia`, evict the oldest to make room. Returns the
    evictions and the holder's new counters."""
    attrs = holder.attributes
    size = int(child["cs"])
    max_count, max_size = attrs.get("mni"), attrs.get("mbs")
    # TS-0004 7.3.3.2: an instance larger than mbs is refused (5207), not stored.
    if max_size is not None and size > max_size:
        raise NotAcceptable(f"content of {size} bytes exceeds the mbs {max_size} of {holder.path}")
    if max_count == 0:  # no instance fits, not even the new one: as for mbs above
        raise NotAcceptable(f"the mni of {holder.path} is 0: it keeps no instance")
    max_age = attrs.get("mia")
    if max_age is not None:
        child["et"] = min(child["et"], ctx.timestamp(max_age))
    changes, count, total = await evict_to_fit(
        ctx,
        holder,
        int(attrs.get("cni", 0)) + 1,
        int(attrs.get("cbs", 0)) + size,
        max_count,
        max_size,
        instance_type,
    )
    return changes, {"cni": count, "cbs": total, "lt": child["ct"]}


async def refit(
    ctx: Context,
    holder: Resource,
    values: dict[str, Any],
    instance_type: int,
    *,
    empty: bool = False,
) -> list[Change]:
    """An UPDATE of a holder of instances: evict what no longer fits the new mni / mbs (with
    `empty`, every instance)."""
    attrs = {**holder.attributes, **values}
    max_count, max_size = (0 if empty else attrs.get("mni")), attrs.get("mbs")
    changes, count, total = await evict_to_fit(
        ctx,
        holder,
        int(attrs.get("cni", 0)),
        int(attrs.get("cbs", 0)),
        max_count,
        max_size,
        instance_type,
    )
    if max_size is not None and total > max_size:  # counters out of step with the instances
        raise NotAcceptable(f"{holder.path} cannot fit its content in the new mbs")
    if changes:
        values["cni"], values["cbs"] = count, total
    return changes


def instance_removed(holder: Resource, child: Resource) -> dict[str, Any]:
    """The counters of a holder of instances once `child` is deleted."""
    attrs = holder.attributes
    return {
        "cni": max(0, int(attrs.get("cni", 0)) - 1),
        "cbs": max(0, int(attrs.get("cbs", 0)) - int(child.attributes.get("cs", 0))),
    }


class ContainerRules(TypeRules):
    instance_type = T.CONTENT_INSTANCE

    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        ctx.quotas.apply_container_limits(originator, attributes, create=True)

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        new.update(cni=0, cbs=0, st=0)
        return []

    async def on_child_added(
        self, ctx: Context, resource: Resource, child: dict[str, Any]
    ) -> list[Change]:
        if child["ty"] != T.CONTENT_INSTANCE:
            return []
        changes, counters = await admit_instance(ctx, resource, child, T.CONTENT_INSTANCE)
        state = int(resource.attributes.get("st", 0)) + 1
        child["st"] = state
        changes.append(Put(resource.with_attributes(**counters, st=state)))
        return changes

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        ctx.quotas.apply_container_limits(originator, changes, create=False)

    async def on_update(
        self, ctx: Context, resource: Resource, values: dict[str, Any]
    ) -> list[Change]:
        values["st"] = int(resource.attributes.get("st", 0)) + 1
        # TS-0001 R4 disableRetrieval: switched from true to false, the instances written
        # while retrieval was off are deleted (as ACME does; removing disr keeps them).
        reopened = bool(resource.attributes.get("disr")) and values.get("disr") is False
        return await refit(ctx, resource, values, T.CONTENT_INSTANCE, empty=reopened)

    def hidden_children(self, resource: Resource) -> frozenset[int]:
        # disr: no instance can be read while it is set (TS-0001 R4), not even in a listing
        # or a discovery, where ACME leaves them out too.
        return _INSTANCES if resource.attributes.get("disr") else frozenset()

    def on_child_removed(self, resource: Resource, child: Resource) -> dict[str, Any]:
        if child.ty != T.CONTENT_INSTANCE:
            return {}
        return instance_removed(resource, child)


# The limits and counters every holder of instances keeps (container, timeSeries).
RETENTION = {
    "mni": Attribute(Kind.COUNT),
    "mbs": Attribute(Kind.COUNT),
    "mia": Attribute(Kind.COUNT),
    "cni": Attribute(Kind.COUNT, NP, NP),
    "cbs": Attribute(Kind.COUNT, NP, NP),
}

SPEC = resource_spec(
    T.CONTAINER,
    "cnt",
    {
        **RETENTION,
        "st": Attribute(Kind.COUNT, NP, NP),
        "li": Attribute(Kind.STRING, NP, NP),
        "disr": Attribute(Kind.BOOLEAN),
        "or": Attribute(Kind.STRING),
        # custodian (TS-0001 R4): an AE-ID or CSE-ID that takes the creator's place in the
        # default access rule (cse/core/access.py); like ACME, any ID string is accepted.
        "cstn": Attribute(Kind.STRING),
    },
    {T.CONTENT_INSTANCE, T.CONTAINER, T.SUBSCRIPTION, T.TIME_SERIES, T.FLEX_CONTAINER},
    rules=ContainerRules(),
)

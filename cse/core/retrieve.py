"""RETRIEVE of a resource or of a container's latest / oldest instance, per result content."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cse.core import groups, polling
from cse.core.access import Permission
from cse.core.addressing import Address
from cse.core.discovery import matches
from cse.core.errors import NotFound, OperationNotAllowed, OriginatorHasNoPrivilege
from cse.core.primitives import Request, Response
from cse.core.registry import SPECS, spec_of
from cse.core.representation import (
    check_result_content,
    child_reference,
    nest_children,
    partial,
    wrap,
)
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResultContent as RCN
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context

_RETRIEVE_RESULTS = {
    RCN.ATTRIBUTES,
    RCN.ATTRIBUTES_AND_CHILD_RESOURCES,
    RCN.ATTRIBUTES_AND_CHILD_REFERENCES,
    RCN.CHILD_REFERENCES,
    RCN.CHILD_RESOURCES,
}
_WITH_ALL_ATTRIBUTES = {RCN.ATTRIBUTES_AND_CHILD_RESOURCES, RCN.ATTRIBUTES_AND_CHILD_REFERENCES}
# Child listings are bounded so one request cannot pull a 100,000-instance container.
MAX_CHILDREN = 1000


async def resolve_virtual(
    ctx: Context, address: Address, originator: str, operation: Operation
) -> tuple[Resource, Resource]:
    """For `…/la` and `…/ol`: (the container, its newest or oldest instance)."""
    if address.virtual == "pcu":
        raise OperationNotAllowed("a pollingChannel's pcu can only be polled and notified")
    container = await ctx.lookup(Address(path=address.path, ri=address.ri))
    instance_type = SPECS[container.ty].rules.instance_type
    if instance_type is None:
        raise NotFound(f"{container.path} has no {address.virtual}")
    if container.attributes.get("disr"):
        raise OperationNotAllowed(f"retrieval is disabled (disr) on {container.path}")
    permission = await ctx.access.check(originator, operation, container)
    found = await ctx.storage.instances(
        container.ri, newest=address.virtual == "la", limit=1, resource_type=instance_type
    )
    if not found or ctx.is_expired(found[0]):
        raise NotFound(f"{container.path} holds no instance")
    _check_limited(permission, originator, found[0], found[0].attributes)
    return container, found[0]


def _check_limited(
    permission: Permission, originator: str, resource: Resource, shown: Iterable[str]
) -> None:
    """A grant limited to some attributes (aca) covers a request only if everything it
    would show is among them."""
    if permission.attributes is not None and not set(shown) <= permission.attributes:
        raise OriginatorHasNoPrivilege(
            f"originator {originator} may access only some attributes of {resource.path}"
        )


async def handle_retrieve(
    ctx: Context, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "fopt":
        return await groups.fan_out(ctx, request, originator, address)
    if address.virtual == "pcu":
        return await polling.poll(ctx, request, originator, address)
    result_content = check_result_content(request.result_content, _RETRIEVE_RESULTS, RCN.ATTRIBUTES)
    if address.virtual is not None:
        _, instance = await resolve_virtual(ctx, address, originator, Operation.RETRIEVE)
        instance = await _retrieved(ctx, instance)
        return ctx.response(request, ResponseStatusCode.OK, _render(instance, request))
    resource = await ctx.lookup(address)
    permission = await ctx.access.check(
        originator, Operation.RETRIEVE, resource, request.attribute_list or None
    )
    if result_content in _WITH_ALL_ATTRIBUTES:  # these show every attribute, atrl or not
        _check_limited(permission, originator, resource, resource.attributes)
    await ctx.notifier.on_retrieved(resource, originator)  # operation monitoring (enc/om)
    rules = spec_of(resource).rules
    await rules.check_retrieve(ctx, resource)
    resource = rules.shown(ctx, await _retrieved(ctx, resource))
    if result_content == RCN.ATTRIBUTES:
        content = _render(resource, request)
    else:
        content = await _with_children(ctx, request, originator, resource, result_content)
    await ctx.storage.sync()  # never show what is not yet durable
    return ctx.response(request, ResponseStatusCode.OK, content)


async def _retrieved(ctx: Context, resource: Resource) -> Resource:
    """Apply what a RETRIEVE changes (a deletion count), returning the resource as it was
    before; a resource that a concurrent RETRIEVE has just used up is gone (4004)."""
    rules = spec_of(resource).rules
    if not rules.changes_on_retrieve(resource):
        return resource
    async with ctx.write_lock:
        current = await ctx.storage.get(resource.ri)
        if current is None or ctx.is_expired(current):
            raise NotFound(f"{resource.path} does not exist")
        changes = await rules.on_retrieved(ctx, current)
        await ctx.storage.apply(changes)
    await ctx.durable(changes)
    return current


def _render(resource: Resource, request: Request) -> dict[str, Any]:
    if request.attribute_list:
        return partial(resource, request.attribute_list)
    return wrap(resource)


async def _with_children(
    ctx: Context,
    request: Request,
    originator: str,
    resource: Resource,
    result_content: RCN,
) -> dict[str, Any]:
    criteria = request.filter_criteria
    limit = MAX_CHILDREN
    if criteria is not None and criteria.limit is not None:
        limit = min(limit, criteria.limit)
    children: list[Resource] = []
    spec = spec_of(resource)
    hidden = spec.rules.hidden_children(resource)
    types = spec.children - hidden if hidden else None
    for child in await ctx.storage.children(resource.ri, types):
        if ctx.is_expired(child) or (criteria is not None and not matches(child, criteria)):
            continue
        if not await ctx.access.allowed(originator, Operation.RETRIEVE, child):
            continue
        children.append(child)
        if len(children) >= limit:
            break
    key = wrap(resource)
    ((wrapper, attributes),) = key.items()
    if result_content == RCN.ATTRIBUTES_AND_CHILD_RESOURCES:
        return {wrapper: nest_children(attributes, children)}
    if result_content == RCN.ATTRIBUTES_AND_CHILD_REFERENCES:
        return {wrapper: {**attributes, "ch": [child_reference(c) for c in children]}}
    if result_content == RCN.CHILD_REFERENCES:
        return {"m2m:rrl": {"rrf": [child_reference(c) for c in children]}}
    return nest_children(None, children)  # CHILD_RESOURCES

"""DELETE: a resource and its subtree, with the notices deletion owes subscribers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cse.core import groups
from cse.core.addressing import Address
from cse.core.errors import OperationNotAllowed
from cse.core.primitives import Request, Response
from cse.core.registry import spec_of
from cse.core.representation import check_result_content, wrap
from cse.core.retrieve import resolve_virtual
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Change, DeleteTree, Put, Resource

if TYPE_CHECKING:
    from cse.core.context import Context

_DELETE_RESULTS = {RCN.NOTHING, RCN.ATTRIBUTES}


async def handle_delete(
    ctx: Context, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "fopt":
        return await groups.fan_out(ctx, request, originator, address)
    result_content = check_result_content(request.result_content, _DELETE_RESULTS, RCN.NOTHING)
    if address.virtual is not None:
        _, resource = await resolve_virtual(ctx, address, originator, Operation.DELETE)
    else:
        resource = await ctx.lookup(address)
        refusal = spec_of(resource).rules.deleted_by_request
        if refusal is not None:
            raise OperationNotAllowed(refusal)
        await ctx.access.check(originator, Operation.DELETE, resource)
        await spec_of(resource).rules.check_delete(ctx, resource)
    async with ctx.write_lock:
        changes = await deletion_changes(ctx, resource, originator)
        await ctx.storage.apply(changes)
    await ctx.durable(changes)
    content = wrap(resource) if result_content == RCN.ATTRIBUTES else None
    return ctx.response(request, ResponseStatusCode.DELETED, content)


async def deletion_changes(
    ctx: Context, resource: Resource, originator: str | None = None
) -> list[Change]:
    """Everything that deleting `resource` implies (used by DELETE, by `originator`, and by
    expiry)."""
    current = await ctx.storage.get(resource.ri)
    if current is None:
        return []
    parent = await ctx.storage.get(current.pi)
    changes: list[Change] = [DeleteTree(current)]
    if parent is not None:
        parent_changes = spec_of(parent).rules.on_child_removed(parent, current)
        if parent_changes:
            changes.append(Put(parent.with_attributes(**parent_changes)))
    changes.extend(
        await groups.forget_deleted_members(ctx, [(current, bool(spec_of(current).children))])
    )
    doomed = await ctx.storage.descendants(current.path, types=[T.SUBSCRIPTION])
    if current.ty == T.SUBSCRIPTION:
        doomed.append(current)
    changes.extend(await ctx.notifier.on_deleted(current, parent, doomed, originator))
    return changes

"""DELETE: a resource and its subtree, with the notices deletion owes subscribers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cse.core import groups
from cse.core.addressing import Address
from cse.core.errors import OperationNotAllowed
from cse.core.primitives import Request, Response
from cse.core.representation import check_result_content, wrap
from cse.core.retrieve import resolve_virtual
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Change, DeleteTree, Put, Resource

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

_DELETE_RESULTS = {RCN.NOTHING, RCN.ATTRIBUTES}


async def handle_delete(
    cse: CommonServicesEntity, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "fopt":
        return await groups.fan_out(cse, request, originator, address)
    result_content = check_result_content(request.result_content, _DELETE_RESULTS, RCN.NOTHING)
    if address.virtual is not None:
        _, resource = await resolve_virtual(cse, address, originator, Operation.DELETE)
    else:
        resource = await cse.lookup(address)
        if resource.ty == T.CSE_BASE:
            raise OperationNotAllowed("the CSEBase cannot be deleted")
        await cse.access.check(originator, Operation.DELETE, resource)
    async with cse.write_lock:
        changes = await deletion_changes(cse, resource)
        await cse.storage.apply(changes)
    await cse.durable(changes)
    content = wrap(resource) if result_content == RCN.ATTRIBUTES else None
    return cse.response(request, ResponseStatusCode.DELETED, content)


async def deletion_changes(cse: CommonServicesEntity, resource: Resource) -> list[Change]:
    """Everything that deleting `resource` implies (used by DELETE and by expiry)."""
    current = await cse.storage.get(resource.ri)
    if current is None:
        return []
    parent = await cse.storage.get(current.pi)
    changes: list[Change] = [DeleteTree(current)]
    if current.ty == T.CONTENT_INSTANCE and parent is not None and parent.ty == T.CONTAINER:
        size = int(current.attributes.get("cs", 0))
        changes.append(
            Put(
                parent.with_attributes(
                    cni=max(0, int(parent.attributes.get("cni", 0)) - 1),
                    cbs=max(0, int(parent.attributes.get("cbs", 0)) - size),
                )
            )
        )
    doomed = await cse.storage.descendants(current.path, types=[T.SUBSCRIPTION])
    if current.ty == T.SUBSCRIPTION:
        doomed.append(current)
    changes.extend(await cse.notifier.on_deleted(current, parent, doomed))
    return changes

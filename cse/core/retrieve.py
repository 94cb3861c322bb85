"""RETRIEVE of a resource or of a container's latest / oldest instance, per result content."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core import groups
from cse.core.addressing import Address
from cse.core.discovery import matches
from cse.core.errors import NotFound, OperationNotAllowed
from cse.core.primitives import Request, Response
from cse.core.representation import (
    check_result_content,
    child_reference,
    nest_children,
    partial,
    wrap,
)
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

_RETRIEVE_RESULTS = {
    RCN.ATTRIBUTES,
    RCN.ATTRIBUTES_AND_CHILD_RESOURCES,
    RCN.ATTRIBUTES_AND_CHILD_REFERENCES,
    RCN.CHILD_REFERENCES,
    RCN.CHILD_RESOURCES,
}
# Child listings are bounded so one request cannot pull a 100,000-instance container.
MAX_CHILDREN = 1000


async def resolve_virtual(
    cse: CommonServicesEntity, address: Address, originator: str, operation: Operation
) -> tuple[Resource, Resource]:
    """For `…/la` and `…/ol`: (the container, its newest or oldest instance)."""
    container = await cse.lookup(Address(path=address.path, ri=address.ri))
    if container.ty != T.CONTAINER:
        raise NotFound(f"{container.path} has no {address.virtual}")
    if container.attributes.get("disr"):
        raise OperationNotAllowed(f"retrieval is disabled (disr) on {container.path}")
    await cse.access.check(originator, operation, container)
    found = await cse.storage.instances(container.ri, newest=address.virtual == "la", limit=1)
    if not found or cse.is_expired(found[0]):
        raise NotFound(f"{container.path} holds no content instance")
    return container, found[0]


async def handle_retrieve(
    cse: CommonServicesEntity, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "fopt":
        return await groups.fan_out(cse, request, originator, address)
    result_content = check_result_content(request.result_content, _RETRIEVE_RESULTS, RCN.ATTRIBUTES)
    if address.virtual is not None:
        _, instance = await resolve_virtual(cse, address, originator, Operation.RETRIEVE)
        return cse.response(request, ResponseStatusCode.OK, _render(instance, request))
    resource = await cse.lookup(address)
    await cse.access.check(originator, Operation.RETRIEVE, resource)
    if resource.ty == T.CONTENT_INSTANCE:
        parent = await cse.storage.get(resource.pi)
        if parent is not None and parent.attributes.get("disr"):
            raise OperationNotAllowed(f"retrieval is disabled (disr) on {parent.path}")
    if result_content == RCN.ATTRIBUTES:
        content = _render(resource, request)
    else:
        content = await _with_children(cse, request, originator, resource, result_content)
    await cse.storage.sync()  # never show what is not yet durable
    return cse.response(request, ResponseStatusCode.OK, content)


def _render(resource: Resource, request: Request) -> dict[str, Any]:
    if request.attribute_list:
        return partial(resource, request.attribute_list)
    return wrap(resource)


async def _with_children(
    cse: CommonServicesEntity,
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
    for child in await cse.storage.children(resource.ri):
        if cse.is_expired(child) or (criteria is not None and not matches(child, criteria)):
            continue
        if not await cse.access.allowed(originator, Operation.RETRIEVE, child):
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

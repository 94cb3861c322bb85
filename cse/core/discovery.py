"""Discovery (RETRIEVE with fu=1) and the filter criteria shared with conditional retrieval."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core.addressing import Address
from cse.core.errors import BadRequest
from cse.core.primitives import FilterCriteria, Request, Response
from cse.core.representation import child_reference
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResultContent as RCN
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

MAX_DISCOVERY_RESULTS = 10_000


def _content_type(resource: Resource) -> str | None:
    cnf = resource.attributes.get("cnf")
    return str(cnf).split(":", 1)[0] if cnf else None


def _conditions(resource: Resource, fc: FilterCriteria) -> list[bool]:
    """One boolean per condition present in the criteria."""
    a = resource.attributes
    results: list[bool] = []
    if fc.resource_types:
        results.append(resource.ty in fc.resource_types)
    if fc.labels:
        labels = a.get("lbl") or []
        results.append(any(label in labels for label in fc.labels))
    if fc.created_before is not None:
        results.append(a["ct"] < fc.created_before)
    if fc.created_after is not None:
        results.append(fc.created_after <= a["ct"])
    if fc.modified_since is not None:
        results.append(fc.modified_since <= a["lt"])
    if fc.unmodified_since is not None:
        results.append(a["lt"] < fc.unmodified_since)
    if fc.state_tag_smaller is not None:
        results.append("st" in a and a["st"] < fc.state_tag_smaller)
    if fc.state_tag_bigger is not None:
        results.append("st" in a and fc.state_tag_bigger <= a["st"])
    if fc.expire_before is not None:
        results.append(resource.et is not None and resource.et < fc.expire_before)
    if fc.expire_after is not None:
        results.append(resource.et is not None and fc.expire_after <= resource.et)
    if fc.size_above is not None:
        results.append("cs" in a and fc.size_above <= a["cs"])
    if fc.size_below is not None:
        results.append("cs" in a and a["cs"] < fc.size_below)
    if fc.content_types:
        results.append(_content_type(resource) in fc.content_types)
    for name, value in fc.attributes:
        results.append(_attribute_matches(a.get(name), value))
    return results


def _attribute_matches(actual: Any, wanted: str) -> bool:
    if actual is None:
        return False
    if isinstance(actual, list):
        return any(_attribute_matches(item, wanted) for item in actual)
    text = str(actual).lower() if isinstance(actual, bool) else str(actual)
    if wanted.endswith("*"):
        return text.startswith(wanted[:-1])
    return text == wanted


def matches(resource: Resource, criteria: FilterCriteria) -> bool:
    results = _conditions(resource, criteria)
    if not results:
        return True
    return any(results) if criteria.filter_operation == 2 else all(results)


async def handle_discovery(
    cse: CommonServicesEntity, request: Request, originator: str, address: Address
) -> Response:
    criteria = request.filter_criteria
    assert criteria is not None
    if address.virtual is not None:
        raise BadRequest("discovery cannot start at a virtual resource")
    result_content = request.result_content
    if result_content not in (None, RCN.ATTRIBUTES, RCN.CHILD_REFERENCES):
        raise BadRequest("discovery supports result content 1 (ID list) or 6 (references)")
    root = await cse.lookup(address)
    await cse.access.check(originator, Operation.DISCOVER, root)
    types = criteria.resource_types or None
    if criteria.filter_operation == 2 and criteria.has_conditions:
        types = None  # with OR, a type condition alone must not narrow the search
    candidates = await cse.storage.descendants(root.path, types=types, max_depth=criteria.level)
    limit = MAX_DISCOVERY_RESULTS if criteria.limit is None else criteria.limit
    limit = min(limit, MAX_DISCOVERY_RESULTS)
    skip = max(0, (criteria.offset or 1) - 1) if criteria.offset is not None else 0
    found: list[Resource] = []
    for resource in candidates:
        if cse.is_expired(resource) or not matches(resource, criteria):
            continue
        if not await cse.access.allowed(originator, Operation.DISCOVER, resource):
            continue
        if skip:
            skip -= 1
            continue
        if len(found) >= limit:
            break
        found.append(resource)
    await cse.storage.sync()
    if result_content == RCN.CHILD_REFERENCES:
        content: dict[str, Any] = {"m2m:rrl": {"rrf": [child_reference(r) for r in found]}}
    elif request.discovery_result_type == 2:
        content = {"m2m:uril": [r.ri for r in found]}
    else:
        content = {"m2m:uril": [r.path for r in found]}
    return cse.response(request, ResponseStatusCode.OK, content)

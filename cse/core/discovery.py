"""Discovery (RETRIEVE with fu=1) and the filter criteria shared with conditional retrieval.

Discovery walks the tree below its target depth first, one bounded page of children at a
time (`Storage.children_page`), so `lim`, `lvl` and `ofst` stop the reading itself, a large
tree never sits in memory, and the event loop serves other requests between pages. Answers
stop at a result cap and say so (cnst partial, cnot where to go on).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cse.core.addressing import Address
from cse.core.errors import BadRequest
from cse.core.limits import LimitCounters
from cse.core.primitives import FilterCriteria, Request, Response
from cse.core.registry import SPECS, spec_of
from cse.core.representation import child_reference
from cse.core.types import ContentStatus, Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.core.types import ResultContent as RCN
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context

# Resources read per storage call, and about how much work between two turns of the event loop
# for other requests: 50 are read, decoded and judged in about 0.5 ms here, and 10 discoveries
# at once stalled the loop 4 times less than with 200 (bench/bench_discovery.py).
CHUNK = 50
# Only two discoveries walk at once (Quotas.discovery_walks), the others wait their turn:
# every walker adds its chunk to everyone else's wait for the loop, so this bounds that wait
# however many discoveries clients send.


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


def _reachable_types() -> dict[int, frozenset[int]]:
    """For each resource type, every type that may appear anywhere below it."""
    below: dict[int, set[int]] = {ty: set(spec.children) for ty, spec in SPECS.items()}
    changed = True
    while changed:
        changed = False
        for found in below.values():
            extra = set().union(*(below.get(child, set()) for child in found)) - found
            if extra:
                found |= extra
                changed = True
    return {ty: frozenset(found) for ty, found in below.items()}


_REACHABLE = _reachable_types()


@dataclass(frozen=True, slots=True)
class _Search:
    """What a walk looks for: which types it returns, and how deep (None: everything)."""

    types: frozenset[int] | None
    max_depth: int | None
    # Leave out the children a parent hides (a container's instances while disr is set);
    # counting for quotas sees everything.
    visible_only: bool = True

    def worth_entering(self, resource_type: int, depth: int) -> bool:
        if self.max_depth is not None and depth >= self.max_depth:
            return False
        below = _REACHABLE.get(resource_type, frozenset())
        return bool(below) and (self.types is None or bool(below & self.types))

    def child_types(self, parent: Resource) -> frozenset[int] | None:
        """The children worth reading: wanted ones, and those that may lead to one."""
        spec = spec_of(parent)
        hidden = spec.rules.hidden_children(parent) if self.visible_only else frozenset()
        if self.types is None:
            return spec.children - hidden if hidden else None
        wanted = self.types
        return frozenset(
            child
            for child in spec.children - hidden
            if child in wanted or _REACHABLE.get(child, frozenset()) & wanted
        )


@dataclass(slots=True)
class _Level:
    parent: Resource
    depth: int  # of the parent, relative to the root
    cursor: tuple[int, int] | None = None
    pending: deque[Resource] = field(default_factory=deque)
    exhausted: bool = False


async def walk_below(
    ctx: Context,
    root: Resource,
    search: _Search,
    counters: LimitCounters | None = None,
    chunk: int = CHUNK,
) -> AsyncIterator[Resource]:
    """Everything below `root` that `search` wants, depth first, siblings by (type, creation).

    Reads at most `chunk` resources per storage call, never more than a level's worth ahead,
    and lets the event loop run other requests after about `chunk` resources of work. Expired
    resources are neither returned nor entered.
    """
    storage = ctx.storage
    stack = [_Level(root, 0)]
    work = 0
    while stack:
        level = stack[-1]
        if not level.pending:
            if level.exhausted:
                stack.pop()
                continue
            page = await storage.children_page(
                level.parent.ri,
                types=search.child_types(level.parent),
                after=level.cursor,
                limit=chunk,
            )
            if counters is not None:
                counters.discovery_reads += 1
                counters.discovery_rows_read += len(page)
            level.exhausted = len(page) < chunk
            if page:
                level.cursor = (page[-1].ty, page[-1].seq)
                level.pending.extend(page)
            work += len(page) + 1
            if work >= chunk:
                work = 0
                if counters is not None:
                    counters.discovery_yields += 1
                await asyncio.sleep(0)
            continue
        resource = level.pending.popleft()
        if ctx.is_expired(resource):
            continue
        if search.types is None or resource.ty in search.types:
            yield resource
        if search.worth_entering(resource.ty, level.depth + 1):
            stack.append(_Level(resource, level.depth + 1))


async def count_below(
    ctx: Context, root: Resource, *, exclude: frozenset[int], stop_at: int
) -> int:
    """How many resources below `root` are not of the types `exclude`, up to `stop_at`."""
    search = _Search(frozenset(t for t in SPECS if t not in exclude), None, visible_only=False)
    count = 0
    async for _ in walk_below(ctx, root, search):
        count += 1
        if count >= stop_at:
            break
    return count


class _DiscoverRights:
    """DISCOVER rights per candidate; a contentInstance has its container's, asked once."""

    def __init__(self, ctx: Context, originator: str) -> None:
        self._access = ctx.access
        self._originator = originator
        self._by_container: dict[str, bool] = {}

    async def allow(self, resource: Resource) -> bool:
        if resource.ty != T.CONTENT_INSTANCE:
            return await self._access.allowed(self._originator, Operation.DISCOVER, resource)
        known = self._by_container.get(resource.pi)
        if known is None:
            known = await self._access.allowed(self._originator, Operation.DISCOVER, resource)
            self._by_container[resource.pi] = known
        return known


async def handle_discovery(
    ctx: Context, request: Request, originator: str, address: Address
) -> Response:
    criteria = request.filter_criteria
    assert criteria is not None
    if address.virtual is not None:
        raise BadRequest("discovery cannot start at a virtual resource")
    result_content = request.result_content
    if result_content not in (None, RCN.ATTRIBUTES, RCN.CHILD_REFERENCES):
        raise BadRequest("discovery supports result content 1 (ID list) or 6 (references)")
    root = await ctx.lookup(address)
    await ctx.access.check(originator, Operation.DISCOVER, root)
    types = frozenset(criteria.resource_types) or None
    if criteria.filter_operation == 2 and criteria.has_conditions:
        types = None  # with OR, a type condition alone must not narrow the search
    cap = ctx.settings.limits.discovery_result_cap
    wanted = cap if criteria.limit is None else min(criteria.limit, cap)
    first = criteria.offset or 1  # ofst counts matching results from 1
    skip = first - 1
    rights = _DiscoverRights(ctx, originator)
    found: list[Resource] = []
    more = False
    counters = ctx.quotas.counters
    walks = ctx.quotas.discovery_walks
    if walks.locked():
        counters.discovery_queued += 1
    async with walks:
        async for resource in walk_below(ctx, root, _Search(types, criteria.level), counters):
            if not matches(resource, criteria) or not await rights.allow(resource):
                continue
            if skip:
                skip -= 1
            elif len(found) < wanted:
                found.append(resource)
            else:
                more = True
                break
    await ctx.storage.sync()
    if result_content == RCN.CHILD_REFERENCES:
        content: dict[str, Any] = {"m2m:rrl": {"rrf": [child_reference(r) for r in found]}}
    elif request.discovery_result_type == 2:
        content = {"m2m:uril": [r.ri for r in found]}
    else:
        content = {"m2m:uril": [r.path for r in found]}
    if not more:
        return ctx.response(request, ResponseStatusCode.OK, content)
    # TS-0001 8.1.3: partial content, and the offset to ask from for the rest.
    counters.discovery_truncated += 1
    return ctx.response(
        request,
        ResponseStatusCode.OK,
        content,
        content_status=ContentStatus.PARTIAL_CONTENT,
        content_offset=first + len(found),
    )

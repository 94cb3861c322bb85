"""The reference backend: dictionaries in memory. Used by most tests; nothing survives exit."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from cse.storage.base import (
    Change,
    DeleteTree,
    Dequeue,
    Enqueue,
    ForgetRequests,
    Put,
    QueuedNotification,
    RecordRequest,
    ReserveSequence,
    Resource,
    Storage,
    StorageError,
    StorageHealth,
)

_CONTENT_INSTANCE = 4


class MemoryStorage(Storage):
    def __init__(self) -> None:
        self._by_ri: dict[str, Resource] = {}
        self._by_path: dict[str, str] = {}
        # pi -> ri -> None: an insertion-ordered set of child IDs, and the same per type
        self._children: dict[str, dict[str, None]] = {}
        self._children_by_type: dict[tuple[str, int], dict[str, None]] = {}
        self._child_types: dict[str, set[int]] = {}  # pi -> the types its children ever had
        self._outbox: dict[int, QueuedNotification] = {}
        self._requests: dict[str, tuple[str, float]] = {}
        self._last_seq = 0
        self._database_id = os.urandom(8).hex()
        self.health = StorageHealth("memory storage")

    async def close(self) -> None:
        pass

    async def database_id(self) -> str:
        return self._database_id

    async def get(self, ri: str) -> Resource | None:
        return self._by_ri.get(ri)

    async def get_by_path(self, path: str) -> Resource | None:
        ri = self._by_path.get(path)
        return None if ri is None else self._by_ri[ri]

    def _child_resources(self, pi: str) -> list[Resource]:
        return [self._by_ri[ri] for ri in self._children.get(pi, {})]

    async def children(
        self, pi: str, types: Iterable[int] | None = None, limit: int | None = None
    ) -> list[Resource]:
        if types is None:
            found = self._child_resources(pi)
        else:
            found = [
                self._by_ri[ri]
                for ty in set(types)
                for ri in self._children_by_type.get((pi, ty), {})
            ]
            found.sort(key=lambda r: r.seq)
        return found if limit is None else found[:limit]

    async def children_page(
        self,
        pi: str,
        *,
        types: Iterable[int] | None = None,
        after: tuple[int, int] | None = None,
        limit: int,
    ) -> list[Resource]:
        after_type, after_seq = after or (0, 0)
        present = self._child_types.get(pi, set())
        wanted = present if types is None else present & set(types)
        found: list[Resource] = []
        for resource_type in sorted(wanted):
            if resource_type < after_type:
                continue
            # Children of one type are kept in creation (seq) order; skipping to the cursor is
            # linear, which a reference backend can afford.
            for ri in self._children_by_type.get((pi, resource_type), {}):
                if len(found) >= limit:
                    return found
                resource = self._by_ri[ri]
                if resource_type > after_type or resource.seq > after_seq:
                    found.append(resource)
        return found

    async def count_children(self, pi: str, resource_type: int) -> int:
        return len(self._children_by_type.get((pi, resource_type), {}))

    async def descendants(
        self, path: str, types: Iterable[int] | None = None, max_depth: int | None = None
    ) -> list[Resource]:
        root = await self.get_by_path(path)
        if root is None:
            return []
        wanted = None if types is None else set(types)
        found: list[Resource] = []
        frontier = [root]
        level = 0
        while frontier and (max_depth is None or level < max_depth):
            level += 1
            next_frontier: list[Resource] = []
            for parent in frontier:
                next_frontier.extend(self._child_resources(parent.ri))
            found.extend(r for r in next_frontier if wanted is None or r.ty in wanted)
            frontier = next_frontier
        found.sort(key=lambda r: r.seq)
        return found

    async def instances(
        self, pi: str, *, newest: bool, limit: int, resource_type: int = _CONTENT_INSTANCE
    ) -> list[Resource]:
        ids = self._children_by_type.get((pi, resource_type), {})
        ordered = reversed(ids) if newest else iter(ids)
        found: list[Resource] = []
        for ri in ordered:
            found.append(self._by_ri[ri])
            if len(found) >= limit:
                break
        return found

    async def find_child(
        self, pi: str, resource_type: int, attribute: str, value: str
    ) -> Resource | None:
        for ri in self._children_by_type.get((pi, resource_type), {}):
            resource = self._by_ri[ri]
            if resource.attributes.get(attribute) == value:
                return resource
        return None

    async def created_since(self, seq: int, resource_type: int, limit: int) -> list[Resource]:
        # A linear scan: the memory backend serves tests, not deployments.
        found = [r for r in self._by_ri.values() if r.seq > seq and r.ty == resource_type]
        found.sort(key=lambda r: r.seq)
        return found[:limit]

    async def last_seq(self) -> int:
        return self._last_seq

    async def expired(self, now: str, limit: int) -> list[Resource]:
        found = [r for r in self._by_ri.values() if r.et is not None and r.et < now]
        found.sort(key=lambda r: str(r.et))
        return found[:limit]

    async def queued_notifications(self, limit: int) -> list[QueuedNotification]:
        return list(self._outbox.values())[:limit]

    async def recorded_request(self, key: str) -> str | None:
        found = self._requests.get(key)
        return None if found is None else found[0]

    async def apply(self, changes: Sequence[Change]) -> None:
        # Check first so a batch is applied whole or not at all (as SQLite's savepoint does).
        claimed: dict[str, str] = {}
        for change in changes:
            if isinstance(change, Put):
                resource = change.resource
                holder = claimed.get(resource.path, self._by_path.get(resource.path))
                if holder is not None and holder != resource.ri:
                    raise StorageError(f"path {resource.path} is taken by {holder}")
                claimed[resource.path] = resource.ri
        for change in changes:
            if isinstance(change, Put):
                self._put(change.resource)
            elif isinstance(change, DeleteTree):
                self._delete_tree(change.resource.ri)
            elif isinstance(change, Enqueue):
                self._outbox[change.notification.id] = change.notification
            elif isinstance(change, Dequeue):
                for number in change.ids:
                    self._outbox.pop(number, None)
            elif isinstance(change, RecordRequest):
                self._requests[change.key] = (change.resource_id, change.at)
            elif isinstance(change, ForgetRequests):
                self._requests = {k: v for k, v in self._requests.items() if v[1] >= change.before}
            elif isinstance(change, ReserveSequence):
                self._last_seq = max(self._last_seq, change.floor)

    def _put(self, resource: Resource) -> None:
        existing = self._by_ri.get(resource.ri)
        if existing is not None:
            resource.seq = existing.seq
        else:
            self._last_seq += 1
            resource.seq = self._last_seq
        self._by_ri[resource.ri] = resource
        self._by_path[resource.path] = resource.ri
        if existing is None and resource.pi:
            self._children.setdefault(resource.pi, {})[resource.ri] = None
            self._children_by_type.setdefault((resource.pi, resource.ty), {})[resource.ri] = None
            self._child_types.setdefault(resource.pi, set()).add(resource.ty)

    def _delete_tree(self, ri: str) -> None:
        resource = self._by_ri.pop(ri, None)
        if resource is None:
            return
        self._by_path.pop(resource.path, None)
        for siblings in (
            self._children.get(resource.pi),
            self._children_by_type.get((resource.pi, resource.ty)),
        ):
            if siblings is not None:
                siblings.pop(ri, None)
        for child in list(self._children.pop(ri, {})):
            self._delete_tree(child)
        for child_type in self._child_types.pop(ri, ()):
            self._children_by_type.pop((ri, child_type), None)

    async def sync(self) -> None:
        pass

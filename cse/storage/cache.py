"""A bounded cache of non-instance resources, by resource ID and by structured path, and of
the subscriptions of a resource (read at every CREATE below it, to find who to notify).

Instances (contentInstances, timeSeriesInstances) are many and read about once: they are not
kept. The least recently used entries leave first.
"""

from __future__ import annotations

from collections import OrderedDict

from cse.storage.base import Resource

INSTANCE_TYPES = frozenset({4, 30})
SUBSCRIPTION = 23


def subtree_bounds(path: str) -> tuple[str, str]:
    """Every descendant path lies strictly between these (byte order; '0' follows '/')."""
    return path + "/", path + "0"


class ResourceCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self._by_ri: OrderedDict[str, Resource] = OrderedDict()
        self._ri_by_path: OrderedDict[str, str] = OrderedDict()
        self._subscriptions: OrderedDict[str, list[Resource]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_ri)

    def get(self, ri: str) -> Resource | None:
        return self._by_ri.get(ri)

    def get_by_path(self, path: str) -> Resource | None:
        ri = self._ri_by_path.get(path)
        return None if ri is None else self._by_ri.get(ri)

    def remember(self, resource: Resource) -> None:
        if resource.ty in INSTANCE_TYPES or self.size <= 0:
            return
        self._by_ri[resource.ri] = resource
        self._by_ri.move_to_end(resource.ri)
        self._ri_by_path[resource.path] = resource.ri
        self._ri_by_path.move_to_end(resource.path)
        while len(self._by_ri) > self.size:
            self._by_ri.popitem(last=False)
        while len(self._ri_by_path) > self.size:
            self._ri_by_path.popitem(last=False)

    def forget(self, ri: str) -> None:
        resource = self._by_ri.pop(ri, None)
        if resource is not None and self._ri_by_path.get(resource.path) == ri:
            del self._ri_by_path[resource.path]

    def forget_tree(self, path: str) -> None:
        """Drop the resource at `path` and everything cached below it."""
        low, high = subtree_bounds(path)
        for cached in [p for p in self._ri_by_path if p == path or low < p < high]:
            self._by_ri.pop(self._ri_by_path.pop(cached), None)

    def subscriptions_of(self, pi: str) -> list[Resource] | None:
        found = self._subscriptions.get(pi)
        if found is None:
            return None
        self._subscriptions.move_to_end(pi)
        return list(found)

    def remember_subscriptions(self, pi: str, subscriptions: list[Resource]) -> None:
        if self.size <= 0:
            return
        self._subscriptions[pi] = list(subscriptions)
        self._subscriptions.move_to_end(pi)
        while len(self._subscriptions) > self.size:
            self._subscriptions.popitem(last=False)

    def forget_subscriptions(self, pi: str | None = None) -> None:
        """Of one resource, or (None) of every resource."""
        if pi is None:
            self._subscriptions.clear()
        else:
            self._subscriptions.pop(pi, None)

    def changed(self, resource: Resource) -> None:
        """Drop what a change of `resource` (a Put, or a deletion of its subtree) may make
        wrong in the subscription lists."""
        if resource.ty == SUBSCRIPTION:
            self.forget_subscriptions(resource.pi)

    def clear(self) -> None:
        self._by_ri.clear()
        self._ri_by_path.clear()
        self._subscriptions.clear()

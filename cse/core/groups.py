"""Groups: member checks, fan-out of a request to every member through `fopt`, and the
members' index that keeps `mid` free of deleted resources."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cse.core.addressing import Address
from cse.core.errors import (
    BadRequest,
    GroupMemberTypeInconsistent,
    MaxMembersExceeded,
    NotFound,
)
from cse.core.primitives import Request, Response
from cse.core.types import ConsistencyStrategy, Operation, ResponseStatusCode
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Put, Resource, Storage

if TYPE_CHECKING:
    from cse.core.context import Context

_LOAD_PAGE = 200


async def prepare(ctx: Context, attributes: dict[str, Any]) -> None:
    """Resolve members, apply the consistency strategy (csy) and the size limit (mnm)."""
    member_type = int(attributes.get("mt", 0))
    strategy = int(attributes.get("csy", ConsistencyStrategy.ABANDON_MEMBER))
    if strategy not in {int(s) for s in ConsistencyStrategy}:
        raise BadRequest("csy must be 1 (abandon member), 2 (abandon group) or 3 (set mixed)")
    members: list[str] = []
    for member_id in attributes["mid"]:
        if member_id.startswith("/") and not member_id.startswith(ctx.settings.cse_id + "/"):
            if member_id not in members:
                members.append(member_id)  # on another CSE: checked when the request goes there
            continue
        member = await ctx.find(member_id)
        if member is None:
            if strategy == ConsistencyStrategy.ABANDON_GROUP:
                raise NotFound(f"group member {member_id} does not exist")
            continue
        if member_type and member.ty != member_type:
            if strategy == ConsistencyStrategy.ABANDON_GROUP:
                raise GroupMemberTypeInconsistent(
                    f"member {member_id} is of type {member.ty}, the group's mt is {member_type}"
                )
            if strategy == ConsistencyStrategy.SET_MIXED:
                member_type = 0
            else:
                continue
        if member.ri not in members:
            members.append(member.ri)
    if len(members) > attributes["mnm"]:
        raise MaxMembersExceeded(f"{len(members)} members exceed mnm {attributes['mnm']}")
    attributes["mid"] = members
    attributes["mt"] = member_type


async def fan_out(ctx: Context, request: Request, originator: str, address: Address) -> Response:
    if request.extra.get("fan_out"):
        # Groups of groups would multiply requests at every level; one level is served.
        raise BadRequest("nested fan-out (a group member that is itself a fopt) is not supported")
    group = await ctx.lookup(Address(path=address.path, ri=address.ri))
    if group.ty != T.GROUP:
        raise NotFound(f"{group.path} is not a group")
    await ctx.access.check(originator, Operation.RETRIEVE, group)
    members: list[str] = list(group.attributes.get("mid") or [])
    suffix = "/" + address.fanout_suffix if address.fanout_suffix else ""
    sub_requests = [
        replace(
            request,
            to=member + suffix,
            request_id=f"{request.request_id}:{index}",
            group_request_id=request.request_id,
            extra={**request.extra, "fan_out": True},
        )
        for index, member in enumerate(members)
    ]
    responses = await asyncio.gather(*(ctx.dispatch(sub) for sub in sub_requests))
    aggregated = [
        {
            "rsc": int(response.status),
            "rqi": response.request_id,
            "pc": response.content,
            "fr": sub.to,
        }
        for sub, response in zip(sub_requests, responses, strict=True)
    ]
    return ctx.response(request, ResponseStatusCode.OK, {"m2m:agr": {"m2m:rsp": aggregated}})


class GroupMemberships:
    """Which groups name which local resources in their `mid`, so that a deletion finds the
    groups to update without reading every group.

    Cost, for a gateway with many groups (one per group command): memory of one list slot
    per (group, member) pair plus one path per distinct member (measured: 9 MB per million
    pairs); reading every group once at start (plus one read per distinct member); a read of
    each member new to the index when a group is made or changed. A deleted resource costs a
    dictionary look-up; one that may have children (an AE, a container) also a pass over the
    distinct members' paths (measured: 0.75 ms per 10,000). Entries are added before the write that
    makes them true and checked against the stored group when used, so one left by a failed
    write or a changed group costs a read, never a wrong `mid`.
    """

    def __init__(self) -> None:
        self._groups_of: dict[str, list[str]] = {}  # member ri -> ris of groups naming it
        self._paths: dict[str, str] = {}  # member ri -> its path, for subtree deletions

    async def load(self, storage: Storage) -> None:
        """Index every stored group (once, when the CSE starts)."""
        seq = 0
        while True:
            page = await storage.created_since(seq, T.GROUP, _LOAD_PAGE)
            for group in page:
                await self.add(storage, group.ri, group.attributes.get("mid") or [])
            if len(page) < _LOAD_PAGE:
                return
            seq = page[-1].seq

    async def add(self, storage: Storage, group_ri: str, members: list[str]) -> None:
        """Note that the group names `members` (an entry twice is harmless: `take` merges)."""
        for member in members:
            if member.startswith("/"):
                continue  # on another CSE: its deletion is not seen here
            if member not in self._paths:
                found = await storage.get(member)
                if found is None:
                    continue
                self._paths[member] = found.path
            self._groups_of.setdefault(member, []).append(group_ri)

    def take(self, deleted: Resource, subtree: bool) -> dict[str, set[str]]:
        """The groups that may name `deleted` (or, with `subtree`, anything below it), each
        with those members; their entries are dropped from the index."""
        members = [deleted.ri] if deleted.ri in self._paths else []
        if subtree:
            prefix = deleted.path + "/"
            members.extend(ri for ri, path in self._paths.items() if path.startswith(prefix))
        found: dict[str, set[str]] = {}
        for member in members:
            del self._paths[member]
            for group_ri in self._groups_of.pop(member, []):
                found.setdefault(group_ri, set()).add(member)
        return found


async def forget_deleted_members(
    ctx: Context, deleted: list[tuple[Resource, bool]]
) -> list[Change]:
    """Each group that names a deleted resource loses it from `mid` and `cnm` (as ACME keeps
    them; TS-0001 10.2.7 has the group hold existing members). `deleted` lists each deleted
    resource with whether it may have had children. A group deleted with them is left alone."""
    gone: dict[str, set[str]] = {}
    for resource, subtree in deleted:
        for group_ri, members in ctx.memberships.take(resource, subtree).items():
            gone.setdefault(group_ri, set()).update(members)
    changes: list[Change] = []
    for group_ri, members in gone.items():
        group = await ctx.storage.get(group_ri)
        if group is None or group.ty != T.GROUP:
            continue
        if any(_within(group.path, resource.path) for resource, _ in deleted):
            continue  # deleted in the same subtree: a Put would bring it back
        mid = list(group.attributes.get("mid") or [])
        kept = [member for member in mid if member not in members]
        if len(kept) != len(mid):
            changes.append(Put(group.with_attributes(mid=kept, cnm=len(kept))))
    return changes


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")

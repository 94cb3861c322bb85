"""Groups: member checks, and fan-out of a request to every member through `fopt`."""

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

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity


async def prepare(cse: CommonServicesEntity, attributes: dict[str, Any]) -> None:
    """Resolve members, apply the consistency strategy (csy) and the size limit (mnm)."""
    member_type = int(attributes.get("mt", 0))
    strategy = int(attributes.get("csy", ConsistencyStrategy.ABANDON_MEMBER))
    if strategy not in {int(s) for s in ConsistencyStrategy}:
        raise BadRequest("csy must be 1 (abandon member), 2 (abandon group) or 3 (set mixed)")
    members: list[str] = []
    for member_id in attributes["mid"]:
        if member_id.startswith("/") and not member_id.startswith(cse.settings.cse_id + "/"):
            if member_id not in members:
                members.append(member_id)  # on another CSE: checked when the request goes there
            continue
        member = await cse.find(member_id)
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


async def fan_out(
    cse: CommonServicesEntity, request: Request, originator: str, address: Address
) -> Response:
    if request.extra.get("fan_out"):
        # Groups of groups would multiply requests at every level; one level is served.
        raise BadRequest("nested fan-out (a group member that is itself a fopt) is not supported")
    group = await cse.lookup(Address(path=address.path, ri=address.ri))
    if group.ty != T.GROUP:
        raise NotFound(f"{group.path} is not a group")
    await cse.access.check(originator, Operation.RETRIEVE, group)
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
    responses = await asyncio.gather(*(cse.handle(sub) for sub in sub_requests))
    aggregated = [
        {
            "rsc": int(response.status),
            "rqi": response.request_id,
            "pc": response.content,
            "fr": sub.to,
        }
        for sub, response in zip(sub_requests, responses, strict=True)
    ]
    return cse.response(request, ResponseStatusCode.OK, {"m2m:agr": {"m2m:rsp": aggregated}})

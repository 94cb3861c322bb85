"""NOTIFY addressed to a resource of this CSE: relayed to an AE, or a pollingChannel's answer.

A NOTIFY to an AE goes on to its point of access (or its pollingChannel, when it cannot be
reached); a NOTIFY to `<pollingChannel>/pcu` carries its owner's responses (cse/core/polling.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cse.core import polling
from cse.core.addressing import Address
from cse.core.errors import DeliveryError, OriginatorHasNoPrivilege, TargetNotReachable
from cse.core.primitives import Request, Response
from cse.core.types import Operation, ResponseStatusCode
from cse.core.types import ResourceType as T

if TYPE_CHECKING:
    from cse.core.context import Context


async def handle_notify(
    ctx: Context, request: Request, originator: str, address: Address
) -> Response:
    if address.virtual == "pcu":
        return await polling.answer(ctx, request, originator, address)
    target = await ctx.lookup(address)
    if not await ctx.access.allowed(originator, Operation.NOTIFY, target):
        raise OriginatorHasNoPrivilege(f"{originator} may not notify {target.path}")
    url = await ctx.notifier.point_of_access(target) if target.ty == T.AE else None
    if url is None:
        return ctx.response(request, ResponseStatusCode.OK)
    primitive = {
        "op": 5,
        "to": target.ri,  # the AE-ID: what an MQTT or CoAP AE recognises as itself
        "fr": originator,
        "rqi": request.request_id,
        "rvi": request.release_version,
        "pc": request.content,
    }
    try:
        status = await ctx.notifier.relay(url, primitive)
    except DeliveryError as error:
        raise TargetNotReachable(str(error)) from error
    known = status in ResponseStatusCode._value2member_map_
    return ctx.response(request, ResponseStatusCode(status) if known else ResponseStatusCode.OK)

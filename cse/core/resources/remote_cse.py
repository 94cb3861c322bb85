"""<remoteCSE> (TS-0001 9.6.4): another CSE registered here, by itself and only as itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest, OperationNotAllowed, OriginatorAlreadyRegistered
from cse.core.resources.base import NP, Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request


class RemoteCSERules(TypeRules):
    async def register(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        parent: Resource,
        attributes: dict[str, Any],
    ) -> tuple[str, str]:
        if not originator.startswith("/") or originator.count("/") != 1:
            raise OperationNotAllowed("only a CSE (originator /cse-id) may register a remoteCSE")
        if attributes["csi"] != originator:
            raise BadRequest(f"csi {attributes['csi']} does not match the originator {originator}")
        if originator == ctx.settings.cse_id:
            raise BadRequest("a CSE cannot register with itself")
        if not attributes["cb"].startswith(originator + "/"):
            raise BadRequest("cb must be the CSEBase of the registering CSE (/cse-id/name)")
        ri = originator.lstrip("/")
        ctx.quotas.check_name(ri, "CSE-ID")
        if await ctx.storage.get(ri) is not None:
            raise OriginatorAlreadyRegistered(f"CSE {originator} is already registered")
        attributes.setdefault("rn", ri)
        # Which CSEs may register, and whether the CSE will send to its poa (egress.py).
        await ctx.egress.check_registration(request, T.REMOTE_CSE, originator, attributes)
        return originator, ri

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        if changes.get("poa"):
            await ctx.egress.check_points_of_access(changes["poa"], request)


SPEC = resource_spec(
    T.REMOTE_CSE,
    "csr",
    {
        "cst": Attribute(Kind.INTEGER, O, NP),
        "poa": Attribute(Kind.STRINGS),
        "cb": Attribute(Kind.STRING, M, NP),
        "csi": Attribute(Kind.STRING, M, NP),
        "rr": Attribute(Kind.BOOLEAN, M, O),
        "nl": Attribute(Kind.STRING),
        "csz": Attribute(Kind.STRINGS),
        "srv": Attribute(Kind.STRINGS, M, O),
        "dcse": Attribute(Kind.STRINGS),
    },
    {
        T.CONTAINER,
        T.GROUP,
        T.ACCESS_CONTROL_POLICY,
        T.SUBSCRIPTION,
        T.NODE,
        T.POLLING_CHANNEL,
        T.TIME_SERIES,
        T.FLEX_CONTAINER,
    },
    rules=RemoteCSERules(),
)

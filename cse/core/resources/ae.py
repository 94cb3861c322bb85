"""<AE> (TS-0001 9.6.5): registration, where the AE-ID comes from, and its points of access."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest, OriginatorAlreadyRegistered, OriginatorHasNoPrivilege
from cse.core.identity import Role
from cse.core.resources.base import NP, Attribute, Kind, M, O, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request


def check_serializations(ctx: Context, serializations: list[str] | None) -> None:
    """csz (TS-0001 9.6.5) lists media types the AE accepts; each must be one this CSE can
    send (ACME's check, 4000): application/json or cbor, or their oneM2M resource types."""
    if not serializations:
        return
    known = {
        f"application/{kind}{name}"
        for name in ctx.settings.supported_serializations
        for kind in ("", "vnd.onem2m-res+")
    }
    unknown = [value for value in serializations if value not in known]
    if unknown:
        raise BadRequest(
            f"csz {unknown[0][:80]!r} is not a serialization of this CSE: {sorted(known)}"
        )


class AERules(TypeRules):
    async def register(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        parent: Resource,
        attributes: dict[str, Any],
    ) -> tuple[str, str]:
        """Pick the AE-ID from the originator (TS-0001 10.2.2.2) and check the AE's attributes."""
        principal = request.principal
        if principal.role is Role.DEVICE:
            # A provisioned device registers under the name it was provisioned for, and nobody
            # else can take that name: its AE-ID is bound to its credential.
            attributes.setdefault("rn", principal.name)
            if attributes["rn"] != principal.name:
                raise OriginatorHasNoPrivilege(
                    f"{principal.name} may register only as {principal.name}, "
                    f"not {attributes['rn']}"
                )
        check_serializations(ctx, attributes.get("csz"))
        api = attributes["api"]
        if not api or api[0] not in "RrN":
            raise BadRequest(f"App-ID (api) {api!r} must start with R, r or N")
        if not attributes["srv"]:
            raise BadRequest("supported release versions (srv) must not be empty")
        ae_id = self._ae_id(ctx, originator)
        existing = await ctx.storage.get(ae_id)
        if existing is not None and not ctx.is_expired(existing):
            raise OriginatorAlreadyRegistered(f"an AE with AE-ID {ae_id} is already registered")
        # Only a registration that creates an AE counts: a meter finding its AE after a
        # restart (4117 above) costs nothing.
        await ctx.quotas.check_ae_count(originator)
        ctx.quotas.check_registration(request, originator)
        # Who may register, and whether the CSE will send to its poa (cse/core/egress.py).
        await ctx.egress.check_registration(request, T.AE, originator, attributes)
        return ae_id, ae_id

    @staticmethod
    def _ae_id(ctx: Context, originator: str) -> str:
        if originator in ("", "C"):
            return ctx.new_resource_id("C")
        if originator == "S":
            return ctx.new_resource_id("S")
        if originator[0] in "CS":
            ctx.quotas.check_name(originator, "AE-ID")
            return originator
        if originator == ctx.settings.admin_originator:
            return ctx.new_resource_id("C")
        raise BadRequest(f"originator {originator!r} is not an AE-ID (C... or S...)")

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        new["aei"] = new["ri"]
        return []

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        check_serializations(ctx, changes.get("csz"))
        if changes.get("poa"):
            # A moved entity (a new DHCP lease) updates its poa from its new address.
            await ctx.egress.check_points_of_access(changes["poa"], request)


SPEC = resource_spec(
    T.AE,
    "ae",
    {
        "api": Attribute(Kind.STRING, M, NP),
        "apn": Attribute(Kind.STRING),
        "aei": Attribute(Kind.STRING, NP, NP),
        "poa": Attribute(Kind.STRINGS),
        "rr": Attribute(Kind.BOOLEAN, M, O),
        "nl": Attribute(Kind.STRING),
        "csz": Attribute(Kind.STRINGS),
        "srv": Attribute(Kind.STRINGS, M, O),
        "or": Attribute(Kind.STRING),
    },
    {
        T.CONTAINER,
        T.GROUP,
        T.ACCESS_CONTROL_POLICY,
        T.SUBSCRIPTION,
        T.POLLING_CHANNEL,
        T.TIME_SERIES,
        T.FLEX_CONTAINER,
    },
    rules=AERules(),
    has_creator=False,  # as in ACME: an AE is its own creator, cr is refused
)

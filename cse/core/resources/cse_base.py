"""<CSEBase> (TS-0001 9.6.3): the root, made by the CSE itself at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cse.core.resources.base import NP, Attribute, Kind, TypeRules, resource_spec
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context


class CSEBaseRules(TypeRules):
    created_by_request = "a CSEBase cannot be created by a request"
    updated_by_request = "the CSEBase cannot be updated by a request"
    deleted_by_request = "the CSEBase cannot be deleted"

    def shown(self, ctx: Context, resource: Resource) -> Resource:
        # currentTime (ctm): the CSE's clock when it answers, so a client can tell how far
        # its own is off; computed at each read, never stored (as ACME does).
        return resource.with_attributes(ctm=ctx.timestamp())


SPEC = resource_spec(
    T.CSE_BASE,
    "cb",
    {
        "cst": Attribute(Kind.INTEGER, NP, NP),
        "csi": Attribute(Kind.STRING, NP, NP),
        "srt": Attribute(Kind.ANY, NP, NP),
        "poa": Attribute(Kind.STRINGS, NP, NP),
        "nl": Attribute(Kind.STRING, NP, NP),
        "csz": Attribute(Kind.STRINGS, NP, NP),
        "srv": Attribute(Kind.STRINGS, NP, NP),
        "ctm": Attribute(Kind.TIMESTAMP, NP, NP),
    },
    {
        T.AE,
        T.CONTAINER,
        T.GROUP,
        T.ACCESS_CONTROL_POLICY,
        T.SUBSCRIPTION,
        T.REMOTE_CSE,
        T.NODE,
        T.TIME_SERIES,
        T.FLEX_CONTAINER,
    },
    rules=CSEBaseRules(),
    has_creator=False,
)

"""<mgmtObj> (TS-0001 9.6.15 and Annex D, TS-0004 7.4.15): what every management object shares.

A mgmtObj is one resource type (13) with many specializations: firmware, memory, battery,
deviceInfo, reboot, ... Each has its own wrapper key on the wire (`m2m:fwr`, `m2m:mem`, ...)
and its own `mgd` (mgmtDefinition: 1001, 1003, ...), and its own module with its own `SPEC`,
made by `specialization_spec`. The registry picks the specialization by the wrapper key on a
CREATE and by `mgd` for a stored resource (`registry.spec_for`, `registry.spec_of`).

`SPEC` here stands for the type as a whole: its children, that it has `acpi`, that discovery
finds it as ty 13. Nothing is created under its key (`m2m:mgo`, as ACME names the generic
type): a CREATE names a specialization.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest
from cse.core.resources.base import (
    NP,
    Attribute,
    Kind,
    M,
    O,
    ResourceSpec,
    TypeRules,
    resource_spec,
)
from cse.core.types import ResourceType as T
from cse.storage.base import Resource

if TYPE_CHECKING:
    from cse.core.context import Context
    from cse.core.primitives import Request


class MgmtDefinition(IntEnum):
    """`mgd` of the specializations this CSE knows (TS-0004 6.3.4.2.x m2m:mgmtDefinition)."""

    FIRMWARE = 1001
    MEMORY = 1003
    BATTERY = 1006
    DEVICE_INFO = 1007
    REBOOT = 1009


# The attributes of every specialization (TS-0001 Table 9.6.15-2; policies as ACME has them).
# mgmtLink (cmlk) is left out: nothing here links management objects together.
COMMON_ATTRIBUTES = {
    "mgd": Attribute(Kind.INTEGER, M, NP),
    "obis": Attribute(Kind.STRINGS, O, NP),
    "obps": Attribute(Kind.STRINGS, O, NP),
    "dc": Attribute(Kind.STRING),
    "mgs": Attribute(Kind.STRING, O, NP),
}
CHILDREN = {T.SUBSCRIPTION}


class MgmtObjRules(TypeRules):
    """The `mgd` a CREATE sends must be the one of the specialization its wrapper key names;
    a specialization with value rules (ranges, enumerations) overrides `check_values`."""

    def __init__(self, definition: MgmtDefinition, key: str) -> None:
        self.definition = definition
        self.key = key

    def check_values(self, values: dict[str, Any]) -> None:
        """The values a CREATE or UPDATE sends, beyond their kind (4000 if wrong)."""

    async def check_create(
        self, ctx: Context, originator: str, parent: Resource, attributes: dict[str, Any]
    ) -> None:
        if attributes["mgd"] != self.definition:
            raise BadRequest(
                f"mgd {attributes['mgd']} does not match {self.key}, whose mgd is "
                f"{int(self.definition)}"
            )
        self.check_values(attributes)

    async def check_update(
        self,
        ctx: Context,
        request: Request,
        originator: str,
        resource: Resource,
        changes: dict[str, Any],
    ) -> None:
        self.check_values(changes)


def specialization_spec(
    definition: MgmtDefinition,
    short: str,
    attributes: dict[str, Attribute],
    rules: type[MgmtObjRules] = MgmtObjRules,
) -> ResourceSpec:
    """The spec of one specialization: the common attributes and its own, under a node."""
    return resource_spec(
        T.MGMT_OBJ,
        short,
        {**COMMON_ATTRIBUTES, **attributes},
        CHILDREN,
        rules=rules(definition, f"m2m:{short}"),
        specialization=int(definition),
        has_creator=False,  # as in ACME: no cr on a mgmtObj
    )


def check_enum(name: str, value: Any, allowed: type[IntEnum]) -> None:
    """4000 unless `value` is one of an enumeration's numbers (absent values pass)."""
    if value is not None and value not in {int(member) for member in allowed}:
        numbers = ", ".join(str(int(member)) for member in allowed)
        raise BadRequest(f"{name} must be one of {numbers}")


SPEC = resource_spec(
    T.MGMT_OBJ,
    "mgo",
    COMMON_ATTRIBUTES,
    CHILDREN,
    specialized_by="mgd",
    id_prefix="mgo",
    has_creator=False,
)

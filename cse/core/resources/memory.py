"""<memory> mgmtObj (TS-0001 D.4, mgd 1003, `m2m:mem`): a device's memory, in bytes."""

from __future__ import annotations

from cse.core.resources.base import Attribute, Kind, M, O
from cse.core.resources.mgmt_obj import MgmtDefinition, specialization_spec

SPEC = specialization_spec(
    MgmtDefinition.MEMORY,
    "mem",
    {
        "mma": Attribute(Kind.COUNT, M, O),  # memAvailable
        "mmt": Attribute(Kind.COUNT, M, O),  # memTotal
    },
)

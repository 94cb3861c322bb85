"""<reboot> mgmtObj (TS-0001 D.10, mgd 1009, `m2m:rbo`): triggers to reboot or factory-reset.

Writing `rbo` or `far` true asks the device to reboot or to reset to factory settings; one
request cannot ask both (as ACME checks). ACME sets both back to false at once;
this CSE has no device management adapter to act on them, so it keeps a trigger as written,
for the application that carries it out to see and set back (as `ud` of a firmware).
"""

from __future__ import annotations

from typing import Any

from cse.core.errors import BadRequest
from cse.core.resources.base import Attribute, Kind
from cse.core.resources.mgmt_obj import MgmtDefinition, MgmtObjRules, specialization_spec


class RebootRules(MgmtObjRules):
    def check_values(self, values: dict[str, Any]) -> None:
        if values.get("rbo") is True and values.get("far") is True:
            raise BadRequest("reboot (rbo) and factory reset (far) cannot both be asked at once")


SPEC = specialization_spec(
    MgmtDefinition.REBOOT,
    "rbo",
    {
        "rbo": Attribute(Kind.BOOLEAN),  # reboot
        "far": Attribute(Kind.BOOLEAN),  # factoryReset
    },
    RebootRules,
)

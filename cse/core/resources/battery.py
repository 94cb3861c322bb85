"""<battery> mgmtObj (TS-0001 D.7, mgd 1006, `m2m:bat`): charge level and state of a battery."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from cse.core.errors import BadRequest
from cse.core.resources.base import Attribute, Kind, M, O
from cse.core.resources.mgmt_obj import (
    MgmtDefinition,
    MgmtObjRules,
    check_enum,
    specialization_spec,
)


class BatteryStatus(IntEnum):
    """m2m:batteryStatus (TS-0004 6.3.4.2.x)."""

    NORMAL = 1
    CHARGING = 2
    CHARGING_COMPLETE = 3
    DAMAGED = 4
    LOW_BATTERY = 5
    NOT_INSTALLED = 6
    UNKNOWN = 7


class BatteryRules(MgmtObjRules):
    def check_values(self, values: dict[str, Any]) -> None:
        level = values.get("btl")
        if level is not None and level > 100:
            raise BadRequest("btl (batteryLevel) is a percentage: 0..100")
        check_enum("bts", values.get("bts"), BatteryStatus)


SPEC = specialization_spec(
    MgmtDefinition.BATTERY,
    "bat",
    {
        "btl": Attribute(Kind.COUNT, M, O),  # batteryLevel, percent
        "bts": Attribute(Kind.INTEGER, M, O),  # batteryStatus
    },
    BatteryRules,
)

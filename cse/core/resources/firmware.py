"""<firmware> mgmtObj (TS-0001 D.2, mgd 1001, `m2m:fwr`): a device's firmware image and the
trigger that updates it.

Writing `ud` (update) true asks for the image at `url` to be installed. A hosting CSE with a
device management adapter (OMA-DM, LwM2M) would turn that into a command to the device; this
CSE has none, so it keeps the trigger and whoever carries the update out (the head-end's
firmware application, headend/firmware.py) reports progress in `uds` (updateStatus, an
m2m:actionStatus {acn: the action, sus: an m2m:status}) and sets `ud` back to false.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any

from cse.core.errors import BadRequest
from cse.core.resources.base import NP, Attribute, Kind, M, O
from cse.core.resources.mgmt_obj import (
    MgmtDefinition,
    MgmtObjRules,
    check_enum,
    specialization_spec,
)
from cse.storage.base import Change, Resource

if TYPE_CHECKING:
    from cse.core.context import Context


class UpdateStatus(IntEnum):
    """m2m:status (TS-0004 6.3.4.2.x), the `sus` of an actionStatus."""

    UNINITIALIZED = 0
    SUCCESSFUL = 1
    FAILURE = 2
    IN_PROCESS = 3


def action_status(action: str, status: UpdateStatus) -> dict[str, Any]:
    """An m2m:actionStatus as `uds` holds it."""
    return {"acn": action, "sus": int(status)}


class FirmwareRules(MgmtObjRules):
    def check_values(self, values: dict[str, Any]) -> None:
        status = values.get("uds")
        if status is None:
            return
        if set(status) != {"acn", "sus"} or not isinstance(status["acn"], str):
            raise BadRequest('uds must be {"acn": action (string), "sus": status}')
        sus = status["sus"]
        if isinstance(sus, bool) or not isinstance(sus, int):
            raise BadRequest("uds.sus must be an m2m:status number")
        check_enum("uds.sus", sus, UpdateStatus)

    async def on_create(self, ctx: Context, new: dict[str, Any], parent: Resource) -> list[Change]:
        # Nothing has been asked of the device yet (as ACME starts it).
        new["uds"] = action_status("", UpdateStatus.UNINITIALIZED)
        return []


SPEC = specialization_spec(
    MgmtDefinition.FIRMWARE,
    "fwr",
    {
        "vr": Attribute(Kind.STRING, M, O),
        "fwn": Attribute(Kind.STRING, M, O),
        "url": Attribute(Kind.STRING, M, O),
        "ud": Attribute(Kind.BOOLEAN, M, O),
        "uds": Attribute(Kind.OBJECT, NP, O),
    },
    FirmwareRules,
)

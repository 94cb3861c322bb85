"""Firmware updates through oneM2M device management: each meter is a <node> on its DAP's CSE
and each of its images a <firmware> (mgmtObj, mgd 1001) below it.

    /<dap-csi>/<dap-cse>/node-<meter>                     <node>      ni = the meter's id
    /<dap-csi>/<dap-cse>/node-<meter>/<target>-<image>    <firmware>  e.g. metrology-firmware

An update of some meters to a version:

 1. each meter's <node> and <firmware> are made when first needed, through the IN-CSE and
    retargeted to the DAP like every command;
 2. UPDATE <firmware> {vr, url, ud: true, uds: {acn: "fw <command>", sus: 3 in process}};
 3. the `fw` command the meter agents understand goes to the meters' `command` containers
    (`CommandService`, one group per DAP for several meters). The CSE has no device
    management adapter to turn the trigger into a command to the device: this application
    is that adapter;
 4. when a meter's answer reaches the MDMS (`on_messages`): UPDATE <firmware> {ud: false,
    uds.sus: 1 successful (a fw-* flow; vr becomes the version the meter reports) or
    2 failure (any other answer, e.g. an alert refusing the command)}.

The state any oneM2M tool sees, and `status()` reads, is the <firmware>. Its `uds.acn` names
the command, so an answer changes only the update it belongs to: a late or repeated answer
of an earlier update finds another `acn`, or no update in process, and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Response
from cse.core.resources.firmware import UpdateStatus, action_status
from cse.core.resources.mgmt_obj import MgmtDefinition
from cse.core.types import Operation, ResourceType, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from headend.commands import CommandError, CommandService, Issued
from headend.config import APPS_AE
from headend.local_ae import LocalAe
from headend.store import MdmsStore, MeterMessage

logger = logging.getLogger(__name__)

NODE_PREFIX = "node-"
ISSUED_BY = "firmware"  # the commands of this application, as the store records them
TARGETS = ("metrology", "nic")
IMAGES = ("firmware", "program")
_KEY = "m2m:fwr"


def node_name(meter: str) -> str:
    return NODE_PREFIX + meter


def firmware_name(target: str, image: str) -> str:
    return f"{target}-{image}"


def action(record_id: str) -> str:
    """`uds.acn` of an update: the command that carries it (its record id)."""
    return f"fw {record_id}"


class FirmwareUpdates:
    def __init__(self, cse: CommonServicesEntity, commands: CommandService, store: MdmsStore):
        self.commands = commands
        self.store = store
        self._send = LocalAe(cse, APPS_AE).request

    async def update(
        self,
        meters: Sequence[str],
        target: str,
        version: str,
        image: str = "firmware",
        url: str | None = None,
    ) -> list[Issued]:
        """Trigger the update on each meter's <firmware>, then send the meters the command."""
        if not meters:
            raise CommandError("no meters given")
        if target not in TARGETS or image not in IMAGES:
            raise CommandError(f"target must be one of {TARGETS}, image one of {IMAGES}")
        body = {"cmd": "fw", "target": target, "ver": version, "image": image}
        url = url or f"urn:gridm2m:{firmware_name(target, image)}:{version}"
        grouped = len(meters) > 1  # as HeadendApps.to_meters: a group per DAP for several
        issued: list[Issued] = []
        for dap, members in (await self.commands.by_dap(meters)).items():
            issued.extend(await self._update_on(dap, members, body, url, grouped=grouped))
        return issued

    async def _update_on(
        self, dap: str, meters: list[str], body: dict[str, Any], url: str, *, grouped: bool
    ) -> list[Issued]:
        """Trigger the update of some meters of one DAP, then command those it was set for.
        The command's id is chosen first: each <firmware>'s `uds.acn` names it."""
        command_id = await self.commands.new_id()
        issued, ready = [], []
        for meter in meters:
            record_id = f"{command_id}@{meter}" if grouped else command_id
            reply = await self._trigger(dap, meter, body, url, action(record_id))
            if reply.status == RSC.UPDATED:
                ready.append(meter)
            else:
                issued.append(Issued(record_id, (meter,), dap, int(reply.status), _dbg(reply)))
        if ready and grouped:
            issued.append(
                await self.commands.issue_to_group(
                    ready, body, dap=dap, issued_by=ISSUED_BY, command_id=command_id
                )
            )
        elif ready:
            issued.append(
                await self.commands.issue(
                    ready[0], body, dap=dap, issued_by=ISSUED_BY, command_id=command_id
                )
            )
        return issued

    async def _path(self, dap: str, meter: str, target: str, image: str) -> str:
        base = await self.commands.dap_base(dap)
        return f"{base}/{node_name(meter)}/{firmware_name(target, image)}"

    async def _trigger(
        self, dap: str, meter: str, body: dict[str, Any], url: str, acn: str
    ) -> Response:
        path = await self._path(dap, meter, body["target"], body["image"])
        trigger = {
            "vr": body["ver"],
            "url": url,
            "ud": True,
            "uds": action_status(acn, UpdateStatus.IN_PROCESS),
        }
        reply = await self._send(Operation.UPDATE, path, content={_KEY: trigger})
        if reply.status == RSC.NOT_FOUND:
            await self._make(path, meter, body, url)
            reply = await self._send(Operation.UPDATE, path, content={_KEY: trigger})
        return reply

    async def _make(self, path: str, meter: str, body: dict[str, Any], url: str) -> None:
        """The meter's <node> (if it has none yet) and this image's <firmware>."""
        node, name = path.rsplit("/", 1)
        base, node_rn = node.rsplit("/", 1)
        made = await self._send(
            Operation.CREATE,
            base,
            resource_type=ResourceType.NODE,
            content={"m2m:nod": {"rn": node_rn, "ni": meter, "lbl": [f"meter:{meter}"]}},
        )
        if made.status not in (RSC.CREATED, RSC.CONFLICT):
            logger.warning("cannot make the node of %s: %s %s", meter, int(made.status), _dbg(made))
            return
        firmware = {
            "rn": name,
            "mgd": int(MgmtDefinition.FIRMWARE),
            "vr": body["ver"],
            "fwn": name,
            "url": url,
            "ud": False,
        }
        made = await self._send(
            Operation.CREATE, node, resource_type=ResourceType.MGMT_OBJ, content={_KEY: firmware}
        )
        if made.status not in (RSC.CREATED, RSC.CONFLICT):
            logger.warning("cannot make %s: %s %s", path, int(made.status), _dbg(made))

    # ---- the meters' answers -------------------------------------------------------------

    async def on_messages(self, messages: Sequence[MeterMessage]) -> None:
        """Meter messages the MDMS stored: an answer to a fw command ends that update."""
        for message in messages:
            ref = message.ref or message.content.get("ref")
            if not isinstance(ref, str) or not ref:
                continue
            command = await self.store.command(ref)
            if command is None:  # a group command: recorded per meter
                command = await self.store.command(f"{ref}@{message.meter}")
            # Only this application's updates: a fw command sent as such (POST /api/commands,
            # a field tool's update) has no <firmware> state to end.
            if command is None or command.get("issued_by") != ISSUED_BY:
                continue
            if command.get("name") == "fw" and command.get("meter") == message.meter:
                await self._report(command, message)

    async def on_timed_out(self, commands: Sequence[dict[str, Any]]) -> None:
        """Commands unanswered for `[headend.commands] timeout`: each of this application's
        updates still in process ends as a failure (a later answer changes nothing)."""
        for command in commands:
            if command.get("issued_by") == ISSUED_BY and command.get("name") == "fw":
                await self._end(command, str(command.get("meter")), succeeded=False)

    async def _report(self, command: dict[str, Any], message: MeterMessage) -> None:
        reported = message.content.get("ver")
        await self._end(
            command,
            message.meter,
            succeeded=message.flow.startswith("fw-"),
            version=reported if isinstance(reported, str) and reported else None,
        )

    async def _end(
        self, command: dict[str, Any], meter: str, *, succeeded: bool, version: str | None = None
    ) -> None:
        """The update `command` carried is over: its <firmware>, if still in process with
        that command, says how it ended."""
        body = command.get("body") or {}
        path = await self._path(
            str(command["dap"]), meter, str(body.get("target")), str(body.get("image"))
        )
        current = await self._send(Operation.RETRIEVE, path)
        shown = current.content.get(_KEY, {}) if isinstance(current.content, dict) else {}
        status = shown.get("uds") or {}
        acn = action(str(command["id"]))
        if status.get("acn") != acn or status.get("sus") != UpdateStatus.IN_PROCESS:
            return  # not this update's answer, or already reported
        change: dict[str, Any] = {
            "ud": False,
            "uds": action_status(
                acn, UpdateStatus.SUCCESSFUL if succeeded else UpdateStatus.FAILURE
            ),
        }
        if succeeded and version:
            change["vr"] = version
        reply = await self._send(Operation.UPDATE, path, content={_KEY: change})
        if reply.status != RSC.UPDATED:
            logger.warning("cannot report %s on %s: %s", acn, path, int(reply.status))

    async def status(self, meter: str) -> list[dict[str, Any]]:
        """The meter's <firmware> resources, as its DAP holds them (none if never updated)."""
        base = await self.commands.dap_base(await self.commands.dap_of(meter))
        reply = await self._send(
            Operation.RETRIEVE,
            f"{base}/{node_name(meter)}",
            result_content=ResultContent.CHILD_RESOURCES,
        )
        if reply.status == RSC.NOT_FOUND:
            return []
        if reply.status != RSC.OK or not isinstance(reply.content, dict):
            raise CommandError(f"cannot read the node of {meter}: {int(reply.status)}")
        children = reply.content.get(_KEY, [])  # rcn 8: the children by wrapper key
        return [dict(item) for item in children if isinstance(item, dict)]


def _dbg(reply: Response) -> str:
    content = reply.content
    if isinstance(content, dict) and "m2m:dbg" in content:
        return str(content["m2m:dbg"])
    return ""

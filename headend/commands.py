"""Commands from the head-end's applications to meters, through the DAPs.

A command is a contentInstance in the meter's `command` container on its DAP, written with an
ordinary CREATE addressed to `/<dap-csi>/<dap-cse-name>/<meter>/command`: the IN-CSE
retargets it to the DAP it is registered with, and the meter's subscription there brings it
to the meter. The meter answers with a flow message carrying `ref` = the command's `id`, which
comes back up the uplink to the MDMS; the store matches it to the command.

For many meters at once (a DR event), the command goes to a group created on each DAP whose
members are the meters' command containers, and one CREATE to `<group>/fopt` fans out there.

Command bodies are those of `device_agents/agent/meter.py`: {"cmd": NAME, "id": ID, ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cse.core.clock import format_timestamp, timestamp_or
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria, Response
from cse.core.types import Operation, ResourceType
from cse.core.types import ResponseStatusCode as RSC
from headend.config import APPS_AE
from headend.local_ae import LocalAe
from headend.store import CommandRecord, MdmsStore

COMMAND_NAMES = frozenset({"read", "bulk", "switch", "dr", "han-join", "han-unjoin", "fw", "price"})
COMMAND_CONTAINER = "command"


class CommandError(Exception):
    """A command that cannot be issued (unknown meter or DAP, malformed body)."""


@dataclass(frozen=True, slots=True)
class Issued:
    id: str
    meters: tuple[str, ...]
    dap: str
    status: int  # the response status code of the CREATE (2001 when it reached the DAP)
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "meters": list(self.meters),
            "dap": self.dap,
            "rsc": self.status,
            "sent": self.status == RSC.CREATED,
            "detail": self.detail,
        }


_TIMEOUT_PAGE = 1000  # commands marked timed out per store call
GROUP_LIFETIME_S = 24 * 3600.0  # a group command's group on the DAP (clocks may differ a bit)


class CommandService:
    def __init__(
        self,
        cse: CommonServicesEntity,
        store: MdmsStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cse = cse
        self.store = store
        self.clock = clock
        self.ae_id = APPS_AE
        self._send = LocalAe(cse, APPS_AE).request
        self._id_stem = base36(int.from_bytes(os.urandom(2)) % 1296).rjust(2, "0")
        self._counter = itertools.count(1)
        # Told of the commands each pass of `time_out` marked (the firmware application).
        self.timeout_listeners: list[Callable[[list[dict[str, Any]]], Awaitable[None]]] = []

    async def time_out(self, timeout_s: float) -> list[dict[str, Any]]:
        """One pass: the commands unanswered for `timeout_s` are marked timed out, and the
        listeners told. A later answer still completes a command."""
        timed_out: list[dict[str, Any]] = []
        while True:  # in pages, so a long outage's backlog is all marked in one pass
            cutoff = self.clock() - timeout_s
            page = await self.store.time_out_commands(cutoff, limit=_TIMEOUT_PAGE)
            timed_out += page
            # A page can come back short because some were answered meanwhile: what is
            # left then waits for the next pass.
            if len(page) < _TIMEOUT_PAGE:
                break
        if timed_out:
            for listener in self.timeout_listeners:
                await listener(timed_out)
        return timed_out

    async def watch_timeouts(self, timeout_s: float) -> None:
        """Forever, a pass of `time_out` every quarter of the timeout (1 to 30 s)."""
        while True:
            await self.time_out(timeout_s)
            await asyncio.sleep(min(max(timeout_s / 4, 1.0), 30.0))

    async def new_id(self) -> str:
        """A command id of at most 7 characters: acks carry it back as `ref`, and the tables
        size acks at 25 bytes. A random stem per process, then a counter, both base 36; an id
        the store already knows (from before a restart) is skipped."""
        while True:
            command_id = f"c{self._id_stem}{base36(next(self._counter))}"
            if await self.store.command(command_id) is None:
                return command_id

    async def start(self) -> None:
        reply = await self._send(
            Operation.CREATE,
            self.cse.settings.cse_name,
            resource_type=ResourceType.AE,
            content={
                "m2m:ae": {"rn": "headend", "api": "Ngridm2m.headend", "rr": False, "srv": ["3"]}
            },
        )
        if reply.status not in (RSC.CREATED, RSC.ORIGINATOR_HAS_ALREADY_REGISTERED):
            raise RuntimeError(f"head-end apps could not register: {int(reply.status)}")

    async def dap_base(self, csi: str) -> str:
        """SP-relative CSEBase of a registered DAP, e.g. /id-dap1/dap1."""
        reply = await self._send(Operation.RETRIEVE, f"{self.cse.settings.cse_name}/{csi}")
        content = reply.content if isinstance(reply.content, dict) else {}
        base = content.get("m2m:csr", {}).get("cb")
        if reply.status != RSC.OK or not isinstance(base, str):
            raise CommandError(f"DAP {csi} is not registered with this head-end")
        return base

    async def dap_of(self, meter: str) -> str:
        """The DAP a meter is registered with: as last seen by the MDMS, else asked."""
        known = await self.store.meter(meter)
        if known and known.get("dap"):
            return str(known["dap"])
        # Not heard from yet: ask every registered DAP (a retargeted RETRIEVE of the AE).
        base = self.cse.settings.cse_name
        reply = await self._send(
            Operation.RETRIEVE,
            base,
            filter_criteria=FilterCriteria(
                filter_usage=1, resource_types=(int(ResourceType.REMOTE_CSE),), level=1
            ),
        )
        content = reply.content if isinstance(reply.content, dict) else {}
        for path in content.get("m2m:uril", []):
            csi = str(path).rsplit("/", 1)[-1]
            with contextlib.suppress(CommandError):
                found = await self._send(Operation.RETRIEVE, f"{await self.dap_base(csi)}/{meter}")
                if found.status == RSC.OK:
                    return csi
        raise CommandError(f"meter {meter} is not registered with any DAP of this head-end")

    async def by_dap(self, meters: Sequence[str]) -> dict[str, list[str]]:
        """The meters grouped by the DAP each is registered with."""
        grouped: dict[str, list[str]] = {}
        for meter in meters:
            grouped.setdefault(await self.dap_of(meter), []).append(meter)
        return grouped

    def _body(self, body: dict[str, Any], command_id: str) -> dict[str, Any]:
        name = body.get("cmd")
        if name not in COMMAND_NAMES:
            raise CommandError(f"unknown command {name!r}; one of {sorted(COMMAND_NAMES)}")
        return {**body, "id": command_id}

    async def issue(
        self,
        meter: str,
        body: dict[str, Any],
        *,
        dap: str | None = None,
        issued_by: str = "cli",
        command_id: str | None = None,
    ) -> Issued:
        """One command to one meter; `command_id` one from `new_id` that the caller needed
        to know before (the firmware application names it in the <firmware>'s status)."""
        command_id = command_id or await self.new_id()
        command = self._body(body, command_id)
        csi = dap or await self.dap_of(meter)
        base = await self.dap_base(csi)
        await self.store.record_command(
            CommandRecord(
                command_id, csi, meter, str(command["cmd"]), command, self.clock(), issued_by
            )
        )
        reply = await self._send(
            Operation.CREATE,
            f"{base}/{meter}/{COMMAND_CONTAINER}",
            resource_type=ResourceType.CONTENT_INSTANCE,
            content=_instance_of(command),
        )
        created = _created_at(reply.status, reply.content)
        if created is not None:
            await self.store.record_command_reached_dap([(command_id, created)])
        return Issued(command_id, (meter,), csi, int(reply.status), _detail(reply))

    async def issue_to_group(
        self,
        meters: Sequence[str],
        body: dict[str, Any],
        *,
        dap: str,
        issued_by: str = "cli",
        command_id: str | None = None,
    ) -> Issued:
        """One command to many meters of one DAP, fanned out there by a group; it is recorded
        for each meter as "<command_id>@<meter>"."""
        if not meters:
            raise CommandError("a group command needs at least one meter")
        command_id = command_id or await self.new_id()
        command = self._body(body, command_id)
        base = await self.dap_base(dap)
        name = f"g-{command_id}"
        group = {
            "rn": name,
            "mt": int(ResourceType.CONTAINER),
            "mnm": len(meters),
            "mid": [f"{base}/{meter}/{COMMAND_CONTAINER}" for meter in meters],
            # The group serves this one fan-out; its expiry lets the DAP remove it, so a
            # gateway does not keep every group command's member list for ever.
            "et": format_timestamp(self.clock() + GROUP_LIFETIME_S),
        }
        reply = await self._send(
            Operation.CREATE, base, resource_type=ResourceType.GROUP, content={"m2m:grp": group}
        )
        if reply.status != RSC.CREATED:
            return Issued(command_id, tuple(meters), dap, int(reply.status), _detail(reply))
        members = await self._members_kept(base, meters, reply)
        now = self.clock()
        for meter in meters:
            await self.store.record_command(
                CommandRecord(
                    f"{command_id}@{meter}",
                    dap,
                    meter,
                    str(command["cmd"]),
                    command,
                    now,
                    issued_by,
                )
            )
        reply = await self._send(
            Operation.CREATE,
            f"{base}/{name}/fopt",
            resource_type=ResourceType.CONTENT_INSTANCE,
            content=_instance_of(command),
        )
        # The fan-out answers 2000 with one response per member (m2m:agr).
        status = RSC.CREATED if reply.status in (RSC.OK, RSC.CREATED) else reply.status
        await self.store.record_command_reached_dap(_members_reached(command_id, members, reply))
        return Issued(command_id, tuple(meters), dap, int(status), _detail(reply))

    async def _members_kept(self, base: str, meters: Sequence[str], reply: Response) -> list[str]:
        """The meters the DAP kept as members of a new group, in order. A DAP leaves out a
        member it does not hold (a meter not registered there yet); only then is each meter's
        command container looked up, to know which ones the fan-out's answers are for."""
        made = reply.content.get("m2m:grp") if isinstance(reply.content, dict) else None
        kept = made.get("mid") if isinstance(made, dict) else None
        if not isinstance(kept, list) or len(kept) == len(meters):
            return list(meters)
        present = []
        for meter in meters:
            found = await self._send(Operation.RETRIEVE, f"{base}/{meter}/{COMMAND_CONTAINER}")
            if found.status == RSC.OK:
                present.append(meter)
        return present


def _instance_of(command: dict[str, Any]) -> dict[str, Any]:
    """The contentInstance that carries a command (JSON text, as the meters read it)."""
    return {"m2m:cin": {"cnf": "application/json:0", "con": orjson.dumps(command).decode()}}


def _created_at(status: int, content: Any) -> float | None:
    """The creation time of the instance a CREATE made (its answer carries the resource)."""
    instance = content.get("m2m:cin") if isinstance(content, dict) else None
    if status != RSC.CREATED or not isinstance(instance, dict):
        return None
    created = timestamp_or(instance.get("ct"), math.nan)
    return None if math.isnan(created) else created


def _members_reached(
    command_id: str, meters: Sequence[str], reply: Response
) -> list[tuple[str, float]]:
    """(per-meter command id, creation time) from a fan-out's aggregated answer. The answers
    come in the order of the group's members, which is the order of `meters` (the DAP names
    each member by its container's resource ID, which the head-end does not know)."""
    content = reply.content if isinstance(reply.content, dict) else {}
    answers = (content.get("m2m:agr") or {}).get("m2m:rsp") or []
    if not isinstance(answers, list) or len(answers) != len(meters):
        return []
    reached = []
    for meter, answer in zip(meters, answers, strict=True):
        if isinstance(answer, dict):
            created = _created_at(answer.get("rsc", 0), answer.get("pc"))
            if created is not None:
                reached.append((f"{command_id}@{meter}", created))
    return reached


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, rest = divmod(number, 36)
        text = digits[rest] + text
        if not number:
            return text


def _detail(reply: Response) -> str:
    content = reply.content
    if isinstance(content, dict) and "m2m:dbg" in content:
        return str(content["m2m:dbg"])
    return ""

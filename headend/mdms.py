"""The MDMS: a oneM2M AE on the head-end's IN-CSE that stores every meter message that arrives.

It learns about data the way any oneM2M application would, by subscriptions:

  CSEBase        <- "a remoteCSE was created" (a DAP registered)        -> watch that DAP
  DAP remoteCSE  <- "a container was created" (a flow family mirrored)  -> watch that container
  container      <- "a contentInstance was created" (a meter message)   -> store it

At start (and for each newly watched parent) it also lists what already exists, so nothing
that arrived while it was not subscribed is missed; the store ignores messages it already
has. Subscriptions ask for pendingNotification, so the IN-CSE keeps retrying a notification
the MDMS did not take.

A message's key is the instance's identity: its path below the IN-CSE's CSEBase,
"<DAP>/<container>/<instance name>" (oneM2M makes a name unique among its siblings; the
gateway names the mirror "<meter>_<its own resourceID>", so a copy it sends again is the same
name). A redelivered notification, the catch-up listing, or several head-end processes each
notified of the same instance all give the same key, and the store keeps it once. The IN-CSE's
resourceID of the mirror is not used: the gateway resending an instance the IN-CSE has since
removed (its container's limits) would make a new one.

A message is the meter's whose AE wrote it at the DAP (the gateway's `meter:` label). An ESI
(Energy Services Interface) writes the interval records of gas meters into its own AE's
container, each naming its gas meter (`gm`), when the ESI received it (`rx`) and which ESI it
was (`via`). Such a record is the gas meter's only if `esi` (`[headend.mdms] esi`) lists the
writing AE as an ESI of that gas meter; otherwise the MDMS does not store it at all: a meter
(or an ESI) cannot put data into another meter's account by naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson

from cse.core.clock import timestamp_or
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria
from cse.core.types import Operation, ResourceType, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import content_object
from headend.config import MDMS_AE
from headend.flows import flow_info
from headend.local_ae import LocalAe
from headend.store import InvalidRecord, MdmsStore, MeterMessage

logger = logging.getLogger(__name__)

STATUS_CONTAINER = "status"
OWN = "/own"  # the kind of a watched container of the MDMS's own (no CSE-ID has a "/")
# Takes the contentInstances a notification brought from one of the MDMS's own containers.
InstanceReceiver = Callable[[list[dict[str, Any]]], Awaitable[None]]
_SUBSCRIPTION = "mdms-sub"
BATCH = 100
BATCH_WAIT = "PT0.1S"  # a batch notification waits at most this long for more instances
# Not counted in a message's payload size: the envelope every message carries (as the meter
# agents count it, device_agents/agent/flows.py).
NOT_PAYLOAD = ("flow", "type", "seq", "ts")
# What an ESI adds to a gas meter's record (device_agents/agent/esi.py): framing too, for a
# relayed record. `gm`, the gas meter it names, makes a message a relayed one.
RELAYED = ("gm", "rx", "via")


class Mdms:
    def __init__(
        self,
        cse: CommonServicesEntity,
        store: MdmsStore,
        notify_url: str,
        *,
        clock: Callable[[], float] = time.time,
        esi: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.cse = cse
        self.store = store
        self.notify_url = notify_url
        self.clock = clock
        self.ae_id = MDMS_AE
        self._ae = LocalAe(cse, MDMS_AE)
        self._send = self._ae.request
        # subscription ri -> what it watches: ("base", "") | ("dap", csi) | (csi, family)
        # | (OWN, path): a container of its own, whose instances go to _own_receivers[path]
        self._watching: dict[str, tuple[str, str]] = {}
        self._own_receivers: dict[str, InstanceReceiver] = {}
        # Called with each batch of meter messages once stored (a batch may repeat messages
        # stored before): how an application follows the answers to its commands.
        self.message_listeners: list[Callable[[Sequence[MeterMessage]], Awaitable[None]]] = []
        self._lock = asyncio.Lock()
        # ESI -> the gas meters it may relay for ([headend.mdms] esi).
        self._esi = {name: frozenset(meters) for name, meters in (esi or {}).items()}
        self.relays_refused = 0  # relayed records not stored: no such ESI for that gas meter

    @property
    def _base(self) -> str:
        return self.cse.settings.cse_name

    async def start(self) -> None:
        reply = await self._send(
            Operation.CREATE,
            self._base,
            resource_type=ResourceType.AE,
            content={
                "m2m:ae": {
                    "rn": "mdms",
                    "api": "Ngridm2m.mdms",
                    "rr": True,
                    "poa": [self.notify_url],
                    "srv": ["3", "4"],
                }
            },
        )
        if reply.status == RSC.ORIGINATOR_HAS_ALREADY_REGISTERED:
            reply = await self._send(
                Operation.UPDATE, self.ae_id, content={"m2m:ae": {"poa": [self.notify_url]}}
            )
        if reply.status not in (RSC.CREATED, RSC.UPDATED):
            raise RuntimeError(f"the MDMS could not register: {int(reply.status)} {reply.content}")
        await self._watch(self._base, ("base", ""), [ResourceType.REMOTE_CSE])
        for path in await self._discover(self._base, ResourceType.REMOTE_CSE):
            await self._watch_dap(path)

    async def _discover(self, path: str, resource_type: ResourceType) -> list[str]:
        reply = await self._send(
            Operation.RETRIEVE,
            path,
            filter_criteria=FilterCriteria(
                filter_usage=1, resource_types=(resource_type,), level=1
            ),
        )
        found = reply.content.get("m2m:uril", []) if isinstance(reply.content, dict) else []
        return [str(item) for item in found]

    async def _watch(self, path: str, what: tuple[str, str], child_types: list[int]) -> bool:
        """Subscribe to creations below `path`; True if the subscription is new."""
        subscription = {
            "rn": _SUBSCRIPTION,
            "nu": [self.ae_id],
            "enc": {"net": [3], "chty": child_types},
            "pn": 2,  # sendAllPending: keep what could not be delivered
        }
        if ResourceType.CONTENT_INSTANCE in child_types:
            # Meter data comes in bursts (an outage storm): up to BATCH instances per
            # notification, held back at most BATCH_WAIT, instead of one HTTP request each.
            subscription["bn"] = {"num": BATCH, "dur": BATCH_WAIT}
        reply = await self._send(
            Operation.CREATE,
            path,
            resource_type=ResourceType.SUBSCRIPTION,
            content={"m2m:sub": subscription},
        )
        fresh = reply.status == RSC.CREATED
        if reply.status == RSC.CONFLICT:
            reply = await self._send(Operation.RETRIEVE, f"{path}/{_SUBSCRIPTION}")
        content = reply.content if isinstance(reply.content, dict) else {}
        ri = content.get("m2m:sub", {}).get("ri")
        if ri is None:
            logger.error("cannot subscribe to %s: %s %s", path, int(reply.status), content)
            return False
        self._watching[str(ri)] = what
        return fresh

    async def watch_own_container(self, path: str, receiver: InstanceReceiver) -> None:
        """Hand the instances created in `path`, a container of the MDMS's own (CIS's bulk
        read requests), to `receiver`: those already there, then each new one."""
        self._own_receivers[path] = receiver
        await self._watch(path, (OWN, path), [ResourceType.CONTENT_INSTANCE])
        reply = await self._send(
            Operation.RETRIEVE, path, result_content=ResultContent.ATTRIBUTES_AND_CHILD_RESOURCES
        )
        content = reply.content.get("m2m:cnt", {}) if isinstance(reply.content, dict) else {}
        instances = content.get("m2m:cin", [])
        if isinstance(instances, list) and instances:
            await receiver([i for i in instances if isinstance(i, dict)])

    async def _watch_dap(self, csr_path: str) -> None:
        csi = csr_path.rsplit("/", 1)[-1]
        await self._watch(csr_path, ("dap", csi), [ResourceType.CONTAINER])
        for path in await self._discover(csr_path, ResourceType.CONTAINER):
            await self._watch_family(csi, path)

    async def _watch_family(self, csi: str, container_path: str) -> None:
        family = container_path.rsplit("/", 1)[-1]
        fresh = await self._watch(container_path, (csi, family), [ResourceType.CONTENT_INSTANCE])
        if not fresh:
            # Subscribed before (a head-end restart): the IN-CSE kept what it could not
            # deliver (pn), so there is nothing to read again.
            return
        # Catch up with what arrived before the subscription (the store skips known ones).
        reply = await self._send(
            Operation.RETRIEVE,
            container_path,
            result_content=ResultContent.ATTRIBUTES_AND_CHILD_RESOURCES,
        )
        content = reply.content.get("m2m:cnt", {}) if isinstance(reply.content, dict) else {}
        instances = content.get("m2m:cin", [])
        if isinstance(instances, list) and instances:
            await self._record(csi, family, instances)

    # ---- notifications ----------------------------------------------------------------------

    async def on_notify(self, content: Any) -> RSC:
        """A NOTIFY's content: one m2m:sgn, or m2m:agn with several."""
        if not isinstance(content, dict):
            return RSC.BAD_REQUEST
        if "m2m:agn" in content:
            notices = (content["m2m:agn"] or {}).get("m2m:sgn", [])
        else:
            notices = [content.get("m2m:sgn")]
        if not isinstance(notices, list) or not all(isinstance(n, dict) for n in notices):
            return RSC.BAD_REQUEST
        if any(notice.get("vrq") for notice in notices):
            # The MDMS's own subscriptions need no verification (it is their subscriber):
            # a verification request means someone else names the MDMS as their target.
            return RSC.SUBSCRIPTION_CREATOR_HAS_NO_PRIVILEGE
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for notice in notices:
            if notice.get("sud"):
                continue
            sur = str(notice.get("sur", ""))
            what = self._watching.get(sur.rsplit("/", 1)[-1])
            representation = (notice.get("nev") or {}).get("rep") or {}
            if what is None or not isinstance(representation, dict):
                continue
            kind, detail = what
            if kind == "base" and "m2m:csr" in representation:
                csi = str(representation["m2m:csr"].get("rn", ""))
                async with self._lock:
                    await self._watch_dap(f"{self._base}/{csi}")
            elif kind == "dap" and "m2m:cnt" in representation:
                family = str(representation["m2m:cnt"].get("rn", ""))
                async with self._lock:
                    await self._watch_family(detail, f"{self._base}/{detail}/{family}")
            elif "m2m:cin" in representation:
                grouped.setdefault(what, []).append(representation["m2m:cin"])
        for (csi, family), instances in grouped.items():
            if csi != OWN:
                await self._record(csi, family, instances)
            elif (receiver := self._own_receivers.get(family)) is not None:
                await receiver(instances)
        return RSC.OK

    async def _record(self, csi: str, family: str, instances: list[dict[str, Any]]) -> None:
        now = self.clock()
        if family == STATUS_CONTAINER:
            for instance in instances:
                status = content_object(instance.get("con"))
                at = status.get("at")
                await self.store.record_gateway_status(
                    csi, float(at) if isinstance(at, int | float) else now, status
                )
            return
        messages = [m for m in (self._message(csi, family, i, now) for i in instances) if m]
        messages = [await self._correlate(m) for m in messages]
        if not messages:
            return
        try:
            await self.store.record_messages(messages)
        except InvalidRecord:
            # One malformed message must not hold back the others: a refused notification is
            # redelivered for ever, and the rest of its batch (and the queue behind it) with it.
            messages = [m for m in messages if await self._record_alone(m)]
        for listener in self.message_listeners if messages else ():
            await listener(messages)

    async def _record_alone(self, message: MeterMessage) -> bool:
        try:
            await self.store.record_messages([message])
        except InvalidRecord as refused:
            logger.warning("dropping a message the store refuses: %s", refused)
            return False
        return True

    async def _correlate(self, message: MeterMessage) -> MeterMessage:
        """A DR ack or opt-out names the event (`ev`), not the command: find the meter's
        pending DR command for that event, so the answer completes it."""
        content = message.content
        if "ref" in content or "ev" not in content or not message.flow.startswith("dr-"):
            return message
        for command in await self.store.commands(limit=50, meter=message.meter):
            if (
                command.get("name") == "dr"
                and command.get("status") in ("pending", "timed-out")  # a late answer too
                and (command.get("body") or {}).get("ev") == content["ev"]
            ):
                return dataclasses.replace(message, ref=str(command["id"]))
        return message

    def _relayed_for(self, writer: str, gas_meter: Any, key: str) -> str | None:
        """The gas meter a relayed record is stored for: the one it names, if the AE that
        wrote it is an ESI of that gas meter; else None (not stored)."""
        if isinstance(gas_meter, str) and gas_meter in self._esi.get(writer, ()):
            return gas_meter
        self.relays_refused += 1
        logger.warning(
            "not storing %s: %s is not an ESI of gas meter %r ([headend.mdms] esi)",
            key,
            writer,
            gas_meter,
        )
        return None

    def _message(
        self, csi: str, family: str, instance: dict[str, Any], now: float
    ) -> MeterMessage | None:
        content = content_object(instance.get("con"))
        labels = {
            key: value
            for key, _, value in (str(label).partition(":") for label in instance.get("lbl", []))
        }
        meter = labels.get("meter")
        name = instance.get("rn")
        if not meter or not content or not isinstance(name, str) or not name:
            logger.info("ignoring an instance without name, meter or content in %s/%s", csi, family)
            return None
        framing: tuple[str, ...] = NOT_PAYLOAD
        if "gm" in content:
            framing = NOT_PAYLOAD + RELAYED
            relayed_for = self._relayed_for(meter, content.get("gm"), f"{csi}/{family}/{name}")
            if relayed_for is None:
                return None
            meter = relayed_for
        created = timestamp_or(labels.get("created") or instance.get("ct"), now)
        flow = str(content.get("flow", ""))
        info = flow_info(flow)
        data = {key: value for key, value in content.items() if key not in framing}
        seq, ts = content.get("seq"), content.get("ts")
        return MeterMessage(
            key=f"{csi}/{family}/{name}",
            dap=csi,
            meter=meter,
            family=family,
            flow=flow,
            ptype=str(content.get("type", "")),
            seq=seq if isinstance(seq, int) else None,
            meter_ts=float(ts) if isinstance(ts, int | float) else None,
            created_at=created,
            received_at=now,
            size=len(orjson.dumps(data)),
            budget_s=info.latency_s if info else None,
            priority=info.priority if info else 2,
            content=content,
        )

"""Each meter's latest register values, as a TS-0023 smart electric meter beside its data.

Under every meter AE the gateway keeps a `deviceSmartElectricMeter` flexContainer,
`registers`, with one module class per kind of register, updated from the meter's readings
as they are stored:

```
 <meter AE>/registers               cid:dSEMr  deviceSmartElectricMeter
            registers/consumption   cod:eneCn  abECn kWh imported (OBIS 1.8.0), power W
                                               (1.7.0), volte V (32.7.0, sent in dV)
            registers/generation    cod:eneGn  roEGn Wh exported (2.8.0)
            registers/switch        cod:binSh  state: the service switch closed (sw 1)
```

so a oneM2M application (the head-end through the gateway's remoteCSE, or anything on the
meter LAN with the rights) reads a meter's registers, or subscribes to them, in a model
other oneM2M tools know, without parsing the flow payloads.

The readings arrive through the CSE's durable listener (what the uplink feeds on too). The
listener only notes the newest values per meter; a supervised task writes them through the
CSE as ordinary requests (so subscribers are notified and access rules apply), one meter at
a time. A burst of reads from one meter becomes one update per module class, with the data
points that changed and `dgt`, the time of the reading they came from; a module class whose
values did not change is not written (most meters export nothing: `generation` stays as it
was made), and a reading older than the `dgt` shown changes nothing. An energy register
only grows, so a late reading from between two equal ones holds that same value: skipping
unchanged values never lets an older reading undo a newer one. It is a view, not a record:
the readings themselves are the record, and a crash may lose the last update until the
meter's next reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cse.core.clock import format_timestamp
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Request
from cse.core.resources import sdt_models
from cse.core.resources.sdt_models import ModelClass
from cse.core.types import Operation, ResourceType, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import content_object
from cse.storage.base import Change, Put, Resource

logger = logging.getLogger(__name__)

REGISTERS = "registers"  # resource name of the device under each meter AE
RELEASE = "3"
_WRITERS = 32  # meters written at once
# Each module class under the device: its resource name and model.
MODULES: dict[str, ModelClass] = {
    "consumption": sdt_models.ENERGY_CONSUMPTION,
    "generation": sdt_models.ENERGY_GENERATION,
    "switch": sdt_models.BINARY_SWITCH,
}
# OBIS code -> (module, data point, factor from the meter's unit to the model's)
_OBIS = {
    "1.8.0": ("consumption", "abECn", 0.001),  # Wh -> kWh
    "1.7.0": ("consumption", "power", 1),  # W
    "32.7.0": ("consumption", "volte", 0.1),  # dV -> V
    "2.8.0": ("generation", "roEGn", 1),  # Wh (an integer data point)
}


@dataclass
class Reading:
    """What one message (or several, merged) says about a meter's registers."""

    at: str  # dgt: when the meter took it
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def merge(self, newer: Reading) -> Reading:
        if newer.at < self.at:
            return newer.merge(self)
        modules = {name: dict(points) for name, points in self.modules.items()}
        for name, points in newer.modules.items():
            modules.setdefault(name, {}).update(points)
        return Reading(newer.at, modules)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _moment(seconds: Any) -> str | None:
    """A meter's time (seconds since 1970) as a oneM2M timestamp; None if it is not one."""
    if not _number(seconds) or not 0 <= seconds < 253402300800:  # before year 10000
        return None
    return format_timestamp(float(seconds))


def _scaled(value: float, factor: float, point: str) -> float | int:
    if point == "roEGn":  # an integer data point
        return round(value)
    return value if factor == 1 else round(value * factor, 6)


def reading_of(message: dict[str, Any]) -> Reading | None:
    """The register values a meter's message carries: the `obis` map of on-demand and
    prepayment reads, the import register at the end of an interval read, the switch."""
    modules: dict[str, dict[str, Any]] = {}
    at = _moment(message.get("ts"))
    obis = message.get("obis")
    if isinstance(obis, dict):
        for code, value in obis.items():
            target = _OBIS.get(code)
            if target is not None and _number(value):
                module, point, factor = target
                modules.setdefault(module, {})[point] = _scaled(value, factor, point)
    channels = message.get("ch")
    if isinstance(channels, list) and channels and isinstance(channels[0], dict):
        # An interval read: its first channel is energy imported (device_agents/agent/flows.py),
        # the register at its start (r0) plus each interval's Wh.
        first, values = channels[0], channels[0].get("v")
        if _number(first.get("r0")) and isinstance(values, list) and all(map(_number, values)):
            energy = first["r0"] + sum(values)
            modules.setdefault("consumption", {})["abECn"] = _scaled(energy, 0.001, "abECn")
            start: Any = message.get("t0")
            step: Any = message.get("ip")
            if _number(start) and _number(step):  # the register as at the last interval's end
                at = _moment(float(start) + float(step) * len(values))
    switch = message.get("sw")
    if switch in (0, 1) and not isinstance(switch, bool):
        modules["switch"] = {"state": switch == 1}
    if not modules or at is None:
        return None
    return Reading(at, modules)


class MeterRegisters:
    """Keeps the `registers` device of every meter up to date with its readings."""

    def __init__(
        self, cse: CommonServicesEntity, *, exclude_containers: Sequence[str] = ()
    ) -> None:
        self.cse = cse
        self.exclude = frozenset(exclude_containers)
        self.written = 0  # creates and updates done, for the metrics
        self.failures = 0
        self._pending: dict[str, Reading] = {}
        self._writing = 0  # meters taken from _pending and being written
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._request_ids = itertools.count(1)

    async def start(self) -> None:
        self.cse.durable_listeners.append(self._on_durable)
        self._task = self.cse.supervisor.start("meter registers", self._write_forever)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.cse.durable_listeners.remove(self._on_durable)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def pending(self) -> int:
        """Meters whose newest readings are not written yet."""
        return len(self._pending) + self._writing

    async def settled(self) -> None:
        """Wait until every reading seen so far is written (for tests and the bench)."""
        await self._idle.wait()

    def _on_durable(self, changes: Sequence[Change]) -> None:
        base = self.cse.settings.cse_name
        for change in changes:
            if not isinstance(change, Put) or change.resource.ty != ResourceType.CONTENT_INSTANCE:
                continue
            parts = change.resource.path.split("/")
            # <cse>/<meter AE>/<container>/<instance>: anything else is not meter data.
            if len(parts) != 4 or parts[0] != base or parts[2] in self.exclude:
                continue
            reading = reading_of(content_object(change.resource.attributes.get("con")))
            if reading is None:
                continue
            meter = parts[1]
            earlier = self._pending.get(meter)
            self._pending[meter] = reading if earlier is None else earlier.merge(reading)
            self._idle.clear()
            self._wake.set()

    async def _write_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # Several meters at once, so that their writes share the CSE's group commits.
                batch = list(itertools.islice(self._pending.items(), _WRITERS))
                for meter, _ in batch:
                    del self._pending[meter]
                self._writing = len(batch)
                try:
                    await asyncio.gather(*(self._write_safely(*item) for item in batch))
                finally:
                    self._writing = 0
            self._idle.set()

    async def _write_safely(self, meter: str, reading: Reading) -> None:
        try:
            await self._write(meter, reading)
        except Exception:  # a view must never stop the gateway; logged, counted
            self.failures += 1
            logger.exception("registers of %s not updated", meter)

    async def _write(self, meter: str, reading: Reading) -> None:
        device = f"{self.cse.settings.cse_name}/{meter}/{REGISTERS}"
        for name, points in reading.modules.items():
            model, path = MODULES[name], f"{device}/{name}"
            stored = await self.cse.storage.get_by_path(path)
            if stored is None:
                if not await self._ensure_device(device):
                    return  # the meter is gone, or the name is taken
                content = {"rn": name, "cnd": model.definition, "dgt": reading.at, **points}
                await self._send(Operation.CREATE, device, {model.key: content})
            elif self._is_ours(stored, model):
                changed = {p: v for p, v in points.items() if stored.attributes.get(p) != v}
                if changed and reading.at >= str(stored.attributes.get("dgt", "")):
                    body = {model.key: {"dgt": reading.at, **changed}}
                    await self._send(Operation.UPDATE, path, body)

    async def _ensure_device(self, device: str) -> bool:
        model = sdt_models.SMART_ELECTRIC_METER
        existing = await self.cse.storage.get_by_path(device)
        if existing is not None:
            return self._is_ours(existing, model)
        body = {model.key: {"rn": REGISTERS, "cnd": model.definition}}
        parent = device.rsplit("/", 1)[0]
        return await self._send(Operation.CREATE, parent, body)

    def _is_ours(self, found: Resource, model: ModelClass) -> bool:
        """The meter's AE may make resources under itself: a name it took first is its own."""
        if (
            found.ty == ResourceType.FLEX_CONTAINER
            and found.attributes.get("cnd") == model.definition
        ):
            return True
        self.failures += 1
        logger.warning("registers: %s is not a %s; not written", found.path, model.key)
        return False

    async def _send(self, operation: Operation, to: str, content: dict[str, Any]) -> bool:
        """A request as the gateway's own CSE (which owns these resources); True if done."""
        settings = self.cse.settings
        request = Request(
            operation,
            to,
            settings.cse_id,
            f"registers-{next(self._request_ids)}",
            RELEASE,
            resource_type=ResourceType.FLEX_CONTAINER if operation == Operation.CREATE else None,
            content=content,
            result_content=ResultContent.NOTHING,
        )
        reply = await self.cse.handle(request)
        if reply.status in (RSC.CREATED, RSC.UPDATED, RSC.CONFLICT):
            self.written += 1
            return True
        if reply.status != RSC.NOT_FOUND:  # the meter deregistered meanwhile: nothing to do
            self.failures += 1
            logger.warning("registers: %s %s refused: %s", operation.name, to, reply.content)
        return False

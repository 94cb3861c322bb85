"""N meter agents in one CPython process, on one asyncio loop, against one DAP.

The agents are the board code of device_agents/agent (`Agent`, `Dap`) unchanged; the fleet
only decides who they are and when they start, and watches them:

- identity: meter ids `id_prefix` + zero-padded number; kind (electric/gas) and transport
  (coap/mqtt) by the configured shares, exact counts placed at random with the fleet seed;
  each meter its own seed, so a rerun with the same config emulates the same meters.
- one accelerated clock shared by all (`FleetClock`): each agent is created with `start_ts`
  set to the fleet's meter time at that moment, so every meter lives on the same timeline
  (`clock_speed` simulated seconds a wall second) however late it started. The flows' "how
  often" comes from flows.py, multiplied by `rate_scale`.
- a start-up ramp: meter i starts at i x ramp / N seconds, and at most `max_starting`
  registrations (connect, AE, containers, subscription) are in flight at once.
- gas paths (`gas_paths`): a gas meter sends its interval data to the DAP itself, or hands
  it to an ESI (device_agents/agent/esi.py) that writes it into its own container: the ESI
  inside an electric meter of the fleet (one gas meter each, the electric meter picked with
  the fleet seed), or a utility ESI, an extra AE `<id_prefix>esi-<n>` for each `esi_group`
  such gas meters. The HAN between them is an in-process hand-off (han.LocalHan); the ESIs
  start first, so each is there before its gas meters' first report.
- measurement without changing the agents: `FleetAgent` times start() and `TimedDap` times
  every CREATE of a contentInstance; a probe task measures how late the event loop wakes
  (when it is late, every meter's schedule is late).

    config = load_fleet_config("configs/fleet.toml", {"meters": 500})
    summary = run_fleet_blocking(config)      # or: await Fleet(config).run()
    print(summary.table())
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import signal
import time
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from device_agents.agent import compat, flows, onem2m
from device_agents.agent.agent import Agent
from device_agents.agent.han import LocalHan
from device_agents.fleet.config import (
    GAS_PATHS,
    KINDS,
    TRANSPORTS,
    FleetConfig,
    FleetConfigError,
)
from device_agents.fleet.config import load_fleet_config as load_fleet_config
from device_agents.fleet.summary import FleetSummary, Samples

__all__ = [
    "Fleet",
    "FleetAgent",
    "FleetClock",
    "FleetConfig",
    "FleetConfigError",
    "FleetSummary",
    "Measurements",
    "MeterPlan",
    "esi_mapping",
    "load_fleet_config",
    "plan_meters",
    "run_fleet",
    "run_fleet_blocking",
]

LOOP_PROBE_S = 0.05  # how often the loop-lag probe wakes
SOCKETS_PER_METER = {"coap": 2, "mqtt": 1}  # CoAP: client + notification listener


class FleetClock:
    """Wall milliseconds since the fleet started (what `Agent` reads as `clock.now_ms()`),
    and the shared meter time: `start_ts` + elapsed x `speed`."""

    def __init__(self, speed: float, start_ts: int | None = None) -> None:
        self.speed = speed
        self.start_ts = int(time.time()) if start_ts is None else start_ts
        self._t0 = time.monotonic()
        self.t0_wall = time.time()  # wall time of meter time start_ts, for latency maths

    def anchor(self) -> dict[str, float]:
        """How meter time maps to wall time: wall = t0_wall + (meter - start_ts) / speed."""
        return {"t0_wall": self.t0_wall, "start_ts": self.start_ts, "speed": self.speed}

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def meter_time(self) -> int:
        return self.start_ts + int(self.now_ms() * self.speed) // 1000


@dataclass(frozen=True)
class MeterPlan:
    """Who one emulated meter is and when it starts (wall seconds after the fleet start)."""

    index: int
    meter_id: str
    kind: str  # electric, gas, or esi (a utility ESI)
    transport: str
    seed: int
    start_at: float
    esi: str | None = None  # a gas meter behind an ESI: the ESI's id
    via: str | None = None  # ... and which ESI it is: "esi-meter" or "esi-utility"
    relays: tuple[str, ...] = ()  # an ESI (electric meter or utility ESI): its gas meters


def _exact_shares(total: int, shares: dict[str, float], names: tuple[str, ...]) -> list[str]:
    """`total` labels in the proportions of `shares`, by largest remainder (counts exact)."""
    weight = sum(shares[name] for name in names)
    quotas = [(total * shares[name] / weight, name) for name in names]
    counts = {name: int(quota) for quota, name in quotas}
    left = total - sum(counts.values())
    for _, name in sorted(quotas, key=lambda item: item[0] - int(item[0]), reverse=True)[:left]:
        counts[name] += 1
    return [name for name in names for _ in range(counts[name])]


def plan_meters(config: FleetConfig) -> list[MeterPlan]:
    """Every meter of the fleet, reproducibly from the config (and its seed)."""
    rng = random.Random(config.seed)
    kinds = _exact_shares(config.meters, config.mix, KINDS)
    transports = _exact_shares(config.meters, config.transports, TRANSPORTS)
    rng.shuffle(kinds)
    rng.shuffle(transports)
    step = config.ramp / config.meters
    plans = []
    for index in range(config.meters):
        meter_id = config.meter_id(index)
        plans.append(
            MeterPlan(
                index, meter_id, kinds[index], transports[index], _seed(config, meter_id),
                index * step,
            )
        )  # fmt: skip
    if config.gas_paths["direct"] < sum(config.gas_paths.values()):
        plans = _with_esis(config, plans, rng)
    return plans


def _seed(config: FleetConfig, meter_id: str) -> int:
    return zlib.crc32(f"{config.seed}/{meter_id}".encode()) & 0x7FFFFFFF


def _with_esis(config: FleetConfig, plans: list[MeterPlan], rng: random.Random) -> list[MeterPlan]:
    """The plans with the gas paths of `config.gas_paths`: gas meters given an ESI, electric
    meters an ESI inside, utility ESIs added; the ESIs first in the start-up order."""
    gas = [plan for plan in plans if plan.kind == "gas"]
    paths = _exact_shares(len(gas), config.gas_paths, GAS_PATHS)
    rng.shuffle(paths)
    in_meter = [plan for plan, path in zip(gas, paths, strict=True) if path == "esi_meter"]
    electric = [plan for plan in plans if plan.kind == "electric"]
    if len(in_meter) > len(electric):
        raise FleetConfigError(
            f"gas_paths.esi_meter needs an electric meter for each of {len(in_meter)} gas "
            f"meters; the fleet has {len(electric)}"
        )
    changed: dict[str, MeterPlan] = {}
    for gas_meter, host in zip(in_meter, rng.sample(electric, len(in_meter)), strict=True):
        changed[gas_meter.meter_id] = replace(gas_meter, esi=host.meter_id, via="esi-meter")
        changed[host.meter_id] = replace(host, relays=(gas_meter.meter_id,))
    utility = [plan for plan, path in zip(gas, paths, strict=True) if path == "esi_utility"]
    esis = []
    for number, first in enumerate(range(0, len(utility), config.esi_group), start=1):
        group = utility[first : first + config.esi_group]
        esi_id = f"{config.id_prefix}esi-{number:0{config.id_digits}d}"
        for gas_meter in group:
            changed[gas_meter.meter_id] = replace(gas_meter, esi=esi_id, via="esi-utility")
        relays = tuple(plan.meter_id for plan in group)
        index = config.meters + number - 1
        transport = group[0].transport
        esis.append(MeterPlan(index, esi_id, "esi", transport, _seed(config, esi_id), 0.0,
                              relays=relays))  # fmt: skip
    planned = esis + [changed.get(plan.meter_id, plan) for plan in plans]
    planned.sort(key=lambda plan: not plan.relays)  # stable: the ESIs first, else as before
    step = config.ramp / len(planned)
    return [replace(plan, start_at=order * step) for order, plan in enumerate(planned)]


def esi_mapping(plans: list[MeterPlan]) -> dict[str, list[str]]:
    """Each ESI of the fleet and the gas meters it relays for: what the head-end's MDMS must
    be told (`[headend.mdms] esi`) to attribute their records to the gas meters."""
    return {plan.meter_id: list(plan.relays) for plan in plans if plan.relays}


def meter_secrets(config: FleetConfig, plans: list[MeterPlan]) -> dict[str, dict[str, Any]]:
    """Each meter's link secret from the credential store (none without a store): a CoAP
    meter's OSCORE keys, an MQTT meter's broker login; raises FleetConfigError for a meter
    without a usable credential (made now for a meter the store does not know, with
    `provision`)."""
    if config.credentials is None:
        return {}
    from device_agents.provisioning import ProvisioningError
    from device_agents.provisioning import meter_secrets as secrets_from_store

    transports = {plan.meter_id: plan.transport for plan in plans}
    try:
        secrets, _ = secrets_from_store(config.credentials, transports, provision=config.provision)
    except ProvisioningError as error:
        raise FleetConfigError(str(error)) from error
    return secrets


class SequenceInMemory:
    """Where an emulated meter keeps its OSCORE sender sequence number (the agent's
    `oscore_state`): in memory, for the run. It starts at the wall clock in hundredths of a
    second, so a later run with the same keys against the same gateway is ahead of every
    number an earlier one used (a meter sends far fewer than 100 requests a second), and the
    gateway's replay window takes it; 2^40, the largest number OSCORE allows, is centuries
    away."""

    def __init__(self) -> None:
        self.value = int(time.time() * 100)

    def load(self) -> int:
        return self.value

    def save(self, value: int) -> None:
        self.value = value


def agent_config(
    config: FleetConfig, plan: MeterPlan, start_ts: int, secret: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The config.json one emulated meter gets (docs/agents.md, plus the agent's options);
    `secret`: its link's secret from `meter_secrets` (OSCORE keys, or a broker login)."""
    dap = config.dap
    listen_port = dap.listen_port + plan.index if dap.listen_port else 0
    return {
        "meter_id": plan.meter_id,
        "kind": plan.kind,
        "transport": plan.transport,
        "dap_host": dap.host,
        "dap_port": dap.coap_port if plan.transport == "coap" else dap.mqtt_port,
        "cse_id": config.cse_id,
        "cse_name": config.cse_name,
        "serialization": config.serialization,
        "clock_speed": config.clock_speed,
        "listen_host": dap.listen_host,
        "listen_port": listen_port,
        "poa_host": dap.listen_host if dap.listen_host != "0.0.0.0" else None,
        "wifi": None,
        "buffer_max": config.buffer_max,
        "buffer_file": None,
        "dr_opt_out_rate": config.dr_opt_out_rate,
        "seed": plan.seed,
        "start_ts": start_ts,
        "rate_scale": config.rate_scale,
        "tick_ms": config.tick_ms,
        "timeout_ms": config.timeout_ms,
        **_esi_options(plan),
        **_mqtt_options(config, plan),
        **_secret_options(secret),
        **_agent_options(config, plan),
    }


def _esi_options(plan: MeterPlan) -> dict[str, Any]:
    if not plan.relays:
        return {}
    return {"esi": "utility" if plan.kind == "esi" else "meter", "esi_members": list(plan.relays)}


def _mqtt_options(config: FleetConfig, plan: MeterPlan) -> dict[str, Any]:
    if plan.transport != "mqtt":
        return {}
    options: dict[str, Any] = {"mqtt_tls": config.dap.mqtt_ca is not None}
    if config.dap.mqtt_ca is not None:
        options["mqtt_ca"] = config.dap.mqtt_ca
    if config.dap.mqtt_server_name is not None:
        options["mqtt_server_name"] = config.dap.mqtt_server_name
    return options


def _secret_options(secret: dict[str, Any] | None) -> dict[str, Any]:
    if secret is None:
        return {}
    if "oscore" in secret:  # the agents run in this process: the number stays in memory
        return {**secret, "oscore_state": SequenceInMemory()}
    return secret


def _agent_options(config: FleetConfig, plan: MeterPlan) -> dict[str, Any]:
    names = {"meter_id": plan.meter_id, "ae_id": onem2m.ae_id_for(plan.meter_id)}
    return {
        key: value.format(**names) if isinstance(value, str) else value
        for key, value in config.agent.items()
    }


@dataclass
class Watch:
    """What the fleet measures of one meter besides the agent's own counters."""

    plan: MeterPlan
    registered_at: float | None = None  # fleet seconds when start() first succeeded
    start_errors: int = 0


class Measurements:
    """Shared by every agent of one run. Samples are also kept for the steady phase alone:
    from the moment the last meter registered (the ramp's load is over) to the end."""

    def __init__(self, clock: FleetClock, planned: int) -> None:
        self.clock = clock
        self.planned = planned
        self.registered = 0
        self.steady_since: float | None = None  # fleet seconds
        self.registration = Samples()
        self.latency = Samples()
        self.steady_latency = Samples()
        self.steady_latency_by_transport = {name: Samples() for name in TRANSPORTS}
        self.loop_lag = Samples()
        self.steady_loop_lag = Samples()

    def registered_one(self) -> None:
        self.registered += 1
        if self.registered == self.planned:
            self.steady_since = self.clock.elapsed()

    def add_latency(self, milliseconds: float, steady: bool, transport: str) -> None:
        self.latency.add(milliseconds)
        if steady:
            self.steady_latency.add(milliseconds)
            self.steady_latency_by_transport[transport].add(milliseconds)

    def add_loop_lag(self, milliseconds: float, steady: bool) -> None:
        self.loop_lag.add(milliseconds)
        if steady:
            self.steady_loop_lag.add(milliseconds)


class TimedDap(onem2m.Dap):  # the agent modules are untyped: no checks across the seam
    """`Dap` that records how long each contentInstance CREATE took (the DAP's latency)."""

    def __init__(self, config: dict[str, Any], measurements: Measurements) -> None:
        super().__init__(config)
        self._measurements = measurements
        self._transport = config["transport"]

    async def post(self, family: str, content: Any, request_id: str | None = None) -> int:
        steady = self._measurements.steady_since is not None
        began = time.perf_counter()
        rsc: int = await super().post(family, content, request_id)
        elapsed = (time.perf_counter() - began) * 1000
        self._measurements.add_latency(elapsed, steady, self._transport)
        return rsc


TICK_SLOT_S = 0.01  # the wake-ups of all agents are rounded up to slots of this length


class Ticker:
    """The fleet's shared timer: agents that sleep until the same 10 ms slot share one
    `loop.call_at`, and each waits on a bare future (an `asyncio.wait_for` per meter per tick
    would cost a task and a timer each)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._slots: dict[int, list[asyncio.Future[None]]] = {}

    def wait(self, ms: float) -> asyncio.Future[None]:
        """A future that is done at the end of the slot `ms` from now."""
        slot = math.ceil((self._loop.time() + ms / 1000) / TICK_SLOT_S)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = []
            self._loop.call_at(slot * TICK_SLOT_S, self._fire, slot)
        future = self._loop.create_future()
        waiters.append(future)
        return future

    def _fire(self, slot: int) -> None:
        for future in self._slots.pop(slot, ()):
            if not future.done():
                future.set_result(None)


class Wake:
    """What `Agent._wake` does (set, clear, is_set), ending the agent's tick wait at once."""

    def __init__(self) -> None:
        self.flag = False
        self.waiting: asyncio.Future[None] | None = None

    def set(self) -> None:
        self.flag = True
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(None)

    def clear(self) -> None:
        self.flag = False

    def is_set(self) -> bool:
        return self.flag


class FleetAgent(Agent):
    """`Agent` whose start() waits for a registration slot and is timed, and whose sleeps
    between ticks go through the fleet's Ticker."""

    def __init__(
        self,
        config: dict[str, Any],
        dap: Any,
        gate: asyncio.Semaphore,
        watch: Watch,
        measurements: Measurements,
        ticker: Ticker,
        han: LocalHan | None = None,
    ) -> None:
        super().__init__(config, dap=dap, clock=measurements.clock, han=han)
        self._gate = gate
        self.watch = watch
        self._measurements = measurements
        self._ticker = ticker
        self._wake = Wake()
        # Per flow, for interop runs: kept here, not in the agent (a board's heap is tight).
        self.generated_by_flow: dict[str, int] = {}

    def _enqueue(self, family: str, content: dict[str, Any], key: str | None = None) -> None:
        flow_id = key or str(content.get("flow"))
        self.generated_by_flow[flow_id] = self.generated_by_flow.get(flow_id, 0) + 1
        super()._enqueue(family, content, key)

    def stats(self) -> dict[str, Any]:
        counts: dict[str, Any] = super().stats()
        buffered: dict[str, int] = {}
        for item in self.store.items():
            buffered[item[2]] = buffered.get(item[2], 0) + 1
        generated = dict(self.generated_by_flow)
        if self.han is not None:
            # Handed over the HAN to the ESI: "han:<via>:<flow>" (rows 16Ga, 16Gb).
            for flow_id, count in self.han.handed.items():
                generated[f"han:{self.han.via}:{flow_id}"] = count
        counts.update(generated_by_flow=generated, buffered_by_flow=buffered)
        return counts

    async def _sleep(self, ms: int) -> None:
        wake = self._wake
        if not wake.is_set():
            wake.waiting = self._ticker.wait(ms)
            await wake.waiting
            wake.waiting = None
        wake.clear()

    async def start(self) -> None:
        async with self._gate:
            began = time.perf_counter()
            try:
                await super().start()
            except compat.LinkError:
                self.watch.start_errors += 1
                raise
            if self.watch.registered_at is None:
                self.watch.registered_at = self._measurements.clock.elapsed()
                self._measurements.registration.add((time.perf_counter() - began) * 1000)
                self._measurements.registered_one()


@dataclass
class Fleet:
    """One run of the fleet; `run()` returns its summary."""

    config: FleetConfig
    progress: Callable[[str], None] | None = None
    agents: list[FleetAgent] = field(default_factory=list)
    # Set it to end the run early (gridm2m fleet: on SIGINT/SIGTERM); the summary still comes.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> FleetSummary:
        config = self.config
        plans = plan_meters(config)
        ensure_file_limit(plans)
        secrets = meter_secrets(config, plans)
        clock = FleetClock(config.clock_speed, config.start_ts)
        gate = asyncio.Semaphore(config.max_starting)
        ticker = Ticker()
        measurements = Measurements(clock, len(plans))
        esis: dict[str, Any] = {}  # ESI id -> its agent's Esi (the ESIs start first)
        tasks: list[asyncio.Task[None]] = []
        probe = asyncio.create_task(_probe_loop(measurements))
        started_meter_time = clock.meter_time()

        async def start_all() -> None:
            for plan in plans:
                delay = plan.start_at - clock.elapsed()
                if delay > 0:
                    await asyncio.sleep(delay)  # the ramp's schedule, not a synchronisation
                secret = secrets.get(plan.meter_id)
                agent_cfg = agent_config(config, plan, clock.meter_time(), secret)
                dap = TimedDap(agent_cfg, measurements)
                han = None
                if plan.esi is not None:
                    han = LocalHan(plan.meter_id, plan.via)
                    han.attach(esis.get(plan.esi))
                agent = FleetAgent(agent_cfg, dap, gate, Watch(plan), measurements, ticker, han)
                if plan.relays:
                    esis[plan.meter_id] = agent.esi
                self.agents.append(agent)
                tasks.append(asyncio.create_task(agent.run()))

        starter = asyncio.create_task(start_all())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), config.duration)
        finally:
            starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starter
            wall = clock.elapsed()
            meter_seconds = clock.meter_time() - started_meter_time
            await self._stop(tasks)
            # Counted once stopped: a send still in flight at the stop is counted as sent if
            # the DAP acknowledged it (it is then at the DAP, and soon at the head-end).
            snapshot = [agent.stats() for agent in self.agents]
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        return FleetSummary.collect(
            config,
            plans,
            [agent.watch for agent in self.agents],
            snapshot,
            wall=wall,
            meter_seconds=meter_seconds,
            measurements=measurements,
            family_of=_family_of,
            clock=clock.anchor(),
        )

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        for agent in self.agents:
            agent.stop()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:  # an agent stuck in a send: its request times out anyway
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, Exception)]
        if failures and self.progress is not None:
            self.progress(f"{len(failures)} agents ended with an error, first: {failures[0]!r}")


def _family_of(flow_id: str) -> str:
    if ":" in flow_id:  # relayed by an ESI: "esi-meter:gas-interval-4h"
        return "esi"
    flow = flows.get(flow_id)
    return str(flow[flows.FAMILY]) if flow is not None else "?"


async def _probe_loop(measurements: Measurements) -> None:
    """How late the loop wakes a sleeper: every meter's tick is that late too."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        steady = measurements.steady_since is not None
        await asyncio.sleep(LOOP_PROBE_S)
        lag = max(0.0, loop.time() - before - LOOP_PROBE_S) * 1000
        measurements.add_loop_lag(lag, steady)


def ensure_file_limit(plans: list[MeterPlan]) -> None:
    """Raise the soft open-files limit to what the fleet needs (up to the hard limit)."""
    needed = 256 + sum(SOCKETS_PER_METER[plan.transport] for plan in plans)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        ceiling = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        if ceiling < needed:
            raise OSError(
                f"{len(plans)} meters need about {needed} open files; the hard limit is "
                f"{hard} (raise it with ulimit -n)"
            )


async def run_fleet(config: FleetConfig, stop_on_signals: bool = False) -> FleetSummary:
    fleet = Fleet(config)
    if stop_on_signals:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, fleet.stopping.set)
    return await fleet.run()


def run_fleet_blocking(config: FleetConfig) -> FleetSummary:
    """Run on uvloop when configured and installed, else on the standard loop; SIGINT or
    SIGTERM end the run early, with a summary of what was done until then."""
    runner: Callable[[Coroutine[Any, Any, FleetSummary]], FleetSummary] = asyncio.run
    if config.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner = uvloop.run
    return runner(run_fleet(config, stop_on_signals=True))

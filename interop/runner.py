"""`gridm2m interop run`: drive the catalogue's flows through the real system and judge them.

A run stands up the system on this machine (an MQTT broker, `gridm2m headend`,
`gridm2m gateway`, `gridm2m fleet`), puts an impairment relay (loss, delay, jitter) between
the meters and the gateway — UDP for CoAP meters, TCP for MQTT meters in front of the broker —
and lets the fleet run on an accelerated clock for the duration, so every row's daily clock
period passes several times. Meanwhile the head-end's applications issue the commands that
the command-triggered rows answer (reads, switch operations, DR events, HAN joins, firmware
updates, prices), CIS/Billing asks the MDMS for bulk reads on the fleet's clock (`CisPlan`),
and a PHEV application sends the head-end's PHEV rows to the DAP.

Afterwards each row is measured from what the parts recorded:

  sent          messages the meters generated for the row's agent flows (the fleet's count),
                or commands / PHEV messages / CIS requests the head-end sent
  delivered     how many arrived where the row ends: the DAP (meter → DAP rows, and the HAN
                rows, whose IPD / customer EMS read at the DAP), the MDMS (rows ending at the
                head-end, MDMS, CIS or NMS), the DAP for head-end → DAP commands (when it
                created the instance, as its answer to the head-end said), the ESI for gas
                meter → ESI rows (its receipt time, which the ESI writes into the record it
                relays); all read through the head-end's API
  latency       arrival time minus generation time, on real clocks. A meter stamps a message
                with its (accelerated) meter time; the fleet's clock maps it back to wall time.
  within budget delivered with latency ≤ the row's latency requirement

A row passes when within-budget / sent meets every reliability threshold of the row (the gas
rows' windows are all checked against the run's overall share). A row that produced no
traffic in the run (a 1-in-1000 failure that did not happen) is reported as "no-traffic",
a row the system does not model as "not-modelled" with the catalogue's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
import signal
import ssl
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cse.core.clock import timestamp_or
from cse.serialization import content_object
from device_agents.fleet.emulator import (
    FleetConfig,
    esi_mapping,
    load_fleet_config,
    plan_meters,
)
from gridm2m.broker import embedded_broker
from gridm2m.processes import Stack, get_json, spawn, toml_text
from gridm2m.processes import stop as stop_child
from interop.catalogue import Catalogue, FlowRow, load_catalogue
from interop.impair import Impairment, TcpRelay, UdpRelay
from interop.report import SCHEMA, Latency, RowResult, Sizes, Status, write_report
from interop.sizes import SizeVerdict, judge_sizes, payload_bytes

logger = logging.getLogger(__name__)

START_TS = 1767225600  # meter clocks start at 2026-01-01 00:00 UTC
SAMPLES_PER_ROW = 2000
DRAIN_TIMEOUT_S = 120.0
SETTLE_S = 2.0  # the MDMS has stored nothing new for this long: the run's traffic is in


GAS_PATHS = {"direct": 0.4, "esi_meter": 0.3, "esi_utility": 0.3}
# The ESIs of the flow tables' actor names, as their records say which (`via`).
ESI_ACTORS = {"ESI - In Meter": "esi-meter", "ESI - Utility": "esi-utility"}


class RunError(Exception):
    """The run could not start or reach the system; the message says what and where."""


@dataclass
class AttachTo:
    """A running system to test instead of one the runner starts (`--attach-*` options)."""

    headend: str  # the head-end's web/API URL, e.g. http://lab:8090
    gateway_ops: str  # the gateway's ops URL, e.g. http://dap1:9110
    dap_host: str = "127.0.0.1"
    coap_port: int = 5683
    mqtt_port: int = 1883  # the broker the gateway serves MQTT meters through
    headend_cse: str | None = None  # the IN-CSE's HTTP URL, for the PHEV application
    dap_cse_id: str = "/id-dap1"
    dap_cse_name: str = "dap1"
    token: str | None = None  # an admin token of the head-end's web API


@dataclass
class Target:
    """Where the run's traffic goes and where its evidence is read."""

    dashboard: str
    health_url: str
    coap: tuple[str, int]
    broker: tuple[str, int]
    headend_cse: str | None
    dap_cse_id: str
    dap_cse_name: str
    attached: bool
    gateway: str = ""
    api_headers: dict[str, str] = field(default_factory=dict)  # an admin token for the API
    headend_tls: ssl.SSLContext | None = None  # the PHEV application's client certificate


@dataclass
class RunSettings:
    flows_dir: Path | None = None
    report_dir: Path = Path("interop-report")
    transports: tuple[str, ...] = ("coap", "mqtt")
    meters: int = 100
    clock_speed: float = 1440.0
    duration_s: float = 120.0
    row_filter: str | None = None
    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_scale: float = 20.0
    rate_floor: float = 0.5  # per meter and day, for the rare scheduled rows (events)
    # How the fleet's gas meters reach the DAP (the fleet's gas_paths): directly (1Dg), or
    # through an ESI in an electric meter (16Ga, 5Ba) or a utility ESI (16Gb).
    gas_paths: dict[str, float] = field(default_factory=lambda: dict(GAS_PATHS))
    esi_group: int = 4
    commands_per_s: float = 10.0
    seed: int = 1
    attach: AttachTo | None = None


@dataclass
class Observed:
    """One delivered message or command, as measured."""

    latency_s: float
    size: int | None = None


@dataclass
class Evidence:
    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    at_dap: dict[str, list[Observed]] = field(default_factory=lambda: defaultdict(list))
    at_mdms: dict[str, list[Observed]] = field(default_factory=lambda: defaultdict(list))
    at_esi: dict[str, list[Observed]] = field(default_factory=lambda: defaultdict(list))
    pending: dict[str, int] = field(default_factory=lambda: defaultdict(int))


# ---- what the head-end does during a run ----------------------------------------------------

# (weight, path, body): commands that make the meters' command-triggered flows, sent to random
# meters. A bad field makes the meter answer with its command-error row.
PLAYBOOK: list[tuple[float, str, dict[str, Any]]] = [
    (4, "commands", {"cmd": "read"}),
    (2, "commands", {"cmd": "read", "src": "ipd"}),
    (2, "commands", {"cmd": "read", "src": "ems"}),
    (2, "commands", {"cmd": "read", "n": 48}),
    (1, "commands", {"cmd": "read", "n": 999}),
    (1, "commands", {"cmd": "read", "src": "ipd", "n": 999}),
    (1, "commands", {"cmd": "read", "src": "ems", "n": 999}),
    (3, "commands", {"cmd": "switch", "op": "status"}),
    # The meter fails 1 switch operation in 1000 (pp-switch-fail), too few for a short run to
    # see: an operation it does not know gets the same answer.
    (1, "commands", {"cmd": "switch", "op": "toggle"}),
    (2, "commands", {"cmd": "switch", "op": "disconnect"}),
    (2, "commands", {"cmd": "switch", "op": "connect"}),
    (1, "dr", {"src": "lms", "prog": "utl"}),
    (1, "dr", {"src": "dsm", "prog": "utl"}),
    (1, "dr", {"src": "lms", "prog": "repi"}),
    (1, "dr", {"src": "dsm", "prog": "repi"}),
    (1, "commands", {"cmd": "han-join", "dev": "00124b0001020304", "by": "utl"}),
    (1, "commands", {"cmd": "han-join", "dev": "00124b0001020305", "by": "repi"}),
    (1, "commands", {"cmd": "han-join", "dev": "zz"}),
    (1, "commands", {"cmd": "han-join", "dev": "zz", "by": "utl"}),
    (1, "commands", {"cmd": "han-join", "dev": "zz", "by": "repi"}),
    (2, "han-cycle", {"dev": "00124b0001020306", "by": "utl"}),
    (2, "han-cycle", {"dev": "00124b0001020307", "by": "repi"}),
    (1, "commands", {"cmd": "han-unjoin", "dev": "00124b00ffffffff"}),
    (1, "commands", {"cmd": "han-unjoin", "dev": "00124b00ffffffff", "by": "utl"}),
    (1, "commands", {"cmd": "han-unjoin", "dev": "00124b00ffffffff", "by": "repi"}),
    (1, "commands", {"cmd": "fw", "target": "metrology", "ver": "2.1.0"}),
    (1, "commands", {"cmd": "fw", "target": "nic", "ver": "3.0.1"}),
    (1, "commands", {"cmd": "fw", "target": "metrology", "image": "program", "ver": "p7"}),
    (1, "commands", {"cmd": "fw", "target": "nic", "image": "program", "ver": "p8"}),
    (1, "commands", {"cmd": "fw", "target": "metrology", "ver": "2.1.1", "via": "tool"}),
    (1, "commands", {"cmd": "fw", "target": "nic", "ver": "3.0.2", "via": "tool"}),
    (
        1,
        "commands",
        {"cmd": "fw", "target": "metrology", "image": "program", "ver": "p9", "via": "tool"},
    ),
    (1, "price", {"price": 125, "tier": 1}),  # milli-currency per kWh
]  # Bulk (billing) reads are CIS/Billing's own, on its schedule: see CisPlan.

# The PHEV rows the head-end sends to the DAP (and the failure reports it keeps for a DMS),
# with data members of the rows' sizes (100 B a negotiation, 50 B a communication error, both
# with the message's id): the vehicle, the charger, what it may draw and until when.
_VIN = "1G1RC6E42BU100123"
_NEGOTIATION = {"kw": 66, "vin": _VIN, "evse": "000D6F0001A2B3C4", "soc": 35, "kwh": 40,
                "dep": 1767250800}  # fmt: skip
_COMM_ERROR = {"vin": _VIN, "err": "nack"}
PHEV_MESSAGES: dict[str, tuple[str, dict[str, Any]]] = {
    "phev-negotiate-to-dap": (
        "dap",
        {"flow": "phev-negotiate", "type": "negot-thrd", **_NEGOTIATION},
    ),
    "phev-negotiate-fail-to-dap": (
        "dap",
        {"flow": "phev-negotiate-fail", "type": "comm-err", **_COMM_ERROR},
    ),
    "phev-vin-fail-to-dap": (
        "dap",
        {"flow": "phev-vin-fail", "type": "comm-err", "vin": _VIN[:-1] + "X", "err": "vin"},
    ),
    "phev-price-fail-to-dms-esi-utility": (
        "dms",
        {"flow": "phev-price-fail", "type": "comm-err", **_COMM_ERROR},
    ),
    "phev-price-fail-to-dms-esi-meter": (
        "dms",
        {"flow": "phev-price-fail", "type": "comm-err", **_COMM_ERROR},
    ),
    "phev-price-fail-to-dms-esi-meter-repeat": (
        "dms",
        {"flow": "phev-price-fail", "type": "comm-err", **_COMM_ERROR},
    ),
}


# CIS/Billing during a run: requests a (utility) day and meters a request, over the fleet's
# electric meters. A run's day is a minute at the default clock speed: about
# 20 requests in the window of a 60 s run, each reading 20 meters.
CIS_BATCHES_PER_DAY = 24
CIS_BATCH_SIZE = 20


@dataclass
class CisPlan:
    """CIS/Billing's schedule for a run, set through the head-end's API: its utility clock is
    the fleet's (START_TS when the fleet started, at the fleet's speed), and it sends nothing
    after `until`, so that the meters still run to answer its last request."""

    speed: float
    t0_wall: float
    until: float
    start_ts: float = START_TS
    batches_per_day: int = CIS_BATCHES_PER_DAY
    batch_size: int = CIS_BATCH_SIZE

    @classmethod
    def for_run(cls, settings: RunSettings, fleet_started: float) -> CisPlan:
        margin = max(5.0, settings.duration_s / 10)
        until = fleet_started + settings.duration_s - margin
        return cls(settings.clock_speed, fleet_started, until)

    def body(self, meters: Sequence[str]) -> dict[str, Any]:
        clock = {"speed": self.speed, "start_ts": self.start_ts, "t0_wall": self.t0_wall}
        return {
            "batches_per_day": self.batches_per_day,
            "batch_size": self.batch_size,
            "meters": list(meters),
            "clock": clock,
            "until": self.until,
        }


class HeadendDriver:
    """The head-end side of a run: commands to meters, CIS/Billing's schedule, and the PHEV
    application."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        target: Target,
        electric: set[str],
        rate: float,
        seed: int,
        cis: CisPlan | None = None,
    ) -> None:
        self.session = session
        self.target = target
        self.electric = electric
        self.random = random.Random(seed)
        self.meters: list[str] = []  # filled from the MDMS (see _refresh_meters)
        # The playbook in a fixed shuffled order, each entry as often as its weight, cycled:
        # every command kind comes round in a short run too.
        self.playlist = [
            (path, body) for weight, path, body in PLAYBOOK for _ in range(int(weight))
        ]
        self.random.shuffle(self.playlist)
        self.rate = rate
        self.issued = 0
        self.refused = 0
        self.phev_sent: dict[str, int] = defaultdict(int)  # CREATEs attempted, per row
        self.phev_arrived: dict[str, list[Observed]] = defaultdict(list)
        self.events = 0
        self._in = target.headend_cse
        self._dap = f"/~{target.dap_cse_id}/{target.dap_cse_name}"
        self._requests = 0
        self.cis = cis
        self._cis_started = False

    async def _refresh_meters(self) -> None:
        """Command only electric meters (gas C/I meters take no commands) that the MDMS has
        heard from: they are registered at the DAP."""
        found = await get_json(
            self.session,
            f"{self.target.dashboard}/api/meters?limit=1000",
            self.target.api_headers,
        )
        known = {m["meter"] for m in (found or {}).get("meters", []) if isinstance(m, dict)}
        self.meters = sorted(known & self.electric)
        if self.cis is not None and self._cis_due() and not self._cis_started:
            # Once the fleet is up, CIS gets its customers: every electric meter of the
            # fleet, in fixed billing cycles, so that each meter is read as often as the
            # others (a meter not registered yet is listed missing in its cycle's answer,
            # and its read counts as not delivered).
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                roster = sorted(self.electric)
                if await self._post("apps/cis/schedule", self.cis.body(roster)) == 200:
                    self._cis_started = True

    def _cis_due(self) -> bool:
        """Billing starts when every electric meter of the fleet has reported (a utility
        bills installed meters, not ones still joining the network), or, if some never do,
        a quarter of the way through CIS's time."""
        assert self.cis is not None
        late = self.cis.t0_wall + (self.cis.until - self.cis.t0_wall) / 4
        return bool(self.meters) and (set(self.meters) >= self.electric or time.time() >= late)

    async def run(self, stop: asyncio.Event) -> None:
        interval = 1.0 / self.rate
        tick = 0
        while not stop.is_set():
            if tick % 20 == 0 or not self.meters:
                await self._refresh_meters()
            if not self.meters:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await stop.wait()  # no meter has reported yet
                continue
            path, body = self.playlist[tick % len(self.playlist)]
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await self._play(path, dict(body))
            tick += 1
            if tick % 20 == 0 and self._in:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await self._phev()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()

    async def _post(self, path: str, body: dict[str, Any]) -> int:
        async with self.session.post(
            f"{self.target.dashboard}/api/{path}", json=body, headers=self.target.api_headers
        ) as reply:
            await reply.read()
            return reply.status

    async def _play(self, path: str, body: dict[str, Any]) -> None:
        if path == "han-cycle":
            # A device joined and then un-joined on the same meter: both acks.
            meter = self.random.choice(self.meters)
            for name in ("han-join", "han-unjoin"):
                await self._play("commands", {**body, "cmd": name, "meter": meter})
            return
        if path == "commands":
            body.setdefault("meter", self.random.choice(self.meters))
        else:
            self.events += 1
            if path == "dr":
                body["ev"] = self.events
            count = 20 if path == "billing" else 5
            body["meters"] = self.random.sample(self.meters, min(count, len(self.meters)))
            path = f"apps/{path}"
        status = await self._post(path, body)
        if status == 202:
            self.issued += 1
        else:
            self.refused += 1

    # ---- PHEV: plain oneM2M requests to the head-end's IN-CSE as the AE Cphev --------------

    async def _onem2m(self, path: str, ty: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The response status code and content of one CREATE."""
        self._requests += 1
        headers = {
            "X-M2M-Origin": "Cphev",
            "X-M2M-RI": f"phev-{self._requests}",
            "X-M2M-RVI": "3",
            "Content-Type": f"application/json;ty={ty}",
            "Accept": "application/json",
        }
        async with self.session.post(
            f"{self._in}{path}", json=body, headers=headers, ssl=self.target.headend_tls or True
        ) as reply:
            content = await reply.json(content_type=None) if await reply.read() else None
            return int(reply.headers.get("X-M2M-RSC", "0")), content or {}

    async def prepare_phev(self) -> None:
        if not self._in:
            return  # attached without the IN-CSE's URL: the PHEV rows get no traffic
        ae = {"m2m:ae": {"rn": "phev", "api": "Ngridm2m.phev", "rr": False, "srv": ["3"]}}
        await self._onem2m("/cse-in", 2, ae)
        # On the DAP (retargeted through the IN-CSE) and, for the DMS reports, on the head-end.
        await self._onem2m(self._dap, 3, {"m2m:cnt": {"rn": "phev"}})
        await self._onem2m("/cse-in/phev", 3, {"m2m:cnt": {"rn": "dms"}})

    async def _phev(self) -> None:
        """One message of each PHEV row. Each is measured from the CSE's answer to its
        CREATE, which carries the stored instance and its creation time: evidence collected
        during the run, so a container's retention (32 instances by default on the DAP)
        cannot lose what arrived before the run ends."""
        for number, (row_id, (where, content)) in enumerate(PHEV_MESSAGES.items()):
            message = {**content, "id": f"p{number}-{self.phev_sent[row_id]}"}
            con = json.dumps(message, separators=(",", ":"))  # compact, as the meters send
            body = {"m2m:cin": {"cnf": "application/json:0", "con": con}}
            path = f"{self._dap}/phev" if where == "dap" else "/cse-in/phev/dms"
            sent_at = time.time()
            self.phev_sent[row_id] += 1
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                status, answer = await self._onem2m(path, 4, body)
                arrived = phev_arrival(status, answer, sent_at)
                if arrived is not None:
                    self.phev_arrived[row_id].append(arrived)


def phev_arrival(status: int, answer: dict[str, Any], sent_at: float) -> Observed | None:
    """A PHEV message as measured from the CSE's answer to its CREATE: created (2001), with
    the instance's creation time and its payload as stored; None if it did not arrive."""
    instance = answer.get("m2m:cin")
    if status != 2001 or not isinstance(instance, dict):
        return None
    created = timestamp_or(instance.get("ct"), math.nan)
    if math.isnan(created):
        return None
    return Observed(max(0.0, created - sent_at), payload_bytes(content_object(instance.get("con"))))


# ---- the run ---------------------------------------------------------------------------------


def select_rows(catalogue: Catalogue, pattern: str | None) -> list[FlowRow]:
    if not pattern:
        return list(catalogue.rows)
    matcher = re.compile(pattern)
    return [r for r in catalogue.rows if matcher.search(r.id) or matcher.search(r.table)]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


async def run(settings: RunSettings) -> dict[str, Any]:
    """Run and return the report (also written to settings.report_dir)."""
    catalogue = load_catalogue(settings.flows_dir) if settings.flows_dir else load_catalogue()
    rows = select_rows(catalogue, settings.row_filter)
    if not rows:
        raise RunError(f"no catalogue row matches {settings.row_filter!r}")
    work = settings.report_dir / "run"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupted: list[str] = []

    def interrupt() -> None:
        interrupted.append("interrupted (Ctrl-C or SIGTERM)")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupt)
    evidence = Evidence()
    system: dict[str, Any] = {"headend": "", "gateway": "", "attached": False}
    try:
        if settings.attach is not None:
            evidence, system = await _attach(settings, settings.attach, work, stop, interrupted)
        else:
            async with embedded_broker(work / "broker") as broker:
                evidence, system = await _stand_up(settings, work, broker.port, stop, interrupted)
    except RunError as error:
        if settings.attach is not None:
            raise  # nothing ran: say so rather than write an empty report
        interrupted.append(str(error))
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    report = build_report(settings, catalogue, rows, evidence, system, started, interrupted)
    write_report(report, settings.report_dir)
    return report


def lab_gateway(meters: int) -> dict[str, Any]:
    """The `[gateway]` tables a run adds to the lab gateway's: installed for the run's fleet.

    The whole fleet registers within the first seconds of a run, all new AEs. A shipped DAP
    takes 500 new AEs at once and 600 a minute after that (docs/gateway.md); a DAP installed
    for this many meters takes them all at once (as bench_soak's does). Without it the meters
    past the burst are refused (5207) for up to a minute while they already take readings,
    and those readings reach the DAP that much later: the rows would measure the admission
    of a new fleet, not the flows. Every other limit stays at the shipped default.
    """
    return {
        "outbox": {"retry_min": 0.2, "retry_max": 5.0},
        "cse": {"limits": {"registration_burst": meters + 100}},  # and room for a few more
    }


def fleet_plan(settings: RunSettings) -> dict[str, Any]:
    """The `[fleet]` keys that decide who the run's meters are (plan_meters)."""
    return {
        "meters": settings.meters,
        "seed": settings.seed,
        "transports": {name: float(name in settings.transports) for name in ("coap", "mqtt")},
        "gas_paths": settings.gas_paths,
        "esi_group": settings.esi_group,
    }


def lab_headend(settings: RunSettings) -> dict[str, Any]:
    """The `[headend]` tables a run adds to the lab head-end's: the fleet's ESIs, each with
    the gas meters it relays for, so the MDMS attributes their records to the gas meters."""
    plans = plan_meters(FleetConfig.model_validate(fleet_plan(settings)))
    return {"mdms": {"esi": esi_mapping(plans)}}


async def _stand_up(
    settings: RunSettings,
    work: Path,
    broker_port: int,
    stop: asyncio.Event,
    interrupted: list[str],
) -> tuple[Evidence, dict[str, Any]]:
    # A lab: its broker takes every meter at its word, and so does its CoAP listener (the
    # flows are judged here, not the security, which tests/ and bench_security cover).
    stack = Stack(
        work,
        broker_url=f"mqtt://127.0.0.1:{broker_port}",
        coap_trust="claimed",
        gateway_extra=lab_gateway(settings.meters),
        headend_extra=lab_headend(settings),
    )
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            await stack.start(session)
        except RuntimeError as error:
            await stack.stop()
            raise RunError(f"the system did not start: {error}") from error
        target = Target(
            dashboard=stack.dashboard,
            health_url=stack.health_url,
            coap=("127.0.0.1", stack.coap_port),
            broker=("127.0.0.1", broker_port),
            headend_cse=stack.headend_url,
            dap_cse_id="/id-dap1",
            dap_cse_name="dap1",
            attached=False,
            gateway=stack.gateway_url,
            api_headers=stack.api_headers,
            headend_tls=stack.app_tls("phev"),
        )
        try:
            return await _drive(settings, target, session, work, stop, interrupted)
        finally:
            await stack.stop()


async def _attach(
    settings: RunSettings,
    attach: AttachTo,
    work: Path,
    stop: asyncio.Event,
    interrupted: list[str],
) -> tuple[Evidence, dict[str, Any]]:
    target = Target(
        dashboard=attach.headend.rstrip("/"),
        health_url=attach.gateway_ops.rstrip("/") + "/health",
        coap=(attach.dap_host, attach.coap_port),
        broker=(attach.dap_host, attach.mqtt_port),
        headend_cse=attach.headend_cse.rstrip("/") if attach.headend_cse else None,
        dap_cse_id=attach.dap_cse_id,
        dap_cse_name=attach.dap_cse_name,
        attached=True,
        gateway=attach.gateway_ops,
        api_headers={"Authorization": f"Bearer {attach.token}"} if attach.token else {},
    )
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for what, url in (
            ("the head-end", f"{target.dashboard}/api/overview"),
            ("the gateway", target.health_url),
        ):
            headers = target.api_headers if url.startswith(target.dashboard) else None
            try:
                async with session.get(url, headers=headers) as reply:
                    if reply.status >= 400:
                        raise RunError(f"{what} at {url} answers {reply.status}")
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                raise RunError(f"cannot reach {what} at {url}: {error or 'timed out'}") from None
        return await _drive(settings, target, session, work, stop, interrupted)


async def _drive(
    settings: RunSettings,
    target: Target,
    session: aiohttp.ClientSession,
    work: Path,
    stop: asyncio.Event,
    interrupted: list[str],
) -> tuple[Evidence, dict[str, Any]]:
    """Relays, the fleet and the head-end driver for the run's duration; then the evidence."""
    impairment = Impairment(
        loss=settings.loss,
        delay_ms=settings.delay_ms,
        jitter_ms=settings.jitter_ms,
        seed=settings.seed,
    )
    async with (
        UdpRelay("127.0.0.1", 0, *target.coap, impairment) as udp,
        TcpRelay("127.0.0.1", 0, *target.broker, impairment) as tcp,
    ):
        fleet_toml = work / "fleet.toml"
        fleet_toml.write_text(
            toml_text(
                "fleet",
                {
                    **fleet_plan(settings),
                    "duration": settings.duration_s,
                    "clock_speed": settings.clock_speed,
                    "rate_scale": settings.rate_scale,
                    "ramp": max(2.0, settings.meters / 100),
                    "start_ts": START_TS,
                    "cse_id": target.dap_cse_id,
                    "cse_name": target.dap_cse_name,
                    "buffer_max": 2000,
                    "dap": {"coap_port": udp.port, "mqtt_port": tcp.port},
                    # Over a lossy link a meter retries sooner than RFC 7252's default 2 s.
                    "agent": {
                        "coap_ack_timeout_ms": 500,
                        "coap_max_retransmit": 6,
                        "rate_floor": settings.rate_floor,
                    },
                },
            )
        )
        summary_file = work / "fleet-summary.json"
        summary_file.unlink(missing_ok=True)
        fleet_started = time.time()
        fleet = await spawn(
            "fleet", ["fleet", "--config", str(fleet_toml), "--json", str(summary_file)], work, ""
        )
        try:
            fleet_config = load_fleet_config(fleet_toml)
            electric = {p.meter_id for p in plan_meters(fleet_config) if p.kind == "electric"}
            driver = HeadendDriver(
                session,
                target,
                electric,
                settings.commands_per_s,
                settings.seed,
                CisPlan.for_run(settings, fleet_started),
            )
            await driver.prepare_phev()
            fleet_done = asyncio.ensure_future(fleet.process.wait())
            stopper = asyncio.ensure_future(stop.wait())
            playing = asyncio.ensure_future(driver.run(stop))
            await asyncio.wait({fleet_done, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            await playing
            stopper.cancel()
        finally:
            await stop_child(fleet)
        if not summary_file.exists():
            interrupted.append("the fleet wrote no summary")
        await _drain(session, target)
        evidence = await collect(session, target, summary_file, driver)
        logger.info("relays:\n%s\n%s", udp.stats.summary(), tcp.stats.summary())
        await _log_limit_refusals(session, target)
    system = {"headend": target.dashboard, "gateway": target.gateway, "attached": target.attached}
    return evidence, system


async def _drain(session: aiohttp.ClientSession, target: Target) -> None:
    """Let the system deliver what it still holds: wait until the gateway's outbox is empty
    and the MDMS has stored nothing new for a while (what the gateway sent may still be on
    its way through the IN-CSE's notifications)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    stored, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        health = await get_json(session, target.health_url)
        counts = await get_json(session, f"{target.dashboard}/api/counts", target.api_headers)
        total = counts.get("total", 0) if isinstance(counts, dict) else 0
        if total != stored:
            stored, quiet_since = total, time.monotonic()
        queued = sum((health.get("outbox") or {}).values()) if isinstance(health, dict) else 1
        if not queued and time.monotonic() - quiet_since >= SETTLE_S:
            return
        await asyncio.sleep(0.25)  # polling other processes until their queues are empty


def limit_refusals(metrics: str) -> dict[str, int]:
    """The requests a gateway refused over its limits, per limit (those not 0), from the text
    of its /metrics."""
    refused: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "gridm2m_cse_limit_refusals":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value:
                    refused[sample.labels["limit"]] = int(sample.value)
    return refused


async def _log_limit_refusals(session: aiohttp.ClientSession, target: Target) -> None:
    """Say which of the gateway's limits refused meters during the run: a meter refused
    (5207) retries later, so a limit shows in the rows only as latency."""
    url = target.health_url.removesuffix("/health") + "/metrics"
    try:
        async with session.get(url) as reply:
            text = await reply.text()
    except (aiohttp.ClientError, TimeoutError):
        return
    refused = limit_refusals(text)
    if refused:
        logger.warning("the gateway refused requests over its limits: %s", refused)


# ---- collecting what the parts recorded ----------------------------------------------------


async def collect(
    session: aiohttp.ClientSession, target: Target, summary_file: Path, driver: HeadendDriver
) -> Evidence:
    evidence = Evidence()
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    counted = summary.get("generated_by_flow") or summary.get("sent_by_flow") or {}
    # Messages still in a meter's store when the run stopped were neither delivered nor lost:
    # they are not counted as sent (a run stops the meters, not their links).
    pending = summary.get("buffered_by_flow") or {}
    for flow, count in counted.items():
        # A record handed to an ESI ("han:<via>:<flow>") that is still in the ESI's store is
        # pending on the first leg too: it is seen only once the ESI wrote it to the DAP.
        held = int(pending.get(flow.removeprefix("han:"), 0))
        evidence.sent[flow] += int(count) - held
        evidence.pending[flow] += held
    clock = summary.get("clock") or {}
    speed = float(clock.get("speed") or summary.get("clock_speed") or 1440.0)
    start_ts = float(clock.get("start_ts") or START_TS)
    rows = await _messages_from_api(session, target)
    t0 = clock.get("t0_wall")
    if t0 is None and rows:
        # Calibrate the fleet clock from the data: the fastest message had ~no latency.
        t0 = min(c - (ts - start_ts) / speed for _, ts, c, _, _ in rows if ts is not None)
    if t0 is not None:
        collect_messages(rows, evidence, FleetTime(float(t0), start_ts, speed))
    collect_commands(await _commands_from_api(session, target), evidence)
    collect_phev(driver.phev_sent, driver.phev_arrived, evidence)
    collect_cis(await _cis_requests_from_api(session, target), evidence)
    return evidence


@dataclass(frozen=True)
class FleetTime:
    """How the fleet's meter time maps to wall time: wall = t0 + (meter - start_ts) / speed."""

    t0: float
    start_ts: float
    speed: float

    def wall(self, meter_ts: float) -> float:
        return self.t0 + (meter_ts - self.start_ts) / self.speed


def collect_messages(rows: Iterable[tuple[Any, ...]], evidence: Evidence, clock: FleetTime) -> None:
    """The meters' messages as the MDMS stored them: (flow, meter_ts, created_at at the DAP,
    received_at the MDMS, content). A record an ESI relayed counts on its two legs: gas
    meter → ESI from its timestamp to the ESI's receipt (`rx`), keyed "han:<via>:<flow>",
    and ESI → DAP from that receipt to its creation at the DAP, keyed "<via>:<flow>"."""
    for flow, meter_ts, created_at, received_at, content in rows:
        if meter_ts is None:
            continue
        message = json.loads(content) if isinstance(content, str) else content
        size = payload_bytes(message)
        generated = clock.wall(meter_ts)
        via, rx = message.get("via"), message.get("rx")
        key = flow
        if "gm" in message and isinstance(via, str) and isinstance(rx, int | float):
            received = clock.wall(rx)
            evidence.at_esi[f"han:{via}:{flow}"].append(
                Observed(max(0.0, received - generated), size)
            )
            key, generated = f"{via}:{flow}", received
        evidence.at_dap[key].append(Observed(max(0.0, created_at - generated), size))
        evidence.at_mdms[key].append(Observed(max(0.0, received_at - clock.wall(meter_ts)), size))


async def _messages_from_api(
    session: aiohttp.ClientSession, target: Target
) -> list[tuple[Any, ...]]:
    """Every message the MDMS stored, through the head-end's API (oldest first)."""
    rows: list[tuple[Any, ...]] = []
    after = 0
    while True:
        url = f"{target.dashboard}/api/messages?order=oldest&limit=1000&after_id={after}"
        page = (await get_json(session, url, target.api_headers) or {}).get("messages", [])
        for m in page:
            rows.append((m["flow"], m["meter_ts"], m["created_at"], m["received_at"], m["content"]))
        if len(page) < 1000:
            return rows
        after = page[-1]["id"]


async def _commands_from_api(
    session: aiohttp.ClientSession, target: Target
) -> list[dict[str, Any]]:
    """Every command the head-end issued, through its API (in the order issued)."""
    commands: list[dict[str, Any]] = []
    cursor: str | None = ""
    while cursor is not None:
        url = f"{target.dashboard}/api/commands"
        params = {"after": cursor, "limit": "1000"}
        async with session.get(url, params=params, headers=target.api_headers) as reply:
            if reply.status != 200:
                raise RunError(f"the head-end's {url} answers {reply.status}")
            page = await reply.json()
        commands.extend(page.get("commands") or [])
        cursor = page.get("next")
    return commands


def collect_commands(commands: Iterable[Mapping[str, Any]], evidence: Evidence) -> None:
    """Head-end → DAP rows (billing reads, prices): each command as the head-end recorded
    it, arrived when the DAP created its instance (the time its answer carried)."""
    for command in commands:
        kind = "billing" if command.get("issued_by") == "billing" else str(command.get("name"))
        evidence.sent[f"command:{kind}"] += 1
        reached = command.get("reached_dap_at")
        if reached is None:
            continue
        latency = max(0.0, float(reached) - float(command["issued_at"]))
        evidence.at_dap[f"command:{kind}"].append(
            Observed(latency, payload_bytes(command.get("body") or {}))
        )


def collect_phev(
    sent: dict[str, int], arrived: dict[str, list[Observed]], evidence: Evidence
) -> None:
    """PHEV rows: what the driver sent and what the CSEs confirmed during the run."""
    for row_id, count in sent.items():
        evidence.sent[f"phev:{row_id}"] += count
        where = evidence.at_dap if PHEV_MESSAGES[row_id][0] == "dap" else evidence.at_mdms
        where[f"phev:{row_id}"].extend(arrived.get(row_id, []))


async def _cis_requests_from_api(
    session: aiohttp.ClientSession, target: Target
) -> list[dict[str, Any]]:
    """CIS/Billing's requests, each with how the MDMS handled it, from the head-end's API."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        url = f"{target.dashboard}/api/apps/cis/requests?limit=1000&after={after}"
        page = (await get_json(session, url, target.api_headers) or {}).get("requests") or []
        found.extend(r for r in page if isinstance(r, dict))
        if len(page) < 1000:
            return found
        after = int(page[-1]["seq"])


def collect_cis(requests: Iterable[dict[str, Any]], evidence: Evidence) -> None:
    """The CIS/Billing rows (1Aa). The request: sent by CIS, delivered when the MDMS took it,
    latency from CIS's send to then. The data: one per request, delivered when CIS had every
    segment of the answer, latency from the request's arrival at the MDMS to then (the MDMS's
    "process & send": the meters' reads are collected in between, docs/interop-run.md); a
    request still within the MDMS's deadline when the run ended is neither (pending)."""
    for request in requests:
        evidence.sent["cis:request"] += 1
        sent_at, taken_at = request.get("sent_at"), request.get("mdms_received_at")
        if taken_at is not None and sent_at is not None:
            observed = Observed(max(0.0, taken_at - sent_at), request.get("size"))
            evidence.at_mdms["cis:request"].append(observed)
        answered_at = request.get("data_received_at")
        if answered_at is None and request.get("mdms_status") == "open":
            evidence.pending["cis:data"] += 1
            continue
        evidence.sent["cis:data"] += 1
        if answered_at is not None and taken_at is not None:
            observed = Observed(max(0.0, answered_at - taken_at), request.get("data_size"))
            evidence.at_mdms["cis:data"].append(observed)


# ---- judging rows ------------------------------------------------------------------------------


def _percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return round(ordered[index], 4)


def _source_of(row: FlowRow, catalogue: Catalogue) -> tuple[list[str], str] | None:
    """Which evidence keys feed a row, and where it is measured (dap, mdms or esi)."""
    # The agent flows of the row, and of the rows it goes through (a HAN AE's or the
    # head-end's view of a meter flow).
    flows = list(row.agent_flows)
    for via in row.via:
        with contextlib.suppress(KeyError):
            flows.extend(catalogue.get(via).agent_flows)
    if row.modelled_by in ("meter-agent", "han-ae"):
        return flows, "dap"
    if row.modelled_by == "gateway":
        return flows, "mdms"
    if row.modelled_by == "esi":
        # The gas meters' records, to an ESI (measured at its receipt) or from it to the DAP.
        if row.target in ESI_ACTORS:
            return [f"han:{ESI_ACTORS[row.target]}:{flow}" for flow in flows], "esi"
        if row.source in ESI_ACTORS:
            return [f"{ESI_ACTORS[row.source]}:{flow}" for flow in flows], "dap"
        return None
    if row.modelled_by == "headend-app":
        if row.id in PHEV_MESSAGES:
            return [f"phev:{row.id}"], PHEV_MESSAGES[row.id][0].replace("dms", "mdms")
        if row.id == "bulk-read-cmd-mdms-to-headend":
            return ["command:billing"], "dap"
        if row.id == "phev-price-to-dap":
            return ["command:price"], "dap"
        if row.id == "bulk-read-data-headend-to-mdms":
            return ["mr-multi-interval"], "mdms"
        if row.id == "bulk-read-cmd-cis-to-mdms":
            return ["cis:request"], "mdms"
        if row.id == "bulk-read-data-mdms-to-cis":
            return ["cis:data"], "mdms"
        return None
    return None


def judge(row: FlowRow, evidence: Evidence, catalogue: Catalogue) -> RowResult:
    """The row's result: counts, latency, sizes and the verdict, as the report states it."""
    thresholds = row.reliability_thresholds
    required = max((t.fraction for t in thresholds), default=0.0)
    source = _source_of(row, catalogue)
    modelled = row.modelled_by != "not-modelled" and source is not None
    keys, where = source if modelled and source is not None else ([], "dap")
    arrived = {"dap": evidence.at_dap, "mdms": evidence.at_mdms, "esi": evidence.at_esi}[where]
    observed = [o for key in keys for o in arrived[key]]
    # A fleet count can lag what arrived after it summarised: never fewer sent than arrived.
    sent = max(sum(evidence.sent[key] for key in keys), len(observed))
    latencies = [o.latency_s for o in observed]
    within = sum(1 for value in latencies if value <= row.latency_seconds)
    sizes = judge_sizes(row, (o.size for o in observed if o.size is not None))
    rule = sizes.rule
    status, reason = _verdict(row, modelled, sent, within, sizes)
    return RowResult(
        id=row.id,
        table=row.table,
        source=row.source,
        target=row.target,
        use_case=row.use_case,
        requirement=row.requirement,
        payload_type=row.payload_type,
        family=_family(keys),
        modelled_by=row.modelled_by,
        status=status,
        reason=reason,
        sent=sent,
        delivered=len(observed),
        within_budget=within,
        reliability_required=required,
        reliability_above=any(t.above for t in thresholds if t.fraction == required),
        reliability_measured=round(within / sent, 5) if modelled and sent else None,
        latency_budget_s=float(row.latency_seconds),
        latency_s=Latency(
            p50=_percentile(latencies, 0.50),
            p95=_percentile(latencies, 0.95),
            p99=_percentile(latencies, 0.99),
            max=_percentile(latencies, 1.0),
        ),
        size_bytes=Sizes(
            min=sizes.seen_min,
            max=sizes.seen_max,
            spec_min=row.size_min_bytes,
            spec_max=row.size_max_bytes,
            spec_symbolic=row.size_symbolic,
            accepted_min=rule.low if rule else None,
            accepted_max=rule.high if rule else None,
            rule=rule.rule if rule else "not judged (no number in the table)",
            out_of_range=sizes.out_of_range,
            offending=list(sizes.offending),
        ),
        latency_samples_s=[
            round(v, 4)
            for v in random.Random(0).sample(latencies, min(len(latencies), SAMPLES_PER_ROW))
        ],
    )


def _verdict(
    row: FlowRow, modelled: bool, sent: int, within: int, sizes: SizeVerdict
) -> tuple[Status, str | None]:
    """The row's status and, unless it passed, why."""
    if not modelled:
        return "not-modelled", row.model_note
    if sent == 0:
        return "no-traffic", "the run produced no message for this row"
    measured = within / sent
    failures = []
    for threshold in row.reliability_thresholds:
        ok = measured > threshold.fraction if threshold.above else measured >= threshold.fraction
        if not ok:
            failures.append(
                f"{measured:.2%} within {row.latency_seconds:g} s, needs "
                f"{'> ' if threshold.above else ''}{threshold.fraction:.1%}"
            )
    if sizes.failed and sizes.rule is not None:
        failures.append(
            f"{sizes.out_of_range} payloads outside {sizes.rule.low}\N{EN DASH}"
            f"{sizes.rule.high} B ({sizes.rule.rule}): {', '.join(map(str, sizes.offending))} B"
        )
    return ("fail", "; ".join(failures)) if failures else ("pass", None)


_FAMILIES = {
    "mr-multi-interval": "reading", "gas": "reading", "mr-ondemand": "ondemand",
    "ev-": "event", "pp-": "prepay", "dr-": "drdlc", "han-": "han", "fw-": "firmware",
    "command:": "command", "phev:": "phev", "cis:": "billing", "han:esi-": "reading",
    "esi-": "reading",
}  # fmt: skip


def _family(keys: Sequence[str]) -> str | None:
    for key in keys:
        for prefix, family in _FAMILIES.items():
            if key.startswith(prefix):
                return family
    return None


def build_report(
    settings: RunSettings,
    catalogue: Catalogue,
    rows: Sequence[FlowRow],
    evidence: Evidence,
    system: dict[str, Any],
    started: float,
    interrupted: Sequence[str],
) -> dict[str, Any]:
    judged = [judge(row, evidence, catalogue) for row in rows]
    count = {
        s: sum(1 for r in judged if r.status == s)
        for s in ("pass", "fail", "not-modelled", "no-traffic")
    }
    finished = time.time()
    return {
        "schema": SCHEMA,
        "complete": not interrupted,
        "incomplete_reason": "; ".join(interrupted) or None,
        "started": _iso(started),
        "finished": _iso(finished),
        "wall_s": round(finished - started, 1),
        "settings": {
            "meters": settings.meters,
            "transports": list(settings.transports),
            "clock_speed": settings.clock_speed,
            "duration_s": settings.duration_s,
            "row_filter": settings.row_filter,
            "flows_dir": str(settings.flows_dir or "configs/flows"),
            "impairment": {
                "loss": settings.loss,
                "delay_ms": settings.delay_ms,
                "jitter_ms": settings.jitter_ms,
            },
        },
        "system": system,
        "summary": {
            "rows": len(judged),
            "executed": count["pass"] + count["fail"] + count["no-traffic"],
            "passed": count["pass"],
            "failed": count["fail"],
            "not_modelled": count["not-modelled"],
            "no_traffic": count["no-traffic"],
        },
        "rows": [r.model_dump() for r in judged],
    }


def exit_status(report: dict[str, Any]) -> int:
    return 0 if report["complete"] and not report["summary"]["failed"] else 1

"""The cost of security at fleet scale: the alarm storm over plain CoAP and over OSCORE, and
the Echo round every meter pays when its gateway comes back from a crash.

    python -m bench.bench_secure_storm [--meters 5000] [--spread 1] [--quick]

One head-end and one gateway, real processes on loopback, configured as bench_gateway
configures them (its `System`): the gateway serves CoAP with OSCORE and trust "claimed", so a
plain meter is taken at its word while a meter with keys is proved by them, and both kinds run
against the same gateway in one run. Before the gateway starts, its credential store gets the
N meters (`CredentialStore.add_devices`, one transaction): OSCORE keys for each.

The load comes from this process, one UDP socket per meter (bench.rawcoap). A meter protects
its requests with the meter agent's own OSCORE context (`device_agents.agent.oscore.Context`:
the same nonce, AAD, sequence numbers and Echo handling as on a board; AES-CCM from
`cryptography` on CPython), over that socket: no Dap per meter, which would give each of
5,000 meters a CoapClient, a listener socket and tasks of its own; the client's CPU is printed
beside the servers' to show it is not the bottleneck.

Steps, on one gateway:

1. N meters register over plain CoAP (AE, containers `reading` and `event`), 64 at a time.
2. (a) Storm, plain: every meter posts one power alarm ({"flow": "ev-power-outage"}) to its
   `event` container, one CoAP CON each, spread evenly over --spread seconds.
3. First OSCORE use: every meter RETRIEVEs its AE over OSCORE, 64 at a time (keys never used:
   the gateway records each context's state, one write each).
4. (b) Storm, OSCORE, contexts up: the same storm, every request protected.
5. kill -9 of the gateway (no clean stop: replay windows lost), restart, then (c) the storm over
   OSCORE: each meter's first request is answered 4.01 + Echo and sent again with it (RFC 8613
   Appendix B.1.2): one more round trip, and the gateway writes a context state per meter.
6. A clean stop (SIGTERM: every context's window saved), restart, then (d) the storm over
   OSCORE: no Echo expected.

Per storm: from the first alarm sent until the MDMS has them all (the last `received_at`
in the head-end's /api/messages; the 0.1 s poll of /api/counts when that is missing), the
CoAP round trip per alarm (send to 2.01, the Echo round included), Echo rounds, failures and
retransmissions, how often the gateway's watchdog restarted its CoAP server (a restart loses
the exchanges in flight; an OSCORE request sent again after it is refused as a replay), CPU
(% of a core over the phase, and the gateway's CPU per alarm). While a storm runs only the
head-end is polled: every read of the gateway's /metrics probes its listeners, adding
requests to the queue being measured. The target
(all 5,000 alarms at the MDMS within 10 s) is named in the output; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.bench_coap_mqtt import OTHER_CPU_WARNING, cpu_seconds, system_busy_seconds
from bench.bench_gateway import (
    CSE_NAME,
    HOST,
    SPEC_S,
    TARGET_S,
    CoapLoad,
    CreateTemplate,
    Progress,
    Storm,
    System,
    _log,
    _ms,
    _s,
    _table,
    alarm_latencies,
    cpu_between,
    meter_names,
    percentile,
    register_coap,
    retransmissions,
    rss_mb,
    run_on_fastest_loop,
    run_storm,
    settled,
    udp_receive_drops,
)
from bench.limits import switch_limits_off
from bench.rawcoap import MID_BUDGET, ONEM2M_FR, ONEM2M_RQI, ONEM2M_RVI, URI_PATH, CoapPeer
from bench.rawcoap import parse_options as parse_raw_options
from cse.security.credentials import Credential, CredentialStore
from device_agents.agent import coap as agent_coap
from device_agents.agent import oscore
from device_agents.agent.compat import LinkError
from device_agents.fleet.emulator import SequenceInMemory as SequenceStore
from gateway.config import load_gateway_config
from gridm2m.processes import stop as stop_child

GET = 1
CONTENT = 69  # 2.05
UNAUTHORIZED = 129  # 4.01
WARMUP_CONCURRENCY = 64


class SecurePeer(CoapPeer):
    """A meter: its own socket (bench.rawcoap) and, with `protect` set, the meter agent's
    OSCORE context around every request. A 4.01 + Echo answer (the gateway lost its replay
    window) is repeated once with the Echo value, as the agent's oscore.Client does."""

    _out = bytearray(1200)  # shared: each datagram is copied out before the next is built

    def __init__(self, host: str, port: int, credential: Credential) -> None:
        super().__init__(host, port)
        assert credential.oscore_kid and credential.oscore_secret and credential.oscore_salt
        self.context = oscore.Context(
            credential.oscore_kid,
            credential.oscore_secret,
            credential.oscore_salt,
            SequenceStore(),
        )
        self.protect = False
        self.echo_rounds = 0
        self.failures = 0  # answers that did not verify

    async def exchange(self, template: CreateTemplate, rqi: str) -> int:
        if not self.protect:
            return await super().exchange(template, rqi)
        (datagram,) = template.datagrams(0, b"", rqi)  # alarms fit one block
        options, payload = parse_raw_options(datagram)
        return await self.request(datagram[1], options, payload)

    async def request(self, code: int, options: Sequence[tuple[int, bytes]], body: bytes) -> int:
        """The inner code of the gateway's answer to one protected request; -1 when the
        answer was unprotected or did not verify (the agent's LinkError: "not delivered")."""
        if self.protocol is None or self._used + 2 > MID_BUDGET:
            await self.open()
        token = (next(self._tokens) & 0xFFFFFFFF).to_bytes(4, "big")
        numbered = [(number, index, value) for index, (number, value) in enumerate(options)]
        try:
            reply = await self._protected(code, numbered, token, body)
            echo = reply.option(oscore.ECHO) if reply.code == UNAUTHORIZED else None
            if echo is not None:
                self.echo_rounds += 1
                numbered.append((oscore.ECHO, len(numbered), echo))
                reply = await self._protected(code, numbered, token, body)
        except LinkError:
            self.failures += 1
            return -1
        return int(reply.code)

    async def _protected(
        self, code: int, options: list[tuple[int, int, bytes]], token: bytes, body: bytes
    ) -> Any:
        protocol = self.protocol
        assert protocol is not None
        mid = self._mid
        self._mid = (mid + 1) & 0xFFFF
        self._used += 1
        piv, view = self.context.request_datagram(
            self._out, mid, code, options, token, [body], 0, len(body)
        )
        reply = await protocol.send(bytes(view), mid, token)
        return self.context.open_reply(agent_coap.decode(reply.data), piv)


# ---- phases ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    storm: Storm
    echo_rounds: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # % of a core over the phase
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU ms per alarm
    before: str = ""  # what happened to the gateway just before
    coap_restarts: int = 0  # times the gateway's watchdog restarted its CoAP server


@dataclass
class Warmup:
    seconds: float = 0.0
    failures: int = 0
    echo_rounds: int = 0
    gateway_cpu_s: float = 0.0


async def open_meters(port: int, credentials: Sequence[Credential]) -> list[SecurePeer]:
    peers = [SecurePeer(HOST, port, credential) for credential in credentials]
    for start in range(0, len(peers), 500):
        await asyncio.gather(*(peer.open() for peer in peers[start : start + 500]))
    return peers


async def first_oscore_use(
    load: CoapLoad, peers: Sequence[SecurePeer], meters: Sequence[str], gateway_pid: int
) -> Warmup:
    """Each meter RETRIEVEs its own AE over OSCORE, WARMUP_CONCURRENCY at a time."""
    result = Warmup()
    pending = iter(zip(meters, peers, strict=True))
    cpu_before = cpu_seconds(gateway_pid)

    async def worker() -> None:
        for meter, peer in pending:
            options = [(URI_PATH, CSE_NAME.encode()), (URI_PATH, meter.encode())]
            options += [(ONEM2M_FR, f"C{meter}".encode()), (ONEM2M_RQI, f"hello-{meter}".encode())]
            options.append((ONEM2M_RVI, b"3"))
            load.active.add(peer)
            try:
                if await peer.request(GET, options, b"") != CONTENT:
                    result.failures += 1
            except (TimeoutError, OSError):
                result.failures += 1
            finally:
                load.active.discard(peer)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(WARMUP_CONCURRENCY, len(peers)))))
    result.seconds = time.perf_counter() - started
    result.gateway_cpu_s = cpu_seconds(gateway_pid) - cpu_before
    result.echo_rounds = sum(peer.echo_rounds for peer in peers)
    return result


async def storm_phase(
    name: str,
    system: System,
    load: CoapLoad,
    meters: Sequence[str],
    peers: Sequence[SecurePeer],
    spread: float,
    tag: str,
) -> Phase:
    """Every meter posts one alarm (bench_gateway's run_storm); wait until the MDMS has all."""
    acked = Counter({"alarm": 0, "bulk": 0})
    # Not the gateway's /metrics: each read probes its listeners (a ping per read, queued
    # behind the storm's datagrams), which is load of its own.
    progress = Progress(system, acked, read_upstream=False)
    storm = Storm(len(meters))
    restarts_before = await coap_restarts(system)
    echo_before = sum(peer.echo_rounds for peer in peers)
    retransmitted_before = retransmissions(peers)
    await progress.start()
    drops = udp_receive_drops()
    try:
        await run_storm(load, meters, peers, storm, spread, acked, tag)
        storm.started_in_phase = storm.started - progress.started
        count = len(meters)
        await progress.wait_for(lambda s: s.mdms["alarm"] >= count, timeout=600)
    finally:
        storm.udp_drops = udp_receive_drops() - drops
        await progress.stop()
    storm.retransmissions -= retransmitted_before
    offset = storm.started_in_phase
    if (t := progress.first(lambda s: s.mdms["alarm"] >= count)) is not None:
        storm.mdms_poll_s = t - offset
    await alarm_latencies(system, storm)
    phase = Phase(name, storm, sum(peer.echo_rounds for peer in peers) - echo_before)
    phase.coap_restarts = await coap_restarts(system) - restarts_before
    end = settled(progress.samples)
    if end is not None and progress.samples:
        first = progress.samples[0]
        phase.cpu = cpu_between(first, end)
        phase.cpu_ms = {
            part: 1000 * (end.cpu[part] - first.cpu[part]) / count
            for part in ("gateway", "headend", "client")
        }
    return phase


async def coap_restarts(system: System) -> int:
    """How often the gateway's liveness watchdog has restarted its CoAP server (it does when
    the server misses pings: a restart loses the exchanges in flight, and an OSCORE request
    sent again after it is refused as a replay)."""
    status, body = await system.ops.get("/health")  # 503 when unhealthy: still a report
    try:
        return int(orjson.loads(body)["bindings"]["coap"]["restarts"])
    except (ValueError, KeyError, TypeError):
        raise RuntimeError(f"GET /health: {status} {body[:300]!r}") from None


async def kill_gateway(system: System) -> None:
    """kill -9: no clean stop, so no replay window is saved."""
    await system.ops.close()
    child, system.gateway.child = system.gateway.child, None
    if child is not None:
        await stop_child(child, signal.SIGKILL)


async def stop_gateway_cleanly(system: System) -> tuple[float, int | None]:
    """SIGTERM; seconds until the process exited, and its exit code (it is killed after 20 s)."""
    await system.ops.close()
    child, system.gateway.child = system.gateway.child, None
    assert child is not None
    started = time.perf_counter()
    await stop_child(child)
    return time.perf_counter() - started, child.process.returncode


def provision_meters(system: System, meters: Sequence[str]) -> tuple[list[Credential], float]:
    """OSCORE keys for every meter in the gateway's credential store, before it starts."""
    path = load_gateway_config(system.gateway.config).cse.credentials_path()
    assert path is not None
    started = time.perf_counter()
    with CredentialStore(path) as store:
        store.add_devices(list(meters))
        by_name = {credential.name: credential for credential in store.all()}
    return [by_name[meter] for meter in meters], time.perf_counter() - started


@dataclass
class Run:
    meters: int
    provision_s: float = 0.0
    registration_s: float = 0.0
    registration_failures: int = 0
    warmup: Warmup = field(default_factory=Warmup)
    phases: list[Phase] = field(default_factory=list)
    rss_after: float = float("nan")


async def secure_storm_run(workdir: Path, count: int, args: argparse.Namespace) -> Run:
    run = Run(count)
    system = System(workdir / f"secure-storm-{count}")
    meters = meter_names(count)
    credentials, run.provision_s = provision_meters(system, meters)
    await system.start()
    try:
        async with CoapLoad(system.coap_port) as load:
            _log(f"{count} meters: registering over plain CoAP")
            started = time.perf_counter()
            run.registration_failures = await register_coap(load, meters, args.register_concurrency)
            run.registration_s = time.perf_counter() - started
            peers = await open_meters(system.coap_port, credentials)

            async def storm(name: str) -> Phase:
                _log(f"{count} meters: alarm storm, {name}")
                phase = await storm_phase(
                    name, system, load, meters, peers, args.spread, f"alarm{len(run.phases)}"
                )
                run.phases.append(phase)
                return phase

            await storm("plain CoAP")

            _log(f"{count} meters: first OSCORE request of each meter")
            for peer in peers:
                peer.protect = True
            run.warmup = await first_oscore_use(load, peers, meters, system.gateway.pid)
            await storm("OSCORE, contexts up")

            _log(f"{count} meters: kill -9 of the gateway, restart")
            await kill_gateway(system)
            banner, registered = await system.start_gateway()
            phase = await storm("OSCORE after kill -9")
            phase.before = f"restart: banner {banner:.1f} s, registered {registered:.1f} s"

            _log(f"{count} meters: clean stop of the gateway, restart")
            took, code = await stop_gateway_cleanly(system)
            banner, registered = await system.start_gateway()
            phase = await storm("OSCORE after a clean stop")
            killed = "" if code == 0 else f", exit code {code}"
            phase.before = f"stop {took:.1f} s{killed}; registered {registered:.1f} s"
            run.rss_after = rss_mb(system.gateway.pid)
            for peer in peers:
                await peer.close()
    finally:
        await system.stop()
    return run


# ---- report -------------------------------------------------------------------------------------


def phase_table(run: Run) -> str:
    phases = run.phases

    def row(label: str, value: Callable[[Phase], str]) -> list[str]:
        return [label, *(value(phase) for phase in phases)]

    def at_mdms(phase: Phase) -> str:
        storm = phase.storm
        took = storm.mdms_s if storm.mdms_s is not None else storm.mdms_poll_s
        missing = storm.count - storm.found
        return _s(took) + (f" ({missing} NEVER ARRIVED)" if missing > 0 else "")

    def to_mdms(phase: Phase) -> str:
        values = phase.storm.to_mdms
        return " / ".join(_s(percentile(values, f)) for f in (0.5, 0.99, 1.0)) if values else "-"

    def cpu(phase: Phase) -> str:
        c = phase.cpu
        text = " / ".join(f"{c.get(n, 0):.0f}" for n in ("gateway", "headend", "client", "other"))
        return text + (" !" if c.get("other", 0) > OTHER_CPU_WARNING else "")

    def cpu_ms(phase: Phase) -> str:
        return " / ".join(f"{phase.cpu_ms.get(n, 0):.2f}" for n in ("gateway", "client"))

    rows = [
        row("the gateway just before", lambda p: p.before or "running"),
        row("alarms sent within, s", lambda p: _s(p.storm.spread_s)),
        row("all alarms acknowledged, s", lambda p: _s(p.storm.acked_s)),
        row(
            "  round trip (Echo round included) p50 / p99 / max, ms",
            lambda p: " / ".join(_ms(p.storm.ack_s, f) for f in (0.5, 0.99, 1.0)),
        ),
        row("  Echo rounds (4.01 + Echo, sent again)", lambda p: str(p.echo_rounds)),
        row(
            "  failed / CON retransmissions / UDP drops",
            lambda p: f"{p.storm.failures} / {p.storm.retransmissions} / {p.storm.udp_drops}",
        ),
        row("  CoAP server restarts by the gateway's watchdog", lambda p: str(p.coap_restarts)),
        row(f"ALL ALARMS AT THE MDMS, s (target {TARGET_S:.0f})", at_mdms),
        row("  meter send -> MDMS p50 / p99 / max, s", to_mdms),
        row("CPU % of a core: gateway / head-end / client / other", cpu),
        row("CPU ms per alarm: gateway / client", cpu_ms),
    ]
    return _table(["", *(phase.name for phase in phases)], rows)


def report(run: Run, args: argparse.Namespace, busy: float) -> str:
    warm = run.warmup
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = [
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, client"
        f" loop {args.loop}; machine busy before the run: {busy:.0f} % of one core;"
        f" load average before: {args.load_before}, after: {load}",
        "",
        f"{run.meters:,} meters on one gateway (CoAP trust 'claimed', OSCORE keys for every"
        f" meter): keys provisioned in {run.provision_s:.1f} s (one transaction); registered"
        f" over plain CoAP in {run.registration_s:.1f} s"
        + (f" ({run.registration_failures} failed)" if run.registration_failures else ""),
        f"First OSCORE request of each meter (RETRIEVE of its AE, {WARMUP_CONCURRENCY} at a"
        f" time; keys never used): {warm.seconds:.1f} s"
        f" ({run.meters / warm.seconds if warm.seconds else 0:.0f} req/s),"
        f" gateway CPU {1000 * warm.gateway_cpu_s / run.meters:.2f} ms per meter,"
        f" {warm.echo_rounds} Echo rounds, {warm.failures} failed",
        "",
        f"Alarm storm: every meter posts one power alarm within {args.spread:g} s (one CoAP CON"
        f" each, one UDP socket per meter). Times in seconds from the first alarm sent. Target:"
        f" all alarms at the MDMS within {TARGET_S:.0f} s (requirement {SPEC_S:.0f} s)."
        f" CPU ! = other processes used over {OTHER_CPU_WARNING:.0f} % of a core.",
        "",
        phase_table(run),
        "",
        f"gateway RSS after the run: {_s(run.rss_after, 0)} MB",
    ]
    for phase in run.phases:
        storm = phase.storm
        took = storm.mdms_s if storm.mdms_s is not None else storm.mdms_poll_s
        verdict = "met" if took is not None and took <= TARGET_S else "NOT met"
        lines.append(
            f"{phase.name}: {storm.found:,}/{run.meters:,} alarms at the MDMS in {_s(took)} s;"
            f" target {TARGET_S:.0f} s {verdict}"
        )
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    busy_before, since = system_busy_seconds(), time.monotonic()
    await asyncio.sleep(1.0)
    busy = 100 * (system_busy_seconds() - busy_before) / (time.monotonic() - since)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gridm2m-secure-storm-"))
    try:
        run = await secure_storm_run(workdir, args.meters, args)
    except BaseException:
        _log(f"kept the work directory {workdir} (logs)")
        raise
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(run, args, busy))


def main() -> None:
    switch_limits_off()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=5000, help="meters in the storm")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds the alarms span")
    parser.add_argument("--register-concurrency", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="500 meters")
    parser.add_argument("--workdir", type=Path, help="keep processes' files and logs here")
    args = parser.parse_args()
    if args.quick:
        args.meters = 500
    if args.meters < 1 or args.spread <= 0:
        parser.error("--meters and --spread must be positive")
    args.load_before = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    run_on_fastest_loop(main_async, args)


if __name__ == "__main__":
    main()

"""The handshake cost when a fleet reconnects after an outage: plain MQTT beside MQTT over TLS.

    python -m bench.bench_mqtt_reconnect [--meters 5000] [--spread 1] [--quick] [--json FILE]

One run provisions N meters in a fresh credential store in one transaction
(`CredentialStore.add_devices`), makes the broker's password file and ACL from it with
`gridm2m credentials mosquitto` and starts the DAP broker as shipped (docker/mosquitto: the
harness of tests/deploy/dap_broker.py). Then, twice on that broker, the N meters come back at
once, their starts spread evenly over `--spread` seconds (the broker is back after an outage
and every meter's retry timer fires): first all on the plain listener (loopback only in the
shipped config; the baseline), then, once the broker has closed every plain connection, all
on the TLS listener (what meters on the LAN use).

Each meter logs in with its own user name (its AE-ID, `C<meter id>`) and password: TCP
connect, TLS handshake (verifying the broker's certificate against the lab CA, TLS 1.2 or
1.3 as negotiated), CONNECT, CONNACK, then a SUBSCRIBE to its response topic
`/oneM2M/resp/<AE-ID>/<gateway CSE-ID>/+` (the ACL's `pattern read /oneM2M/resp/%u/+/+`) and
its SUBACK. A refused CONNACK, a refused subscription (0x80), a reset or a timeout is a
failure. (Mosquitto 2.0.11 grants a subscription to another meter's topic as well and applies
the ACL to what it delivers: the SUBACK proves the round trip, the login proves the
password.) Connections stay open until every meter is done, so the broker holds N at the peak.

The meters are raw MQTT 3.1.1 packets (bench.rawmqtt) over asyncio streams, uvloop if
installed, one coroutine per meter and no MQTT library: the client's CPU is printed beside
the broker's to show which one is the limit. The client raises its open-file soft limit to
the hard one; the broker, started after, inherits it (the shipped config sets no
max_connections, so that limit is Mosquitto's only bound).

Figures per phase: seconds from the first meter's start until all are connected and
subscribed, per-meter time (start to SUBACK) p50/p99/max, CONNACK p50, failures by cause,
CPU of the broker process and of this client (seconds, % of a core over the phase, ms per
meter) and of other processes meanwhile, the broker's open fds and RSS with all connected,
and the kernel's listen-queue overflows (a full accept backlog drops a SYN; the client tries
again after 1 s, then 3 s: long tails). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_coap_mqtt import OTHER_CPU_WARNING, cpu_seconds, system_busy_seconds
from bench.bench_gateway import _table, percentile, rss_mb
from bench.rawmqtt import (
    CONNACK,
    DISCONNECT_PACKET,
    SUBACK,
    MqttProtocolError,
    connect_packet,
    subscribe_packet,
)
from cse.security.credentials import Credential, CredentialStore
from gridm2m.broker import HOST
from tests.deploy.dap_broker import GATEWAY, DapBroker, dap_broker

DEFAULT_METERS = 5000
QUICK_METERS = 500
PHASES = ("plain MQTT", "MQTT over TLS")
CLIENT_BOUND = 85.0  # % of a core: above it this process, not the broker, set the pace
DRAIN_TIMEOUT_S = 120.0  # for the broker to close the previous phase's connections


# ---- one meter ---------------------------------------------------------------------------------


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT packet off the stream: (packet type, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttProtocolError("malformed remaining length")
    return first >> 4, await reader.readexactly(length)


@dataclass
class Meter:
    """One meter's login and what its reconnection took."""

    user: str  # its AE-ID: broker user name, client id and topic originator
    password: str
    writer: asyncio.StreamWriter | None = None
    connack_s: float | None = None  # start to CONNACK
    done_s: float | None = None  # start to SUBACK
    finished_at: float | None = None  # perf_counter at SUBACK
    failure: str | None = None

    @property
    def response_topic(self) -> str:
        return f"/oneM2M/resp/{self.user}/{GATEWAY}/+"

    async def reconnect(
        self, port: int, context: ssl.SSLContext | None, start_at: float, timeout: float
    ) -> None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        began = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                reader, self.writer = await asyncio.open_connection(
                    HOST, port, ssl=context, server_hostname=HOST if context else None
                )
                self.writer.write(
                    connect_packet(
                        self.user, keepalive=0, username=self.user, password=self.password
                    )
                )
                kind, body = await read_packet(reader)
                if kind != CONNACK or len(body) != 2 or body[1] != 0:
                    raise MqttProtocolError(f"CONNACK refused ({body.hex()})")
                self.connack_s = time.perf_counter() - began
                self.writer.write(subscribe_packet(1, [(self.response_topic, 1)]))
                kind, body = await read_packet(reader)
                if kind != SUBACK or body[2:] != b"\x01":
                    raise MqttProtocolError(f"subscription refused ({body.hex()})")
        except TimeoutError:
            self.failure = "timeout"
        except MqttProtocolError as error:
            self.failure = str(error).split(" (")[0]
        except asyncio.IncompleteReadError:
            self.failure = "closed by the broker"
        except (OSError, ssl.SSLError) as error:
            self.failure = type(error).__name__
        else:
            self.finished_at = time.perf_counter()
            self.done_s = self.finished_at - began

    async def disconnect(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            if self.failure is None:
                writer.write(DISCONNECT_PACKET)
            writer.close()
            async with asyncio.timeout(10):
                await writer.wait_closed()
        self.connack_s = self.done_s = self.finished_at = None
        self.failure = None


# ---- the machine -------------------------------------------------------------------------------


def raise_fd_limit() -> tuple[int, int]:
    """Open-file soft limit up to the hard one (one fd per meter here, and one per meter in the
    broker, which inherits it); the limits now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def process_fd_limit(pid: int) -> str:
    """The soft "Max open files" of a running process."""
    try:
        with open(f"/proc/{pid}/limits") as handle:
            for line in handle:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


def shipped_max_connections(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("max_connections "):
            return line.split()[1]
    return "not set (unlimited)"


def listen_overflows() -> int:
    """SYNs dropped because an accept queue was full (TcpExt ListenOverflows; the whole
    network namespace: other processes' listeners count too)."""
    try:
        with open("/proc/net/netstat") as handle:
            rows = [line.split() for line in handle if line.startswith("TcpExt:")]
        return int(rows[1][rows[0].index("ListenOverflows")])
    except (OSError, IndexError, ValueError):
        return -1


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# ---- phases ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    meters: int
    connected: int = 0
    all_in_s: float = float("nan")  # first start to the last SUBACK
    per_meter_s: list[float] = field(default_factory=list)
    connack_s: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    broker_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    wall_s: float = 0.0  # the CPU window: first start until every meter is done
    broker_fds: int = 0  # with all connected
    broker_rss_mb: float = 0.0
    listen_overflows: int = 0
    drained_s: float = 0.0  # for the broker to close the connections afterwards

    def percent(self, seconds: float) -> float:
        return 100 * seconds / self.wall_s if self.wall_s else float("nan")

    def summary(self) -> dict[str, Any]:
        figures = asdict(self)
        del figures["per_meter_s"], figures["connack_s"]
        for name, values in (("per_meter", self.per_meter_s), ("connack", self.connack_s)):
            for label, fraction in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                figures[f"{name}_{label}_ms"] = round(percentile(values, fraction) * 1000, 1)
        return figures


async def wait_for_fds(pid: int, at_most: int, timeout: float) -> float:
    """Poll until the broker holds at most `at_most` fds (it has closed what the last phase
    opened); seconds waited."""
    began = time.perf_counter()
    while open_fds(pid) > at_most and time.perf_counter() - began < timeout:
        await asyncio.sleep(0.05)
    return time.perf_counter() - began


async def reconnect_phase(
    name: str,
    broker_pid: int,
    port: int,
    context: ssl.SSLContext | None,
    meters: Sequence[Meter],
    spread: float,
    timeout: float,
    idle_fds: int,
) -> Phase:
    phase = Phase(name, len(meters))
    count = len(meters)
    overflows = listen_overflows()
    broker_cpu, client_cpu, busy = cpu_seconds(broker_pid), cpu_seconds(None), system_busy_seconds()
    start = time.perf_counter() + 0.2  # every coroutine is waiting before the first one starts
    await asyncio.gather(
        *(
            meter.reconnect(port, context, start + spread * index / count, timeout)
            for index, meter in enumerate(meters)
        )
    )
    phase.wall_s = time.perf_counter() - start
    phase.broker_cpu_s = cpu_seconds(broker_pid) - broker_cpu
    phase.client_cpu_s = cpu_seconds(None) - client_cpu
    phase.other_cpu_s = max(
        0.0, system_busy_seconds() - busy - phase.broker_cpu_s - phase.client_cpu_s
    )
    phase.listen_overflows = listen_overflows() - overflows
    phase.broker_fds = open_fds(broker_pid)
    phase.broker_rss_mb = rss_mb(broker_pid)
    done = [meter for meter in meters if meter.finished_at is not None]
    phase.connected = len(done)
    if done:
        phase.all_in_s = max(meter.finished_at or 0.0 for meter in done) - start
    phase.per_meter_s = [meter.done_s for meter in done if meter.done_s is not None]
    phase.connack_s = [meter.connack_s for meter in meters if meter.connack_s is not None]
    phase.failures = dict(Counter(meter.failure for meter in meters if meter.failure))
    for begin in range(0, count, 500):
        await asyncio.gather(*(meter.disconnect() for meter in meters[begin : begin + 500]))
    phase.drained_s = await wait_for_fds(broker_pid, idle_fds, DRAIN_TIMEOUT_S)
    return phase


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class Setup:
    meters: int
    spread_s: float
    loop: str
    provision_s: float = 0.0  # add_devices, one transaction
    broker_start_s: float = 0.0  # password file and ACL made, Mosquitto accepting
    client_fd_limit: tuple[int, int] = (0, 0)
    broker_fd_limit: str = "?"
    max_connections: str = "?"
    tls: str = "?"  # the version and cipher the broker negotiated
    load_before: str = ""
    load_after: str = ""
    cpus: int = 0


async def negotiated(port: int, context: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection(HOST, port, ssl=context, server_hostname=HOST)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        cipher = ssl_object.cipher() if ssl_object else None
        return f"{cipher[1]} {cipher[0]}" if cipher else "?"
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def run(
    count: int, spread: float, timeout: float, loop_name: str, log: Callable[[str], None]
) -> tuple[Setup, list[Phase]]:
    setup = Setup(count, spread, loop_name, cpus=os.cpu_count() or 0)
    setup.client_fd_limit = raise_fd_limit()
    setup.load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-reconnect-") as name:
        directory = Path(name)
        store = directory / f"{GATEWAY}-credentials.db"  # where dap_broker() keeps the store
        began = time.perf_counter()
        with CredentialStore(store) as credentials:
            made: list[Credential] = credentials.add_devices(
                [f"mtr-{index:06d}" for index in range(1, count + 1)]
            )
        setup.provision_s = time.perf_counter() - began
        log(f"{count} meters provisioned in {setup.provision_s:.2f} s; starting the broker")
        meters = [Meter(c.originator.lstrip("/"), c.mqtt_password or "") for c in made]
        began = time.perf_counter()
        async with dap_broker(directory) as broker:
            setup.broker_start_s = time.perf_counter() - began
            assert broker.store == store and broker.process is not None
            pid = broker.process.pid
            setup.broker_fd_limit = process_fd_limit(pid)
            setup.max_connections = shipped_max_connections(directory / "mosquitto.conf")
            context = broker.tls_context()
            setup.tls = await negotiated(broker.tls_port, context)
            idle_fds = await settle_fds(pid)
            phases = []
            for phase_name, port, tls in (
                (PHASES[0], broker.plain_port, None),
                (PHASES[1], broker.tls_port, context),
            ):
                log(f"{phase_name}: {count} meters reconnect over {spread:g} s")
                phase = await reconnect_phase(
                    phase_name, pid, port, tls, meters, spread, timeout, idle_fds
                )
                log(
                    f"{phase_name}: {phase.connected}/{count} in {phase.all_in_s:.2f} s, "
                    f"{phase.drained_s:.1f} s to drain"
                )
                phases.append(phase)
            refused = refusals(broker)
            if refused:
                log("the broker's log: " + refused)
    setup.load_after = load_average()
    return setup, phases


async def settle_fds(pid: int) -> int:
    """The broker's fds at rest (the probe connection closed)."""
    previous = -1
    for _ in range(100):
        now = open_fds(pid)
        if now == previous:
            return now
        previous = now
        await asyncio.sleep(0.05)
    return previous


def refusals(broker: DapBroker) -> str:
    """Lines of the broker's log that say it turned clients away for want of resources."""
    words = ("Too many open files", "max_connections", "out of memory", "Error")
    lines = [line for line in broker.log().splitlines() if any(w in line for w in words)]
    if not lines:
        return ""
    return f"{len(lines)} lines such as {lines[0]!r}"


# ---- the report --------------------------------------------------------------------------------


def _num(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def _ms(values: Sequence[float], fraction: float) -> str:
    return _num(percentile(values, fraction) * 1000, 0) if values else "-"


def report(setup: Setup, phases: Sequence[Phase]) -> str:
    def row(label: str, value: Callable[[Phase], str]) -> list[str]:
        return [label, *(value(phase) for phase in phases)]

    def failures(phase: Phase) -> str:
        total = sum(phase.failures.values())
        if not total:
            return "0"
        return f"{total} ({', '.join(f'{k} {v}' for k, v in sorted(phase.failures.items()))})"

    rows = [
        row("meters connected and subscribed", lambda p: f"{p.connected}/{p.meters}"),
        row("ALL IN (s, first start to last SUBACK)", lambda p: _num(p.all_in_s, 2)),
        row("per meter p50 ms (start to SUBACK)", lambda p: _ms(p.per_meter_s, 0.5)),
        row("per meter p99 ms", lambda p: _ms(p.per_meter_s, 0.99)),
        row("per meter max ms", lambda p: _ms(p.per_meter_s, 1.0)),
        row("meters over 1 s", lambda p: str(sum(t > 1 for t in p.per_meter_s))),
        row("CONNACK p50 ms", lambda p: _ms(p.connack_s, 0.5)),
        row("failures", failures),
        row("broker CPU s", lambda p: _num(p.broker_cpu_s, 2)),
        row("broker CPU % of a core", lambda p: _num(p.percent(p.broker_cpu_s), 0)),
        row("broker CPU ms per meter", lambda p: _num(1000 * p.broker_cpu_s / p.meters, 3)),
        row("client CPU s (all meters)", lambda p: _num(p.client_cpu_s, 2)),
        row("client CPU % of a core", lambda p: _num(p.percent(p.client_cpu_s), 0)),
        row("other processes CPU % of a core", lambda p: _num(p.percent(p.other_cpu_s), 0)),
        row(
            f"machine busy % ({setup.cpus} cores)",
            lambda p: _num(
                p.percent(p.broker_cpu_s + p.client_cpu_s + p.other_cpu_s) / setup.cpus, 0
            ),
        ),
        row("broker open fds, all connected", lambda p: str(p.broker_fds)),
        row("broker RSS MB, all connected", lambda p: _num(p.broker_rss_mb, 1)),
        row("listen queue overflows (SYN dropped)", lambda p: str(p.listen_overflows)),
    ]
    lines = [
        f"MQTT reconnect storm: {setup.meters} meters, starts spread over {setup.spread_s:g} s, "
        f"the DAP broker as shipped, client on {setup.loop}",
        f"provisioning: add_devices {setup.provision_s:.2f} s (one transaction); password file, "
        f"ACL and broker start {setup.broker_start_s:.2f} s",
        f"open files: client {setup.client_fd_limit[0]} (hard {setup.client_fd_limit[1]}), "
        f"broker {setup.broker_fd_limit}; max_connections {setup.max_connections}; "
        f"TLS listener negotiates {setup.tls}",
        "",
        _table(["", *(phase.name for phase in phases)], rows),
        "",
    ]
    for phase in phases:
        lines.append(
            f"{phase.name}: {phase.connected}/{phase.meters} meters connected and subscribed "
            f"in {_num(phase.all_in_s, 2)} s, {sum(phase.failures.values())} failures"
        )
    if len(phases) == 2 and phases[0].broker_cpu_s > 0:
        plain, tls = phases
        extra_ms = 1000 * (tls.broker_cpu_s - plain.broker_cpu_s) / tls.meters
        lines.append(
            f"TLS costs the broker {_num(extra_ms, 3)} ms of CPU more per meter "
            f"({_num(tls.broker_cpu_s / plain.broker_cpu_s, 1)}x plain)"
        )
    for phase in phases:
        if phase.percent(phase.other_cpu_s) > OTHER_CPU_WARNING:
            lines.append(
                f"OTHER PROCESSES used {phase.percent(phase.other_cpu_s):.0f} % of a core "
                f"during {phase.name}: its figures are noisy"
            )
        if phase.percent(phase.client_cpu_s) > CLIENT_BOUND:
            lines.append(
                f"{phase.name}: THE CLIENT WAS THE LIMIT ({phase.percent(phase.client_cpu_s):.0f} "
                "% of a core): the broker could have taken the meters faster"
            )
        elif phase.client_cpu_s > phase.broker_cpu_s:
            lines.append(f"{phase.name}: the client used more CPU than the broker")
        # Mosquitto serves on one thread: with a core of its own and meters that do their own
        # handshakes, the storm cannot end sooner than the broker's CPU time for it.
        lines.append(
            f"{phase.name}: the broker alone needs {phase.broker_cpu_s:.2f} s of one core for "
            f"{phase.meters} meters (the shortest storm on a core of its own)"
        )
    lines.append(
        f"load average before {setup.load_before}, after {setup.load_after} "
        f"({setup.cpus} CPUs, {platform.python_implementation()} {platform.python_version()})"
    )
    return "\n".join(lines)


def runner(prefer_uvloop: bool) -> tuple[Callable[[Coroutine[Any, Any, Any]], Any], str]:
    if prefer_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run, "uvloop"
    return asyncio.run, "asyncio"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=DEFAULT_METERS)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_METERS} meters")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds the starts spread over")
    parser.add_argument("--timeout", type=float, default=60.0, help="per meter, seconds")
    parser.add_argument("--asyncio", action="store_true", help="the stock loop, not uvloop")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    count = QUICK_METERS if args.quick else args.meters
    run_loop, loop_name = runner(not args.asyncio)

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    setup, phases = run_loop(run(count, args.spread, args.timeout, loop_name, log))
    print(report(setup, phases))
    if args.json:
        figures = {"setup": asdict(setup), "phases": [phase.summary() for phase in phases]}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

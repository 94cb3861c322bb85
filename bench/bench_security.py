"""contentInstance CREATE over plain CoAP and over OSCORE, against the same CSE, side by side.

    python -m bench.bench_security [--duration 5] [--clients 8,32] [--size 100] [--rounds 2]

One run starts `bench.oscore_cse` (SQLite storage in a private work directory, a CoapServer
that takes plain and OSCORE requests, a keyring of bench meters) in its own process. The load
is the meter agent's own CoAP code on CPython (`device_agents.agent`: the Dap, its CoapClient,
and for OSCORE the oscore module's client with `cryptography`'s AES-CCM): client `n` is meter
`sec<n>` (originator `Csec<n>`), registered with a container `cnt`, and keeps one CREATE of a
`--size`-character reading in flight (closed loop, rcn 0 as a meter posts). Per client count
and round, the plain load runs for `--duration` seconds (after `--warmup` seconds not
counted), then the OSCORE load with the same meters; the table gives creates/s, p50/p99
latency, errors, CPU (% of one core: the CSE, the meters, the rest of the machine, flagged
when over 15 %: a busy two-core machine makes the figures noise) and, over the rounds
(alternating which mode goes first), the median creates/s of each mode and OSCORE's share of
plain (p99: the median of the rounds' p99). Nothing is asserted; the last line says whether
OSCORE reaches 80 % of plain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_coap_mqtt import OTHER_CPU_WARNING, CpuWindow
from bench.oscore_cse import bench_keys, event_loop_runner, meter_name
from device_agents.agent.compat import LinkError
from device_agents.agent.onem2m import Dap
from device_agents.fleet.emulator import SequenceInMemory

_LISTENING = re.compile(r"listening on coap://127\.0\.0\.1:(\d+)")
TARGET = 0.8  # OSCORE creates/s as a share of plain


@dataclass
class Measurement:
    latencies: list[float]
    errors: int
    seconds: float
    cpu: dict[str, float]  # % of one core: "cse", "meters" (this process), "other" (the rest)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def meter_config(
    port: int, index: int, seed: str, sequence: SequenceInMemory | None = None
) -> dict[str, Any]:
    """A meter's config; OSCORE when given its sequence store (kept across rounds: a
    meter that starts its numbers again is refused as a replay, rightly)."""
    config: dict[str, Any] = {
        "meter_id": meter_name(index),
        "transport": "coap",
        "dap_host": "127.0.0.1",
        "dap_port": port,
        "cse_id": "/id-in",
        "cse_name": "cse-in",
        "poa_host": "127.0.0.1",
        "listen_host": "127.0.0.1",
        "timeout_ms": 10000,
    }
    if sequence is not None:
        keys = bench_keys(seed, index)
        config["oscore"] = {
            "kid": keys.sender_id.hex(),
            "secret": keys.master_secret.hex(),
            "salt": keys.master_salt.hex(),
        }
        config["oscore_state"] = sequence
    return config


@contextlib.contextmanager
def running_cse(workdir: Path, meters: int, seed: str) -> Iterator[tuple[int, int]]:
    """(CoAP port, pid) of bench.oscore_cse, stopped on exit."""
    command = [sys.executable, "-m", "bench.oscore_cse", "--db", str(workdir / "cse.db")]
    command += ["--meters", str(meters), "--seed", seed]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        found = _LISTENING.search(process.stdout.readline())
        if found is None:
            raise RuntimeError("bench.oscore_cse did not start")
        yield int(found.group(1)), process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


async def connect(
    port: int, clients: int, seed: str, sequences: list[SequenceInMemory] | None
) -> list[Dap]:
    """Connected Daps for meters 0 .. clients - 1: plain, or OSCORE with these stores."""
    daps = []
    for index in range(clients):
        sequence = None if sequences is None else sequences[index]
        dap = Dap(meter_config(port, index, seed, sequence))
        await dap.connect()
        daps.append(dap)
    return daps


async def load(daps: list[Dap], size: int, warmup: float, duration: float, pid: int) -> Measurement:
    """Every Dap keeps one CREATE in flight; only answers after the warm-up count."""
    content = {"flow": "bench", "v": "7" * size}
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    counting = started + warmup
    end = counting + duration
    window = CpuWindow({"cse": pid, "meters": None})

    async def client(dap: Dap) -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < end:
            try:
                ok = await dap.post("cnt", content) == 2001
            except LinkError:
                ok = False
            if sent >= counting:
                if ok:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

    async def mark_warm() -> None:
        await asyncio.sleep(warmup)
        window.start()

    await asyncio.gather(mark_warm(), *(client(dap) for dap in daps))
    return Measurement(latencies, errors, duration, window.stop())


async def run(args: argparse.Namespace, port: int, pid: int) -> list[tuple[int, str, Any]]:
    most = max(args.clients)
    sequences = [SequenceInMemory() for _ in range(most)]
    setup = await connect(port, most, args.seed, sequences)
    for dap in setup:  # register and create the containers (over OSCORE: it is all one CSE)
        await dap.register()
        await dap.ensure_container("cnt")
    for dap in setup:
        await dap.close()
    rows = []
    for clients in args.clients:
        for round_number in range(args.rounds):
            # Alternate which goes first, so a drift in the machine's load favours neither.
            for secured in (False, True) if round_number % 2 == 0 else (True, False):
                daps = await connect(port, clients, args.seed, sequences if secured else None)
                try:
                    measured = await load(daps, args.size, args.warmup, args.duration, pid)
                finally:
                    for dap in daps:
                        await dap.close()
                mode = "oscore" if secured else "plain"
                rows.append((clients, mode, measured))
                print(row_text(clients, round_number, mode, measured), flush=True)
    return rows


def row_text(clients: int, round_number: int, mode: str, measured: Measurement) -> str:
    return (
        f"c{clients:<4} round {round_number + 1}  {mode:<7}"
        f"{measured.rate:>9.0f}/s  p50 {measured.percentile_ms(0.5):6.2f} ms"
        f"  p99 {measured.percentile_ms(0.99):7.2f} ms  errors {measured.errors:<4}"
        f"  CPU % CSE {measured.cpu.get('cse', 0):5.1f} meters {measured.cpu.get('meters', 0):5.1f}"
        f" other {measured.cpu.get('other', 0):5.1f}"
        + ("  * busy machine" if measured.cpu.get("other", 0) > OTHER_CPU_WARNING else "")
    )


def summary(rows: list[tuple[int, str, Any]]) -> list[str]:
    lines = []
    verdicts = []
    for clients in sorted({clients for clients, _, _ in rows}):
        plain = [m for c, mode, m in rows if c == clients and mode == "plain"]
        secured = [m for c, mode, m in rows if c == clients and mode == "oscore"]
        plain_rate = statistics.median(m.rate for m in plain)
        secured_rate = statistics.median(m.rate for m in secured)
        share = secured_rate / plain_rate if plain_rate else float("nan")
        plain_p99 = statistics.median(m.percentile_ms(0.99) for m in plain)
        secured_p99 = statistics.median(m.percentile_ms(0.99) for m in secured)
        lines.append(
            f"c{clients}: plain {plain_rate:.0f}/s p99 {plain_p99:.2f} ms | OSCORE "
            f"{secured_rate:.0f}/s p99 {secured_p99:.2f} ms | OSCORE/plain {share:.0%}"
        )
        verdicts.append(share >= TARGET)
    reached = "reaches" if all(verdicts) else "does NOT reach"
    lines.append(f"OSCORE {reached} {TARGET:.0%} of plain creates/s at every client count")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", default="bench")
    args = parser.parse_args()
    args.clients = [int(value) for value in args.clients.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="gridm2m-bench-security-") as directory,
        running_cse(Path(directory), max(args.clients), args.seed) as (port, pid),
    ):
        rows = event_loop_runner()(run(args, port, pid))
    for line in summary(rows):
        print(line)


if __name__ == "__main__":
    main()

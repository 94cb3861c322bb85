"""What MQTT over TLS costs: request rate through the shipped broker, and the meter's heap.

    python -m bench.bench_mqtts [--meters 16] [--duration 10] [--json FILE]

One run starts the DAP broker as shipped (docker/mosquitto/mosquitto.conf, its password file
and ACL made by `gridm2m credentials mosquitto` from a fresh credential store; the harness of
tests/deploy/dap_broker.py) and a gateway CSE on that store (`gridm2m cse`, trust
"credential", SQLite with fsync, its own broker login). Then:

1. Request rate, side by side: `--meters` meter agents (the agent's own Dap on CPython), each
   logged in with its own password, register and then CREATE contentInstances one after the
   other for `--duration` seconds: first through the plain listener (loopback, what the
   gateway itself uses), then through the TLS listener (what meters use). Requests/s, p50/p99
   latency, and how long one meter's connect (TCP, TLS handshake, CONNECT) takes.
2. The meter's heap on the MicroPython unix port, plain and TLS: free heap after start
   (after gc.collect), the smallest `-X heapsize` (in 4 KB steps) at which a meter registers,
   answers a command and has no memory error, and the process's peak RSS (on the unix port
   mbedTLS allocates with malloc, so the TLS buffers show there, not in the heap).

No thresholds are asserted; the figures go to docs/performance.md and docs/boards.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.deploy.dap_broker import DapBroker, dap_broker
from tests.deploy.test_dap_broker_meters import gateway_cse
from tests.device_agents import mp
from tests.processes import CSEProcess

T0 = 1_767_225_600


def onem2m() -> Any:
    return importlib.import_module("device_agents.agent.onem2m")


async def one_meter(
    broker: DapBroker, meter_id: str, tls: bool, window: tuple[float, float], latencies: list[float]
) -> tuple[float, int]:
    """Connect and register, then CREATE from the window's start to its end; (connect
    seconds, creates answered in the window)."""
    dap = onem2m().Dap(broker.meter_config(meter_id, tls=tls))
    began = time.perf_counter()
    await dap.connect()
    connected = time.perf_counter() - began
    serving = asyncio.create_task(dap.serve())
    created = 0
    try:
        await dap.register()
        await dap.ensure_container("reading")
        start, until = window
        await asyncio.sleep(max(0.0, start - time.perf_counter()))  # all begin together
        while time.perf_counter() < until:
            sent = time.perf_counter()
            rsc = await dap.post("reading", {"kWh": created, "v": "x" * 200})
            if rsc == 2001:
                created += 1
                latencies.append((time.perf_counter() - sent) * 1000)
    finally:
        await dap.close()
        await serving
    return connected, created


async def request_rate(
    broker: DapBroker, meters: int, duration: float, tls: bool
) -> dict[str, Any]:
    latencies: list[float] = []
    # Setup (connect, register) is outside the measured window, which opens once all are in.
    start = time.perf_counter() + 3.0 + meters * 0.05
    window = (start, start + duration)
    results = await asyncio.gather(
        *(
            one_meter(broker, f"mtr-{index:06d}", tls, window, latencies)
            for index in range(1, meters + 1)
        )
    )
    created = sum(count for _, count in results)
    ordered = sorted(latencies)
    return {
        "transport": "mqtts" if tls else "mqtt",
        "meters": meters,
        "requests_per_s": round(created / duration, 1),
        "p50_ms": round(statistics.median(ordered), 2) if ordered else None,
        "p99_ms": round(ordered[int(len(ordered) * 0.99)], 2) if ordered else None,
        "connect_ms_median": round(statistics.median(c for c, _ in results) * 1000, 1),
    }


HEAP_RUN = """
import asyncio, gc, json
from agent import Agent

config = json.load(open("config.json"))
agent = Agent(config)


def peak_rss_kb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def main():
    running = asyncio.create_task(agent.run())
    while not agent.started:
        await asyncio.sleep_ms(10)
    gc.collect()
    print("started", gc.mem_free())
    while not agent.sent.get("mr-ondemand-ipd"):
        await asyncio.sleep_ms(10)
    agent.stop()
    await running
    stats = agent.stats()
    print("done", json.dumps({"memory_errors": stats["memory_errors"], "rss_kb": peak_rss_kb()}))


asyncio.run(main())
"""


async def heap_run(
    broker: DapBroker, cse: CSEProcess, tls: bool, heap: str, ca_der: Path
) -> dict[str, Any]:
    """One MicroPython meter: start, one command, its answer; what its heap looked like."""
    from tests.deploy.test_dap_broker_meters import command

    meter = f"mtr-heap-{'tls' if tls else 'plain'}"
    config = broker.meter_config(meter, tls=tls)
    if tls:
        config["mqtt_ca"] = str(ca_der)
    config.update(seed=3, prepay=False, clock_speed=1, start_ts=T0 + 8 * 3600)
    try:
        async with mp.MicroPython(HEAP_RUN, config=config, heap=heap) as agent:
            free = int((await agent.expect("started", timeout=30)).split()[1])
            await command(
                cse, meter, {"cmd": "read", "id": f"h{time.monotonic_ns()}", "src": "ipd"}
            )
            done = json.loads((await agent.expect("done", timeout=30))[len("done ") :])
            await agent.wait()
    except AssertionError:  # it never started, or never answered: too small a heap
        return {"heap": heap, "ok": False}
    return {"heap": heap, "ok": done["memory_errors"] == 0, "free_after_start": free, **done}


async def agent_heap(broker: DapBroker, cse: CSEProcess) -> list[dict[str, Any]]:
    from device_agents.build import ca_certificate_der

    ca_der = broker.directory / "ca.der"
    ca_der.write_bytes(ca_certificate_der(broker.ca))
    results = []
    for tls in (False, True):
        for meter in (f"mtr-heap-{'tls' if tls else 'plain'}",):
            from tests.deploy.dap_broker import gridm2m_credentials

            gridm2m_credentials(broker.store, "add-device", meter)
        await broker.reload(newcomer=f"Cmtr-heap-{'tls' if tls else 'plain'}")
        at_96k = await heap_run(broker, cse, tls, "96k", ca_der)
        smallest = None
        for size in range(80, 132, 4):
            run = await heap_run(broker, cse, tls, f"{size}k", ca_der)
            if run["ok"]:
                smallest = size
                break
        results.append(
            {"transport": "mqtts" if tls else "mqtt", "at_96k": at_96k, "smallest_heap_k": smallest}
        )
    return results


async def run(meters: int, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-mqtts-") as directory:
        ids = tuple(f"mtr-{index:06d}" for index in range(1, meters + 1))
        async with dap_broker(Path(directory), ids) as broker:
            cse = await gateway_cse(broker)  # with an admin token for the commands
            try:
                rates = [await request_rate(broker, meters, duration, tls) for tls in (False, True)]
                heap = await agent_heap(broker, cse) if mp.micropython_binary() else []
            finally:
                await cse.stop()
    return {"request_rate": rates, "agent_heap": heap}


def report(result: dict[str, Any]) -> str:
    lines = ["transport  meters  req/s   p50 ms  p99 ms  connect ms"]
    for row in result["request_rate"]:
        lines.append(
            f"{row['transport']:<10} {row['meters']:>6} {row['requests_per_s']:>7} "
            f"{row['p50_ms']:>7} {row['p99_ms']:>7} {row['connect_ms_median']:>10}"
        )
    for row in result["agent_heap"]:
        at = row["at_96k"]
        lines.append(
            f"agent {row['transport']:<6} at 96k: ok={at['ok']} free after start "
            f"{at.get('free_after_start')} B, peak RSS {at.get('rss_kb')} kB; "
            f"smallest heap without a memory error: {row['smallest_heap_k']}k"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meters", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    result = asyncio.run(run(args.meters, args.duration))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

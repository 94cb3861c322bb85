"""How long discovery over a large tree holds the event loop, and what it costs.

Builds a CSE on SQLite in this process with --meters AEs of one container of --instances
contentInstances each, then sends --requests discoveries at once from one meter (its access
checks run on every candidate, as for an attacker on the meter LAN), while a probe task asks
for a turn of the event loop every millisecond. Reported per scenario: wall time, the
longest the probe waited beyond its millisecond (the stall every other client sees), and the
peak of Python allocations during the discoveries (a second run under tracemalloc).

    python -m bench.bench_discovery [--meters 500] [--instances 200] [--requests 10]

Scenarios: `lim=1` (ty=4, lim=1: one result wanted), `no match` (a label nobody has: the
whole tree must be read), `cap` (ty=4: as many results as the CSE gives).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria, Request
from cse.core.types import Operation
from cse.storage.base import Put, Resource
from cse.storage.sqlite import SQLiteStorage

SCENARIOS: dict[str, dict[str, Any]] = {
    "lim=1": {"resource_types": (4,), "limit": 1},
    "no match": {"labels": ("nobody",)},
    "cap": {"resource_types": (4,)},
}


async def _build(cse: CommonServicesEntity, meters: int, instances: int) -> None:
    now, later = cse.timestamp(), cse.timestamp(86400)
    base = cse.settings.cse_name
    for meter in range(meters):
        ae_id = f"Cm{meter:05d}"
        ae = {"ty": 2, "ri": ae_id, "rn": f"m{meter:05d}", "pi": cse.settings.cse_ri,
              "ct": now, "lt": now, "et": later, "api": "Nmeter", "rr": True, "srv": ["3"],
              "aei": ae_id}  # fmt: skip
        cnt = {"ty": 3, "ri": f"cnt{meter:05d}", "rn": "reading", "pi": ae_id, "ct": now,
               "lt": now, "et": later, "cni": instances, "st": instances}  # fmt: skip
        batch = [
            Put(Resource(ae, f"{base}/m{meter:05d}", ae_id)),
            Put(Resource(cnt, f"{base}/m{meter:05d}/reading", ae_id)),
        ]
        for number in range(instances):
            cin = {"ty": 4, "ri": f"i{meter:05d}-{number:05d}", "rn": f"r{number:05d}",
                   "pi": f"cnt{meter:05d}", "ct": now, "lt": now, "et": later,
                   "con": "x" * 100, "cs": 100, "st": number + 1}  # fmt: skip
            batch.append(Put(Resource(cin, f"{base}/m{meter:05d}/reading/r{number:05d}", ae_id)))
        await cse.storage.apply(batch)
        await cse.storage.sync()


def _discovery(cse: CommonServicesEntity, number: int, criteria: dict[str, Any]) -> Request:
    return Request(
        operation=Operation.RETRIEVE,
        to=cse.settings.cse_name,
        originator="Cm00000",
        request_id=f"d{number}",
        release_version="3",
        filter_criteria=FilterCriteria(filter_usage=1, **criteria),
    )


async def _probe(stop: asyncio.Event, worst: list[float]) -> None:
    """Ask for a turn every millisecond; keep the longest wait beyond it."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], loop.time() - asked - 0.001)


async def _run(
    cse: CommonServicesEntity, requests: int, criteria: dict[str, Any]
) -> dict[str, Any]:
    stop, worst = asyncio.Event(), [0.0]
    probe = asyncio.create_task(_probe(stop, worst))
    await asyncio.sleep(0.01)
    started = time.perf_counter()
    answers = await asyncio.gather(
        *(cse.handle(_discovery(cse, n, criteria)) for n in range(requests))
    )
    elapsed = time.perf_counter() - started
    stop.set()
    await probe
    results = len((answers[0].content or {}).get("m2m:uril", []))
    return {
        "seconds": round(elapsed, 3),
        "max_stall_ms": round(worst[0] * 1000, 1),
        "results_each": results,
        "status": int(answers[0].status),
    }


async def _peak_memory(cse: CommonServicesEntity, requests: int, criteria: dict[str, Any]) -> int:
    tracemalloc.start()
    await asyncio.gather(*(cse.handle(_discovery(cse, n, criteria)) for n in range(requests)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


async def main_async(meters: int, instances: int, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gridm2m-discovery-") as directory:
        cse = CommonServicesEntity(SQLiteStorage(Path(directory) / "cse.db"))
        async with cse:
            await _build(cse, meters, instances)
            report: dict[str, Any] = {
                "meters": meters,
                "instances_each": instances,
                "resources": meters * (instances + 2),
                "requests": requests,
            }
            for name, criteria in SCENARIOS.items():
                figures = await _run(cse, requests, criteria)
                figures["peak_python_mb"] = round(
                    await _peak_memory(cse, requests, criteria) / 1e6, 1
                )
                report[name] = figures
                print(f"{name:>9}: {figures}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=500)
    parser.add_argument("--instances", type=int, default=200, help="per meter")
    parser.add_argument("--requests", type=int, default=10, help="discoveries sent at once")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    report = asyncio.run(main_async(args.meters, args.instances, args.requests))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

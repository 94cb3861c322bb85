"""One CSE worker on PostgreSQL against one on SQLite, through the core (no binding).

The same load on each backend: `--meters` AEs with a container each, then `--creates`
contentInstances spread over them, `--concurrency` requests in flight (the core's group
commit gathers them); then RETRIEVEs of the containers (resources the cache keeps). Printed
side by side: requests/s, p50/p99 latency, this process's CPU per create, the PostgreSQL
server processes' CPU per create (read from /proc where this user may), and the requests
each commit acknowledged. PostgreSQL runs twice: with the resource cache (kept in step by
LISTEN/NOTIFY) and with `cache_size = 0` (every read from the server). Last, how long a
change takes to reach another worker's cache (the notice delay).

    python -m bench.bench_postgres [--creates 20000] [--meters 200] [--concurrency 64]
        [--server postgresql://postgres@127.0.0.1:5432]

The PostgreSQL server is the local one by default; the bench makes a database of its own
and drops it at the end. No thresholds: figures for docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import uvloop
from psycopg import sql

from cse.core.config import CSELimits, CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.storage.base import ChangedElsewhere, Put, Resource, Storage
from cse.storage.postgres import PostgresStorage
from cse.storage.sqlite import SQLiteStorage

ORIGIN = "CAdmin"
CONTENT = "x" * 100
_UNLIMITED = CSELimits(
    max_resources_per_ae=None,
    max_subscriptions_per_resource=None,
    registrations_per_minute=None,
    registrations_per_minute_per_source=None,
    requests_per_second=None,
)


@dataclass
class Figures:
    name: str
    creates_per_s: float = 0.0
    create_p50_ms: float = 0.0
    create_p99_ms: float = 0.0
    cpu_us_per_create: float = 0.0
    server_cpu_us_per_create: float | None = None
    per_commit: float | None = None
    retrieves_per_s: float = 0.0
    retrieve_p99_ms: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


def _request(  # type: ignore[no-untyped-def]
    operation: Operation, to: str, number: int, ty: int | None = None, pc=None, origin=ORIGIN
):
    return Request(
        operation=operation,
        to=to,
        originator=origin,
        request_id=f"b{number}",
        release_version="3",
        resource_type=ty,
        content=pc,
    )


async def _drive(
    cse: CommonServicesEntity, requests: Iterator[Request], concurrency: int
) -> list[float]:
    """Serve every request with `concurrency` in flight; the latency of each (seconds)."""
    latencies: list[float] = []

    async def worker() -> None:
        for request in requests:
            started = time.perf_counter()
            answer = await cse.handle(request)
            latencies.append(time.perf_counter() - started)
            if answer.status >= 4000:
                raise RuntimeError(f"{request.to}: {answer.status} {answer.content}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] * 1000


def _server_cpu_seconds(url: str, database: str) -> float | None:
    """CPU time of the server processes serving `database` (None if /proc says nothing)."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        ]
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return None
    return total


async def run_load(
    name: str,
    make_storage: Callable[[], Storage],
    args: argparse.Namespace,
    server_cpu: Callable[[], float | None] = lambda: None,
) -> Figures:
    settings = CSESettings(limits=_UNLIMITED, expiry_check_interval=3600)
    cse = CommonServicesEntity(make_storage(), settings)
    figures = Figures(name)
    async with cse:
        aes = (
            _request(
                Operation.CREATE,
                "cse-in",
                n,
                2,
                {"m2m:ae": {"rn": f"m{n}", "api": "Nbench", "rr": False, "srv": ["3"]}},
                origin=f"Cm{n}",
            )
            for n in range(args.meters)
        )
        await _drive(cse, aes, args.concurrency)
        containers = (
            _request(Operation.CREATE, f"cse-in/m{n}", n, 3, {"m2m:cnt": {"rn": "reads"}})
            for n in range(args.meters)
        )
        await _drive(cse, containers, args.concurrency)
        commits_before = getattr(cse.storage, "commits", None)
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        server_before = server_cpu()
        creates = (
            _request(
                Operation.CREATE,
                f"cse-in/m{n % args.meters}/reads",
                n,
                4,
                {"m2m:cin": {"cnf": "text/plain:0", "con": CONTENT}},
            )
            for n in range(args.creates)
        )
        started = time.perf_counter()
        latencies = await _drive(cse, creates, args.concurrency)
        elapsed = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        server_after = server_cpu()
        figures.creates_per_s = args.creates / elapsed
        figures.create_p50_ms = _percentile(latencies, 0.5)
        figures.create_p99_ms = _percentile(latencies, 0.99)
        used = (cpu_after.ru_utime + cpu_after.ru_stime) - (
            cpu_before.ru_utime + cpu_before.ru_stime
        )
        figures.cpu_us_per_create = used / args.creates * 1e6
        if server_before is not None and server_after is not None:
            figures.server_cpu_us_per_create = (server_after - server_before) / args.creates * 1e6
        commits_after = getattr(cse.storage, "commits", None)
        if commits_before is not None and commits_after is not None:
            figures.per_commit = args.creates / max(1, commits_after - commits_before)
        reads = (
            _request(Operation.RETRIEVE, f"cse-in/m{n % args.meters}/reads", n)
            for n in range(args.creates // 2)
        )
        started = time.perf_counter()
        latencies = await _drive(cse, reads, args.concurrency)
        figures.retrieves_per_s = (args.creates // 2) / (time.perf_counter() - started)
        figures.retrieve_p99_ms = _percentile(latencies, 0.99)
    return figures


async def notice_delay(url: str, samples: int) -> tuple[float, float, float, float]:
    """From a worker's request for its commit (sync) to its acknowledgement, and to another
    worker's hearing of the change (what drops it from that one's cache): p50s and p99s, ms.
    Both include the group's linger and the COMMIT."""
    writer, reader = PostgresStorage(url, schema="notice"), PostgresStorage(url, schema="notice")
    await writer.open()
    await reader.open()
    heard: asyncio.Queue[float] = asyncio.Queue()

    def on_change(changed: ChangedElsewhere) -> None:
        heard.put_nowait(time.perf_counter())

    reader.watch_others(on_change)
    try:
        while not reader._listening:  # the notice channel is being set up
            await asyncio.sleep(0.01)
        base = Resource({"ty": 5, "ri": "id-in", "rn": "cse-in", "pi": ""}, "cse-in", "C")
        await writer.apply([Put(base)])
        await writer.sync()
        await heard.get()
        acknowledged, noticed = [], []
        for number in range(samples):
            changed = base.with_attributes(lbl=[str(number)])
            await writer.apply([Put(changed)])
            asked = time.perf_counter()
            await writer.sync()
            acknowledged.append(time.perf_counter() - asked)
            noticed.append(await heard.get() - asked)
            base = changed
    finally:
        await writer.close()
        await reader.close()
    return (
        _percentile(acknowledged, 0.5),
        _percentile(acknowledged, 0.99),
        _percentile(noticed, 0.5),
        _percentile(noticed, 0.99),
    )


@contextlib.asynccontextmanager
async def bench_database(server: str) -> AsyncIterator[tuple[str, str]]:
    name = f"gridm2m_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{server}/{name}", name
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _row(label: str, values: list[str]) -> str:
    return f"{label:<28}" + "".join(f"{value:>22}" for value in values)


def _show(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


async def main(args: argparse.Namespace) -> None:
    results: list[Figures] = []
    with tempfile.TemporaryDirectory() as directory:
        results.append(
            await run_load("SQLite", lambda: SQLiteStorage(Path(directory) / "cse.db"), args)
        )
    async with bench_database(args.server) as (url, name):
        for label, cache in (("PostgreSQL", 8192), ("PostgreSQL, no cache", 0)):
            schema = f"s{cache}"
            results.append(
                await run_load(
                    label,
                    lambda schema=schema, cache=cache: PostgresStorage(  # type: ignore[misc]
                        url, schema=schema, cache_size=cache
                    ),
                    args,
                    lambda: _server_cpu_seconds(f"{args.server}/postgres", name),
                )
            )
        delays = await notice_delay(url, args.samples)
    print(
        f"{args.creates} creates over {args.meters} containers, {args.concurrency} in flight, "
        "one worker, through the core"
    )
    print(_row("", [figures.name for figures in results]))
    print(_row("creates/s", [_show(f.creates_per_s) for f in results]))
    print(_row("create p50 ms", [_show(f.create_p50_ms, 2) for f in results]))
    print(_row("create p99 ms", [_show(f.create_p99_ms, 2) for f in results]))
    print(_row("CSE CPU us/create", [_show(f.cpu_us_per_create) for f in results]))
    print(_row("PostgreSQL CPU us/create", [_show(f.server_cpu_us_per_create) for f in results]))
    print(_row("creates per commit", [_show(f.per_commit, 1) for f in results]))
    print(_row("retrieves/s (container)", [_show(f.retrieves_per_s) for f in results]))
    print(_row("retrieve p99 ms", [_show(f.retrieve_p99_ms, 2) for f in results]))
    print(
        "one change alone: acknowledged after p50 {:.2f} ms, p99 {:.2f} ms; another worker's "
        "cache drops it after p50 {:.2f} ms, p99 {:.2f} ms".format(*delays)
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=20000)
    parser.add_argument("--meters", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--samples", type=int, default=200, help="notice delay samples")
    parser.add_argument(
        "--server",
        default=os.environ.get("GRIDM2M_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database name",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    uvloop.run(main(parse_args()))

"""A scaled-out head-end under its gateways' load: 1, 2 and 3 IN-CSE processes on PostgreSQL
against one process on SQLite, the same load on each, side by side.

The load is what DAP gateways' uplinks send: mirrored contentInstances created over HTTP in
`<cse>/<dap>/<family>` (`--daps` DAPs registered as remoteCSEs, each proving its CSE-ID with
a bearer token, `--families` containers each), driven by `wrk -t1` with
bench/wrk_mirror_cin.lua for `--seconds` with `--connections` connections. The head-end is
real processes: `gridm2m headend` (IN-CSE, with the MDMS, which subscribes to every
container and stores every instance) plus N-1 `gridm2m headend --worker` on one HTTP port
(SO_REUSEPORT: the kernel spreads the connections). So each create also costs a
notification to the MDMS (handed off through the shared outbox when a worker took the
create) and the MDMS's insert, as in a deployment.

Measured per set-up: creates/s and p50/p99 (wrk), CPU of the head-end processes per create
and PostgreSQL's own CPU per create (its server processes serving the bench database, read
from /proc), both from the start of the load until the MDMS has stored every acknowledged
instance (so the notifications' cost is in), and how long the MDMS lagged behind.

    python -m bench.bench_scale_out [--seconds 15] [--connections 64] [--daps 50]
                                    [--workers 1 2 3] [--transport http|mqtt]

With `--transport mqtt` the same creates go through a Mosquitto of the bench's own: a client
per connection publishes to the IN-CSE's request topic and waits for each answer, and the
processes take them through their shared subscription (SQLite's one process subscribes on
its own).

It makes and drops a database of its own on the local server (`--server` for another).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.bench_coap_mqtt import mosquitto_binary, write_mosquitto_config
from bench.http_load import WrkResult, run_wrk
from bench.limits import switch_limits_off
from bench.rawmqtt import RawMqttClient
from cse.security.credentials import CredentialStore
from gridm2m.broker import free_port
from gridm2m.processes import toml_text

BENCH_DIR = Path(__file__).resolve().parent
MIRROR_SCRIPT = BENCH_DIR / "wrk_mirror_cin.lua"
FAMILIES = ("interval", "register", "event", "power-quality")
TICKS = os.sysconf("SC_CLK_TCK")
STUCK_AFTER = 15.0  # seconds without an outbox entry delivered: what is left is stuck


@dataclass
class Figures:
    name: str
    creates: int = 0
    creates_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    cse_cpu_us: float | None = None  # per create, the head-end processes
    server_cpu_us: float | None = None  # per create, PostgreSQL's processes
    mdms_lag_s: float = 0.0  # from the end of the load until the MDMS had everything
    mdms_stored: int = 0
    outbox_left: dict[str, int] = field(default_factory=dict)  # undelivered at the end


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: what it used is lost, which the figure then understates
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def _server_pids(server: str, database: str) -> list[int]:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return [int(row[0]) for row in rows]


def _outbox_left(db: str, schema: str | None) -> dict[str, int]:
    """The entries still in the CSE's outbox, by holder: "handed off" (no process's yet),
    "live" (a running process's), "gone" (a process that stopped)."""
    if schema is None:  # one process on SQLite: every entry is its own
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as lite:
            (count,) = lite.execute("SELECT count(*) FROM outbox").fetchone()
        return {"live": int(count)} if count else {}
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        rows = conn.execute(
            "SELECT CASE WHEN o.worker = 0 THEN 'handed off' "
            "WHEN w.alive_until > now() THEN 'live' ELSE 'gone' END, count(*) "
            "FROM outbox o LEFT JOIN workers w ON w.id = o.worker GROUP BY 1"
        ).fetchall()
    return {str(holder): int(count) for holder, count in rows}


def _mdms_count(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        (count,) = conn.execute("SELECT count(*) FROM messages").fetchone()
    return int(count)


class HeadEnd:
    """`gridm2m headend` plus `workers - 1` times `gridm2m headend --worker` on one port."""

    def __init__(
        self, directory: Path, db: str, workers: int, schema: str | None, mqtt_port: int | None
    ) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mdms_db = directory / "mdms.db"
        cse: dict[str, Any] = {
            "db": db,
            "poa": [self.url],
            "credentials": str(directory / "credentials.db"),
            "http": {"port": self.port},
        }
        if schema is not None:
            cse["scale_out"] = True
            cse["postgres"] = {"schema": schema}
        if mqtt_port is not None:
            # The bench's own broker on loopback, anonymous: the DAPs' topics are believed.
            cse["mqtt"] = {
                "url": f"mqtt://127.0.0.1:{mqtt_port}",
                "trust": "insecure",
                "share_group": "bench",
            }
        headend = {
            "cse": cse,
            "mdms": {"db": str(self.mdms_db)},
            "dashboard": {"port": free_port()},
            "cis": {"enabled": False},
        }
        self.config = directory / "headend.toml"
        self.config.write_text(toml_text("headend", headend))
        self.workers = workers
        self.processes: list[subprocess.Popen[bytes]] = []
        self.command = [sys.executable, "-m", "gridm2m", "headend", "--config", str(self.config)]

    def start(self) -> None:
        switch_limits_off()
        for number in range(self.workers):
            extra = ["--worker"] if number else []
            log = (self.directory / f"headend-{number}.log").open("ab")
            process = subprocess.Popen(
                [*self.command, "--log-level", "WARNING", *extra],
                stdout=subprocess.PIPE,
                stderr=log,
            )
            self.processes.append(process)
            assert process.stdout is not None
            line = "-"
            while line and "listening on" not in line:  # the first start prints a password
                line = process.stdout.readline().decode()
            if "listening on" not in line:
                self.stop()
                raise RuntimeError(f"head-end process {number} did not start: {line!r}")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tokens(store_path: Path, daps: int) -> list[str]:
    """A credential with a bearer token per DAP, `dapN=<token>` as the Lua script takes it."""
    store = CredentialStore(store_path).open()
    try:
        return [f"dap{n}={store.add_cse(f'/dap{n}', token=True).token}" for n in range(1, daps + 1)]
    finally:
        store.close()


def _register(url: str, dap_tokens: list[str], families: int) -> None:
    """Each DAP registers (a remoteCSE) and makes its family containers, as its gateway does."""
    import urllib.request

    def post(path: str, dap: str, token: str, ty: int, body: str) -> None:
        request = urllib.request.Request(
            f"{url}/{path}",
            data=body.encode(),
            method="POST",
            headers={
                "X-M2M-Origin": f"/{dap}",
                "X-M2M-RI": uuid.uuid4().hex,
                "X-M2M-RVI": "3",
                "Authorization": f"Bearer {token}",
                "Content-Type": f"application/json;ty={ty}",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            if answer.status != 201:
                raise RuntimeError(f"set-up of {path} answered {answer.status}")

    for item in dap_tokens:
        dap, token = item.split("=", 1)
        csr = (
            f'{{"m2m:csr":{{"rn":"{dap}","csi":"/{dap}","cb":"/{dap}/cse-{dap}","cst":2,'
            f'"rr":true,"poa":["http://127.0.0.1:9"],"srv":["3","4"]}}}}'
        )
        post("cse-in", dap, token, 16, csr)
        for family in FAMILIES[:families]:
            post(f"cse-in/{dap}", dap, token, 3, f'{{"m2m:cnt":{{"rn":"{family}"}}}}')


def measure(
    name: str,
    directory: Path,
    db: str,
    workers: int,
    schema: str | None,
    args: argparse.Namespace,
    database: str | None = None,
) -> Figures:
    directory.mkdir(parents=True)
    broker: subprocess.Popen[bytes] | None = None
    mqtt_port = free_port() if args.transport == "mqtt" else None
    if mqtt_port is not None:
        broker = _start_broker(directory, mqtt_port)
    head_end = HeadEnd(directory, db, workers, schema, mqtt_port)
    dap_tokens = _tokens(directory / "credentials.db", args.daps)
    head_end.start()
    figures = Figures(name)
    try:
        _register(head_end.url, dap_tokens, args.families)
        time.sleep(1.0)  # let the MDMS subscribe to the containers just made (not measured)
        stored_before = _mdms_count(head_end.mdms_db)
        server_pids = _server_pids(args.server, database) if database else []
        cse_before = _cpu_seconds(head_end.pids)
        server_before = _cpu_seconds(server_pids)
        if mqtt_port is None:
            result, _ = run_wrk(
                head_end.url,
                MIRROR_SCRIPT,
                [f"{name[:2]}-", str(args.families), *dap_tokens],
                connections=args.connections,
                duration=args.seconds,
            )
        else:
            daps = [item.split("=", 1)[0] for item in dap_tokens]
            result = asyncio.run(_mqtt_load(mqtt_port, daps, args))
        load_end = time.monotonic()
        acknowledged = result.requests - result.errors
        # The MDMS gets every instance the IN-CSE stored (requests still in flight when wrk
        # stopped too): wait until the outbox is empty, or has stopped shrinking for
        # STUCK_AFTER seconds (then what is left is reported as stuck), before the CPU.
        left, shrunk_at = _outbox_left(db, schema), time.monotonic()
        while left and time.monotonic() - shrunk_at < STUCK_AFTER:
            time.sleep(0.1)
            now_left = _outbox_left(db, schema)
            if sum(now_left.values()) < sum(left.values()):
                shrunk_at = time.monotonic()
            left = now_left
        written_by = time.monotonic() + STUCK_AFTER  # delivered; the MDMS still writing
        while (
            not left
            and _mdms_count(head_end.mdms_db) - stored_before < acknowledged
            and time.monotonic() < written_by
        ):
            time.sleep(0.1)
        figures.mdms_lag_s = (shrunk_at if left else time.monotonic()) - load_end
        figures.mdms_stored = _mdms_count(head_end.mdms_db) - stored_before
        figures.outbox_left = left
        cse_cpu = _cpu_seconds(head_end.pids) - cse_before
        server_after = _cpu_seconds(_server_pids(args.server, database)) if database else 0.0
        figures.creates = acknowledged
        figures.creates_per_s = acknowledged / result.duration_s
        figures.p50_ms, figures.p99_ms = result.p50_ms, result.p99_ms
        figures.errors = result.errors
        if acknowledged:
            figures.cse_cpu_us = cse_cpu / acknowledged * 1e6
            if database:
                figures.server_cpu_us = (server_after - server_before) / acknowledged * 1e6
    finally:
        head_end.stop()
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    return figures


def _start_broker(directory: Path, port: int) -> subprocess.Popen[bytes]:
    config = write_mosquitto_config(directory, port, inflight=1000)
    broker = subprocess.Popen(
        [mosquitto_binary(), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return broker
        except OSError:
            if broker.poll() is not None or time.monotonic() > deadline:
                broker.kill()
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.02)


async def _mqtt_load(port: int, daps: list[str], args: argparse.Namespace) -> WrkResult:
    """The same creates as wrk_mirror_cin.lua, published by `--connections` MQTT clients (a
    connection each, as a DAP gateway has, one request in flight each) to the IN-CSE's
    request topic; the broker's shared subscription spreads them over the processes."""
    clock = time.perf_counter
    end = clock() + args.seconds
    latencies: list[float] = []
    errors = 0
    tag = uuid.uuid4().hex[:6]

    async def client(index: int) -> None:
        nonlocal errors
        dap = daps[index % len(daps)]
        family = FAMILIES[(index // len(daps)) % args.families]
        answers: asyncio.Queue[bytes] = asyncio.Queue()
        connection = RawMqttClient(
            "127.0.0.1",
            port,
            f"{dap}-{tag}-{index}",
            on_message=lambda topic, payload, qos, packet: answers.put_nowait(payload),
        )
        await connection.connect()
        await connection.subscribe([(f"/oneM2M/resp/{dap}/id-in/json", 1)])
        number = 0
        try:
            while clock() < end:
                number += 1
                name = f"q{tag}-{index}-{number}"
                reading = (
                    f'{{\\"flow\\":\\"interval-read\\",\\"type\\":\\"interval\\",'
                    f'\\"seq\\":{number},\\"ts\\":1767225600,\\"kwh\\":{number}.125}}'
                )
                primitive = (
                    f'{{"op":1,"to":"/id-in/cse-in/{dap}/{family}","fr":"/{dap}","rqi":"{name}",'
                    f'"rvi":"3","ty":4,"pc":{{"m2m:cin":{{"rn":"{name}","lbl":["meter:mtr-'
                    f'{number % 1000}","flow:interval-read"],"cnf":"application/json:0",'
                    f'"con":"{reading}"}}}}}}'
                )
                started = clock()
                connection.publish(f"/oneM2M/req/{dap}/id-in/json", primitive.encode(), 1)
                try:
                    async with asyncio.timeout(30):
                        while f'"rqi":"{name}"'.encode() not in (answer := await answers.get()):
                            pass
                except TimeoutError:
                    errors += 1
                    continue
                if b'"rsc":2001' in answer:
                    latencies.append(clock() - started)
                else:
                    errors += 1
        finally:
            await connection.close()

    started_at = clock()
    await asyncio.gather(*(client(index) for index in range(args.connections)))
    duration = clock() - started_at
    latencies.sort()

    def percentile_ms(share: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(share * len(latencies)))] * 1e3

    requests = len(latencies) + errors
    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=requests / duration,
        p50_ms=percentile_ms(0.5),
        p99_ms=percentile_ms(0.99),
        non2xx=errors,
        source="mqtt",
    )


def _database(server: str, name: str, create: bool) -> None:
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _row(label: str, values: list[str]) -> str:
    return f"{label:<28}" + "".join(f"{value:>16}" for value in values)


def _stuck(left: dict[str, int]) -> str:
    return ", ".join(f"{count} {holder}" for holder, count in sorted(left.items())) or "0"


def _show(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def main(args: argparse.Namespace) -> None:
    results: list[Figures] = []
    root = Path(tempfile.mkdtemp(prefix="gridm2m-scale-out-"))
    try:
        results.append(measure("SQLite, 1", root / "sqlite", str(root / "in.db"), 1, None, args))
        for workers in args.workers:
            # A database of its own per set-up: each starts from the same empty state.
            database = f"gridm2m_bench_{uuid.uuid4().hex[:8]}"
            _database(args.server, database, create=True)
            try:
                results.append(
                    measure(
                        f"PostgreSQL, {workers}",
                        root / f"pg{workers}",
                        f"{args.server}/{database}",
                        workers,
                        "cse_in",
                        args,
                        database,
                    )
                )
            finally:
                if args.keep:
                    print(f"database {database} kept on {args.server}")
                else:
                    _database(args.server, database, create=False)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs and files kept in {root}")
    print(
        f"mirrored creates over {args.transport.upper()} for {args.seconds:g} s, "
        f"{args.connections} connections, "
        f"{args.daps} DAPs x {args.families} containers; MDMS on every container "
        f"(nproc {os.cpu_count()})"
    )
    print(_row("storage, processes", [f.name for f in results]))
    print(_row("creates/s", [_show(f.creates_per_s) for f in results]))
    print(_row("create p50 ms", [_show(f.p50_ms, 1) for f in results]))
    print(_row("create p99 ms", [_show(f.p99_ms, 1) for f in results]))
    print(_row("errors", [str(f.errors) for f in results]))
    print(_row("head-end CPU us/create", [_show(f.cse_cpu_us) for f in results]))
    print(_row("PostgreSQL CPU us/create", [_show(f.server_cpu_us) for f in results]))
    print(_row("MDMS stored / acknowledged", [f"{f.mdms_stored}/{f.creates}" for f in results]))
    print(_row("MDMS behind at end, s", [_show(f.mdms_lag_s, 1) for f in results]))
    print(_row("outbox stuck at end", [_stuck(f.outbox_left) for f in results]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--keep", action="store_true", help="keep the logs, files and databases")
    parser.add_argument(
        "--transport",
        choices=("http", "mqtt"),
        default="http",
        help="http: wrk on the shared port; mqtt: a client per connection through a broker "
        "(Mosquitto, the workers' shared subscription)",
    )
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--daps", type=int, default=50)
    parser.add_argument("--families", type=int, default=4, choices=range(1, 5))
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2, 3], help="process counts on PostgreSQL"
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("GRIDM2M_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server URL without a database name",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

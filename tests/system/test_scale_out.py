"""A scaled-out head-end, end to end: `gridm2m headend` and `gridm2m headend --worker` as real
processes on one fresh PostgreSQL database, sharing one HTTP port (SO_REUSEPORT).

The gateway is simulated by what its uplink sends: a DAP registers as a remoteCSE, then
mirrors its meters' contentInstances into per-family containers below it, each create on a
connection of its own so the kernel spreads them over both processes. (A real gateway keeps
one connection open, so all its traffic would reach one process: the spreading is what is
under test here.) The headend process's MDMS hears every instance through the shared outbox,
whichever process took the create, and stores it.

What must hold: every acknowledged create is stored by the IN-CSE once and by the MDMS once,
also when the worker is killed (SIGKILL) in the middle of the stream; the creates it never
answered are sent again, as the gateway's outbox does, and are stored once too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from gridm2m.broker import free_port
from gridm2m.processes import Child, spawn, stop, toml_text
from tests.postgres import PostgresSchema
from tests.system.harness import until

pytestmark = pytest.mark.slow

DAP = "/id-dap1"
FAMILY = "interval"
CONTAINER = f"cse-in/id-dap1/{FAMILY}"
_ids = itertools.count()
_token = [""]  # the DAP's bearer token, made by each test


def _dap_token(store: Path) -> str:
    """A credential for the DAP in the head-end's store, as `gridm2m credentials` makes it."""
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "gridm2m",
            "credentials",
            "--store",
            str(store),
            "add-cse",
            DAP,
            "--token",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.rsplit("token (shown once):", 1)[1].split()[0]


def _headers(ty: int | None = None) -> dict[str, str]:
    headers = {"X-M2M-Origin": DAP, "X-M2M-RI": f"g{next(_ids)}", "X-M2M-RVI": "3"}
    headers["Authorization"] = f"Bearer {_token[0]}"
    headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    return headers


def _config(directory: Path, where: PostgresSchema, port: int) -> Path:
    path = directory / "headend.toml"
    cse = {
        "db": where.url,
        "scale_out": True,
        "remote_cses": [DAP],
        "poa": [f"http://127.0.0.1:{port}"],
        "credentials": str(directory / "credentials.db"),
        # The DAP proves its CSE-ID with a bearer token (plain HTTP on loopback; a deployment
        # uses mutual TLS, which changes nothing about how connections are spread).
        "http": {"port": port},
        "limits": {"requests_per_second": 0},
        "postgres": {"schema": where.schema, "lease": 2.0},
    }
    headend = {
        "cse": cse,
        "mdms": {"db": str(directory / "mdms.db")},
        "dashboard": {"port": free_port()},
        "cis": {"enabled": False},
    }
    path.write_text(toml_text("headend", headend))
    return path


def _worker_stems(where: PostgresSchema) -> dict[int, str]:
    """pid -> the resource-ID stem of the worker that process is (docs/scale-out.md)."""
    with psycopg.connect(where.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        rows = conn.execute("SELECT pid, id FROM workers").fetchall()
    return {int(pid): f"{int(number) % (1 << 32):08x}" for pid, number in rows}


def _stored_in_cse(where: PostgresSchema) -> tuple[list[str], int]:
    with psycopg.connect(where.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        names = [
            str(row[0])
            for row in conn.execute(
                "SELECT body ->> 'rn' FROM resources WHERE ty = 4 AND path LIKE %s",
                (f"{CONTAINER}/%",),
            ).fetchall()
        ]
        row = conn.execute(
            "SELECT (body ->> 'cni')::int FROM resources WHERE path = %s", (CONTAINER,)
        ).fetchone()
    assert row is not None
    return names, int(row[0])


def _stored_in_mdms(mdms_db: Path) -> tuple[list[str], int]:
    """The MDMS's message keys (`<dap>/<container>/<instance name>`) and its per-meter
    message count."""
    with sqlite3.connect(f"file:{mdms_db}?mode=ro", uri=True) as conn:
        keys = [str(row[0]) for row in conn.execute("SELECT key FROM messages")]
        (counted,) = conn.execute("SELECT coalesce(sum(messages), 0) FROM meters").fetchone()
    return keys, int(counted)


class Uplink:
    """One DAP's mirrored creates, one connection each, until stopped or a process dies."""

    def __init__(self, url: str, meter: str) -> None:
        self.url, self.meter = url, meter
        self.acknowledged: dict[str, str] = {}  # instance name -> ri (its stem: who stored it)
        self.unanswered: list[str] = []  # sent, and the connection broke before an answer
        self.numbers = itertools.count()

    def body(self, name: str, number: int) -> dict[str, Any]:
        reading = {"flow": "interval-read", "type": "interval", "seq": number, "kwh": number}
        labels = [f"meter:{self.meter}", "created:20260101T000000", "flow:interval-read"]
        return {
            "m2m:cin": {
                "rn": name,
                "lbl": labels,
                "cnf": "application/json:0",
                "con": json.dumps(reading),
            }
        }

    async def send(self, session: aiohttp.ClientSession, name: str, number: int) -> int:
        async with session.post(
            f"{self.url}/{CONTAINER}", json=self.body(name, number), headers=_headers(4)
        ) as answer:
            content = await answer.json(content_type=None)
            if answer.status == 201:
                self.acknowledged[name] = str(content["m2m:cin"]["ri"])
            return answer.status

    async def run(self, stop_sending: asyncio.Event, after_each: asyncio.Event) -> None:
        # force_close: a new connection per request, which SO_REUSEPORT hands to either process.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not stop_sending.is_set():
                number = next(self.numbers)
                name = f"{self.meter}_{number}"
                try:
                    status = await self.send(session, name, number)
                except (aiohttp.ClientError, OSError):
                    self.unanswered.append(name)
                    continue
                assert status == 201, status
                after_each.set()


async def test_every_acknowledged_create_reaches_the_mdms_once_across_a_worker_killed_mid_stream(
    tmp_path: Path, postgres_schema: PostgresSchema
) -> None:
    port = free_port()
    config = _config(tmp_path, postgres_schema, port)
    _token[0] = _dap_token(tmp_path / "credentials.db")
    url = f"http://127.0.0.1:{port}"
    children: list[Child] = []
    try:
        headend = await spawn(
            "headend", ["headend", "--config", str(config)], tmp_path, "listening on"
        )
        children.append(headend)
        worker = await spawn(
            "worker", ["headend", "--config", str(config), "--worker"], tmp_path, "listening on"
        )
        children.append(worker)
        stems = _worker_stems(postgres_schema)
        worker_stem = stems[worker.process.pid]
        headend_stem = stems[headend.process.pid]

        async with aiohttp.ClientSession() as session:
            csr = {
                "m2m:csr": {
                    "rn": "id-dap1",
                    "csi": DAP,
                    "cb": f"{DAP}/cse-dap1",
                    "cst": 2,
                    "rr": True,
                    "poa": ["http://127.0.0.1:9"],
                    "srv": ["3", "4"],
                }
            }
            async with session.post(f"{url}/cse-in", json=csr, headers=_headers(16)) as r:
                assert r.status == 201, await r.text()
            container = {"m2m:cnt": {"rn": FAMILY}}
            async with session.post(
                f"{url}/cse-in/id-dap1", json=container, headers=_headers(3)
            ) as r:
                assert r.status == 201, await r.text()

        uplinks = [Uplink(url, f"mtr-{n}") for n in range(4)]
        stop_sending, progress = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(u.run(stop_sending, progress)) for u in uplinks]

        def taken_by(stem: str) -> int:
            return sum(ri[-16:-8] == stem for u in uplinks for ri in u.acknowledged.values())

        # Both processes take creates before the kill (the kernel spreads the connections).
        await until(
            lambda: taken_by(worker_stem) >= 50 and taken_by(headend_stem) >= 50,
            "both processes to take 50 creates each",
        )
        await stop(worker, signal.SIGKILL)  # mid-stream, creates in flight
        before_kill = sum(len(u.acknowledged) for u in uplinks)
        # The head-end process goes on alone for a while.
        await until(
            lambda: sum(len(u.acknowledged) for u in uplinks) >= before_kill + 200,
            "200 more creates after the kill",
        )
        stop_sending.set()
        await asyncio.gather(*tasks)

        # What the dead worker never answered, the gateway's outbox sends again: stored
        # already (4105) or now (2001), never twice.
        async with aiohttp.ClientSession() as session:
            for uplink in uplinks:
                for name in uplink.unanswered:
                    number = int(name.rsplit("_", 1)[1])
                    status = await uplink.send(session, name, number)
                    assert status in (201, 409), (name, status)
        sent = {name for u in uplinks for name in (*u.acknowledged, *u.unanswered)}
        acknowledged = {name for u in uplinks for name in u.acknowledged}
        assert taken_by(worker_stem) >= 50

        names, cni = _stored_in_cse(postgres_schema)
        assert sorted(names) == sorted(sent)  # each once, the resent ones included
        assert acknowledged <= set(names)
        assert cni == len(names)

        # The MDMS (in the headend process) hears every instance, those the killed worker
        # queued included (handed off in the shared outbox), and stores each once.
        expected = {f"id-dap1/{FAMILY}/{name}" for name in names}
        mdms_db = tmp_path / "mdms.db"

        def mdms_has_all() -> bool:
            return mdms_db.exists() and set(_stored_in_mdms(mdms_db)[0]) >= expected

        await until(mdms_has_all, f"the MDMS to store {len(expected)} messages")
        keys, counted = _stored_in_mdms(mdms_db)
        assert sorted(keys) == sorted(expected)
        assert counted == len(expected)
    finally:
        for child in reversed(children):
            await stop(child)

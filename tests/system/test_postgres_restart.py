"""The head-end's PostgreSQL restarted under load, with real processes: `gridm2m headend` and
`gridm2m headend --worker` (IN-CSE and MDMS on a PostgreSQL cluster of the test's own), and
a `gridm2m gateway` whose outbox relays what meters post.

Meters post alarms to the gateway as fast as it answers; its outbox mirrors each one to the
head-end's IN-CSE, and the MDMS stores it from the IN-CSE's notification. Meanwhile the
server is restarted twice, as an operator does (`pg_ctl restart -m fast`: every session
ended) and as a crash does (`-m immediate`: no shutdown, recovery from the WAL).

What must hold: the head-end answers the creates that meet the outage with a 5xxx (at least
one does: the restart hit requests in flight), never hangs and never dies; the gateway's
outbox sends those again; once the server is back both processes serve again by
themselves; and every message a meter had acknowledged is stored in the IN-CSE once and in
the MDMS once.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.postgres import PrivateCluster
from tests.system.harness import TIMEOUT, HttpMeter, Part, System, until

pytestmark = pytest.mark.slow

_ERRORS = re.compile(r'^gridm2m_uplink_upstream_errors_total\{status="(\d+)"\} (\S+)$', re.M)
METERS = 4


def _in_cse(url: str) -> Counter[tuple[str, int]]:
    """(meter, seq) of every mirrored alarm in the IN-CSE, with how often it is stored."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT body ->> 'con', body -> 'lbl' FROM resources WHERE ty = 4 "
            "AND path LIKE 'cse-in/id-dap1/event/%'"
        ).fetchall()
    found: Counter[tuple[str, int]] = Counter()
    for con, labels in rows:
        meter = next(str(label)[6:] for label in labels if str(label).startswith("meter:"))
        found[meter, int(json.loads(con)["seq"])] += 1
    return found


def _workers(url: str) -> dict[int, str]:
    """pid -> the resource-ID stem of the worker that process is (docs/scale-out.md)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, id FROM workers").fetchall()
    return {int(pid): f"{int(number) % (1 << 32):08x}" for pid, number in rows}


def _stored_by_since(url: str, seq: int) -> tuple[set[str], int]:
    """The stems of the processes that stored instances after `seq`; the newest seq."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT substr(ri, length(ri) - 15, 8) FROM resources WHERE ty = 4 AND seq > %s",
            (seq,),
        ).fetchall()
        (newest,) = conn.execute("SELECT coalesce(max(seq), 0) FROM resources").fetchone() or (0,)
    return {str(stem) for (stem,) in rows}, int(newest)


def _in_mdms(url: str) -> tuple[Counter[tuple[str, int]], int]:
    """(meter, seq) of every message in the MDMS, and what its per-meter summary counts."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT meter, seq FROM messages WHERE family = 'event'").fetchall()
        (counted,) = conn.execute(
            "SELECT coalesce(sum(messages), 0) FROM meters WHERE meter LIKE 'mtr-%'"
        ).fetchone() or (0,)
    return Counter((str(meter), int(seq)) for meter, seq in rows), int(counted)


async def _write(meter: HttpMeter, stop: asyncio.Event) -> None:
    """Post alarms until told to stop; the gateway (on its own SQLite file) takes each."""
    while not stop.is_set():
        status = await meter.post()
        assert status == 2001, f"the gateway answered {meter.name} {status}"


async def _upstream_errors(system: System) -> dict[int, float]:
    assert system._session is not None
    async with system._session.get(f"{system.ops}/metrics") as reply:
        text = await reply.text()
    return {int(status): float(count) for status, count in _ERRORS.findall(text)}


async def test_postgres_restarted_under_load_loses_nothing_and_needs_no_head_end_restart(
    tmp_path: Path, postgres_cluster: PrivateCluster
) -> None:
    cse_db = postgres_cluster.create_database("cse")
    mdms_db = postgres_cluster.create_database("mdms")
    headend = {
        "cse": {
            "db": cse_db,
            "scale_out": True,
            "poa": [],  # each process's own URLs: both listen on one port
            "postgres": {"lease": 3.0, "connect_timeout": 5.0},
            "limits": {"requests_per_second": 0},  # one originator (the gateway) sends all
        },
        "mdms": {"postgres_url": mdms_db},
    }
    # Meters write as fast as the gateway answers: no rate limit.
    gateway = {"cse": {"limits": {"requests_per_second": 0}}}
    system = System(tmp_path / "system", headend_extra=headend, gateway_extra=gateway)
    worker = Part("headend", system.headend.config, system.directory / "worker.log", "--worker")
    async with system, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        await worker.start()
        try:
            meters = [HttpMeter(client, system, f"mtr-{n}") for n in range(METERS)]
            for meter in meters:
                await meter.register()
            stop = asyncio.Event()
            writers = [asyncio.create_task(_write(m, stop)) for m in meters]

            async def hundred_more(what: str) -> None:
                start = sum(_in_mdms(mdms_db)[0].values())
                await until(lambda: sum(_in_mdms(mdms_db)[0].values()) >= start + 100, what)

            stems = _workers(cse_db)
            both = {stems[system.headend.pid], stems[worker.pid]}
            try:
                for mode in ("fast", "immediate"):
                    # The stream is flowing end to end: then the server goes down under it.
                    await hundred_more("100 messages at the MDMS")
                    await postgres_cluster.restart(mode)
                    _, restarted = _stored_by_since(cse_db, 0)
                    # Both head-end processes serve again by themselves (the gateway's
                    # connections reach either: they share the port).
                    await hundred_more(f"100 more messages at the MDMS after the {mode} restart")
                    assert _stored_by_since(cse_db, restarted)[0] == both, mode
                errors = await _upstream_errors(system)
            finally:
                stop.set()
                async with asyncio.timeout(TIMEOUT):
                    await asyncio.gather(*writers)

            # The head-end answered the creates the outage met with a 5xxx, the outbox sent
            # them again: every acknowledged alarm reaches the IN-CSE and the MDMS, once.
            # (5000: the storage failed; nothing else went wrong.)
            assert set(errors) == {5000}, errors
            assert errors[5000] >= 1
            acknowledged = {(m.name, seq) for m in meters for seq in m.acknowledged}

            def everywhere() -> bool:
                return set(_in_mdms(mdms_db)[0]) >= acknowledged

            await until(everywhere, f"the {len(acknowledged)} acknowledged alarms at the MDMS")
            in_cse = _in_cse(cse_db)
            in_mdms, counted = _in_mdms(mdms_db)
            assert set(in_cse) == acknowledged
            assert set(in_mdms) == acknowledged
            assert max(in_cse.values()) == 1
            assert max(in_mdms.values()) == 1
            assert counted == len(acknowledged)
            # Never a hang: every attempt of the outbox got an answer (a timeout or a broken
            # connection would have made the gateway call the head-end unreachable), and
            # neither head-end process died.
            assert "upstream unreachable" not in system.gateway.log.read_text()
            for part in (system.headend, worker):
                assert part.child is not None and part.child.process.returncode is None
                log = part.log.read_text()
                assert "Traceback" not in log, log[-3000:]
            health = await system.health()
            assert sum(health["outbox"].values()) == 0, health
        finally:
            await worker.stop()

"""Two real CSE processes on one PostgreSQL database, one of them killed with SIGKILL in the
middle of a stream of creates and notifications.

What must hold: nothing either worker acknowledged is lost, nothing is stored twice (a
create the killed worker may or may not have committed is sent again to the survivor, which
answers it 2001 or 4105), and every instance's notification arrives, those the killed
worker held included: the survivor takes them over once the dead worker's lease runs out.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from psycopg import sql

from tests.helpers import NotificationReceiver
from tests.postgres import PostgresSchema
from tests.processes import CSEProcess

pytestmark = pytest.mark.slow

_ids = itertools.count()
_LEASE = 2.0


def _headers(ty: int | None = None) -> dict[str, str]:
    headers = {"X-M2M-Origin": "Cmeter", "X-M2M-RI": f"r{next(_ids)}", "X-M2M-RVI": "3"}
    headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    return headers


def _config(tmp_path: Path, name: str, where: PostgresSchema) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
[cse]
db = "{where.url}"
credentials = "{tmp_path / f"{name}-credentials.db"}"

[cse.http]
trust = "claimed"  # lab mode: the meter's claimed AE-ID is believed

[cse.egress]
allow = ["127.0.0.1"]

[cse.limits]
requests_per_second = 0

[cse.postgres]
schema = "{where.schema}"
lease = {_LEASE}
"""
    )
    return str(path)


class Tally:
    """Acknowledgements from one worker; `reached` is set at the `target`-th."""

    def __init__(self, target: int) -> None:
        self.count, self.target, self.reached = 0, target, asyncio.Event()

    def add(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


class Stream:
    """Creates with names of their own, sent to one worker until it is gone or told to stop."""

    def __init__(self, session: aiohttp.ClientSession, url: str, prefix: str, tally: Tally) -> None:
        self.session, self.url, self.prefix, self.tally = session, url, prefix, tally
        self.acknowledged: list[str] = []
        self.unanswered: list[str] = []  # sent, and the worker died before answering
        self.numbers = itertools.count()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            name = f"{self.prefix}{next(self.numbers)}"
            body = {"m2m:cin": {"rn": name, "con": name}}
            try:
                async with self.session.post(
                    f"{self.url}/cse-in/meter/reads", json=body, headers=_headers(4)
                ) as answer:
                    assert answer.status == 201, await answer.text()
                    self.acknowledged.append(name)
                    self.tally.add()
            except (aiohttp.ClientError, OSError):
                self.unanswered.append(name)
                return


def _query(where: PostgresSchema, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(where.url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(where.schema)))
        return conn.execute(query, params).fetchall()


async def test_a_killed_worker_loses_nothing_and_its_notifications_go_out_from_the_other(
    tmp_path: Path, postgres_schema: PostgresSchema
) -> None:
    doomed = CSEProcess("--config", _config(tmp_path, "a", postgres_schema))
    survivor = CSEProcess("--config", _config(tmp_path, "b", postgres_schema))
    url_a, url_b = await doomed.start(), await survivor.start()
    released = asyncio.Event()
    released.set()
    try:
        async with NotificationReceiver(hold=released) as receiver, aiohttp.ClientSession() as s:
            ae = {"m2m:ae": {"rn": "meter", "api": "Nmeter", "rr": True, "srv": ["3"]}}
            async with s.post(f"{url_a}/cse-in", json=ae, headers=_headers(2)) as r:
                assert r.status == 201, await r.text()
            container = {"m2m:cnt": {"rn": "reads"}}
            async with s.post(f"{url_b}/cse-in/meter", json=container, headers=_headers(3)) as r:
                assert r.status == 201, await r.text()
            subscription = {
                "m2m:sub": {"rn": "s", "nu": [receiver.url], "nct": 1, "pn": 2, "enc": {"net": [3]}}
            }
            async with s.post(
                f"{url_a}/cse-in/meter/reads", json=subscription, headers=_headers(23)
            ) as r:
                assert r.status == 201, await r.text()
            # From here the target answers nothing until the kill: every notification stays
            # in the outbox of the worker that queued it.
            released.clear()

            stop_a, stop_b = asyncio.Event(), asyncio.Event()
            tally_a, tally_b = Tally(100), Tally(200)
            to_a = [Stream(s, url_a, f"a{n}-", tally_a) for n in range(4)]
            to_b = [Stream(s, url_b, f"b{n}-", tally_b) for n in range(4)]
            tasks = [asyncio.create_task(w.run(stop_a)) for w in to_a]
            tasks += [asyncio.create_task(w.run(stop_b)) for w in to_b]
            async with asyncio.timeout(120):
                await tally_a.reached.wait()
            assert doomed.process is not None
            (worker_a,) = _query(
                postgres_schema, "SELECT id FROM workers WHERE pid = %s", doomed.process.pid
            )[0]
            await doomed.kill()  # SIGKILL, with creates and notifications in flight
            stop_a.set()
            async with asyncio.timeout(120):
                await tally_b.reached.wait()  # the survivor goes on alone for a while
            stop_b.set()
            await asyncio.gather(*tasks)
            (held_by_a,) = _query(
                postgres_schema, "SELECT count(*) FROM outbox WHERE worker = %s", worker_a
            )[0]
            assert held_by_a > 0  # the dead worker held notifications it never sent

            # Creates the killed worker never answered go to the survivor: stored already
            # (4105) or now (2001), never twice.
            resent: list[str] = []
            for name in (name for w in to_a for name in w.unanswered):
                body = {"m2m:cin": {"rn": name, "con": name}}
                async with s.post(
                    f"{url_b}/cse-in/meter/reads", json=body, headers=_headers(4)
                ) as r:
                    assert r.status in (201, 409), await r.text()
                    resent.append(name)
            acknowledged = [name for w in (*to_a, *to_b) for name in w.acknowledged]
            for name in acknowledged + resent:
                async with s.get(f"{url_b}/cse-in/meter/reads/{name}", headers=_headers()) as r:
                    assert r.status == 200, (name, r.status)

            stored = {
                row[0]
                for row in _query(
                    postgres_schema,
                    "SELECT body ->> 'rn' FROM resources WHERE ty = 4 AND path LIKE %s",
                    "cse-in/meter/reads/%",
                )
            }
            assert stored == set(acknowledged) | set(resent)
            (cni,) = _query(
                postgres_schema,
                "SELECT (body ->> 'cni')::int FROM resources WHERE path = 'cse-in/meter/reads'",
            )[0]
            assert cni == len(stored)  # each stored once, counted once

            released.set()

            def notified() -> set[str]:
                return {
                    item["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["rn"]
                    for item in receiver.received
                    if "nev" in item["body"]["m2m:sgn"]
                }

            # The survivor delivers its own and, once the lease ran out, the dead one's.
            async with asyncio.timeout(120):
                while not stored <= notified():
                    await receiver.wait_for(len(receiver.received) + 1, timeout=120)
            assert notified() == stored
    finally:
        if doomed.process is not None and doomed.process.returncode is None:
            await doomed.kill()
        await survivor.stop()

"""What the CSE acknowledged survives SIGKILL: a real process, a real SQLite file."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp
import pytest

from tests.processes import CSEProcess

pytestmark = pytest.mark.slow

_ids = itertools.count()


def _headers(ty: int | None = None, origin: str = "Cmeter") -> dict[str, str]:
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": f"r{next(_ids)}", "X-M2M-RVI": "3"}
    headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    return headers


async def _post_instances(
    session: aiohttp.ClientSession,
    url: str,
    acknowledged: list[str],
    stop: asyncio.Event,
    enough: asyncio.Event,
) -> None:
    number = 0
    while not stop.is_set():
        number += 1
        body = {"m2m:cin": {"rn": f"r{number}-{id(stop) % 1000}", "con": str(number)}}
        try:
            async with session.post(
                f"{url}/cse-in/meter/reads", json=body, headers=_headers(4)
            ) as r:
                if r.status == 201:
                    acknowledged.append((await r.json())["m2m:cin"]["rn"])
                    if len(acknowledged) >= 300:
                        enough.set()
        except (aiohttp.ClientError, OSError):
            return  # the process is gone: nothing after this was acknowledged


async def test_acknowledged_resources_survive_sigkill(tmp_path: Path) -> None:
    db = str(tmp_path / "cse.db")
    # Lab mode: the meter's claimed AE-ID is believed (this is about durability).
    cse = CSEProcess("--db", db, "--trust", "claimed")
    url = await cse.start()
    acknowledged: list[str] = []
    async with aiohttp.ClientSession() as session:
        ae = {"m2m:ae": {"rn": "meter", "api": "Nmeter", "rr": True, "srv": ["3"]}}
        async with session.post(f"{url}/cse-in", json=ae, headers=_headers(2)) as r:
            assert r.status == 201
        async with session.post(
            f"{url}/cse-in/meter", json={"m2m:cnt": {"rn": "reads"}}, headers=_headers(3)
        ) as r:
            assert r.status == 201
        stop, enough = asyncio.Event(), asyncio.Event()
        writers = [
            asyncio.create_task(_post_instances(session, url, acknowledged, stop, enough))
            for _ in range(8)
        ]
        # Kill once a good number of writes has been acknowledged, while writes are in flight.
        async with asyncio.timeout(60):
            await enough.wait()
        await cse.kill()
        stop.set()
        await asyncio.gather(*writers)
    assert len(acknowledged) >= 300

    restarted = CSEProcess("--db", db, "--trust", "claimed")
    url = await restarted.start()
    try:
        async with aiohttp.ClientSession() as session:
            for name in acknowledged:
                async with session.get(f"{url}/cse-in/meter/reads/{name}", headers=_headers()) as r:
                    assert r.status == 200, name
            async with session.get(f"{url}/cse-in/meter/reads", headers=_headers()) as r:
                container = (await r.json())["m2m:cnt"]
            # cni stays exact: the counter and the instances were committed together
            async with session.get(f"{url}/cse-in/meter/reads?fu=1&ty=4", headers=_headers()) as r:
                stored = (await r.json())["m2m:uril"]
    finally:
        assert await restarted.stop() == 0
    assert container["cni"] == len(stored) >= len(acknowledged)

"""Faults of a gateway's life with real `gridm2m headend` and `gridm2m gateway` processes:
a database recreated under a kept outbox, a full disk, power loss (kill -9) while meters
write, a damaged database file, and a binding that stops answering.

Meters here are plain HTTP clients of the gateway (an AE, an `event` container, alarms with
a sequence number), so every acknowledged message can be compared with the MDMS by key.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.brokers import Broker, private_broker
from tests.system.harness import HttpMeter, System

pytestmark = pytest.mark.slow


def at_the_mdms(messages: list[dict[str, Any]], meter: str) -> list[int]:
    return sorted(m["seq"] for m in messages if m["meter"] == meter)


async def wait_for_all(system: System, meters: list[HttpMeter]) -> list[dict[str, Any]]:
    def complete(found: list[dict[str, Any]]) -> bool:
        return all(
            set(meter.acknowledged) <= set(at_the_mdms(found, meter.name)) for meter in meters
        )

    return await system.wait_for_messages(complete, "every acknowledged message at the MDMS")


async def health_status(system: System) -> tuple[int, Any]:
    assert system._session is not None
    async with system._session.get(f"{system.ops}/health") as reply:
        return reply.status, await reply.json(content_type=None)


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


async def test_a_recreated_database_under_a_kept_outbox_loses_nothing(tmp_path: Path) -> None:
    async with System(tmp_path) as system, session() as client:
        meter = HttpMeter(client, system, "mtr-1")
        await meter.register()
        for _ in range(20):
            assert await meter.post() == 2001
        await wait_for_all(system, [meter])
        # The user deletes the (corrupt) database, keeps the outbox, and starts again.
        await system.gateway.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{tmp_path / 'dap.db'}{suffix}").unlink(missing_ok=True)
        await system.gateway.start()
        await system.wait_registered()
        await meter.register()
        for _ in range(10):
            assert await meter.post() == 2001
        messages = await wait_for_all(system, [meter])
        assert at_the_mdms(messages, "mtr-1") == list(range(1, 31))


async def write_until_gone(
    meter: HttpMeter, meters: list[HttpMeter], target: int, enough: asyncio.Event
) -> None:
    while await meter.post() == 2001:
        if sum(len(m.acknowledged) for m in meters) >= target:
            enough.set()


async def test_power_loss_while_meters_write_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    async with System(tmp_path) as system, session() as client:
        meters = [HttpMeter(client, system, f"mtr-{n}") for n in range(4)]
        for meter in meters:
            await meter.register()
        for _ in range(3):
            # Meters write as fast as the gateway answers: at any moment a group commit or
            # an outbox hand-off is in progress, and kill -9 cuts it.
            enough = asyncio.Event()
            target = sum(len(m.acknowledged) for m in meters) + 200
            writers = [
                asyncio.create_task(write_until_gone(meter, meters, target, enough))
                for meter in meters
            ]
            async with asyncio.timeout(60):
                await enough.wait()
            await system.gateway.kill()
            await asyncio.gather(*writers)
            await system.gateway.start()
        messages = await wait_for_all(system, meters)
    for meter in meters:
        seen = at_the_mdms(messages, meter.name)
        assert len(seen) == len(set(seen)), f"{meter.name} has duplicates at the MDMS"
        assert set(meter.acknowledged) <= set(seen)


async def test_a_full_disk_refuses_writes_cleanly_and_recovers_by_itself(
    tmp_path: Path,
) -> None:
    system = System(tmp_path)
    system.gateway.log_level = "WARNING"  # the log must not be the file that hits the limit
    async with system, session() as client:
        meter = HttpMeter(client, system, "mtr-1")
        await meter.register()
        for _ in range(3):
            assert await meter.post() == 2001
        await wait_for_all(system, [meter])
        # The head-end goes away: what meters post waits in the outbox.
        await system.headend.stop()
        for _ in range(3):
            assert await meter.post() == 2001
        # The disk fills up: no file of the gateway may grow any more.
        files = [tmp_path / name for name in ("dap.db", "dap.db-wal", "dap-outbox.db")]
        files += [tmp_path / "dap-outbox.db-wal", system.gateway.log]
        limit = max(path.stat().st_size for path in files if path.exists())
        hard = resource.prlimit(system.gateway.pid, resource.RLIMIT_FSIZE)[1]
        resource.prlimit(system.gateway.pid, resource.RLIMIT_FSIZE, (limit, hard))
        for _ in range(200):
            if await meter.post() == 5000:
                break
        for _ in range(5):
            assert await meter.post() == 5000
        assert await meter.read_container() == 200  # reads keep working
        status, health = await health_status(system)
        assert status == 503, health
        assert health["storage"]["cse"]["writes_ok"] is False
        # The head-end comes back while the disk is still full: the queue goes up, though the
        # outbox cannot record it.
        await system.headend.start()
        await wait_for_all(system, [meter])
        # Space comes back; nobody restarts anything.
        resource.prlimit(system.gateway.pid, resource.RLIMIT_FSIZE, (hard, hard))
        for _ in range(3):
            assert await meter.post() == 2001
        await system.poll("health ok", lambda: health_status(system), lambda h: h[0] == 200)
        messages = await wait_for_all(system, [meter])
    assert set(at_the_mdms(messages, "mtr-1")) == set(meter.acknowledged)
    assert not set(meter.refused) & set(at_the_mdms(messages, "mtr-1"))
    log = system.gateway.log.read_text()
    assert "Traceback" not in log and "rollback failed" not in log
    assert "storage failure on" not in log  # no line per refused request
    assert log.count(f"database {tmp_path / 'dap.db'}: writes are failing") == 1, log


async def test_a_damaged_database_at_start_gets_one_clear_paragraph(tmp_path: Path) -> None:
    async with System(tmp_path) as system, session() as client:
        await HttpMeter(client, system, "mtr-1").register()
        await system.gateway.stop()
    database = tmp_path / "dap.db"
    with database.open("r+b") as file:
        file.truncate(database.stat().st_size // 2)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gridm2m",
        "gateway",
        "--config",
        str(tmp_path / "gateway.toml"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        _, errors = await process.communicate()
    text = errors.decode()
    assert process.returncode == 3, text
    assert "Traceback" not in text
    assert f"the database {database} is damaged" in text
    assert "docs/reliability.md" in text and "register again" in text
    assert text.strip().count("\n") == 0  # one paragraph


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


async def test_health_follows_each_binding_by_a_round_trip(tmp_path: Path, broker: Broker) -> None:
    async with System(tmp_path, broker) as system:
        status, health = await health_status(system)
        assert status == 200, health
        assert {name: b["alive"] for name, b in health["bindings"].items()} == {
            "http": True,
            "coap": True,
            "mqtt": True,
        }
        await broker.stop()  # meters on MQTT cannot reach the gateway now
        status, health = await health_status(system)
        assert status == 503
        assert health["bindings"]["mqtt"]["alive"] is False
        assert "the mqtt binding does not answer" in " ".join(health["problems"])
        metrics = await system.get(f"{system.ops}/metrics")
        assert metrics is None  # Prometheus text is not JSON; read it as text below
        assert system._session is not None
        async with system._session.get(f"{system.ops}/metrics") as reply:
            text = await reply.text()
        assert 'gridm2m_binding_up{binding="mqtt"} 0.0' in text
        assert 'gridm2m_binding_up{binding="coap"} 1.0' in text

"""Faults of a gateway's life, in one process against a real upstream CSE on loopback.

The same faults with real `gridm2m` processes (a full disk, kill -9, a damaged file, a
second process) are in tests/system/test_faults.py.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from cse.app import running_cse
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import DatabaseInUse
from cse.storage.sqlite import SQLiteStorage
from gateway.app import RunningGateway, running_gateway
from gateway.outbox import Alignment, NewItem, Outbox
from tests.brokers import free_port
from tests.gateway.test_uplink import (
    TIMEOUT,
    Arrivals,
    gateway_config,
    post,
    register_meter,
    upstream_config,
)
from tests.helpers import delete

ALARM = {"flow": "ev-outage", "type": "alarm"}


def _alarm(number: int) -> dict[str, object]:
    return {**ALARM, "seq": number, "ts": number}


def _mirrored(arrivals: Arrivals, meter: str) -> list[str]:
    return [path for path in arrivals.paths if f"/{meter}_" in path]


async def _health(gateway: RunningGateway) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.ops_url}/health") as reply,
    ):
        return reply.status, await reply.json()


async def _metrics(gateway: RunningGateway) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.ops_url}/metrics") as reply,
    ):
        return await reply.text()


# ---- the outbox and the database it feeds from ------------------------------------------


@pytest.mark.parametrize("how", ["recreated", "restored from an older copy"])
async def test_messages_after_the_database_is_recreated_or_restored_reach_the_head_end(
    tmp_path: Path, how: str
) -> None:
    async with running_cse(upstream_config(tmp_path)) as upstream:
        arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
        config = gateway_config(tmp_path, upstream.http.url)
        database = Path(str(config.cse.db))
        copy = tmp_path / "backup.db"
        async with running_gateway(config) as gateway:
            await gateway.registrar.registered.wait()
            dap = gateway.cse.cse
            await register_meter(dap, "mtr-1")
            assert await post(dap, "mtr-1", "event", _alarm(1)) == RSC.CREATED
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 1)
            if how != "recreated":
                await dap.storage.sync()
                # An online copy, as `sqlite3 .backup` makes it.
                with sqlite3.connect(copy) as target, sqlite3.connect(database) as source:
                    source.backup(target)
            for number in range(2, 6):
                assert await post(dap, "mtr-1", "event", _alarm(number)) == RSC.CREATED
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 5)
        # Stopped: the operator replaces the database and keeps the outbox.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        if how != "recreated":
            shutil.copy(copy, database)
        async with running_gateway(config) as gateway:
            await gateway.registrar.registered.wait()
            dap = gateway.cse.cse
            if how == "recreated":
                await register_meter(dap, "mtr-1")
            for number in range(6, 9):
                assert await post(dap, "mtr-1", "event", _alarm(number)) == RSC.CREATED
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 8)


def test_the_outbox_says_how_it_stands_to_a_database(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", budget_bytes=1 << 20)
    outbox.open()
    assert outbox.follow("db-a", 0) == Alignment.IN_STEP
    item = NewItem(0, 7, "/c/event", "mtr_1", {"con": "x"}, 0.0)
    outbox.add([item], 9)
    assert outbox.follow("db-a", 9) == Alignment.IN_STEP
    assert outbox.follow("db-a", 5) == Alignment.RESTORED
    assert outbox.high_water_seq == 9
    assert outbox.follow("db-b", 12) == Alignment.REPLACED
    assert outbox.high_water_seq == 0 and outbox.total == 1  # the old item is still queued
    # The new database's own number 7 is queued beside the old database's 7.
    outbox.add([NewItem(0, 7, "/c/event", "mtr_2", {"con": "y"}, 0.0)], 7)
    assert outbox.total == 2
    outbox.close()


async def test_a_meter_that_registers_again_loses_nothing_upstream(tmp_path: Path) -> None:
    async with running_cse(upstream_config(tmp_path)) as upstream:
        arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
        async with running_gateway(gateway_config(tmp_path, upstream.http.url)) as gateway:
            await gateway.registrar.registered.wait()
            dap = gateway.cse.cse
            await register_meter(dap, "mtr-1")
            assert await post(dap, "mtr-1", "event", _alarm(1)) == RSC.CREATED
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 1)
            # A factory reset: the meter deletes its registration (and with it the newest
            # resources of the database) and registers again.
            reply = await dap.handle(delete(f"{dap.settings.cse_name}/mtr-1", "Cmtr-1"))
            assert reply.status == RSC.DELETED
            await register_meter(dap, "mtr-1")
            assert await post(dap, "mtr-1", "event", _alarm(2)) == RSC.CREATED
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 2)


# ---- the uplink and the head-end -----------------------------------------------------------


async def test_the_uplink_sends_as_soon_as_the_registration_check_reaches_the_head_end(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with running_cse(upstream_config(tmp_path, port)) as upstream:
        # A backoff longer than the test: only the wake-up can deliver in time.
        config = gateway_config(tmp_path, f"https://127.0.0.1:{port}")
        config.outbox.retry_min = config.outbox.retry_max = 3600
        async with running_gateway(config) as gateway:
            await gateway.registrar.registered.wait()
            dap = gateway.cse.cse
            await register_meter(dap, "mtr-1")
            await upstream.http.stop()
            assert await post(dap, "mtr-1", "event", _alarm(1)) == RSC.CREATED
            await gateway.uplink.wait_until(lambda _: not gateway.uplink.link_up, TIMEOUT)
            arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
            await upstream.http.start()
            gateway.registrar.suspect_lost()  # the periodic check, now
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 1)


async def test_a_wall_clock_step_back_does_not_hold_the_uplink_back(tmp_path: Path) -> None:
    port = free_port()
    async with running_cse(upstream_config(tmp_path, port)) as upstream:
        config = gateway_config(tmp_path, f"https://127.0.0.1:{port}")
        async with running_gateway(config) as gateway:
            await gateway.registrar.registered.wait()
            dap = gateway.cse.cse
            await register_meter(dap, "mtr-1")
            await upstream.http.stop()
            assert await post(dap, "mtr-1", "event", _alarm(1)) == RSC.CREATED
            await gateway.uplink.wait_until(lambda _: not gateway.uplink.link_up, TIMEOUT)
            # The date steps back a day (the uplink's clock is injected; only dates use it).
            wall = gateway.uplink.clock
            gateway.uplink.clock = lambda: wall() - 86_400
            arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
            await upstream.http.start()
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 1)


async def test_the_sender_survives_an_outbox_that_cannot_record_deliveries(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with running_cse(upstream_config(tmp_path, port)) as upstream:
        arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
        config = gateway_config(tmp_path, f"https://127.0.0.1:{port}")
        async with running_gateway(config) as gateway:
            await gateway.registrar.registered.wait()
            dap = gateway.cse.cse
            await register_meter(dap, "mtr-1")
            await upstream.http.stop()
            assert await post(dap, "mtr-1", "event", _alarm(1)) == RSC.CREATED
            await gateway.uplink.wait_until(lambda outbox: outbox.total == 1, TIMEOUT)
            # The outbox refuses every write from now on (as on a full disk).
            outbox_db = gateway.outbox._db
            outbox_db.execute("PRAGMA query_only = ON")
            await upstream.http.start()
            gateway.registrar.suspect_lost()
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 1)
            await gateway.uplink.wait_until(lambda outbox: outbox.health.failing, TIMEOUT)
            status, health = await _health(gateway)
            assert status == 503 and "uplink outbox" in str(health["problems"])
            # The outbox accepts writes again: the delivery is recorded, new messages flow.
            outbox_db.execute("PRAGMA query_only = OFF")
            await gateway.uplink.wait_until(lambda outbox: outbox.total == 0, TIMEOUT)
            assert await post(dap, "mtr-1", "event", _alarm(2)) == RSC.CREATED
            await arrivals.wait_for(lambda _: len(_mirrored(arrivals, "mtr-1")) == 2)
            assert gateway.cse.cse.supervisor.failures["uplink sender"] == 0


# ---- health ---------------------------------------------------------------------------------


async def test_health_names_a_binding_that_does_not_answer(tmp_path: Path) -> None:
    async with (
        running_cse(upstream_config(tmp_path)) as upstream,
        running_gateway(gateway_config(tmp_path, upstream.http.url)) as gateway,
    ):
        status, health = await _health(gateway)
        assert status == 200, health
        assert health["bindings"]["http"]["alive"] is True  # type: ignore[index]
        await gateway.cse.http.stop()
        status, health = await _health(gateway)
        assert status == 503
        assert health["bindings"]["http"]["alive"] is False  # type: ignore[index]
        assert "the http binding does not answer" in str(health["problems"])
        metrics = await _metrics(gateway)
        assert 'gridm2m_binding_up{binding="http"} 0.0' in metrics
        assert "gridm2m_healthy 0.0" in metrics


async def test_health_names_a_task_that_is_down(tmp_path: Path) -> None:
    async with (
        running_cse(upstream_config(tmp_path)) as upstream,
        running_gateway(gateway_config(tmp_path, upstream.http.url)) as gateway,
    ):
        await gateway.registrar.registered.wait()
        supervisor = gateway.cse.cse.supervisor
        supervisor.backoff_min = supervisor.backoff_max = 3600  # stays down for the test
        dap = gateway.cse.cse
        await register_meter(dap, "mtr-1")
        gateway.outbox.close()  # a bug of that kind: the feeder's next write raises
        assert await post(dap, "mtr-1", "event", _alarm(1)) == RSC.CREATED
        async with asyncio.timeout(TIMEOUT):
            while not supervisor.down():
                await supervisor.wait_for_change()
        status, health = await _health(gateway)
        assert status == 503
        assert health["tasks_down"] == [
            {"task": "uplink feeder", "reason": "RuntimeError: the outbox is not open"}
        ]
        metrics = await _metrics(gateway)
        assert 'gridm2m_task_up{task="uplink feeder"} 0.0' in metrics
        assert 'gridm2m_task_failures_total{task="uplink feeder"} 1.0' in metrics


# ---- the database file ------------------------------------------------------------------------


async def test_a_second_storage_on_the_same_file_is_refused(tmp_path: Path) -> None:
    first = SQLiteStorage(tmp_path / "cse.db")
    await first.open()
    second = SQLiteStorage(tmp_path / "cse.db")
    with pytest.raises(DatabaseInUse, match="in use by another process"):
        await second.open()
    await first.close()
    await second.open()  # released with the first
    await second.close()

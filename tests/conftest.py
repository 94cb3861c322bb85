from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import settings

from cse.bindings.http import HttpClient, HttpSender
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.storage.memory import MemoryStorage
from cse.storage.sqlite import SQLiteStorage
from tests.helpers import LAB

pytest_plugins = ["tests.postgres"]

# The fuzz tests draw new examples on every run, which is how they find bugs. CI
# (HYPOTHESIS_PROFILE=ci, set by .ci/run) draws the same examples every time, so that a
# submission is judged on its own change, not on what a random draw found elsewhere.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked `both_loops` run on the standard loop and on uvloop (what the CLI runs)."""
    if item.get_closest_marker("both_loops") is None:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Makes storages that all see the same database (each test its own)."""
    if request.param == "postgres":
        from cse.storage.postgres import PostgresStorage

        where = request.getfixturevalue("postgres_schema")
        return lambda: PostgresStorage(where.url, schema=where.schema)

    def make():  # type: ignore[no-untyped-def]
        if request.param == "memory":
            return MemoryStorage()
        return SQLiteStorage(tmp_path / "cse.db")

    return make


@pytest.fixture
async def cse(clock: ManualClock) -> AsyncIterator[CommonServicesEntity]:
    """A CSE on in-memory storage, with an HTTP sender for notifications."""
    client = HttpClient(timeout=5)
    entity = CommonServicesEntity(
        MemoryStorage(),
        CSESettings(expiry_check_interval=3600, egress=LAB, remote_cses=("/id-mn",)),
        clock=clock,
        senders={"http": HttpSender(client)},
    )
    async with entity:
        yield entity
    await client.close()

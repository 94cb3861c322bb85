from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cse.bindings.http import HttpClient, HttpSender
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.storage.memory import MemoryStorage
from cse.storage.sqlite import SQLiteStorage


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "sqlite"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
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
        CSESettings(expiry_check_interval=3600),
        clock=clock,
        senders={"http": HttpSender(client)},
    )
    async with entity:
        yield entity
    await client.close()

"""Discovery over a large tree: bounded reads, a result cap with cnst/cnot, turns for others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from cse.core.clock import ManualClock
from cse.core.config import CSELimits, CSESettings
from cse.core.discovery import CHUNK
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria, Response
from cse.core.types import ContentStatus
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import Put, Resource, Storage
from tests.helpers import ae_body, create, retrieve

AE = "Cmeter"
INSTANCES = max(650, 3 * CHUNK + 50)  # several pages, and several answers of 100


@pytest.fixture
async def big_tree(
    storage_factory: Callable[[], Storage], clock: ManualClock
) -> AsyncIterator[CommonServicesEntity]:
    """An AE `meter` with a container `reads` of INSTANCES instances, and a container `events`
    created after them (so it comes last in creation order)."""
    settings = CSESettings(
        limits=CSELimits(discovery_result_cap=100, requests_per_second=None),
        expiry_check_interval=3600,
    )
    cse = CommonServicesEntity(storage_factory(), settings, clock=clock)
    async with cse:
        assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == 2001
        for name in ("reads", "events"):
            body = {"m2m:cnt": {"rn": name, "lbl": [name]}}
            assert (await cse.handle(create("cse-in/meter", 3, body, AE))).status == 2001
        reads = await cse.storage.get_by_path("cse-in/meter/reads")
        assert reads is not None
        await _plant(cse, reads, INSTANCES)
        yield cse


async def _plant(cse: CommonServicesEntity, container: Resource, count: int) -> None:
    """Store `count` instances in one batch (a request each would take minutes on SQLite)."""
    now, later = cse.timestamp(), cse.timestamp(3600)
    batch = []
    for number in range(count):
        attributes = {
            "ty": 4, "ri": f"cin{number:05d}", "rn": f"r{number:05d}", "pi": container.ri,
            "ct": now, "lt": now, "et": later, "con": "1", "cs": 1, "st": number + 1,
            "lbl": ["odd"] if number % 2 else [],
        }  # fmt: skip
        batch.append(Put(Resource(attributes, f"{container.path}/r{number:05d}", AE)))
    await cse.storage.apply(batch)
    await cse.storage.sync()


async def _discover(cse: CommonServicesEntity, to: str = "cse-in", **criteria: Any) -> Response:
    fc = FilterCriteria(filter_usage=1, **criteria)
    response = await cse.handle(retrieve(to, AE, fc=fc))
    assert response.status == RSC.OK, response.content
    return response


async def test_a_limit_stops_the_reading_itself(big_tree: CommonServicesEntity) -> None:
    counters = big_tree.counters
    response = await _discover(big_tree, resource_types=(4,), limit=1)
    assert len(response.content["m2m:uril"]) == 1
    # One page of the container (plus the AE's and the CSEBase's children), not the tree.
    assert counters.discovery_rows_read <= CHUNK + 10
    # Whereas a search that matches nothing has to read them all.
    before = counters.discovery_rows_read
    await _discover(big_tree, resource_types=(4,), labels=("nothing",), limit=1)
    assert counters.discovery_rows_read - before > INSTANCES


async def test_a_level_stops_the_descent(big_tree: CommonServicesEntity) -> None:
    response = await _discover(big_tree, level=1)
    assert response.content["m2m:uril"] == ["cse-in/meter"]
    assert big_tree.counters.discovery_rows_read <= 2  # the CSEBase's children only
    response = await _discover(big_tree, "cse-in/meter", level=1)
    assert response.content["m2m:uril"] == ["cse-in/meter/reads", "cse-in/meter/events"]


async def test_types_that_cannot_be_below_are_not_read(big_tree: CommonServicesEntity) -> None:
    response = await _discover(big_tree, resource_types=(3,))
    assert response.content["m2m:uril"] == ["cse-in/meter/reads", "cse-in/meter/events"]
    # A container's instances cannot hold a container: they are never read.
    assert big_tree.counters.discovery_rows_read <= 3


async def test_a_large_result_is_paged_with_content_status_and_offset(
    big_tree: CommonServicesEntity,
) -> None:
    pages: list[list[str]] = []
    offset: int | None = None
    while True:
        response = await _discover(big_tree, labels=("odd",), offset=offset)
        pages.append(response.content["m2m:uril"])
        if response.content_status is None:
            assert response.content_offset is None
            break
        assert response.content_status is ContentStatus.PARTIAL_CONTENT
        assert response.content_offset == (offset or 1) + 100  # the cap of the fixture
        offset = response.content_offset
    assert [len(page) for page in pages] == [100, 100, 100, 25]
    found = [uri for page in pages for uri in page]
    assert len(set(found)) == INSTANCES // 2
    assert found == sorted(found)  # creation order across pages
    assert big_tree.counters.discovery_truncated == 3


async def test_a_limit_below_the_cap_is_signalled_too(big_tree: CommonServicesEntity) -> None:
    response = await _discover(big_tree, resource_types=(4,), limit=10, offset=5)
    assert len(response.content["m2m:uril"]) == 10
    assert (response.content_status, response.content_offset) == (ContentStatus.PARTIAL_CONTENT, 15)
    last = await _discover(big_tree, resource_types=(4,), offset=INSTANCES - 3)
    assert len(last.content["m2m:uril"]) == 4 and last.content_status is None


async def test_other_requests_run_between_the_pages(big_tree: CommonServicesEntity) -> None:
    turns = 0
    stop = asyncio.Event()

    async def other_client() -> None:
        nonlocal turns
        while not stop.is_set():
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_client())
    await asyncio.sleep(0)
    before, yields_before = turns, big_tree.counters.discovery_yields
    await _discover(big_tree, labels=("nothing",))  # reads the whole tree, finds nothing
    stop.set()
    await other
    yields = big_tree.counters.discovery_yields - yields_before
    assert yields >= INSTANCES // CHUNK
    assert turns - before >= yields  # the other client ran at every one of them


async def test_a_contentinstance_is_judged_by_its_container_once(
    big_tree: CommonServicesEntity,
) -> None:
    stranger = "Cstranger"
    registered = await big_tree.handle(create("cse-in", 2, ae_body("stranger"), stranger))
    assert registered.status == RSC.CREATED
    fc = FilterCriteria(filter_usage=1, resource_types=(4,))
    response = await big_tree.handle(retrieve("cse-in", stranger, fc=fc))
    assert response.status == RSC.OK and response.content["m2m:uril"] == []


async def test_only_two_discoveries_walk_at_once(big_tree: CommonServicesEntity) -> None:
    walks = [_discover(big_tree, labels=("nothing",)) for _ in range(4)]
    await asyncio.gather(*walks)
    assert big_tree.counters.discovery_queued == 2

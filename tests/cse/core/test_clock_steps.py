"""The wall clock stepping back or forward (no NTP at boot, a date set by hand).

The CSE's SystemClock reads an injected wall clock and monotonic clock here, so a test can
step one without the other, as the kernel does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cse.core.clock import SystemClock, parse_timestamp
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import ae_body, create, retrieve

HOUR = 3600.0


class Host:
    """A host's two clocks: the date (which can be stepped) and the time since boot."""

    def __init__(self) -> None:
        self.date = 1_767_225_600.0
        self.uptime = 100.0

    def wall(self) -> float:
        return self.date

    def monotonic(self) -> float:
        return self.uptime

    def run(self, seconds: float) -> None:
        self.date += seconds
        self.uptime += seconds

    def step(self, seconds: float) -> None:
        self.date += seconds


def test_a_step_back_does_not_take_the_date_back() -> None:
    host = Host()
    clock = SystemClock(host.wall, host.monotonic)
    before = clock.now()
    host.step(-HOUR)
    assert clock.now() == before
    host.run(10)
    assert clock.now() == before + 5  # on at half pace while the wall clock catches up
    host.run(2 * HOUR)  # it has: the wall clock is followed again
    assert clock.now() == host.date


def test_a_step_forward_is_followed() -> None:
    host = Host()
    clock = SystemClock(host.wall, host.monotonic)
    host.step(2 * 24 * HOUR)  # NTP corrects a clock that booted two days late
    assert clock.now() == host.date


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
async def cse(host: Host) -> AsyncIterator[CommonServicesEntity]:
    entity = CommonServicesEntity(
        MemoryStorage(),
        CSESettings(expiry_check_interval=3600),
        clock=SystemClock(host.wall, host.monotonic),
    )
    async with entity:
        yield entity


async def _register(cse: CommonServicesEntity) -> None:
    reply = await cse.handle(create("cse-in", 2, ae_body("meter"), "Cmeter"))
    assert reply.status == RSC.CREATED
    reply = await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, "Cmeter"))
    assert reply.status == RSC.CREATED


async def test_resources_made_after_a_step_back_are_not_dated_before_older_ones(
    cse: CommonServicesEntity, host: Host
) -> None:
    await _register(cse)
    first = await cse.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "1"}}, "Cmeter"))
    host.step(-HOUR)
    host.run(1)
    second = await cse.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "2"}}, "Cmeter"))
    created = [parse_timestamp(r.content["m2m:cin"]["ct"]) for r in (first, second)]
    assert created[0] < created[1]


async def test_expiry_is_on_time_after_a_step_back(cse: CommonServicesEntity, host: Host) -> None:
    await _register(cse)
    soon = cse.timestamp(10)
    reply = await cse.handle(
        create("cse-in/meter", 3, {"m2m:cnt": {"rn": "brief", "et": soon}}, "Cmeter")
    )
    assert reply.status == RSC.CREATED
    host.step(-HOUR)
    host.run(21)  # an hour earlier by the date; ten seconds later at the catching-up pace
    assert (await cse.handle(retrieve("cse-in/meter/brief", "Cmeter"))).status == RSC.NOT_FOUND
    assert await cse.expiry.sweep() == 1


async def test_a_step_forward_does_not_forget_requests_a_broker_may_redeliver(
    cse: CommonServicesEntity, host: Host
) -> None:
    await _register(cse)
    body = {"m2m:cin": {"con": "once"}}
    first = create("cse-in/meter/reads", 4, body, "Cmeter", deduplicate=True)
    assert (await cse.handle(first)).status == RSC.CREATED
    await cse.expiry.sweep()
    host.step(2 * 24 * HOUR)  # NTP corrects the date of a gateway that booted stale
    await cse.expiry.sweep()
    again = await cse.handle(first)  # the broker delivers the same request again
    assert again.status == RSC.CREATED
    instances = await cse.storage.children(
        (await cse.storage.get_by_path("cse-in/meter/reads")).ri  # type: ignore[union-attr]
    )
    assert len(instances) == 1

"""pollingChannel (TS-0001 9.6.21, 10.2.5.12; TS-0004 7.4.21): an AE nobody can connect to
collects its requests by long-polling <pollingChannel>/pcu and answers them with a NOTIFY
carrying m2m:rsp."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.limits import Limit
from cse.core.primitives import Response
from cse.core.types import Operation
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import ADMIN, LAB, ae_body, create, delete, request, retrieve, update

AE = "Cmeter"
OTHER = "Cother"
PCU = "cse-in/meter/channel/pcu"
# A bound for waits that must end at once when the code under test is right; they hang
# (and fail here) only when it is wrong.
PROMPTLY = 5.0


async def _started(
    clock: ManualClock, *, limits: dict[str, Any] | None = None, **settings: Any
) -> CommonServicesEntity:
    """A CSE whose notifications wait long enough (30 s) for any poll of a test."""
    chosen = CSESettings(
        expiry_check_interval=3600,
        egress=LAB,
        remote_cses=("/id-mn",),
        notification_timeout=30.0,
        **settings,
    )
    chosen = replace(chosen, limits=replace(chosen.limits, **(limits or {})))
    cse = CommonServicesEntity(MemoryStorage(), chosen, clock=clock)
    await cse.start()
    return cse


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _unreachable_ae(cse: CommonServicesEntity, name: str, ae_id: str) -> None:
    """An AE with no poa that says it cannot be reached (rr false), and its channel."""
    registered = await cse.handle(create("cse-in", 2, ae_body(name, rr=False), ae_id))
    assert registered.status == RSC.CREATED, registered.content
    made = await cse.handle(create(f"cse-in/{name}", 15, {"m2m:pch": {"rn": "channel"}}, ae_id))
    assert made.status == RSC.CREATED, made.content


@pytest.fixture
async def cse(clock: ManualClock) -> AsyncIterator[CommonServicesEntity]:
    entity = await _started(clock)
    await _unreachable_ae(entity, "meter", AE)
    yield entity
    await entity.stop()


def _poll(originator: str = AE, to: str = PCU, **kw: Any) -> Any:
    return retrieve(to, originator, **kw)


def _answer(rqi: str, rsc: int = 2000, originator: str = AE, to: str = PCU) -> Any:
    return request(Operation.NOTIFY, to, originator, pc={"m2m:rsp": {"rsc": rsc, "rqi": rqi}})


async def _promptly(awaitable: Any) -> Response:
    async with asyncio.timeout(PROMPTLY):
        return await awaitable  # type: ignore[no-any-return]


async def test_a_long_poll_returns_the_notification_queued_for_the_ae(
    cse: CommonServicesEntity,
) -> None:
    """TS-0001 10.2.5.12: a notification to an AE that is not request-reachable waits in its
    pollingChannel; the AE's RETRIEVE of pcu returns it as a request primitive."""
    await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    subscribed = {"m2m:sub": {"nu": [AE], "enc": {"net": [3]}}}
    assert (await cse.handle(create("cse-in/meter/reads", 23, subscribed, AE))).status == 2001
    polling = asyncio.create_task(cse.handle(_poll()))
    await cse.polling.wait_until(lambda: cse.polling.polls == 1)
    await cse.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "42"}}, AE))
    answer = await _promptly(polling)
    assert answer.status == RSC.OK
    primitive = answer.content["m2m:rqp"]
    assert (primitive["op"], primitive["to"], primitive["fr"]) == (5, AE, "/id-in")
    assert primitive["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "42"


async def test_the_response_notify_to_pcu_completes_the_delivery(
    cse: CommonServicesEntity,
) -> None:
    """TS-0004 7.4.21: the AE answers a request it polled with a NOTIFY to pcu carrying
    m2m:rsp; only then is the notification delivered."""
    await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    await cse.handle(create("cse-in/meter/reads", 23, {"m2m:sub": {"nu": [AE]}}, AE))
    await cse.handle(update("cse-in/meter/reads", {"m2m:cnt": {"lbl": ["x"]}}, AE))
    polled = await _promptly(cse.handle(_poll()))
    assert cse.notifier.delivered == 0
    rqi = polled.content["m2m:rqp"]["rqi"]
    assert (await cse.handle(_answer(rqi))).status == RSC.OK
    await _promptly(cse.notifier.wait_until(lambda: cse.notifier.delivered == 1))


async def test_a_notify_to_the_ae_is_relayed_through_its_channel_and_answered(
    cse: CommonServicesEntity,
) -> None:
    notify = request(Operation.NOTIFY, "cse-in/meter", ADMIN, pc={"m2m:sgn": {"sur": "x"}})
    relayed = asyncio.create_task(cse.handle(notify))
    polled = await _promptly(cse.handle(_poll()))
    primitive = polled.content["m2m:rqp"]
    assert (primitive["fr"], primitive["rqi"]) == (ADMIN, notify.request_id)
    assert primitive["pc"] == {"m2m:sgn": {"sur": "x"}}
    await cse.handle(_answer(notify.request_id, rsc=4103))
    assert (await _promptly(relayed)).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_poll_that_finds_nothing_times_out_with_4008(
    cse: CommonServicesEntity,
) -> None:
    """As ACME: the poll waits until its request expiration (here 1 ms), then 4008."""
    answer = await _promptly(cse.handle(_poll(request_expiration="1")))
    assert answer.status == RSC.REQUEST_TIMEOUT
    assert cse.polling.polls == 0


async def test_without_rqet_a_poll_waits_the_configured_time(clock: ManualClock) -> None:
    entity = await _started(clock, polling_timeout=0.001)
    try:
        await _unreachable_ae(entity, "meter", AE)
        answer = await _promptly(entity.handle(_poll()))
        assert answer.status == RSC.REQUEST_TIMEOUT
    finally:
        await entity.stop()


async def test_only_the_owner_polls_and_answers_its_channel(cse: CommonServicesEntity) -> None:
    await cse.handle(create("cse-in", 2, ae_body("other"), OTHER))
    for originator in (OTHER, ADMIN):
        poll = await cse.handle(_poll(originator))
        assert poll.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        notify = await cse.handle(_answer("x", originator=originator))
        assert notify.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_only_the_ae_itself_makes_its_one_channel(cse: CommonServicesEntity) -> None:
    """ACME: not even the admin may make an AE's pollingChannel (4103); one per AE (4000)."""
    body = {"m2m:pch": {"rn": "second"}}
    by_admin = await cse.handle(create("cse-in/meter", 15, body, ADMIN))
    assert by_admin.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    second = await cse.handle(create("cse-in/meter", 15, body, AE))
    assert second.status == RSC.BAD_REQUEST
    channel = await cse.handle(retrieve("cse-in/meter/channel", AE))
    assert channel.content["m2m:pch"]["ty"] == 15


async def test_a_registered_cse_makes_a_channel_under_its_remote_cse(
    cse: CommonServicesEntity,
) -> None:
    body = {"m2m:csr": {"csi": "/id-mn", "cb": "/id-mn/cse-mn", "rr": False, "srv": ["3"]}}
    assert (await cse.handle(create("cse-in", 16, body, "/id-mn"))).status == RSC.CREATED
    made = await cse.handle(create("cse-in/id-mn", 15, {"m2m:pch": {}}, "/id-mn"))
    assert made.status == RSC.CREATED
    path = made.location
    assert (await cse.handle(_poll(AE, f"{path}/pcu"))).status == 4103
    polled = await cse.handle(_poll("/id-mn", f"{path}/pcu", request_expiration="1"))
    assert polled.status == RSC.REQUEST_TIMEOUT


async def test_pcu_cannot_be_created_updated_or_deleted(cse: CommonServicesEntity) -> None:
    assert (await cse.handle(create(PCU, 3, {"m2m:cnt": {}}, AE))).status == 4005
    assert (await cse.handle(update(PCU, {"m2m:pch": {"lbl": ["a"]}}, AE))).status == 4005
    assert (await cse.handle(delete(PCU, AE))).status == 4005


async def test_a_notify_to_pcu_must_carry_a_response(cse: CommonServicesEntity) -> None:
    for content in ({"m2m:sgn": {}}, {"m2m:rsp": {"rqi": "1"}}, {"m2m:rsp": {"rsc": 2000}}):
        answer = await cse.handle(request(Operation.NOTIFY, PCU, AE, pc=content))
        assert answer.status == RSC.BAD_REQUEST, content


async def test_pcu_of_something_that_is_not_a_channel_is_not_found(
    cse: CommonServicesEntity,
) -> None:
    assert (await cse.handle(_poll(AE, "cse-in/meter/pcu"))).status == RSC.NOT_FOUND


# ---- bounds: everyone who may notify an AE fills its channel; its owner fills the polls ----


async def test_a_full_channel_refuses_the_next_request(clock: ManualClock) -> None:
    entity = await _started(clock, limits={"max_channel_requests": 1})
    try:
        await _unreachable_ae(entity, "meter", AE)
        first = request(Operation.NOTIFY, "cse-in/meter", ADMIN, pc={"m2m:sgn": {}})
        waiting = asyncio.create_task(entity.handle(first))
        await _promptly(entity.handle(_poll()))  # taken, still waiting for its answer
        second = request(Operation.NOTIFY, "cse-in/meter", ADMIN, pc={"m2m:sgn": {}})
        refused = await _promptly(entity.handle(second))
        assert refused.status == RSC.TARGET_NOT_REACHABLE
        assert entity.counters.refused[Limit.CHANNEL_REQUESTS] == 1
        await entity.handle(_answer(first.request_id))
        assert (await _promptly(waiting)).status == RSC.OK
    finally:
        await entity.stop()


async def test_all_channels_together_hold_a_bounded_number_of_requests(
    clock: ManualClock,
) -> None:
    entity = await _started(clock, limits={"max_channel_requests_total": 1})
    try:
        await _unreachable_ae(entity, "meter", AE)
        await _unreachable_ae(entity, "other", OTHER)
        first = request(Operation.NOTIFY, "cse-in/meter", ADMIN, pc={"m2m:sgn": {}})
        waiting = asyncio.create_task(entity.handle(first))
        await entity.polling.wait_until(lambda: entity.polling.requests == 1)
        second = request(Operation.NOTIFY, "cse-in/other", ADMIN, pc={"m2m:sgn": {}})
        assert (await _promptly(entity.handle(second))).status == RSC.TARGET_NOT_REACHABLE
        assert entity.counters.refused[Limit.CHANNEL_REQUESTS] == 1
        await _cancel(waiting)
    finally:
        await entity.stop()


async def test_polls_waiting_on_one_channel_are_bounded(clock: ManualClock) -> None:
    entity = await _started(clock, limits={"max_polls_per_channel": 1})
    try:
        await _unreachable_ae(entity, "meter", AE)
        first = asyncio.create_task(entity.handle(_poll()))
        await entity.polling.wait_until(lambda: entity.polling.polls == 1)
        refused = await _promptly(entity.handle(_poll()))
        assert refused.status == RSC.NOT_ACCEPTABLE
        assert entity.counters.refused[Limit.POLLS] == 1
        await _cancel(first)
    finally:
        await entity.stop()


async def test_polls_waiting_on_all_channels_are_bounded(clock: ManualClock) -> None:
    entity = await _started(clock, limits={"max_polls_total": 1})
    try:
        await _unreachable_ae(entity, "meter", AE)
        await _unreachable_ae(entity, "other", OTHER)
        first = asyncio.create_task(entity.handle(_poll()))
        await entity.polling.wait_until(lambda: entity.polling.polls == 1)
        refused = await _promptly(entity.handle(_poll(OTHER, "cse-in/other/channel/pcu")))
        assert refused.status == RSC.NOT_ACCEPTABLE
        assert entity.counters.refused[Limit.POLLS] == 1
        await _cancel(first)
    finally:
        await entity.stop()

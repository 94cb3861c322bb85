"""Blocking UPDATE subscriptions (notificationEventType 7, blockingUpdate: TS-0001 9.6.8 from
Release 4, its codes in TS-0004 Table 6.6.3.3-1): an UPDATE of the subscribed resource is
first notified to the subscription's target, and made only if the target answers
positively."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cse.bindings.http import HttpClient, HttpSender
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import LAB, NotificationReceiver, ae_body, create, retrieve, update

AE = "Cmeter"
READS = "cse-in/meter/reads"


async def _prepare(cse: CommonServicesEntity) -> CommonServicesEntity:
    await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
    await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    return cse


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    return await _prepare(cse)


async def _block(cse: CommonServicesEntity, url: str, **attrs: Any) -> dict[str, Any]:
    body = {"m2m:sub": {"rn": "guard", "nu": [url], "enc": {"net": [7], **attrs}}}
    response = await cse.handle(create(READS, 23, body, AE))
    assert response.status == RSC.CREATED, response.content
    return dict(response.content["m2m:sub"])


async def _labels(cse: CommonServicesEntity) -> list[str] | None:
    reads = (await cse.handle(retrieve(READS, AE))).content["m2m:cnt"]
    return reads.get("lbl")


async def test_an_update_is_made_once_the_blocking_target_agrees(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        sub = await _block(meter, receiver.url)
        reply = await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["ok"]}}, AE))
        verification, notification = receiver.received
    assert sub["nct"] == 2  # modified attributes: the default for a blocking update
    assert verification["body"]["m2m:sgn"]["vrq"] is True
    assert reply.status == RSC.UPDATED
    assert notification["body"]["m2m:sgn"] == {
        "nev": {"net": 7, "rep": {"m2m:cnt": {"lbl": ["ok"]}}},
        "sur": f"/id-in/{sub['ri']}",
    }
    assert await _labels(meter) == ["ok"]


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (4005, RSC.OPERATION_DENIED_BY_REMOTE_ENTITY),
        (4103, RSC.OPERATION_DENIED_BY_REMOTE_ENTITY),
        (5103, RSC.REMOTE_ENTITY_NOT_REACHABLE),
    ],
)
async def test_a_negative_answer_rejects_the_update(
    meter: CommonServicesEntity, answer: int, status: RSC
) -> None:
    """ACME: a refusal (4005) is 4127 OPERATION_DENIED_BY_REMOTE_ENTITY, a target that could
    not be reached (5103) is 5107 REMOTE_ENTITY_NOT_REACHABLE; the resource stays as it was."""
    async with NotificationReceiver() as receiver:
        await _block(meter, receiver.url)
        receiver.status = answer
        reply = await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["no"]}}, AE))
    assert reply.status == status
    assert await _labels(meter) is None


async def test_an_unreachable_blocking_target_rejects_the_update(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        await _block(meter, receiver.url)
    reply = await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["no"]}}, AE))
    assert reply.status == RSC.REMOTE_ENTITY_NOT_REACHABLE
    assert await _labels(meter) is None


@pytest.fixture
async def impatient(clock: ManualClock) -> AsyncIterator[CommonServicesEntity]:
    """A CSE that waits a fifth of a second for an answer to a notification."""
    client = HttpClient(timeout=5)
    settings = CSESettings(expiry_check_interval=3600, egress=LAB, notification_timeout=0.2)
    entity = CommonServicesEntity(
        MemoryStorage(), settings, clock=clock, senders={"http": HttpSender(client)}
    )
    async with entity:
        yield await _prepare(entity)
    await client.close()


async def test_a_target_that_does_not_answer_in_time_rejects_the_update(
    impatient: CommonServicesEntity,
) -> None:
    """The wait is bounded by the CSE's notification timeout."""
    never = asyncio.Event()
    async with NotificationReceiver() as receiver:
        await _block(impatient, receiver.url)
        receiver.hold = never
        reply = await impatient.handle(update(READS, {"m2m:cnt": {"lbl": ["no"]}}, AE))
        never.set()
    assert reply.status == RSC.REMOTE_ENTITY_NOT_REACHABLE
    assert await _labels(impatient) is None


async def test_an_update_of_other_attributes_is_not_held_up(
    meter: CommonServicesEntity,
) -> None:
    """enc/atr: only an UPDATE of a listed attribute is notified (and may be refused)."""
    async with NotificationReceiver() as receiver:
        await _block(meter, receiver.url, atr=["mni"])
        receiver.status = 4005
        reply = await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["free"]}}, AE))
        refused = await meter.handle(update(READS, {"m2m:cnt": {"mni": 3}}, AE))
    assert reply.status == RSC.UPDATED and refused.status == RSC.OPERATION_DENIED_BY_REMOTE_ENTITY
    assert len(receiver.received) == 2  # the verification, then only the one for mni


async def test_a_second_blocking_subscription_on_one_resource_is_refused(
    meter: CommonServicesEntity,
) -> None:
    """TS-0004 Table 6.6.3.3-1: 4124 BLOCKING_SUBSCRIPTION_ALREADY_EXISTS."""
    await _block(meter, AE)
    body = {"m2m:sub": {"rn": "second", "nu": [AE], "enc": {"net": [7]}}}
    reply = await meter.handle(create(READS, 23, body, AE))
    assert reply.status == RSC.BLOCKING_SUBSCRIPTION_ALREADY_EXISTS


@pytest.mark.parametrize(
    "attrs",
    [
        {"enc": {"net": [7, 1]}},
        {"nu": [AE, "Cother"]},
        {"bn": {"num": 2}},
        {"exc": 3},
        {"ln": True},
        {"pn": 1},
        {"nec": 2},
        {"enc": {"net": [7], "chty": [4]}},
        {"nct": 1},
    ],
)
async def test_blocking_subscriptions_take_one_target_and_no_delivery_options(
    meter: CommonServicesEntity, attrs: dict[str, Any]
) -> None:
    """As ACME: blocking update is the only event type, with one target, no batching,
    counting or pending policies, only enc/atr beside it, and nct 2."""
    body = {"m2m:sub": {"nu": [AE], "enc": {"net": [7]}, **attrs}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.BAD_REQUEST


async def test_an_existing_subscription_cannot_become_a_blocking_one(
    meter: CommonServicesEntity,
) -> None:
    body = {"m2m:sub": {"rn": "plain", "nu": [AE]}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.CREATED
    change = {"m2m:sub": {"enc": {"net": [7]}}}
    assert (await meter.handle(update(f"{READS}/plain", change, AE))).status == RSC.BAD_REQUEST

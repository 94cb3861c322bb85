"""Operation monitoring (eventNotificationCriteria operationMonitor, TS-0001 9.6.8): a
subscription that names operations and/or originators is notified when such an
operation is performed on the subscribed resource (CREATE of a child, RETRIEVE, UPDATE,
DELETE), as ACME does. Notifications to one target keep their order, so an event that was not
notified would have arrived before the one that was."""

from __future__ import annotations

from typing import Any

import pytest

from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ADMIN, NotificationReceiver, ae_body, create, delete, retrieve, update

AE = "Cmeter"
READS = "cse-in/meter/reads"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
    await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    return cse


async def _monitor(cse: CommonServicesEntity, url: str, *monitors: dict[str, Any]) -> str:
    body = {"m2m:sub": {"rn": "watch", "nu": [url], "enc": {"om": list(monitors)}}}
    response = await cse.handle(create(READS, 23, body, AE))
    assert response.status == RSC.CREATED, response.content
    assert "nct" not in response.content["m2m:sub"]
    assert response.content["m2m:sub"]["enc"] == {"om": list(monitors)}
    return str(response.content["m2m:sub"]["ri"])


def _event(received: dict[str, Any]) -> dict[str, Any]:
    return dict(received["body"]["m2m:sgn"]["nev"])


async def test_an_operation_of_the_monitored_kind_is_notified(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        ri = await _monitor(meter, receiver.url, {"ops": 1})
        await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["x"]}}, AE))  # not a CREATE
        await meter.handle(create(READS, 4, {"m2m:cin": {"con": "1"}}, AE))
        received = await receiver.wait_for(2)
    assert received[1]["body"]["m2m:sgn"] == {
        "nev": {"om": {"ops": 1, "org": AE}},
        "sur": f"/id-in/{ri}",
    }


@pytest.mark.parametrize("org", [AE, f"/id-in/{AE}"])
async def test_only_operations_of_the_monitored_originator_are_notified(
    meter: CommonServicesEntity, org: str
) -> None:
    """An originator may be named by its AE-ID or in SP-relative form."""
    async with NotificationReceiver() as receiver:
        await _monitor(meter, receiver.url, {"org": org})
        await meter.handle(create(READS, 4, {"m2m:cin": {"con": "admin"}}, ADMIN))
        await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["x"]}}, AE))
        received = await receiver.wait_for(2)
    assert _event(received[1]) == {"om": {"ops": 3, "org": AE}}


async def test_a_monitored_retrieve_is_notified(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _monitor(meter, receiver.url, {"ops": 2, "org": AE})
        assert (await meter.handle(retrieve(READS, AE))).status == RSC.OK
        received = await receiver.wait_for(2)
    assert _event(received[1]) == {"om": {"ops": 2, "org": AE}}


async def test_a_monitored_delete_is_notified(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _monitor(meter, receiver.url, {"ops": 4})
        assert (await meter.handle(delete(READS, AE))).status == RSC.DELETED
        received = await receiver.wait_for(2)
    assert _event(received[1]) == {"om": {"ops": 4, "org": AE}}


@pytest.mark.parametrize(
    "criteria",
    [
        {"om": [{"ops": 1}], "net": [1]},
        {"om": [{}]},
        {"om": {"ops": 1}},
        {"om": [{"ops": 9}]},
        {"om": [{"org": 5}]},
    ],
)
async def test_malformed_operation_monitors_are_refused(
    meter: CommonServicesEntity, criteria: dict[str, Any]
) -> None:
    """ACME: om and net exclude each other, and each monitor names ops or org."""
    body = {"m2m:sub": {"nu": [AE], "enc": criteria}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.BAD_REQUEST

"""Non-blocking requests (TS-0001 8.2.2 and 9.6.12, TS-0004 7.3.x): rt 1 is answered at once
with a <request> that records the outcome; rt 2 also sends the outcome (m2m:rsp) as a
notification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from cse.bindings.http import HttpClient, HttpSender
from cse.core.clock import ManualClock, format_timestamp
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.limits import Limit
from cse.core.primitives import Response
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import (
    ADMIN,
    LAB,
    NotificationReceiver,
    ae_body,
    create,
    delete,
    retrieve,
    update,
)

AE = "Cmeter"
OTHER = "Cother"
SYNCH, ASYNCH = 1, 2
PROMPTLY = 5.0  # a guard: the waits below end at once unless the code is wrong


class Started:
    """CSEs made by a test, each with an AE `meter` (Cmeter), stopped at the end."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.client = HttpClient(timeout=5)
        self.made: list[CommonServicesEntity] = []

    async def __call__(self, **limits: Any) -> CommonServicesEntity:
        settings = CSESettings(expiry_check_interval=3600, egress=LAB)
        settings = replace(settings, limits=replace(settings.limits, **limits))
        cse = CommonServicesEntity(
            MemoryStorage(),
            settings,
            clock=self.clock,
            senders={"http": HttpSender(self.client)},
        )
        await cse.start()
        self.made.append(cse)
        assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == 2001
        return cse


@pytest.fixture
async def started(clock: ManualClock) -> AsyncIterator[Started]:
    made = Started(clock)
    yield made
    for cse in made.made:
        await cse.stop()
    await made.client.close()


@pytest.fixture
async def cse(started: Started) -> CommonServicesEntity:
    return await started()


async def _finished(cse: CommonServicesEntity) -> None:
    async with asyncio.timeout(PROMPTLY):
        await cse.requests.wait_until(lambda: cse.requests.pending == 0)


async def _request_resource(cse: CommonServicesEntity, accepted: Response) -> dict[str, Any]:
    fetched = await cse.handle(retrieve(accepted.content["m2m:uri"], AE))
    assert fetched.status == RSC.OK, fetched.content
    return dict(fetched.content["m2m:req"])


async def _waiting_forever(cse: CommonServicesEntity, ae_id: str, name: str) -> Response:
    """A non-blocking request that stays pending: a long poll of the AE's empty channel."""
    await cse.handle(create(f"cse-in/{name}", 15, {"m2m:pch": {"rn": "channel"}}, ae_id))
    poll = retrieve(f"cse-in/{name}/channel/pcu", ae_id, response_type=SYNCH)
    return await cse.handle(poll)


async def test_rt_1_is_accepted_at_once_with_a_request_reference(
    cse: CommonServicesEntity,
) -> None:
    """TS-0004: the response to a nonBlockingRequestSynch is 1001 with the <request>'s ID."""
    body = {"m2m:cnt": {"rn": "reads"}}
    accepted = await cse.handle(create("cse-in/meter", 3, body, AE, response_type=SYNCH))
    assert accepted.status == RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH
    assert accepted.location == f"cse-in/{accepted.content['m2m:uri']}"
    await _finished(cse)
    record = await _request_resource(cse, accepted)
    assert (record["ty"], record["op"], record["tg"], record["org"]) == (17, 1, "cse-in/meter", AE)
    assert record["pc"] == body
    assert record["mi"]["rt"] == {"rtv": SYNCH}
    assert record["rs"] == 1  # COMPLETED
    assert record["ors"]["rsc"] == RSC.CREATED
    assert record["ors"]["pc"]["m2m:cnt"]["rn"] == "reads"
    assert (await cse.handle(retrieve("cse-in/meter/reads", AE))).status == RSC.OK


async def test_an_operation_that_fails_is_recorded_as_failed(cse: CommonServicesEntity) -> None:
    accepted = await cse.handle(retrieve("cse-in/meter/nothing", AE, response_type=SYNCH))
    assert accepted.status == RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH
    await _finished(cse)
    record = await _request_resource(cse, accepted)
    assert (record["rs"], record["ors"]["rsc"]) == (2, RSC.NOT_FOUND)  # FAILED
    assert "m2m:dbg" in record["ors"]["pc"]


async def test_a_release_2a_originator_gets_1000(cse: CommonServicesEntity) -> None:
    accepted = await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH, rvi="2a"))
    assert accepted.status == RSC.ACCEPTED


async def test_rt_2_sends_the_outcome_to_the_rtu_target(cse: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        asked = create(
            "cse-in/meter",
            3,
            {"m2m:cnt": {"rn": "reads"}},
            AE,
            response_type=ASYNCH,
            response_targets=(receiver.url,),
        )
        accepted = await cse.handle(asked)
        assert accepted.status == RSC.ACCEPTED_NON_BLOCKING_REQUEST_ASYNCH
        (notification,) = await receiver.wait_for(1)
    outcome = notification["body"]["m2m:rsp"]
    assert (outcome["rsc"], outcome["rqi"], outcome["to"]) == (2001, asked.request_id, AE)
    assert outcome["pc"]["m2m:cnt"]["rn"] == "reads"
    assert notification["headers"]["X-M2M-Origin"] == "/id-in"
    record = await _request_resource(cse, accepted)
    assert record["mi"]["rt"] == {"rtv": ASYNCH, "nu": [receiver.url]}


async def test_rt_2_without_rtu_notifies_the_originator(started: Started) -> None:
    cse = await started()
    async with NotificationReceiver() as receiver:
        registered = await cse.handle(
            create("cse-in", 2, ae_body("other", poa=[receiver.url]), OTHER, source="127.0.0.1")
        )
        assert registered.status == RSC.CREATED, registered.content
        asked = retrieve("cse-in/other", OTHER, response_type=ASYNCH)
        await cse.handle(asked)
        (notification,) = await receiver.wait_for(1)
    outcome = notification["body"]["m2m:rsp"]
    assert (outcome["rsc"], outcome["rqi"]) == (2000, asked.request_id)
    assert outcome["pc"]["m2m:ae"]["aei"] == OTHER


async def test_rtu_belongs_to_rt_2_only(cse: CommonServicesEntity) -> None:
    for response_type in (None, SYNCH):
        asked = retrieve("cse-in/meter", AE, response_type=response_type, response_targets=(AE,))
        assert (await cse.handle(asked)).status == RSC.BAD_REQUEST


async def test_an_rtu_target_the_cse_will_not_reach_is_refused_before_anything_runs(
    cse: CommonServicesEntity,
) -> None:
    asked = create(
        "cse-in/meter",
        3,
        {"m2m:cnt": {"rn": "reads"}},
        AE,
        response_type=ASYNCH,
        response_targets=("http://10.99.0.1:9/steal",),
    )
    assert (await cse.handle(asked)).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await cse.handle(retrieve("cse-in/meter/reads", AE))).status == RSC.NOT_FOUND


async def test_the_request_resource_is_its_originators_and_the_cses(
    cse: CommonServicesEntity,
) -> None:
    """TS-0001 9.6.12: made by the CSE; readable by the originator, not by others."""
    await cse.handle(create("cse-in", 2, ae_body("other"), OTHER))
    accepted = await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH))
    await _finished(cse)
    reference = accepted.content["m2m:uri"]
    assert (await cse.handle(retrieve(reference, OTHER))).status == 4103
    assert (await cse.handle(update(reference, {"m2m:req": {"lbl": ["x"]}}, AE))).status == 4005
    made = await cse.handle(create("cse-in", 17, {"m2m:req": {}}, AE))
    assert made.status == RSC.OPERATION_NOT_ALLOWED
    assert (await cse.handle(delete(reference, AE))).status == RSC.DELETED


async def test_a_request_still_running_cannot_be_deleted(started: Started) -> None:
    """As ACME: deleting a pending <request> would recall it, which is not possible (5220)."""
    cse = await started()
    await cse.handle(create("cse-in", 2, ae_body("other", rr=False), OTHER))
    accepted = await _waiting_forever(cse, OTHER, "other")
    refused = await cse.handle(delete(accepted.content["m2m:uri"], OTHER))
    assert refused.status == RSC.UNABLE_TO_RECALL_REQUEST


async def test_the_request_resource_expires_after_acmes_60_seconds(
    cse: CommonServicesEntity, clock: ManualClock
) -> None:
    accepted = await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH))
    await _finished(cse)
    record = await _request_resource(cse, accepted)
    assert record["et"] == format_timestamp(clock.now() + 60)
    clock.advance(61)
    assert (await cse.handle(retrieve(accepted.content["m2m:uri"], AE))).status == 4004


async def test_the_request_resource_lives_until_the_requests_expiration(
    cse: CommonServicesEntity, clock: ManualClock
) -> None:
    expiration = format_timestamp(clock.now() + 600)
    asked = retrieve("cse-in/meter", AE, response_type=SYNCH, request_expiration=expiration)
    accepted = await cse.handle(asked)
    await _finished(cse)
    assert (await _request_resource(cse, accepted))["et"] == expiration


async def test_a_request_cut_short_by_a_stop_is_recorded_as_failed(clock: ManualClock) -> None:
    storage = MemoryStorage()
    settings = CSESettings(expiry_check_interval=3600, egress=LAB)
    async with CommonServicesEntity(storage, settings, clock=clock) as first:
        await first.handle(create("cse-in", 2, ae_body("meter", rr=False), AE))
        accepted = await _waiting_forever(first, AE, "meter")
    async with CommonServicesEntity(storage, settings, clock=clock) as second:
        record = await _request_resource(second, accepted)
    assert (record["rs"], record["ors"]["rsc"]) == (2, RSC.INTERNAL_SERVER_ERROR)


# ---- bounds: the operations running, per originator and in all, and the <request>s kept ----


async def test_requests_running_for_one_originator_are_bounded(started: Started) -> None:
    cse = await started(max_pending_requests_per_originator=1)
    await cse.handle(create("cse-in", 2, ae_body("other", rr=False), OTHER))
    assert (await _waiting_forever(cse, OTHER, "other")).status == 1001
    refused = await cse.handle(retrieve("cse-in/other", OTHER, response_type=SYNCH))
    assert refused.status == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.PENDING_REQUESTS] == 1
    others = await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH))
    assert others.status == RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH


async def test_requests_running_on_the_cse_are_bounded(started: Started) -> None:
    cse = await started(max_pending_requests=1)
    await cse.handle(create("cse-in", 2, ae_body("other", rr=False), OTHER))
    assert (await _waiting_forever(cse, OTHER, "other")).status == 1001
    refused = await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH))
    assert refused.status == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.PENDING_REQUESTS] == 1


async def test_the_request_resources_kept_are_bounded(started: Started) -> None:
    cse = await started(max_request_resources=1)
    assert (await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH))).status == 1001
    await _finished(cse)
    refused = await cse.handle(retrieve("cse-in/meter", AE, response_type=SYNCH))
    assert refused.status == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.REQUEST_RESOURCES] == 1
    admin = await cse.handle(retrieve("cse-in/meter", ADMIN, response_type=SYNCH))
    assert admin.status == RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH


async def test_an_rt_2_request_names_a_bounded_number_of_targets(
    cse: CommonServicesEntity,
) -> None:
    asked = retrieve("cse-in/meter", AE, response_type=ASYNCH, response_targets=tuple([AE] * 9))
    assert (await cse.handle(asked)).status == RSC.BAD_REQUEST

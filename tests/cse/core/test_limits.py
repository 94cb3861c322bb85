"""Quotas and rate limits, on both storage backends: nobody on the meter LAN starves the CSE."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from cse.bindings.http import HttpClient, HttpSender
from cse.core.clock import ManualClock
from cse.core.config import CSELimits, CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.limits import Limit, TokenBuckets, name_problem
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import Storage
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
# Every limit that can be off is off, so that each test sees the one it switches on at work.
OFF = CSELimits(
    max_resources_per_ae=None,
    max_subscriptions_per_resource=None,
    registrations_per_minute=None,
    registrations_per_minute_per_source=None,
    requests_per_second=None,
)

MakeCSE = Callable[..., Awaitable[CommonServicesEntity]]


@pytest.fixture
async def limited(
    storage_factory: Callable[[], Storage], clock: ManualClock
) -> AsyncIterator[MakeCSE]:
    """Makes a started CSE on the parametrised backend (memory, SQLite) with these limits
    and an AE `meter` (Cmeter) registered."""
    started: list[CommonServicesEntity] = []
    client = HttpClient(timeout=5)

    async def make(**limits: Any) -> CommonServicesEntity:
        settings = CSESettings(
            limits=replace(OFF, **limits), expiry_check_interval=3600, egress=LAB
        )
        senders = {"http": HttpSender(client)}
        cse = CommonServicesEntity(storage_factory(), settings, clock=clock, senders=senders)
        await cse.start()
        started.append(cse)
        registered = await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
        assert registered.status == RSC.CREATED, registered.content
        return cse

    yield make
    for cse in started:
        await cse.stop()
    await client.close()


async def _status(cse: CommonServicesEntity, request: Any) -> RSC:
    return (await cse.handle(request)).status


def _container(name: str, **attrs: Any) -> Any:
    return create("cse-in/meter", 3, {"m2m:cnt": {"rn": name, **attrs}}, AE)


def _instance(con: str, to: str = "cse-in/meter/reads") -> Any:
    return create(to, 4, {"m2m:cin": {"con": con}}, AE)


async def _attributes(cse: CommonServicesEntity, to: str) -> dict[str, Any]:
    response = await cse.handle(retrieve(to, AE))
    assert response.status == RSC.OK, response.content
    ((_, attributes),) = response.content.items()
    return dict(attributes)


# ---- container instances and bytes ---------------------------------------------------------------


async def test_a_container_without_limits_gets_the_default_ones(limited: MakeCSE) -> None:
    cse = await limited(default_max_instances=3, default_max_byte_size=2000)
    assert await _status(cse, _container("reads")) == RSC.CREATED
    # The flood of the issue, scaled down: many large instances into one container.
    for _ in range(20):
        assert await _status(cse, _instance("x" * 500)) == RSC.CREATED
    reads = await _attributes(cse, "cse-in/meter/reads")
    assert (reads["mni"], reads["mbs"]) == (3, 2000)
    assert (reads["cni"], reads["cbs"]) == (3, 1500)
    assert await _status(cse, _instance("x" * 2001)) == RSC.NOT_ACCEPTABLE


async def test_a_creator_may_ask_for_less_and_up_to_the_cap(limited: MakeCSE) -> None:
    cse = await limited(default_max_instances=10, max_instances_cap=50, max_byte_size_cap=4096)
    assert await _status(cse, _container("small", mni=2)) == RSC.CREATED
    assert await _status(cse, _container("large", mni=50, mbs=4096)) == RSC.CREATED
    refused = await cse.handle(_container("huge", mni=51))
    assert refused.status == RSC.NOT_ACCEPTABLE
    assert "over this CSE's maximum of 50" in refused.content["m2m:dbg"]
    assert await _status(cse, _container("wide", mbs=4097)) == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.CONTAINER_CAP] == 2
    assert (await cse.handle(retrieve("cse-in/meter/huge", AE))).status == RSC.NOT_FOUND


async def test_an_update_cannot_lift_a_container_over_the_cap(limited: MakeCSE) -> None:
    cse = await limited(default_max_instances=10, max_instances_cap=50)
    assert await _status(cse, _container("reads")) == RSC.CREATED
    raised = update("cse-in/meter/reads", {"m2m:cnt": {"mni": 500}}, AE)
    assert await _status(cse, raised) == RSC.NOT_ACCEPTABLE
    # Removing the limit (null) brings the default back rather than no limit at all.
    removed = await cse.handle(update("cse-in/meter/reads", {"m2m:cnt": {"mni": None}}, AE))
    assert removed.status == RSC.UPDATED
    assert removed.content["m2m:cnt"]["mni"] == 10


async def test_privileged_originators_are_not_capped(limited: MakeCSE) -> None:
    cse = await limited(max_instances_cap=50)
    big = create("cse-in/meter", 3, {"m2m:cnt": {"rn": "archive", "mni": 100_000}})
    assert await _status(cse, big) == RSC.CREATED  # the admin (tests.helpers.ADMIN)


# ---- resources per AE, AEs, nesting, subscriptions -----------------------------------------------


async def test_an_ae_holds_at_most_its_quota_of_resources(limited: MakeCSE) -> None:
    cse = await limited(max_resources_per_ae=4)
    assert await _status(cse, _container("reads")) == RSC.CREATED
    nested = create("cse-in/meter/reads", 3, {"m2m:cnt": {"rn": "inner"}}, AE)
    assert await _status(cse, nested) == RSC.CREATED
    for name in ("a", "b"):
        assert await _status(cse, _container(name)) == RSC.CREATED
    # Instances do not count: they are bounded per container.
    for _ in range(10):
        assert await _status(cse, _instance("1")) == RSC.CREATED
    refused = await cse.handle(_container("c"))
    assert refused.status == RSC.NOT_ACCEPTABLE, refused.content
    assert "maximum of 4 resources" in refused.content["m2m:dbg"]
    deep = create("cse-in/meter/reads/inner", 3, {"m2m:cnt": {"rn": "deeper"}}, AE)
    assert await _status(cse, deep) == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.RESOURCES_PER_AE] == 2
    assert await _status(cse, delete("cse-in/meter/a", AE)) == RSC.DELETED
    assert await _status(cse, _container("c")) == RSC.CREATED


async def test_a_node_holds_at_most_the_quota_of_what_an_ae_makes_there(
    limited: MakeCSE,
) -> None:
    # An AE may make management objects under a node only where a policy lets it; what it
    # makes there counts against the node as it would against an AE.
    cse = await limited(max_resources_per_ae=3)
    rules = {"acr": [{"acor": [AE], "acop": 63}]}
    policy = {"rn": "p", "pv": rules, "pvs": {"acr": [{"acor": [ADMIN], "acop": 63}]}}
    made = await cse.handle(create("cse-in/meter", 1, {"m2m:acp": policy}, AE))
    assert made.status == RSC.CREATED, made.content
    node = {"m2m:nod": {"rn": "dev", "ni": "dev", "acpi": [made.content["m2m:acp"]["ri"]]}}
    assert await _status(cse, create("cse-in", 14, node)) == RSC.CREATED
    memory = {"mgd": 1003, "mma": 1, "mmt": 2}
    for name in ("a", "b", "c"):
        body = {"m2m:mem": {"rn": name, **memory}}
        assert await _status(cse, create("cse-in/dev", 13, body, AE)) == RSC.CREATED
    refused = await cse.handle(create("cse-in/dev", 13, {"m2m:mem": memory}, AE))
    assert refused.status == RSC.NOT_ACCEPTABLE, refused.content
    assert "cse-in/dev already holds its maximum of 3" in refused.content["m2m:dbg"]
    below = create("cse-in/dev/a", 23, {"m2m:sub": {"nu": [AE]}}, AE)
    assert await _status(cse, below) == RSC.NOT_ACCEPTABLE
    assert await _status(cse, create("cse-in/dev", 13, {"m2m:mem": memory})) == RSC.CREATED


async def test_the_cse_holds_at_most_max_aes(limited: MakeCSE) -> None:
    cse = await limited(max_aes=2)
    assert await _status(cse, create("cse-in", 2, ae_body("m2"), "Cm2")) == RSC.CREATED
    refused = await cse.handle(create("cse-in", 2, ae_body("m3"), "Cm3"))
    assert refused.status == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.AES] == 1


async def test_resources_nest_only_so_deep(limited: MakeCSE) -> None:
    cse = await limited(max_nesting_depth=3)
    assert await _status(cse, _container("l2")) == RSC.CREATED
    assert await _status(cse, create("cse-in/meter/l2", 3, {"m2m:cnt": {"rn": "l3"}}, AE)) == (
        RSC.CREATED
    )
    too_deep = create("cse-in/meter/l2/l3", 3, {"m2m:cnt": {"rn": "l4"}}, AE)
    assert await _status(cse, too_deep) == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.NESTING] == 1


async def test_a_resource_takes_at_most_its_quota_of_subscriptions(limited: MakeCSE) -> None:
    cse = await limited(max_subscriptions_per_resource=3)
    assert await _status(cse, _container("reads")) == RSC.CREATED
    for number in range(3):
        sub = {"m2m:sub": {"rn": f"s{number}", "nu": [AE]}}
        assert await _status(cse, create("cse-in/meter/reads", 23, sub, AE)) == RSC.CREATED
    extra = create("cse-in/meter/reads", 23, {"m2m:sub": {"rn": "s3", "nu": [AE]}}, AE)
    assert await _status(cse, extra) == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.SUBSCRIPTIONS] == 1


# ---- the all-to-all notice -----------------------------------------------------------------------


async def _subscribe(cse: CommonServicesEntity, url: str, name: str, **enc: Any) -> None:
    body = {"m2m:sub": {"rn": name, "nu": [url], "enc": {"net": [3], **enc}}}
    response = await cse.handle(create("cse-in/meter/reads", 23, body, AE))
    assert response.status == RSC.CREATED, response.content


async def test_a_new_subscription_does_not_notify_its_siblings(limited: MakeCSE) -> None:
    cse = await limited()
    assert await _status(cse, _container("reads")) == RSC.CREATED
    async with NotificationReceiver() as receiver:
        for number in range(6):
            await _subscribe(cse, receiver.url, f"s{number}")
        assert await _status(cse, _instance("42")) == RSC.CREATED
        await cse.notifier.wait_until(lambda: cse.notifier.pending_count() == 0)
        # One notice per subscription for the instance, and none of the 15 a subscription
        # coming would have sent to every earlier one.
        assert cse.notifier.delivered == 6
        notices = [r["body"]["m2m:sgn"] for r in receiver.received]
    assert not any("m2m:sub" in sgn.get("nev", {}).get("rep", {}) for sgn in notices)


async def test_a_subscriber_asking_for_subscription_children_hears_of_them(
    limited: MakeCSE,
) -> None:
    cse = await limited()
    assert await _status(cse, _container("reads")) == RSC.CREATED
    async with NotificationReceiver() as watcher, NotificationReceiver() as other:
        await _subscribe(cse, watcher.url, "watcher", chty=[23])
        await _subscribe(cse, other.url, "first")
        await _subscribe(cse, other.url, "second")
        await cse.notifier.wait_until(lambda: cse.notifier.pending_count() == 0)
        notices = [r["body"]["m2m:sgn"] for r in watcher.received]
        heard = [sgn for sgn in notices if "vrq" not in sgn]
    assert [sgn["nev"]["rep"]["m2m:sub"]["rn"] for sgn in heard] == ["first", "second"]


# ---- names ---------------------------------------------------------------------------------------


BAD_NAMES = [".", "..", "...", "-", "-meter", "la", "ol", "fopt", "pcu", "a/b", "x" * 65]


@pytest.mark.parametrize("name", [*BAD_NAMES, "y" * 200_000])
async def test_names_that_cannot_be_resource_names_are_refused(limited: MakeCSE, name: str) -> None:
    cse = await limited()
    refused = await cse.handle(_container(name))
    assert refused.status == RSC.BAD_REQUEST
    assert len(refused.content["m2m:dbg"]) < 300  # the name is cut in the answer
    assert cse.counters.refused[Limit.NAME] == 1


async def test_long_and_dotted_names_within_the_rules_are_accepted(limited: MakeCSE) -> None:
    cse = await limited()
    for name in ("x" * 64, "v1.2", "a-b_c", "la2", "meter.", ".hidden"):
        assert await _status(cse, _container(name)) == RSC.CREATED, name


async def test_an_ae_id_becomes_a_name_and_is_held_to_the_same_rules(limited: MakeCSE) -> None:
    cse = await limited()
    long_id = "C" + "x" * 200_000
    body = {"m2m:ae": {"api": "Nmeter", "rr": True, "srv": ["3"]}}
    assert await _status(cse, create("cse-in", 2, body, long_id)) == RSC.BAD_REQUEST
    assert await _status(cse, create("cse-in", 2, body, "C" + "x" * 63)) == RSC.CREATED


def test_name_rules() -> None:
    assert name_problem("meter-0001", 64) is None
    assert "64" in str(name_problem("x" * 65, 64))
    assert "virtual" in str(name_problem("fopt", 64))
    assert "dots" in str(name_problem("..", 64))
    assert "CSEBase" in str(name_problem("-", 64))


# ---- registrations and request rate --------------------------------------------------------------


async def test_registrations_per_cse_are_rate_limited(limited: MakeCSE, clock: ManualClock) -> None:
    cse = await limited(registrations_per_minute=60, registration_burst=4)  # meter took 1
    statuses = [
        await _status(cse, create("cse-in", 2, ae_body(f"m{n}"), f"Cm{n}")) for n in range(6)
    ]
    assert statuses == [RSC.CREATED] * 3 + [RSC.NOT_ACCEPTABLE] * 3
    # A meter finding its own AE again costs nothing (4117 comes before the bucket)...
    again = create("cse-in", 2, ae_body("m0"), "Cm0")
    assert await _status(cse, again) == RSC.ORIGINATOR_HAS_ALREADY_REGISTERED
    # ...and the bucket refills at the configured rate.
    clock.advance(1.0)
    assert await _status(cse, create("cse-in", 2, ae_body("m6"), "Cm6")) == RSC.CREATED
    assert await _status(cse, create("cse-in", 2, ae_body("m7"), "Cm7")) == RSC.NOT_ACCEPTABLE
    assert cse.counters.refused[Limit.REGISTRATIONS] == 4


async def test_registrations_per_source_address_are_rate_limited(limited: MakeCSE) -> None:
    cse = await limited(registrations_per_minute_per_source=2)

    def register(number: int, source: str) -> Any:
        return create("cse-in", 2, ae_body(f"m{number}"), f"Cm{number}", source=source)

    lan = [await _status(cse, register(n, "192.0.2.7")) for n in range(3)]
    assert lan == [RSC.CREATED, RSC.CREATED, RSC.NOT_ACCEPTABLE]
    assert await _status(cse, register(3, "192.0.2.8")) == RSC.CREATED
    # A local process (a reverse proxy, the fleet emulator) speaks for many clients.
    local = [await _status(cse, register(n, "127.0.0.1")) for n in range(4, 8)]
    assert local == [RSC.CREATED] * 4
    assert cse.counters.refused[Limit.REGISTRATIONS_PER_SOURCE] == 1


async def test_requests_per_originator_are_rate_limited(
    limited: MakeCSE, clock: ManualClock
) -> None:
    cse = await limited(requests_per_second=2.0, request_burst=5)
    # The registration and this CREATE take 2 of the 5 tokens.
    assert await _status(cse, _container("reads")) == RSC.CREATED
    statuses = [await _status(cse, retrieve("cse-in/meter", AE)) for _ in range(5)]
    assert statuses == [RSC.OK] * 3 + [RSC.NOT_ACCEPTABLE] * 2
    refused = await cse.handle(retrieve("cse-in/meter", AE))
    assert "retry in" in refused.content["m2m:dbg"]
    # Others are not held up, nor the admin, and the bucket refills.
    assert await _status(cse, retrieve("cse-in/meter")) == RSC.OK
    clock.advance(1.0)
    assert [await _status(cse, retrieve("cse-in/meter", AE)) for _ in range(3)] == [
        RSC.OK,
        RSC.OK,
        RSC.NOT_ACCEPTABLE,
    ]
    assert cse.counters.refused[Limit.REQUEST_RATE] == 4


def test_token_buckets_forget_the_least_recent_clients_first() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2)
    assert [buckets.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert buckets.take("a", 0.5) == 0.5  # half a token back, half a second to wait
    assert buckets.take("a", -100.0) > 0  # a clock stepped back does not refill

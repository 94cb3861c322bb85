"""Subscriptions and notifications, delivered over real loopback HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cse.core.clock import ManualClock
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import ChangedElsewhere, StorageError
from tests.helpers import NotificationReceiver, ae_body, create, delete, retrieve, update

AE = "Cmeter"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
    await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    return cse


async def _subscribe(cse: CommonServicesEntity, url: str, **attrs: Any) -> dict[str, Any]:
    body = {"m2m:sub": {"rn": attrs.pop("rn", "sub"), "nu": [url], **attrs}}
    response = await cse.handle(create(attrs.pop("to", "cse-in/meter/reads"), 23, body, AE))
    assert response.status == RSC.CREATED, response.content
    return dict(response.content["m2m:sub"])


async def _post(cse: CommonServicesEntity, con: str) -> None:
    response = await cse.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": con}}, AE))
    assert response.status == RSC.CREATED


async def test_creation_sends_a_verification_request(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        sub = await _subscribe(meter, receiver.url, enc={"net": [3]})
        (verification,) = await receiver.wait_for(1)
    sgn = verification["body"]["m2m:sgn"]
    assert sgn["vrq"] is True and sgn["cr"] == AE
    assert verification["headers"]["X-M2M-Origin"] == "/id-in"
    assert sub["nu"] == [receiver.url]


async def test_unreachable_or_refusing_target_fails_creation(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver(status=4103) as refusing:
        body = {"m2m:sub": {"nu": [refusing.url]}}
        response = await meter.handle(create("cse-in/meter/reads", 23, body, AE))
    assert response.status == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
    dead = {"m2m:sub": {"nu": ["http://127.0.0.1:9/nothing"]}}
    response = await meter.handle(create("cse-in/meter/reads", 23, dead, AE))
    assert response.status == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
    listing = await meter.handle(retrieve("cse-in/meter/reads", AE, rcn=6))
    assert listing.content["m2m:rrl"]["rrf"] == []


async def test_child_creation_is_notified_with_the_new_instance(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]})
        await _post(meter, "42")
        received = await receiver.wait_for(2)
    sgn = received[1]["body"]["m2m:sgn"]
    assert sgn["nev"]["net"] == 3
    assert sgn["nev"]["rep"]["m2m:cin"]["con"] == "42"
    assert sgn["sur"].startswith("/id-in/sub")


async def test_update_notification_with_modified_attributes(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, nct=2)
        await meter.handle(update("cse-in/meter/reads", {"m2m:cnt": {"lbl": ["x"]}}, AE))
        received = await receiver.wait_for(2)
    rep = received[1]["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cnt"]
    assert rep["lbl"] == ["x"] and "rn" not in rep


async def test_resource_id_content_type(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, nct=3)
        await _post(meter, "1")
        received = await receiver.wait_for(2)
    assert received[1]["body"]["m2m:sgn"]["nev"]["rep"]["m2m:uri"].startswith("cse-in/meter/reads/")


async def test_expiration_counter_ends_the_subscription(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver, NotificationReceiver() as subscriber:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, exc=2, su=subscriber.url)
        for value in ("1", "2", "3"):
            await _post(meter, value)
        received = await receiver.wait_for(3)
        (notice,) = await subscriber.wait_for(1)
    assert [r["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] for r in received[1:]] == [
        "1",
        "2",
    ]
    assert notice["body"]["m2m:sgn"]["sud"] is True
    assert (await meter.handle(retrieve("cse-in/meter/reads/sub", AE))).status == RSC.NOT_FOUND


async def test_deleting_the_subscribed_resource_sends_deletion_notices(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver, NotificationReceiver() as subscriber:
        await _subscribe(meter, receiver.url, enc={"net": [2]}, su=subscriber.url)
        assert (await meter.handle(delete("cse-in/meter/reads", AE))).status == RSC.DELETED
        received = await receiver.wait_for(2)
        await subscriber.wait_for(1)
    assert received[1]["body"]["m2m:sgn"]["nev"]["net"] == 2


async def test_child_deletion_notification(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [4]})
        await _post(meter, "x")
        await meter.handle(delete("cse-in/meter/reads/la", AE))
        received = await receiver.wait_for(2)
    assert received[1]["body"]["m2m:sgn"]["nev"]["net"] == 4


async def test_batch_notify_sends_aggregates(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, bn={"num": 3})
        for value in "abcdef":
            await _post(meter, value)
        received = await receiver.wait_for(3)
    batches = [r["body"]["m2m:agn"]["m2m:sgn"] for r in received[1:]]
    assert [[n["nev"]["rep"]["m2m:cin"]["con"] for n in batch] for batch in batches] == [
        ["a", "b", "c"],
        ["d", "e", "f"],
    ]


async def test_batches_of_two_subscriptions_to_one_target_lose_nothing(
    meter: CommonServicesEntity,
) -> None:
    await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "events"}}, AE))
    async with NotificationReceiver() as receiver:
        for container in ("reads", "events"):
            body = {"m2m:sub": {"nu": [receiver.url], "enc": {"net": [3]}, "bn": {"num": 2}}}
            reply = await meter.handle(create(f"cse-in/meter/{container}", 23, body, AE))
            assert reply.status == RSC.CREATED, reply.content
        # Interleaved: the target's queue holds reads and events alternately.
        for index in range(4):
            for container in ("reads", "events"):
                body = {"m2m:cin": {"con": f"{container}{index}"}}
                reply = await meter.handle(create(f"cse-in/meter/{container}", 4, body, AE))
                assert reply.status == RSC.CREATED
        received = await receiver.wait_for(2 + 4)  # two verifications, four batches of two
    contents = [
        n["nev"]["rep"]["m2m:cin"]["con"]
        for r in received
        if "m2m:agn" in r["body"]
        for n in r["body"]["m2m:agn"]["m2m:sgn"]
    ]
    assert sorted(contents) == sorted(f"{c}{i}" for c in ("reads", "events") for i in range(4))


async def test_batch_notify_flushes_after_its_duration(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, bn={"num": 10, "dur": "PT1S"})
        await _post(meter, "only")
        clock.advance(2)
        meter.notifier.wake()
        received = await receiver.wait_for(2)
    assert len(received[1]["body"]["m2m:agn"]["m2m:sgn"]) == 1


async def test_subscription_to_a_content_instance_is_refused(meter: CommonServicesEntity) -> None:
    await _post(meter, "1")
    body = {"m2m:sub": {"nu": [AE]}}
    response = await meter.handle(create("cse-in/meter/reads/la", 23, body, AE))
    assert response.status == RSC.OPERATION_NOT_ALLOWED
    cin = (await meter.handle(retrieve("cse-in/meter/reads/la", AE))).content["m2m:cin"]
    response = await meter.handle(create(cin["ri"], 23, body, AE))
    assert response.status == RSC.TARGET_NOT_SUBSCRIBABLE


async def test_subscribing_needs_retrieve_rights(meter: CommonServicesEntity) -> None:
    await meter.handle(create("cse-in", 2, ae_body("other"), "Cother"))
    body = {"m2m:sub": {"nu": ["Cother"]}}
    response = await meter.handle(create("cse-in/meter/reads", 23, body, "Cother"))
    assert response.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


@pytest.mark.parametrize(
    "attrs",
    [
        {"nct": 2, "enc": {"net": [3]}},
        {"nct": 9},
        {"enc": {"net": [99]}},
        {"pn": 3},
        {"exc": 0},
        {"bn": {"num": 0}},
        {"bn": {"dur": "soon"}},
        {"nu": []},
    ],
)
async def test_invalid_subscription_attributes(meter: CommonServicesEntity, attrs: dict) -> None:
    body = {"m2m:sub": {"nu": [AE], **attrs}}
    response = await meter.handle(create("cse-in/meter/reads", 23, body, AE))
    assert response.status == RSC.BAD_REQUEST


async def test_pending_notifications_wait_for_an_unreachable_target(
    meter: CommonServicesEntity,
) -> None:
    """sendAllPending keeps every notification while the target is down, and sends them later."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, pn=2)
    # The receiver is gone now: these notifications cannot be delivered.
    for value in ("1", "2", "3"):
        await _post(meter, value)
    await meter.notifier.wait_until(lambda: meter.notifier.failed_attempts >= 1)
    assert meter.notifier.pending_count() == 3
    assert meter.notifier.dropped == 0


async def test_send_latest_keeps_only_the_newest(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, pn=1)
    for value in ("1", "2", "3"):
        await _post(meter, value)
    await meter.notifier.wait_until(lambda: meter.notifier.failed_attempts >= 1)
    await meter.notifier.wait_until(lambda: meter.notifier.pending_count() == 1)
    assert meter.notifier.dropped == 2


async def test_pending_notifications_are_sent_in_order_when_the_target_returns(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, pn=2)
        port = receiver.port
    for value in ("1", "2", "3"):
        await _post(meter, value)
    await meter.notifier.wait_until(lambda: meter.notifier.failed_attempts >= 1)
    async with NotificationReceiver(port=port) as back:
        meter.notifier.retry_now()
        received = await back.wait_for(3)
    assert [r["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] for r in received] == [
        "1",
        "2",
        "3",
    ]
    assert meter.notifier.pending_count() == 0


async def test_notify_to_an_ae_is_relayed_to_its_point_of_access(
    cse: CommonServicesEntity,
) -> None:
    from cse.core.types import Operation
    from tests.helpers import request

    async with NotificationReceiver() as receiver:
        await cse.handle(create("cse-in", 2, ae_body("app", poa=[receiver.url]), "Capp"))
        sgn = {"m2m:sgn": {"nev": {"rep": {"m2m:uri": "x"}, "net": 1}, "sur": "/id-in/s"}}
        response = await cse.handle(request(Operation.NOTIFY, "cse-in/app", "CAdmin", pc=sgn))
        (relayed,) = await receiver.wait_for(1)
    assert response.status == RSC.OK
    assert relayed["body"] == sgn


async def test_pending_notifications_follow_an_ae_that_moved(cse: CommonServicesEntity) -> None:
    """Queued for an AE-ID, a notification goes to the AE's point of access of the moment."""
    await cse.handle(create("cse-in", 2, ae_body("app"), "Capp"))
    await cse.handle(create("cse-in/app", 3, {"m2m:cnt": {"rn": "cmd"}}, "Capp"))
    body = {"m2m:sub": {"rn": "s", "nu": ["Capp"], "enc": {"net": [3]}, "pn": 2}}
    assert (await cse.handle(create("cse-in/app/cmd", 23, body, "Capp"))).status == RSC.CREATED
    async with NotificationReceiver() as old_place:
        dead = old_place.url
    await cse.handle(update("cse-in/app", {"m2m:ae": {"poa": [dead]}}, "Capp"))
    await cse.handle(create("cse-in/app/cmd", 4, {"m2m:cin": {"con": "connect"}}, "Capp"))
    await cse.notifier.wait_until(lambda: cse.notifier.failed_attempts >= 1)
    async with NotificationReceiver() as new_place:
        await cse.handle(update("cse-in/app", {"m2m:ae": {"poa": [new_place.url]}}, "Capp"))
        cse.notifier.retry_now()
        (received,) = await new_place.wait_for(1)
    assert received["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "connect"


async def test_a_request_from_a_waiting_target_releases_its_notifications(
    cse: CommonServicesEntity,
) -> None:
    """Hearing from an AE is the surest sign it is reachable: its backlog goes at once."""
    async with NotificationReceiver() as receiver:
        port = receiver.port
    await cse.handle(
        create("cse-in", 2, ae_body("app", poa=[f"http://127.0.0.1:{port}/n"]), "Capp")
    )
    await cse.handle(create("cse-in/app", 3, {"m2m:cnt": {"rn": "cmd"}}, "Capp"))
    body = {"m2m:sub": {"rn": "s", "nu": ["Capp"], "enc": {"net": [3]}, "pn": 2}}
    await cse.handle(create("cse-in/app/cmd", 23, body, "Capp"))
    await cse.handle(create("cse-in/app/cmd", 4, {"m2m:cin": {"con": "c1"}}, "Capp"))
    await cse.notifier.wait_until(lambda: cse.notifier.failed_attempts >= 1)
    async with NotificationReceiver(port=port) as back:
        # the backoff would wait a second or more; the AE's own request ends it
        assert (await cse.handle(retrieve("cse-in/app", "Capp"))).status == RSC.OK
        (received,) = await back.wait_for(1)
    assert received["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "c1"


async def test_a_target_unreadable_for_a_moment_keeps_its_notifications(
    cse: CommonServicesEntity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database failing while a notification's target is looked up (PostgreSQL
    restarting) is not the target's failure: nothing is dropped, whatever `pn` says, and the
    delivery task does not fail; the notification goes once the database is back."""
    async with NotificationReceiver() as receiver:
        await cse.handle(create("cse-in", 2, ae_body("app", poa=[receiver.url]), "Capp"))
        await cse.handle(create("cse-in/app", 3, {"m2m:cnt": {"rn": "cmd"}}, "Capp"))
        body = {"m2m:sub": {"rn": "s", "nu": ["Capp"], "enc": {"net": [3]}}}  # pn: drop
        assert (await cse.handle(create("cse-in/app/cmd", 23, body, "Capp"))).status == RSC.CREATED
        looked_up = asyncio.Event()
        readable = cse.storage.get
        requests = asyncio.current_task()  # cse.handle() runs here, delivery in a task of its own

        async def get(ri: str) -> Any:
            if ri == "Capp" and asyncio.current_task() is not requests:
                looked_up.set()
                raise StorageError("the database is restarting")
            return await readable(ri)

        with monkeypatch.context() as down:
            down.setattr(cse.storage, "get", get)
            created = await cse.handle(create("cse-in/app/cmd", 4, {"m2m:cin": {"con": "c"}}))
            assert created.status == RSC.CREATED
            async with asyncio.timeout(10):
                await looked_up.wait()
        cse.notifier.retry_now()
        (received,) = await receiver.wait_for(1)
    assert received["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "c"
    assert cse.supervisor.failures["notification delivery"] == 0
    assert cse.notifier.dropped == 0


async def test_other_workers_changes_are_followed_once_the_database_is_back(
    cse: CommonServicesEntity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told that anything may have changed elsewhere (the change notices were lost, say by a
    PostgreSQL restart) while the database does not answer yet: the CSE waits for it rather
    than failing the task, and reads every group and subscription again once it answers."""
    readable = cse.storage.created_since
    calls: list[int] = []
    read_again = asyncio.Event()

    async def created_since(seq: int, resource_type: int, limit: int) -> Any:
        calls.append(resource_type)
        if len(calls) == 1:
            raise StorageError("the database is restarting")
        read_again.set()
        return await readable(seq, resource_type, limit)

    monkeypatch.setattr(cse.storage, "created_since", created_since)
    cse._changed_elsewhere(ChangedElsewhere(unknown=True))
    async with asyncio.timeout(10):
        await read_again.wait()
    assert cse.supervisor.failures["changes of other workers"] == 0

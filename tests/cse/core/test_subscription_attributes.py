"""<subscription> attributes the CSE fills in or acts on (TS-0001 9.6.8, TS-0004 7.4.8),
delivered over real loopback HTTP: defaults, notification statistics (nse/nsi), latestNotify
(ln), the event category (nec), the creator (cr), enc/atr and enc/chty, and the serialization
a target asks for."""

from __future__ import annotations

from typing import Any

import pytest

from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import NotificationReceiver, ae_body, create, delete, retrieve, update

AE = "Cmeter"
READS = "cse-in/meter/reads"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
    await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    return cse


async def _subscribe(cse: CommonServicesEntity, *nu: str, **attrs: Any) -> dict[str, Any]:
    body = {"m2m:sub": {"rn": attrs.pop("rn", "sub"), "nu": list(nu), **attrs}}
    response = await cse.handle(create(READS, 23, body, AE))
    assert response.status == RSC.CREATED, response.content
    return dict(response.content["m2m:sub"])


async def _sub(cse: CommonServicesEntity, name: str = "sub") -> dict[str, Any]:
    response = await cse.handle(retrieve(f"{READS}/{name}", AE))
    assert response.status == RSC.OK, response.content
    return dict(response.content["m2m:sub"])


async def _post(cse: CommonServicesEntity, con: str) -> None:
    response = await cse.handle(create(READS, 4, {"m2m:cin": {"con": con}}, AE))
    assert response.status == RSC.CREATED


def _contents(notification: dict[str, Any]) -> list[str]:
    body = notification["body"]
    signals = body["m2m:agn"]["m2m:sgn"] if "m2m:agn" in body else [body["m2m:sgn"]]
    return [s["nev"]["rep"]["m2m:cin"]["con"] for s in signals]


# ---- defaults ----------------------------------------------------------------------------


async def test_a_new_subscription_shows_its_default_event_and_content_types(
    meter: CommonServicesEntity,
) -> None:
    """TS-0001 9.6.8: enc defaults to net [1] (update of resource), nct to 1 (all
    attributes); both are shown on CREATE and RETRIEVE, as ACME shows them."""
    created = await _subscribe(meter, AE)
    assert created["enc"] == {"net": [1]} and created["nct"] == 1
    stored = await _sub(meter)
    assert stored["enc"] == {"net": [1]} and stored["nct"] == 1


async def test_criteria_without_an_event_type_get_the_default_one(
    meter: CommonServicesEntity,
) -> None:
    created = await _subscribe(meter, AE, enc={"atr": ["lbl"]})
    assert created["enc"] == {"atr": ["lbl"], "net": [1]}
    await meter.handle(update(f"{READS}/sub", {"m2m:sub": {"enc": {"atr": ["mni"]}}}, AE))
    assert (await _sub(meter))["enc"] == {"atr": ["mni"], "net": [1]}
    removed = {"m2m:sub": {"enc": None, "nct": None}}
    assert (await meter.handle(update(f"{READS}/sub", removed, AE))).status == RSC.UPDATED
    stored = await _sub(meter)
    assert stored["enc"] == {"net": [1]} and stored["nct"] == 1


async def test_batch_notify_without_a_duration_gets_the_default_one(
    meter: CommonServicesEntity,
) -> None:
    """ACME fills bn/dur from its configuration; a batch that never fills is still sent."""
    created = await _subscribe(meter, AE, enc={"net": [3]}, bn={"num": 5})
    assert created["bn"] == {"num": 5, "dur": "PT60S"}


async def test_a_deleted_subscription_sends_its_unfinished_batch_at_once(
    meter: CommonServicesEntity,
) -> None:
    """As ACME: deleting a batching subscription flushes what it held back, then the
    deletion notice follows, not batched (the clock stands still: no duration passes)."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, bn={"num": 10}, su=receiver.url)
        await _post(meter, "1")
        await _post(meter, "2")
        await meter.handle(delete(f"{READS}/sub", AE))
        received = await receiver.wait_for(3)
    assert _contents(received[1]) == ["1", "2"]
    assert received[2]["body"]["m2m:sgn"]["sud"] is True


# ---- notification statistics (nse / nsi) --------------------------------------------------


async def test_statistics_count_events_requests_and_answers_per_target(
    meter: CommonServicesEntity,
) -> None:
    """TS-0004 (notificationStatsInfo): per target the requests sent (rqs), the responses
    received (rsr) and the notification events (noec); nsi appears with the first count."""
    async with NotificationReceiver() as first, NotificationReceiver() as second:
        created = await _subscribe(meter, first.url, second.url, enc={"net": [3]}, nse=True)
        assert created["nse"] is True and "nsi" not in created
        await _post(meter, "1")
        await _post(meter, "2")
        await meter.notifier.wait_until(lambda: meter.notifier.delivered >= 4)
    stats = (await _sub(meter))["nsi"]
    assert stats == [
        {"tg": first.url, "rqs": 2, "rsr": 2, "noec": 2},
        {"tg": second.url, "rqs": 2, "rsr": 2, "noec": 2},
    ]


async def test_an_unanswered_notification_is_sent_but_not_answered(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, nse=True)
    await _post(meter, "lost")  # the receiver is gone
    await meter.notifier.wait_until(lambda: meter.notifier.failed_attempts >= 1)
    assert (await _sub(meter))["nsi"] == [{"tg": receiver.url, "rqs": 1, "rsr": 0, "noec": 1}]


async def test_statistics_stop_when_disabled_and_restart_when_enabled_again(
    meter: CommonServicesEntity,
) -> None:
    """ACME: nse false keeps nsi as it is; nse true again starts from nothing; removing nse
    removes nsi."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, nse=True)
        await _post(meter, "1")
        await meter.notifier.wait_until(lambda: meter.notifier.delivered >= 1)
        kept = await meter.handle(update(f"{READS}/sub", {"m2m:sub": {"nse": False}}, AE))
        await _post(meter, "2")
        await meter.notifier.wait_until(lambda: meter.notifier.delivered >= 2)
    expected = [{"tg": receiver.url, "rqs": 1, "rsr": 1, "noec": 1}]
    assert kept.content["m2m:sub"]["nsi"] == expected
    assert (await _sub(meter))["nsi"] == expected
    again = await meter.handle(update(f"{READS}/sub", {"m2m:sub": {"nse": True}}, AE))
    assert again.status == RSC.UPDATED and "nsi" not in again.content["m2m:sub"]
    gone = await meter.handle(update(f"{READS}/sub", {"m2m:sub": {"nse": None}}, AE))
    assert "nse" not in gone.content["m2m:sub"] and "nsi" not in gone.content["m2m:sub"]


async def test_a_removed_target_loses_its_statistics(meter: CommonServicesEntity) -> None:
    async with NotificationReceiver() as first, NotificationReceiver() as second:
        await _subscribe(meter, first.url, second.url, enc={"net": [3]}, nse=True)
        await _post(meter, "1")
        await meter.notifier.wait_until(lambda: meter.notifier.delivered >= 2)
        reply = await meter.handle(update(f"{READS}/sub", {"m2m:sub": {"nu": [second.url]}}, AE))
    assert reply.status == RSC.UPDATED, reply.content
    assert [entry["tg"] for entry in reply.content["m2m:sub"]["nsi"]] == [second.url]


async def test_statistics_are_written_by_the_cse_only(meter: CommonServicesEntity) -> None:
    body = {"m2m:sub": {"nu": [AE], "nsi": []}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.BAD_REQUEST
    await _subscribe(meter, AE)
    reply = await meter.handle(update(f"{READS}/sub", {"m2m:sub": {"nsi": []}}, AE))
    assert reply.status == RSC.BAD_REQUEST


# ---- latestNotify, event category, creator ---------------------------------------------------


async def test_latest_notify_sends_only_the_newest_of_a_batch_as_category_latest(
    meter: CommonServicesEntity,
) -> None:
    """TS-0001 9.6.8 latestNotify: of buffered notifications only the last is sent, with the
    event category 'latest' (4)."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, bn={"num": 3}, ln=True)
        for value in "abc":
            await _post(meter, value)
        received = await receiver.wait_for(2)
    assert _contents(received[1]) == ["c"]
    assert received[1]["headers"]["X-M2M-EC"] == "4"


async def test_the_event_category_asked_for_goes_with_every_notification(
    meter: CommonServicesEntity,
) -> None:
    """TS-0001 9.6.8 notificationEventCat: the Event Category of the notification requests."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [3]}, nec=2)
        await _post(meter, "x")
        received = await receiver.wait_for(2)
    assert received[1]["headers"]["X-M2M-EC"] == "2"


@pytest.mark.parametrize("category", [0, 1, 5, 99, 1000, "2"])
async def test_an_event_category_outside_the_standard_and_user_ranges_is_refused(
    meter: CommonServicesEntity, category: Any
) -> None:
    body = {"m2m:sub": {"nu": [AE], "nec": category}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.BAD_REQUEST


async def test_a_subscription_made_with_a_null_creator_names_it_in_every_notice(
    meter: CommonServicesEntity,
) -> None:
    """TS-0004 7.4.8: cr null makes the CSE set the creator; notifications and the deletion
    notice to su carry it (as ACME sends them)."""
    async with NotificationReceiver() as receiver, NotificationReceiver() as subscriber:
        created = await _subscribe(
            meter, receiver.url, enc={"net": [3]}, cr=None, su=subscriber.url
        )
        await _post(meter, "1")
        await meter.handle(delete(f"{READS}/sub", AE))
        received = await receiver.wait_for(2)
        (notice,) = await subscriber.wait_for(1)
    assert created["cr"] == AE
    assert received[1]["body"]["m2m:sgn"]["cr"] == AE
    assert notice["body"]["m2m:sgn"] == {
        "sud": True,
        "sur": f"/id-in/{created['ri']}",
        "cr": AE,
    }


async def test_the_verification_request_names_the_subscription_being_made(
    meter: CommonServicesEntity,
) -> None:
    """TS-0004 7.3.7 (and ACME): the verification request carries vrq, the new
    subscription's sur and the creator."""
    async with NotificationReceiver() as receiver:
        created = await _subscribe(meter, receiver.url)
        (verification,) = await receiver.wait_for(1)
    assert verification["body"]["m2m:sgn"] == {
        "vrq": True,
        "sur": f"/id-in/{created['ri']}",
        "cr": AE,
    }


async def test_a_target_added_by_update_is_verified_with_the_subscriptions_sur(
    meter: CommonServicesEntity,
) -> None:
    created = await _subscribe(meter, AE)
    async with NotificationReceiver() as receiver:
        body = {"m2m:sub": {"nu": [AE, receiver.url]}}
        assert (await meter.handle(update(f"{READS}/sub", body, AE))).status == RSC.UPDATED
        (verification,) = await receiver.wait_for(1)
    assert verification["body"]["m2m:sgn"]["sur"] == f"/id-in/{created['ri']}"


# ---- enc/atr and enc/chty ----------------------------------------------------------------


async def test_update_notifications_only_for_the_attributes_listed(
    meter: CommonServicesEntity,
) -> None:
    """TS-0001 9.6.8 eventNotificationCriteria attribute: an update is notified only if it
    changed one of the listed attributes. Notifications to one target keep their order, so
    the one for mni would have come before the one for lbl."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url, enc={"net": [1], "atr": ["lbl"]})
        await meter.handle(update(READS, {"m2m:cnt": {"mni": 5}}, AE))
        await meter.handle(update(READS, {"m2m:cnt": {"lbl": ["x"]}}, AE))
        received = await receiver.wait_for(2)
        await meter.notifier.wait_until(lambda: meter.notifier.pending_count() == 0)
    assert len(received) == 2
    assert received[1]["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cnt"]["lbl"] == ["x"]


@pytest.mark.parametrize("criteria", [{"atr": "lbl"}, {"atr": [1]}])
async def test_a_malformed_attribute_list_is_refused(
    meter: CommonServicesEntity, criteria: dict[str, Any]
) -> None:
    body = {"m2m:sub": {"nu": [AE], "enc": criteria}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.BAD_REQUEST


async def test_child_types_the_resource_cannot_hold_are_refused(
    meter: CommonServicesEntity,
) -> None:
    """ACME: every enc/chty type must be a child type the subscribed resource allows."""
    body = {"m2m:sub": {"nu": [AE], "enc": {"net": [3], "chty": [2]}}}
    assert (await meter.handle(create(READS, 23, body, AE))).status == RSC.BAD_REQUEST
    await _subscribe(meter, AE, enc={"net": [3], "chty": [4]})
    change = {"m2m:sub": {"enc": {"net": [3], "chty": [2]}}}
    assert (await meter.handle(update(f"{READS}/sub", change, AE))).status == RSC.BAD_REQUEST


# ---- serialization a target asks for -----------------------------------------------------


@pytest.mark.parametrize(("suffix", "media"), [("?ct=cbor", "cbor"), ("?ct=json", "json")])
async def test_a_target_url_picks_the_serialization_of_its_notifications(
    meter: CommonServicesEntity, suffix: str, media: str
) -> None:
    """`ct` in a notification URL names the serialization (as ACME reads it); it is the
    sender's, not sent on to the target."""
    async with NotificationReceiver() as receiver:
        await _subscribe(meter, receiver.url + suffix, enc={"net": [3]})
        await _post(meter, "42")
        verification, notification = await receiver.wait_for(2)
    for sent in (verification, notification):
        assert sent["headers"]["Content-Type"] == f"application/{media}"
    assert verification["body"]["m2m:sgn"]["vrq"] is True
    assert _contents(notification) == ["42"]


async def test_an_ae_that_prefers_cbor_is_notified_in_cbor(cse: CommonServicesEntity) -> None:
    """TS-0001 9.6.5 contentSerialization: the AE's preferred serialization is used for a
    point of access that names none."""
    async with NotificationReceiver() as receiver:
        ae = ae_body("app", poa=[receiver.url], csz=["application/cbor", "application/json"])
        await cse.handle(create("cse-in", 2, ae, "Capp"))
        await cse.handle(create("cse-in/app", 3, {"m2m:cnt": {"rn": "cmd"}}, "Capp"))
        body = {"m2m:sub": {"nu": ["Capp"], "enc": {"net": [3]}}}
        assert (await cse.handle(create("cse-in/app/cmd", 23, body, "Capp"))).status == 2001
        await cse.handle(create("cse-in/app/cmd", 4, {"m2m:cin": {"con": "go"}}, "Capp"))
        (notification,) = await receiver.wait_for(1)
    assert notification["headers"]["Content-Type"] == "application/cbor"
    assert _contents(notification) == ["go"]


async def test_a_serialization_the_cse_cannot_send_fails_the_subscription(
    meter: CommonServicesEntity,
) -> None:
    async with NotificationReceiver() as receiver:
        body = {"m2m:sub": {"nu": [receiver.url + "?ct=xml"]}}
        response = await meter.handle(create(READS, 23, body, AE))
    assert response.status == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
    assert receiver.received == []

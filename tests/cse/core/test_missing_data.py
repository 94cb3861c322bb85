"""Missing data detection of <timeSeries> (TS-0001 9.6.36 and 10.2.4.x) and its notification
(event type 8, reportOnGeneratedMissingDataPoints, with enc.md; TS-0004 missingData, m2m:tsn).

The clock is moved by hand; the periodic check is `cse.missing_data.check()`.
A series here expects a point every minute (pei 60 s), accepts it 30 s early or late (peid,
half of pei) and judges it 45 s after its expected time (mdt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cse.core.clock import ManualClock, format_timestamp
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.sqlite import SQLiteStorage
from tests.helpers import NotificationReceiver, ae_body, create, delete, retrieve, update

AE = "Cmeter"
TS = "cse-in/meter/series"
DETECTING = {"pei": 60_000, "mdt": 45_000, "mdd": True}


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    return cse


async def make_series(cse: CommonServicesEntity, **attrs: Any) -> None:
    body = {"m2m:ts": {"rn": "series", **DETECTING, **attrs}}
    response = await cse.handle(create("cse-in/meter", 29, body, AE))
    assert response.status == RSC.CREATED, response.content


async def add(cse: CommonServicesEntity, moment: float) -> None:
    body = {"m2m:tsi": {"dgt": format_timestamp(moment), "con": "1"}}
    response = await cse.handle(create(TS, 30, body, AE))
    assert response.status == RSC.CREATED, response.content


async def series(cse: CommonServicesEntity) -> dict[str, Any]:
    return dict((await cse.handle(retrieve(TS, AE))).content["m2m:ts"])


def points(start: float, *minutes: int) -> list[str]:
    return [format_timestamp(start + 60 * minute) for minute in minutes]


async def test_a_point_that_has_not_arrived_by_its_deadline_is_missing(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter)
    await add(meter, start)  # the first instance starts detection
    clock.advance(104)
    assert await meter.missing_data.check() == 0
    assert (await series(meter))["mdc"] == 0
    clock.advance(1)  # the next point was due at +60 and judged at +60 +45
    assert await meter.missing_data.check() == 1
    ts = await series(meter)
    assert (ts["mdlt"], ts["mdc"]) == (points(start, 1), 1)


async def test_an_instance_within_the_interval_delta_is_the_expected_point(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter)
    await add(meter, start)
    clock.advance(60)
    await add(meter, start + 60 + 29)  # 29 s late: within peid
    clock.advance(300)
    await add(meter, start + 360)  # on time, after the 2nd to 5th were missed
    clock.advance(60)
    await meter.missing_data.check()
    assert (await series(meter))["mdlt"] == points(start, 2, 3, 4, 5)


async def test_an_instance_generated_too_far_from_its_time_leaves_it_missing(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter)
    await add(meter, start)
    clock.advance(60)
    await add(meter, start + 60 + 31)  # beyond peid: it counts for the point at +120
    clock.advance(105)
    assert await meter.missing_data.check() == 1
    assert (await series(meter))["mdlt"] == points(start, 1)


async def test_points_past_their_deadline_are_judged_when_the_next_instance_arrives(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter)
    await add(meter, start)
    clock.advance(130)  # +60 is overdue; nothing has checked yet
    await add(meter, start + 120)
    ts = await series(meter)
    assert (ts["mdlt"], ts["mdc"]) == (points(start, 1), 1)


async def test_the_missing_data_list_keeps_the_newest_mdn_points(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter, mdn=3)
    await add(meter, start)
    clock.advance(5 * 60 + 45)
    assert await meter.missing_data.check() == 5
    ts = await series(meter)
    assert (ts["mdlt"], ts["mdc"]) == (points(start, 3, 4, 5), 3)


async def test_old_data_does_not_start_detection(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    await add(meter, clock.now() - 3600)
    clock.advance(3600)
    assert await meter.missing_data.check() == 0
    assert (await series(meter))["mdc"] == 0


async def test_switching_detection_off_keeps_the_list_and_on_again_clears_it(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter)
    await add(meter, start)
    clock.advance(105)
    await meter.missing_data.check()
    off = await meter.handle(update(TS, {"m2m:ts": {"mdd": False}}, AE))
    assert (off.content["m2m:ts"]["mdlt"], off.content["m2m:ts"]["mdc"]) == (points(start, 1), 1)
    clock.advance(600)
    assert await meter.missing_data.check() == 0  # off: nothing is judged
    on = (await meter.handle(update(TS, {"m2m:ts": {"mdd": True}}, AE))).content["m2m:ts"]
    assert (on["mdc"], "mdlt" in on) == (0, False)
    clock.advance(600)
    assert await meter.missing_data.check() == 0  # waits for the next instance
    restart = clock.now()
    await add(meter, restart)
    clock.advance(105)
    assert await meter.missing_data.check() == 1
    assert (await series(meter))["mdlt"] == points(restart, 1)


async def test_a_deleted_time_series_is_no_longer_watched(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    await add(meter, clock.now())
    assert (await meter.handle(delete(TS, AE))).status == RSC.DELETED
    clock.advance(3600)
    assert await meter.missing_data.check() == 0


async def test_points_due_while_the_cse_was_down_are_found_after_a_restart(
    clock: ManualClock, tmp_path: Path
) -> None:
    settings = CSESettings(expiry_check_interval=3600)
    start = clock.now()
    async with CommonServicesEntity(
        SQLiteStorage(tmp_path / "cse.db"), settings, clock=clock
    ) as cse:
        await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
        await make_series(cse)
        await add(cse, start)
        await add(cse, start + 60)
    clock.advance(60 + 3 * 60 + 45)  # down while the points at +120, +180 and +240 were due
    async with CommonServicesEntity(
        SQLiteStorage(tmp_path / "cse.db"), settings, clock=clock
    ) as cse:
        await cse.missing_data.resume()
        await cse.missing_data.check()
        assert (await series(cse))["mdlt"] == points(start, 2, 3, 4)


# ---- notification of missing data points (event type 8, enc.md) ----------------------------


async def _subscribe(cse: CommonServicesEntity, url: str, **enc: Any) -> Any:
    body = {"m2m:sub": {"rn": "gaps", "nu": [url], "enc": enc}}
    return await cse.handle(create(TS, 23, body, AE))


async def _delivered(cse: CommonServicesEntity) -> None:
    await cse.notifier.wait_until(lambda: cse.notifier.pending_count() == 0)


async def test_a_subscriber_hears_once_num_points_are_missing(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    start = clock.now()
    await make_series(meter)
    async with NotificationReceiver() as receiver:
        made = await _subscribe(meter, receiver.url, net=[8], md={"num": 2, "dur": "PT1H"})
        assert made.status == RSC.CREATED, made.content
        await add(meter, start)
        clock.advance(105)
        assert await meter.missing_data.check() == 1
        await _delivered(meter)
        assert len(receiver.received) == 1  # the verification request only
        clock.advance(60)
        assert await meter.missing_data.check() == 1
        received = await receiver.wait_for(2)
    sgn = received[1]["body"]["m2m:sgn"]
    assert sgn["nev"]["net"] == 8
    assert sgn["nev"]["rep"] == {"m2m:tsn": {"mdlt": points(start, 1, 2), "mdc": 2}}
    assert sgn["sur"] == f"/id-in/{made.content['m2m:sub']['ri']}"


async def test_points_spread_wider_than_the_window_are_not_reported(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    async with NotificationReceiver() as receiver:
        made = await _subscribe(meter, receiver.url, net=[8], md={"num": 2, "dur": "PT30S"})
        assert made.status == RSC.CREATED
        await add(meter, clock.now())
        for _ in range(4):  # a point missing every minute; the window is 30 s
            clock.advance(60)
            await meter.missing_data.check()
        await _delivered(meter)
    assert len(receiver.received) == 1  # the verification request only
    assert (await series(meter))["mdc"] == 3


@pytest.mark.parametrize(
    ("enc", "nct"),
    [
        ({"net": [8]}, None),  # md is needed
        ({"net": [8], "md": {"num": 2}}, None),  # and its dur
        ({"net": [8], "md": {"num": 0, "dur": "PT1M"}}, None),
        ({"net": [8, 3], "md": {"num": 2, "dur": "PT1M"}}, None),
        ({"net": [8], "md": {"num": 2, "dur": "PT1M"}}, 1),
        ({"net": [3]}, 5),  # a time series notification reports event type 8 only
    ],
)
async def test_missing_data_criteria_are_checked(
    meter: CommonServicesEntity, enc: dict[str, Any], nct: int | None
) -> None:
    await make_series(meter)
    body: dict[str, Any] = {"nu": [AE], "enc": enc}
    if nct is not None:
        body["nct"] = nct
    response = await meter.handle(create(TS, 23, {"m2m:sub": body}, AE))
    assert response.status == RSC.BAD_REQUEST


async def test_only_a_time_series_reports_missing_data(meter: CommonServicesEntity) -> None:
    await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "box"}}, AE))
    enc = {"net": [8], "md": {"num": 1, "dur": "PT1M"}}
    body = {"m2m:sub": {"nu": [AE], "enc": enc}}
    response = await meter.handle(create("cse-in/meter/box", 23, body, AE))
    assert response.status == RSC.BAD_REQUEST

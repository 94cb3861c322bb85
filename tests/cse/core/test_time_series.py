"""<timeSeries> and <timeSeriesInstance>: attribute policy, instances, retention, `la`/`ol`.

Missing data detection and its notifications are in test_missing_data.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from cse.core.clock import ManualClock, format_timestamp
from cse.core.config import CSELimits, CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import ae_body, create, delete, retrieve, update

AE = "Cmeter"
TS = "cse-in/meter/series"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    return cse


async def make_series(cse: CommonServicesEntity, **attrs: Any) -> dict[str, Any]:
    response = await cse.handle(
        create("cse-in/meter", 29, {"m2m:ts": {"rn": "series", **attrs}}, AE)
    )
    assert response.status == RSC.CREATED, response.content
    return dict(response.content["m2m:ts"])


async def add(cse: CommonServicesEntity, dgt: str, con: Any = "1", **attrs: Any) -> Any:
    return await cse.handle(create(TS, 30, {"m2m:tsi": {"dgt": dgt, "con": con, **attrs}}, AE))


def at(clock: ManualClock, seconds: float = 0.0) -> str:
    return format_timestamp(clock.now() + seconds)


async def series(cse: CommonServicesEntity) -> dict[str, Any]:
    return dict((await cse.handle(retrieve(TS, AE))).content["m2m:ts"])


# ---- TS-0001 9.6.36: the timeSeries' own attributes ---------------------------------------


async def test_a_new_time_series_counts_nothing_and_detects_nothing(
    meter: CommonServicesEntity,
) -> None:
    made = await make_series(meter)
    assert (made["cni"], made["cbs"], made["mdc"], made["mdd"]) == (0, 0, 0, False)
    assert "mdlt" not in made


@pytest.mark.parametrize("name", ["cni", "cbs", "mdc", "mdlt"])
async def test_attributes_the_cse_keeps_cannot_be_sent(
    meter: CommonServicesEntity, name: str
) -> None:
    body = {"m2m:ts": {name: [] if name == "mdlt" else 1}}
    assert (await meter.handle(create("cse-in/meter", 29, body, AE))).status == RSC.BAD_REQUEST


async def test_the_interval_delta_defaults_to_half_the_interval(
    meter: CommonServicesEntity,
) -> None:
    assert (await make_series(meter, pei=60_000))["peid"] == 30_000


async def test_the_interval_delta_defaults_to_half_a_shorter_detect_timer(
    meter: CommonServicesEntity,
) -> None:
    made = await make_series(meter, pei=60_000, mdt=20_000, mdd=True)
    assert made["peid"] == 10_000


@pytest.mark.parametrize(
    "attrs",
    [
        {"pei": 60_000, "peid": 30_001},  # peid above pei/2
        {"pei": 60_000, "mdd": True},  # mdd true without mdt
        {"pei": 60_000, "peid": 20_000, "mdt": 20_000, "mdd": True},  # mdt not above peid
        {"pei": 0},  # pei is a positive integer
        {"mdn": 0},
        {"cnf": "not a content info"},
    ],
)
async def test_inconsistent_detection_parameters_are_refused(
    meter: CommonServicesEntity, attrs: dict[str, Any]
) -> None:
    body = {"m2m:ts": {"rn": "series", **attrs}}
    assert (await meter.handle(create("cse-in/meter", 29, body, AE))).status == RSC.BAD_REQUEST


async def test_detection_parameters_are_fixed_while_detection_is_on(
    meter: CommonServicesEntity,
) -> None:
    await make_series(meter, pei=60_000, mdt=45_000, mdd=True)
    for change in ({"pei": 30_000}, {"mdn": 4}, {"mdd": False, "mdt": 50_000}):
        response = await meter.handle(update(TS, {"m2m:ts": change}, AE))
        assert response.status == RSC.BAD_REQUEST, change
    assert (await meter.handle(update(TS, {"m2m:ts": {"mdd": False}}, AE))).status == RSC.UPDATED
    changed = await meter.handle(update(TS, {"m2m:ts": {"pei": 30_000}}, AE))
    assert changed.status == RSC.UPDATED
    assert changed.content["m2m:ts"]["peid"] == 15_000  # given again for the new interval


async def test_a_time_series_is_allowed_under_an_ae_a_container_and_the_cse_base(
    meter: CommonServicesEntity,
) -> None:
    await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "box"}}, AE))
    for parent in ("cse-in/meter", "cse-in/meter/box"):
        made = await meter.handle(create(parent, 29, {"m2m:ts": {}}, AE))
        assert made.status == RSC.CREATED
    assert (await meter.handle(create("cse-in", 29, {"m2m:ts": {}}))).status == RSC.CREATED


# ---- TS-0001 9.6.37: timeSeriesInstance ---------------------------------------------------


async def test_an_instance_records_its_generation_time_size_and_sequence_number(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    made = await add(meter, at(clock).replace(",", "."), con="héllo", snr=7)
    assert made.status == RSC.CREATED, made.content
    tsi = made.content["m2m:tsi"]
    assert (tsi["dgt"], tsi["cs"], tsi["snr"], tsi["ty"]) == (at(clock), 6, 7, 30)
    assert (await series(meter))["cni"] == 1


@pytest.mark.parametrize("body", [{"con": "1"}, {"dgt": "20260101T000000"}, {"dgt": "noon"}])
async def test_an_instance_needs_a_generation_time_and_content(
    meter: CommonServicesEntity, body: dict[str, Any]
) -> None:
    await make_series(meter)
    response = await meter.handle(create(TS, 30, {"m2m:tsi": body}, AE))
    assert response.status == RSC.BAD_REQUEST


async def test_a_second_instance_of_the_same_generation_time_is_a_conflict(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    assert (await add(meter, at(clock), "first")).status == RSC.CREATED
    # The same moment written another way is the same dgt.
    again = await add(meter, at(clock).split(",")[0] + "Z", "second")
    assert again.status == RSC.CONFLICT
    assert (await series(meter))["cni"] == 1


async def test_an_instance_is_immutable(meter: CommonServicesEntity, clock: ManualClock) -> None:
    await make_series(meter)
    tsi = (await add(meter, at(clock))).content["m2m:tsi"]
    response = await meter.handle(update(tsi["ri"], {"m2m:tsi": {"con": "2"}}, AE))
    assert response.status == RSC.OPERATION_NOT_ALLOWED


async def test_instances_belong_in_a_time_series_only(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "box"}}, AE))
    body = {"m2m:tsi": {"dgt": at(clock), "con": "1"}}
    response = await meter.handle(create("cse-in/meter/box", 30, body, AE))
    assert response.status == RSC.INVALID_CHILD_RESOURCE_TYPE
    await make_series(meter)
    cin = await meter.handle(create(TS, 4, {"m2m:cin": {"con": "1"}}, AE))
    assert cin.status == RSC.INVALID_CHILD_RESOURCE_TYPE


# ---- retention, as for a container (TS-0001 9.6.36; TS-0004 7.3.3.x) -----------------------


async def test_max_number_of_instances_evicts_the_oldest(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter, mni=3)
    made = [(await add(meter, at(clock, i), str(i))).content["m2m:tsi"] for i in range(5)]
    ts = await series(meter)
    assert (ts["cni"], ts["cbs"]) == (3, 3)
    oldest = (await meter.handle(retrieve(f"{TS}/ol", AE))).content["m2m:tsi"]
    latest = (await meter.handle(retrieve(f"{TS}/la", AE))).content["m2m:tsi"]
    assert (oldest["ri"], latest["ri"]) == (made[2]["ri"], made[4]["ri"])
    assert (await meter.handle(retrieve(made[0]["ri"], AE))).status == RSC.NOT_FOUND


async def test_max_byte_size_evicts_and_refuses_what_can_never_fit(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter, mbs=10)
    for i, con in enumerate(("aaaa", "bbbb", "cccc")):
        assert (await add(meter, at(clock, i), con)).status == RSC.CREATED
    ts = await series(meter)
    assert (ts["cni"], ts["cbs"]) == (2, 8)
    assert (await add(meter, at(clock, 9), "x" * 11)).status == RSC.NOT_ACCEPTABLE


async def test_lowering_mni_evicts_and_deleting_an_instance_recounts(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    for i in range(4):
        await add(meter, at(clock, i), str(i) * (i + 1))
    lowered = await meter.handle(update(TS, {"m2m:ts": {"mni": 2}}, AE))
    assert (lowered.content["m2m:ts"]["cni"], lowered.content["m2m:ts"]["cbs"]) == (2, 7)
    assert (await meter.handle(delete(f"{TS}/la", AE))).status == RSC.DELETED
    ts = await series(meter)
    assert (ts["cni"], ts["cbs"]) == (1, 3)


async def test_max_instance_age_caps_an_instances_lifetime(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter, mia=60)
    tsi = (await add(meter, at(clock))).content["m2m:tsi"]
    assert tsi["et"] == at(clock, 60)
    clock.advance(61)
    assert await meter.expiry.sweep() == 1
    assert (await series(meter))["cni"] == 0


async def test_latest_and_oldest_of_an_empty_time_series_do_not_exist(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await make_series(meter)
    assert (await meter.handle(retrieve(f"{TS}/la", AE))).status == RSC.NOT_FOUND
    await add(meter, at(clock))
    changed = await meter.handle(update(f"{TS}/la", {"m2m:tsi": {"con": "2"}}, AE))
    assert changed.status == RSC.OPERATION_NOT_ALLOWED


async def test_instances_are_bounded_by_mni_not_by_the_ae_resource_quota(
    clock: ManualClock,
) -> None:
    limits = CSELimits(max_resources_per_ae=2)
    async with CommonServicesEntity(
        MemoryStorage(), CSESettings(limits=limits), clock=clock
    ) as cse:
        await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
        await make_series(cse, mni=3)
        for i in range(5):
            assert (await add(cse, at(clock, i))).status == RSC.CREATED
        assert (await series(cse))["cni"] == 3
        other = await cse.handle(create("cse-in/meter", 29, {"m2m:ts": {}}, AE))
        assert other.status == RSC.CREATED  # the AE's second resource
        third = await cse.handle(create("cse-in/meter", 29, {"m2m:ts": {}}, AE))
        assert third.status == RSC.NOT_ACCEPTABLE

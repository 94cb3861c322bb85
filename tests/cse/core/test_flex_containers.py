"""<flexContainer> (TS-0001 9.6.35) with the TS-0023 smart-meter model classes.

Where TS-0001/TS-0023 leave room (a cardinality-1 data point left out of a CREATE, how many
bytes a number counts in `cs`) the tests hold what ACME answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.sqlite import SQLiteStorage
from tests.helpers import LAB, NotificationReceiver, ae_body, create, delete, retrieve, update

AE = "Cmeter"
CONSUMPTION = "org.onem2m.common.moduleclass.energyConsumption"
GENERATION = "org.onem2m.common.moduleclass.energyGeneration"
SWITCH = "org.onem2m.common.moduleclass.binarySwitch"
METER = "org.onem2m.city.device.deviceSmartElectricMeter"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    return cse


async def _flex(
    cse: CommonServicesEntity, key: str, to: str = "cse-in/meter", **attrs: Any
) -> dict[str, Any]:
    response = await cse.handle(create(to, 28, {key: attrs}, AE))
    assert response.status == RSC.CREATED, response.content
    return dict(response.content[key])


async def _refused(cse: CommonServicesEntity, body: dict[str, Any], ty: int = 28) -> str:
    response = await cse.handle(create("cse-in/meter", ty, body, AE))
    assert response.status == RSC.BAD_REQUEST, response.content
    return str(response.content["m2m:dbg"])


async def test_a_module_class_keeps_its_data_points_with_state_tag_and_content_size(
    meter: CommonServicesEntity,
) -> None:
    made = await _flex(
        meter, "cod:eneCn", rn="consumption", cnd=CONSUMPTION, abECn=12.5, power=100, volte=230.4
    )
    assert made["ty"] == 28 and made["cnd"] == CONSUMPTION
    assert (made["abECn"], made["power"], made["volte"]) == (12.5, 100, 230.4)
    # cs counts the custom attributes only: a decimal 8 bytes, an integer 4 (as ACME: 20).
    assert (made["st"], made["cs"]) == (0, 8 + 4 + 8)
    stored = await meter.handle(retrieve("cse-in/meter/consumption", AE))
    assert stored.content == {"cod:eneCn": made}


async def test_container_definition_is_mandatory(meter: CommonServicesEntity) -> None:
    # TS-0001 9.6.35: containerDefinition is mandatory on CREATE.
    message = await _refused(meter, {"cod:eneCn": {"abECn": 1.0}})
    assert "cnd" in message


async def test_container_definition_must_name_the_specialization_of_the_wrapper(
    meter: CommonServicesEntity,
) -> None:
    for other in (GENERATION, "org.example.anything"):
        message = await _refused(meter, {"cod:eneCn": {"cnd": other, "abECn": 1.0}})
        assert f"cnd {CONSUMPTION}" in message


@pytest.mark.parametrize("key", ["m2m:fcnt", "cod:nope", "m2m:cnt", "eneCn"])
async def test_only_a_known_specialization_is_created(
    meter: CommonServicesEntity, key: str
) -> None:
    # The specialization is picked by the wrapper key; the generic one is not a model.
    message = await _refused(meter, {key: {"cnd": CONSUMPTION}})
    assert key in message


async def test_a_wrapper_key_picks_a_specialization_of_the_requested_type_only(
    meter: CommonServicesEntity,
) -> None:
    await _refused(meter, {"cod:eneCn": {"rn": "x", "cnd": CONSUMPTION}}, ty=3)
    made = await _flex(meter, "cod:eneCn", rn="x", cnd=CONSUMPTION)
    assert made["ty"] == 28


@pytest.mark.parametrize(
    "attrs",
    [
        {"foo": 1},  # not in the model
        {"genSe": "solar"},  # energyGeneration's, not energyConsumption's
        {"abECn": "12.5"},  # float as text
        {"abECn": True},  # a boolean is not a number
        {"roECn": 5.5},  # integer
        {"roECn": True},
        {"meaSe": 5},  # string
        {"dgt": "yesterday"},  # timestamp
        {"cs": 3},  # the CSE's own
        {"st": 1},
        {"cni": 1},
        {"fcied": True},  # Release 5 flexContainerInstances: not kept here
    ],
)
async def test_attributes_outside_the_model_or_of_the_wrong_type_are_refused(
    meter: CommonServicesEntity, attrs: dict[str, Any]
) -> None:
    message = await _refused(meter, {"cod:eneCn": {"cnd": CONSUMPTION, **attrs}})
    assert next(iter(attrs)) in message


async def test_an_integer_is_a_number(meter: CommonServicesEntity) -> None:
    made = await _flex(meter, "cod:eneCn", cnd=CONSUMPTION, abECn=5, dgt="20250101T000000")
    assert made["abECn"] == 5 and made["cs"] == 4 + len("20250101T000000")


async def test_a_mandatory_data_point_may_come_later(meter: CommonServicesEntity) -> None:
    # Cardinality 1 in the model: ACME (and so this CSE) accepts a CREATE without it.
    made = await _flex(meter, "cod:eneCn", rn="empty", cnd=CONSUMPTION)
    assert "abECn" not in made and made["cs"] == 0


@pytest.mark.parametrize("name", ["mni", "mbs", "mia"])
async def test_instance_limits_are_refused_as_no_instances_are_kept(
    meter: CommonServicesEntity, name: str
) -> None:
    await _refused(meter, {"cod:eneCn": {"cnd": CONSUMPTION, name: 3}})
    await _flex(meter, "cod:eneCn", rn="c", cnd=CONSUMPTION)
    response = await meter.handle(update("cse-in/meter/c", {"cod:eneCn": {name: 3}}, AE))
    assert response.status == RSC.BAD_REQUEST


async def test_update_changes_data_points_counts_a_state_and_resizes(
    meter: CommonServicesEntity,
) -> None:
    await _flex(meter, "cod:eneCn", rn="c", cnd=CONSUMPTION, abECn=12.5, power=100, volte=230.4)
    body = {"cod:eneCn": {"abECn": 13.5, "volte": None, "currt": 1.5}}
    response = await meter.handle(update("cse-in/meter/c", body, AE))
    assert response.status == RSC.UPDATED, response.content
    updated = response.content["cod:eneCn"]
    assert (updated["abECn"], updated["currt"]) == (13.5, 1.5) and "volte" not in updated
    assert (updated["st"], updated["cs"]) == (1, 8 + 4 + 8)
    labelled = await meter.handle(update("cse-in/meter/c", {"cod:eneCn": {"lbl": ["x"]}}, AE))
    assert labelled.content["cod:eneCn"]["st"] == 2


@pytest.mark.parametrize(
    "body",
    [
        {"cod:eneCn": {"abECn": None}},  # cardinality 1: may not be removed
        {"cod:eneCn": {"cnd": CONSUMPTION}},  # fixed at creation
        {"cod:eneCn": {"power": "a lot"}},
        {"cod:eneCn": {"foo": 1}},
        {"cod:eneGn": {"roEGn": 1}},  # the resource is an energyConsumption
        {"m2m:fcnt": {"lbl": ["x"]}},
    ],
)
async def test_updates_outside_the_model_are_refused(
    meter: CommonServicesEntity, body: dict[str, Any]
) -> None:
    await _flex(meter, "cod:eneCn", rn="c", cnd=CONSUMPTION, abECn=12.5)
    response = await meter.handle(update("cse-in/meter/c", body, AE))
    assert response.status == RSC.BAD_REQUEST, response.content
    kept = (await meter.handle(retrieve("cse-in/meter/c", AE))).content["cod:eneCn"]
    assert (kept["abECn"], kept["st"]) == (12.5, 0)


async def test_an_update_of_data_points_notifies_subscribers(meter: CommonServicesEntity) -> None:
    # TS-0001 9.6.35: flexContainer is subscribable; net 1 with nct 2 carries what changed,
    # under the specialization's wrapper key.
    await _flex(meter, "cod:binSh", rn="switch", cnd=SWITCH, state=True)
    async with NotificationReceiver() as receiver:
        body = {"m2m:sub": {"rn": "s", "nu": [receiver.url], "nct": 2}}
        created = await meter.handle(create("cse-in/meter/switch", 23, body, AE))
        assert created.status == RSC.CREATED, created.content
        changed = await meter.handle(
            update("cse-in/meter/switch", {"cod:binSh": {"state": False}}, AE)
        )
        assert changed.status == RSC.UPDATED
        received = await receiver.wait_for(2)
    representation = received[1]["body"]["m2m:sgn"]["nev"]["rep"]
    assert representation["cod:binSh"]["state"] is False
    assert representation["cod:binSh"]["st"] == 1


async def test_a_smart_meter_device_holds_its_module_classes(meter: CommonServicesEntity) -> None:
    await _flex(meter, "cid:dSEMr", rn="device", cnd=METER)
    under = "cse-in/meter/device"
    await _flex(meter, "cod:eneCn", to=under, rn="consumption", cnd=CONSUMPTION, abECn=1.0)
    await _flex(meter, "cod:eneGn", to=under, rn="generation", cnd=GENERATION, genSe="solar")
    await _flex(meter, "cod:binSh", to=under, rn="switch", cnd=SWITCH, state=True)
    container = await meter.handle(create(under, 3, {"m2m:cnt": {"rn": "log"}}, AE))
    assert container.status == RSC.CREATED
    instance = await meter.handle(create(under, 4, {"m2m:cin": {"con": "x"}}, AE))
    assert instance.status == RSC.INVALID_CHILD_RESOURCE_TYPE

    nested = (await meter.handle(retrieve(under, AE, rcn=4))).content["cid:dSEMr"]
    assert [c["rn"] for c in nested["cod:eneCn"]] == ["consumption"]
    assert [c["rn"] for c in nested["cod:eneGn"]] == ["generation"]
    assert [c["state"] for c in nested["cod:binSh"]] == [True]
    assert [c["rn"] for c in nested["m2m:cnt"]] == ["log"]


async def test_child_references_name_the_specialization(meter: CommonServicesEntity) -> None:
    # TS-0004 childResourceRef: spty, the flexContainer's containerDefinition.
    await _flex(meter, "cod:eneCn", rn="consumption", cnd=CONSUMPTION)
    await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    references = (await meter.handle(retrieve("cse-in/meter", AE, rcn=6))).content["m2m:rrl"]
    by_name = {ref["nm"]: ref for ref in references["rrf"]}
    assert by_name["consumption"] == {
        "nm": "consumption",
        "typ": 28,
        "val": "cse-in/meter/consumption",
        "spty": CONSUMPTION,
    }
    assert "spty" not in by_name["reads"]


async def test_discovery_by_container_definition(meter: CommonServicesEntity) -> None:
    await _flex(meter, "cid:dSEMr", rn="device", cnd=METER)
    await _flex(meter, "cod:eneCn", to="cse-in/meter/device", rn="in", cnd=CONSUMPTION)
    await _flex(meter, "cod:eneGn", to="cse-in/meter/device", rn="out", cnd=GENERATION)
    await _flex(meter, "cod:eneCn", rn="spare", cnd=CONSUMPTION)

    async def discover(**conditions: Any) -> list[str]:
        criteria = FilterCriteria(filter_usage=1, **conditions)
        found = await meter.handle(retrieve("cse-in", AE, fc=criteria))
        return sorted(found.content["m2m:uril"])

    assert await discover(attributes=(("cnd", CONSUMPTION),)) == [
        "cse-in/meter/device/in",
        "cse-in/meter/spare",
    ]
    assert len(await discover(resource_types=(28,))) == 4


async def test_partial_retrieve_of_data_points(meter: CommonServicesEntity) -> None:
    await _flex(meter, "cod:eneCn", rn="c", cnd=CONSUMPTION, abECn=12.5, volte=230.4)
    got = await meter.handle(retrieve("cse-in/meter/c", AE, attribute_list=("abECn", "volte")))
    assert got.content == {"cod:eneCn": {"abECn": 12.5, "volte": 230.4}}
    unknown = await meter.handle(retrieve("cse-in/meter/c", AE, attribute_list=("genSe",)))
    assert unknown.status == RSC.BAD_REQUEST
    # No instances are kept, so a flexContainer has no latest or oldest.
    for virtual in ("la", "ol"):
        assert (await meter.handle(retrieve(f"cse-in/meter/c/{virtual}", AE))).status == 4004


async def test_delete_removes_the_device_with_its_module_classes(
    meter: CommonServicesEntity,
) -> None:
    await _flex(meter, "cid:dSEMr", rn="device", cnd=METER)
    inner = await _flex(meter, "cod:eneCn", to="cse-in/meter/device", cnd=CONSUMPTION)
    assert (await meter.handle(delete("cse-in/meter/device", AE))).status == RSC.DELETED
    assert (await meter.handle(retrieve(inner["ri"], AE))).status == RSC.NOT_FOUND


async def test_the_cse_base_lists_flexcontainer_as_supported(meter: CommonServicesEntity) -> None:
    base = (await meter.handle(retrieve("cse-in", AE))).content["m2m:cb"]
    assert 28 in base["srt"]


async def test_a_stored_flexcontainer_keeps_its_specialization_across_a_restart(
    tmp_path: Path, clock: ManualClock
) -> None:
    # Only the wire attributes are stored: the specialization is found again by its cnd.
    settings = CSESettings(egress=LAB)
    async with CommonServicesEntity(
        SQLiteStorage(tmp_path / "cse.db"), settings, clock=clock
    ) as cse:
        await cse.handle(create("cse-in", 2, ae_body("meter"), AE))
        await _flex(cse, "cod:eneGn", rn="generation", cnd=GENERATION, genSe="solar")
    async with CommonServicesEntity(
        SQLiteStorage(tmp_path / "cse.db"), settings, clock=clock
    ) as cse:
        again = await cse.handle(retrieve("cse-in/meter/generation", AE))
        assert again.content["cod:eneGn"]["genSe"] == "solar"
        changed = await cse.handle(
            update("cse-in/meter/generation", {"cod:eneGn": {"genSe": None}}, AE)
        )
        assert changed.status == RSC.BAD_REQUEST

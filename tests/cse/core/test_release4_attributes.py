"""Attributes whose rules TS-0001 sets (several from Release 4), checked as ACME applies them:
CSEBase `ctm`, AE `csz`, the creator `cr`, contentInstance `dgt` and `dcnt`, container `cstn`
and `disr`, and an UPDATE that changes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from cse.core.clock import ManualClock
from cse.core.clock import format_timestamp as ts
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ae_body, create, delete, retrieve, update

AE = "Cmeter"
READS = "cse-in/meter/reads"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    return cse


async def _made(cse: CommonServicesEntity, to: str, ty: int, body: Any, by: str = AE) -> dict:
    response = await cse.handle(create(to, ty, body, by))
    assert response.status == RSC.CREATED, response.content
    ((_, attributes),) = response.content.items()
    return dict(attributes)


async def _container(cse: CommonServicesEntity, **attrs: Any) -> dict:
    return await _made(cse, "cse-in/meter", 3, {"m2m:cnt": {"rn": "reads", **attrs}})


async def _instance(cse: CommonServicesEntity, con: str = "1", **attrs: Any) -> dict:
    return await _made(cse, READS, 4, {"m2m:cin": {"con": con, **attrs}})


# ---- CSEBase ctm (TS-0001 9.6.3: currentTime, the CSE's time when it answers) -------------


async def test_the_cse_base_tells_its_current_time_at_each_retrieve(
    cse: CommonServicesEntity, clock: ManualClock
) -> None:
    first = (await cse.handle(retrieve("cse-in"))).content["m2m:cb"]
    assert first["ctm"] == ts(clock.now())
    clock.advance(90)
    second = (await cse.handle(retrieve("cse-in"))).content["m2m:cb"]
    assert second["ctm"] == ts(clock.now()) and second["lt"] == first["lt"]
    only = await cse.handle(retrieve("cse-in", attribute_list=("ctm",)))
    assert only.content == {"m2m:cb": {"ctm": ts(clock.now())}}
    stored = await cse.storage.get(cse.settings.cse_ri)
    assert stored is not None and "ctm" not in stored.attributes  # computed, never kept


# ---- AE csz (TS-0001 9.6.5: content serializations the AE accepts, as media types) ---------


async def test_an_ae_lists_the_serializations_it_accepts_as_media_types(
    cse: CommonServicesEntity,
) -> None:
    kinds = ["application/cbor", "application/json", "application/vnd.onem2m-res+json"]
    made = await _made(cse, "cse-in", 2, ae_body("meter", csz=kinds), AE)
    assert made["csz"] == kinds
    changed = await cse.handle(
        update("cse-in/meter", {"m2m:ae": {"csz": ["application/json"]}}, AE)
    )
    assert changed.status == RSC.UPDATED


@pytest.mark.parametrize(
    "csz", [["json"], ["text/plain"], ["application/xml"], ["application/json", "x"]]
)
async def test_an_ae_csz_that_is_not_a_serialization_of_this_cse_is_a_bad_request(
    meter: CommonServicesEntity, csz: list[str]
) -> None:
    # ACME refuses any csz value outside its supported media types with 4000, on CREATE and
    # on UPDATE (it checks the AE after both); XML is not one of ours.
    made = await meter.handle(create("cse-in", 2, ae_body("other", csz=csz), "Cother"))
    assert made.status == RSC.BAD_REQUEST and "csz" in made.content["m2m:dbg"]
    changed = await meter.handle(update("cse-in/meter", {"m2m:ae": {"csz": csz}}, AE))
    assert changed.status == RSC.BAD_REQUEST


# ---- creator cr (TS-0001 9.6.1.3: set to the originator when a CREATE sends it as null) ----


async def test_a_creator_asked_for_with_null_is_the_originator_and_is_returned(
    meter: CommonServicesEntity,
) -> None:
    container = await _container(meter, cr=None)
    instance = await _instance(meter, cr=None)
    sub = await _made(meter, READS, 23, {"m2m:sub": {"rn": "s", "nu": [AE], "cr": None}})
    group = await _made(
        meter, "cse-in/meter", 9, {"m2m:grp": {"mnm": 2, "mid": [READS], "cr": None}}
    )
    assert [r["cr"] for r in (container, instance, sub, group)] == [AE] * 4
    again = (await meter.handle(retrieve(READS, AE))).content["m2m:cnt"]
    assert again["cr"] == AE
    plain = await _made(meter, "cse-in/meter", 3, {"m2m:cnt": {"rn": "plain"}})
    assert "cr" not in plain  # only when asked for


async def test_a_creator_is_refused_where_the_type_has_none_or_with_a_value(
    meter: CommonServicesEntity,
) -> None:
    # ACME: an AE and an accessControlPolicy have no creator attribute (4000), and a CREATE
    # may not name one (4000).
    ae = await meter.handle(create("cse-in", 2, ae_body("other", cr=None), "Cother"))
    assert ae.status == RSC.BAD_REQUEST
    policy = {"m2m:acp": {"pv": {"acr": []}, "pvs": {"acr": []}, "cr": None}}
    assert (await meter.handle(create("cse-in/meter", 1, policy, AE))).status == RSC.BAD_REQUEST
    named = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"cr": AE}}, AE))
    assert named.status == RSC.BAD_REQUEST
    await _container(meter)
    changed = await meter.handle(update(READS, {"m2m:cnt": {"cr": None}}, AE))
    assert changed.status == RSC.BAD_REQUEST  # not permitted in an UPDATE


# ---- contentInstance dgt (TS-0001 R4 9.6.7: dataGenerationTime, set by the creator) --------


@pytest.mark.parametrize("dgt", ["20260101T000000", "20260101T000000,5", 1767225600000, "42"])
async def test_an_instance_keeps_the_data_generation_time_its_creator_gives(
    meter: CommonServicesEntity, dgt: Any
) -> None:
    await _container(meter)
    made = await _instance(meter, dgt=dgt)
    assert made["dgt"] == dgt
    assert (await meter.handle(retrieve(f"{READS}/la", AE))).content["m2m:cin"]["dgt"] == dgt


@pytest.mark.parametrize("dgt", ["yesterday", True, 1.5, ["20260101T000000"]])
async def test_a_data_generation_time_that_is_no_time_is_a_bad_request(
    meter: CommonServicesEntity, dgt: Any
) -> None:
    await _container(meter)
    refused = await meter.handle(create(READS, 4, {"m2m:cin": {"con": "1", "dgt": dgt}}, AE))
    assert refused.status == RSC.BAD_REQUEST and "dgt" in refused.content["m2m:dbg"]


# ---- contentInstance dcnt (TS-0001 R4 9.6.7: deletionCnt, retrievals before deletion) ------


async def test_an_instance_with_a_deletion_count_is_deleted_after_that_many_retrievals(
    meter: CommonServicesEntity,
) -> None:
    await _container(meter)
    made = await _instance(meter, "once-twice", dcnt=2)
    path = f"{READS}/{made['rn']}"
    first = await meter.handle(retrieve(path, AE))
    assert first.status == RSC.OK and first.content["m2m:cin"]["dcnt"] == 2
    second = await meter.handle(retrieve(f"{READS}/la", AE))  # la counts as a retrieval too
    assert second.status == RSC.OK and second.content["m2m:cin"]["dcnt"] == 1
    assert (await meter.handle(retrieve(path, AE))).status == RSC.NOT_FOUND
    container = (await meter.handle(retrieve(READS, AE))).content["m2m:cnt"]
    assert (container["cni"], container["cbs"]) == (0, 0)


async def test_an_instance_without_a_deletion_count_stays(meter: CommonServicesEntity) -> None:
    await _container(meter)
    made = await _instance(meter)
    for _ in range(3):
        assert (await meter.handle(retrieve(made["ri"], AE))).status == RSC.OK


@pytest.mark.parametrize("dcnt", [0, -1, "2", True])
async def test_a_deletion_count_must_be_a_positive_integer(
    meter: CommonServicesEntity, dcnt: Any
) -> None:
    await _container(meter)
    refused = await meter.handle(create(READS, 4, {"m2m:cin": {"con": "1", "dcnt": dcnt}}, AE))
    assert refused.status == RSC.BAD_REQUEST


async def test_dgt_and_dcnt_belong_to_instances_only(meter: CommonServicesEntity) -> None:
    for name, value in (("dgt", "20260101T000000"), ("dcnt", 1)):
        refused = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {name: value}}, AE))
        assert refused.status == RSC.BAD_REQUEST


# ---- container cstn (TS-0001 R4 9.6.1.3: custodian, takes the creator's place) -------------


async def test_a_custodian_takes_the_creators_place_in_the_default_access_rule(
    meter: CommonServicesEntity,
) -> None:
    # Cother may create in Cmeter's container "shared"; it makes "kept" there with custodian
    # Ckeeper and no acpi. As in ACME, the custodian gets every right and the creator none;
    # the AE the container lives under keeps its own (our default rule).
    for name in ("keeper", "other"):
        await meter.handle(create("cse-in", 2, ae_body(name), f"C{name}"))
    rules = {"acr": [{"acor": ["Cother"], "acop": 1}, {"acor": [AE], "acop": 63}]}
    policy = await _made(meter, "cse-in/meter", 1, {"m2m:acp": {"pv": rules, "pvs": rules}})
    await _made(meter, "cse-in/meter", 3, {"m2m:cnt": {"rn": "shared", "acpi": [policy["ri"]]}})
    body = {"m2m:cnt": {"rn": "kept", "cstn": "Ckeeper"}}
    made = await _made(meter, "cse-in/meter/shared", 3, body, "Cother")
    assert made["cstn"] == "Ckeeper"
    kept = "cse-in/meter/shared/kept"
    assert (await meter.handle(retrieve(kept, "Ckeeper"))).status == RSC.OK
    put = await meter.handle(create(kept, 4, {"m2m:cin": {"con": "1"}}, "Ckeeper"))
    assert put.status == RSC.CREATED  # the instance has the container's rights
    assert (await meter.handle(retrieve(f"{kept}/la", "Ckeeper"))).status == RSC.OK
    assert (await meter.handle(retrieve(kept, "Cother"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )
    assert (await meter.handle(retrieve(kept, AE))).status == RSC.OK
    handed_on = await meter.handle(update(kept, {"m2m:cnt": {"cstn": "/id-in/Cother"}}, "Ckeeper"))
    assert handed_on.status == RSC.UPDATED  # an SP-relative AE-ID names the same AE
    assert (await meter.handle(retrieve(kept, "Cother"))).status == RSC.OK
    assert (await meter.handle(retrieve(kept, "Ckeeper"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )


async def test_a_custodian_must_be_an_id(meter: CommonServicesEntity) -> None:
    refused = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"cstn": 7}}, AE))
    assert refused.status == RSC.BAD_REQUEST


# ---- container disr (TS-0001 R4 9.6.6: disableRetrieval) ----------------------------------


async def _disabled(meter: CommonServicesEntity) -> list[dict]:
    await _container(meter, disr=True)
    return [await _instance(meter, str(value)) for value in range(3)]


async def test_no_instance_of_a_container_with_disr_can_be_retrieved_or_deleted(
    meter: CommonServicesEntity,
) -> None:
    # ACME answers 4005 for each, to the admin as well: the instances are write-only.
    instances = await _disabled(meter)
    for to in (instances[0]["ri"], f"{READS}/{instances[1]['rn']}", f"{READS}/la", f"{READS}/ol"):
        for originator in (AE, "CAdmin"):
            assert (await meter.handle(retrieve(to, originator))).status == (
                RSC.OPERATION_NOT_ALLOWED
            ), to
            assert (await meter.handle(delete(to, originator))).status == (
                RSC.OPERATION_NOT_ALLOWED
            ), to
    container = (await meter.handle(retrieve(READS, AE))).content["m2m:cnt"]
    assert container["cni"] == 3


async def test_a_container_with_disr_lists_and_discovers_none_of_its_instances(
    meter: CommonServicesEntity,
) -> None:
    await _disabled(meter)
    await _made(meter, READS, 23, {"m2m:sub": {"rn": "s", "nu": [AE]}})
    listed = await meter.handle(retrieve(READS, AE, rcn=6))
    assert [ref["typ"] for ref in listed.content["m2m:rrl"]["rrf"]] == [23]
    nested = (await meter.handle(retrieve(READS, AE, rcn=4))).content["m2m:cnt"]
    assert "m2m:cin" not in nested and len(nested["m2m:sub"]) == 1
    found = await meter.handle(
        retrieve("cse-in", AE, fc=FilterCriteria(filter_usage=1, resource_types=(4,)))
    )
    assert found.content["m2m:uril"] == []


async def test_turning_disr_off_deletes_every_instance(meter: CommonServicesEntity) -> None:
    # ACME (after TS-0001 R4): disr changed from true to false deletes the instances.
    instances = await _disabled(meter)
    kept = await meter.handle(update(READS, {"m2m:cnt": {"disr": None}}, AE))
    assert kept.status == RSC.UPDATED and kept.content["m2m:cnt"]["cni"] == 3  # only false does
    await meter.handle(update(READS, {"m2m:cnt": {"disr": True}}, AE))
    off = await meter.handle(update(READS, {"m2m:cnt": {"disr": False}}, AE))
    assert off.status == RSC.UPDATED
    assert (off.content["m2m:cnt"]["cni"], off.content["m2m:cnt"]["cbs"]) == (0, 0)
    for instance in instances:
        assert (await meter.handle(retrieve(instance["ri"], AE))).status == RSC.NOT_FOUND
    fresh = await _instance(meter, "after")
    assert (await meter.handle(retrieve(fresh["ri"], AE))).status == RSC.OK


async def test_turning_disr_on_or_leaving_it_off_keeps_the_instances(
    meter: CommonServicesEntity,
) -> None:
    await _container(meter)
    made = await _instance(meter)
    on = await meter.handle(update(READS, {"m2m:cnt": {"disr": True}}, AE))
    assert on.status == RSC.UPDATED and on.content["m2m:cnt"]["cni"] == 1
    await meter.handle(update(READS, {"m2m:cnt": {"disr": None}}, AE))  # removed, not false
    for _ in range(2):  # from absent to false, then false to false
        off = await meter.handle(update(READS, {"m2m:cnt": {"disr": False}}, AE))
        assert off.status == RSC.UPDATED and off.content["m2m:cnt"]["cni"] == 1
    assert (await meter.handle(retrieve(made["ri"], AE))).status == RSC.OK


# ---- an UPDATE with an empty resource (TS-0004 7.3.3.2.3; ACME answers 2004) --------------


async def test_an_update_that_changes_no_attribute_is_accepted(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    before = await _container(meter)
    clock.advance(5)
    changed = await meter.handle(update(READS, {"m2m:cnt": {}}, AE))
    assert changed.status == RSC.UPDATED
    after = changed.content["m2m:cnt"]
    assert after["lt"] == ts(clock.now()) and after["st"] == before["st"] + 1
    ae = await meter.handle(update("cse-in/meter", {"m2m:ae": {}}, AE))
    assert ae.status == RSC.UPDATED
    by_admin = await meter.handle(update(READS, {"m2m:cnt": {}}, "CAdmin"))
    assert by_admin.status == RSC.UPDATED
    await meter.handle(create("cse-in", 2, ae_body("other"), "Cother"))
    denied = await meter.handle(update(READS, {"m2m:cnt": {}}, "Cother"))
    assert denied.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE  # still needs UPDATE rights

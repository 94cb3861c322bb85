"""Containers and contentInstances: retention, counters, virtual resources, addressing."""

from __future__ import annotations

import pytest

from cse.core.clock import ManualClock
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ae_body, create, delete, retrieve, update

AE = "Cmeter"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    return cse


async def _container(cse: CommonServicesEntity, name: str = "reads", **attrs: object) -> dict:
    response = await cse.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": name, **attrs}}, AE))
    assert response.status == RSC.CREATED, response.content
    return response.content["m2m:cnt"]


async def _post(cse: CommonServicesEntity, con: object, to: str = "cse-in/meter/reads") -> dict:
    response = await cse.handle(create(to, 4, {"m2m:cin": {"cnf": "text/plain:0", "con": con}}, AE))
    assert response.status == RSC.CREATED, response.content
    return response.content["m2m:cin"]


async def test_instance_counts_sizes_and_state_tags(meter: CommonServicesEntity) -> None:
    await _container(meter)
    first = await _post(meter, "12.5")
    second = await _post(meter, "héllo")  # 6 bytes in UTF-8, 5 characters
    assert (first["st"], second["st"]) == (1, 2)
    assert (first["cs"], second["cs"]) == (4, 6)
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"], cnt["st"]) == (2, 10, 2)


async def test_max_number_of_instances_evicts_the_oldest(meter: CommonServicesEntity) -> None:
    await _container(meter, mni=3)
    posted = [await _post(meter, str(i)) for i in range(5)]
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"]) == (3, 3)
    oldest = (await meter.handle(retrieve("cse-in/meter/reads/ol", AE))).content["m2m:cin"]
    latest = (await meter.handle(retrieve("cse-in/meter/reads/la", AE))).content["m2m:cin"]
    assert oldest["ri"] == posted[2]["ri"] and latest["ri"] == posted[4]["ri"]
    gone = await meter.handle(retrieve(posted[0]["ri"], AE))
    assert gone.status == RSC.NOT_FOUND


async def test_a_container_with_mni_0_takes_no_instance(meter: CommonServicesEntity) -> None:
    # Found by the counters fuzz test: the new instance was stored, cni 1 over mni 0.
    await _container(meter, mni=0)
    refused = await meter.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "12.5"}}, AE))
    assert refused.status == RSC.NOT_ACCEPTABLE
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"], cnt["st"]) == (0, 0, 0)


async def test_max_byte_size_evicts_until_it_fits(meter: CommonServicesEntity) -> None:
    await _container(meter, mbs=10)
    for con in ("aaaa", "bbbb", "cccc"):
        await _post(meter, con)
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"]) == (2, 8)
    too_big = await meter.handle(
        create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "x" * 11}}, AE)
    )
    assert too_big.status == RSC.NOT_ACCEPTABLE


async def test_max_instance_age_caps_expiration(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    await _container(meter, mia=60)
    cin = await _post(meter, "1")
    clock.advance(61)
    assert (await meter.handle(retrieve(cin["ri"], AE))).status == RSC.NOT_FOUND
    assert (await meter.handle(retrieve("cse-in/meter/reads/la", AE))).status == RSC.NOT_FOUND
    removed = await meter.expiry.sweep()
    assert removed == 1
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"]) == (0, 0)


async def test_lowering_mni_evicts(meter: CommonServicesEntity) -> None:
    await _container(meter)
    for i in range(4):
        await _post(meter, str(i))
    response = await meter.handle(update("cse-in/meter/reads", {"m2m:cnt": {"mni": 1}}, AE))
    assert response.status == RSC.UPDATED
    assert response.content["m2m:cnt"]["cni"] == 1
    latest = (await meter.handle(retrieve("cse-in/meter/reads/la", AE))).content["m2m:cin"]
    assert latest["con"] == "3"


async def test_content_instance_is_immutable(meter: CommonServicesEntity) -> None:
    await _container(meter)
    cin = await _post(meter, "1")
    response = await meter.handle(update(cin["ri"], {"m2m:cin": {"con": "2"}}, AE))
    assert response.status == RSC.OPERATION_NOT_ALLOWED
    la = await meter.handle(update("cse-in/meter/reads/la", {"m2m:cin": {"con": "2"}}, AE))
    assert la.status == RSC.OPERATION_NOT_ALLOWED


async def test_delete_of_latest_and_recount(meter: CommonServicesEntity) -> None:
    await _container(meter)
    await _post(meter, "aa")
    await _post(meter, "bbb")
    assert (await meter.handle(delete("cse-in/meter/reads/la", AE))).status == RSC.DELETED
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"]) == (1, 2)


async def test_empty_container_has_no_latest(meter: CommonServicesEntity) -> None:
    await _container(meter)
    assert (await meter.handle(retrieve("cse-in/meter/reads/la", AE))).status == RSC.NOT_FOUND
    assert (await meter.handle(retrieve("cse-in/meter/reads/ol", AE))).status == RSC.NOT_FOUND


async def test_disable_retrieval(meter: CommonServicesEntity) -> None:
    await _container(meter, disr=True)
    await _post(meter, "1")
    response = await meter.handle(retrieve("cse-in/meter/reads/la", AE))
    assert response.status == RSC.OPERATION_NOT_ALLOWED


async def test_every_address_form_reaches_the_same_resource(meter: CommonServicesEntity) -> None:
    cnt = await _container(meter)
    forms = [
        "cse-in/meter/reads",
        "-/meter/reads",
        cnt["ri"],
        "/id-in/cse-in/meter/reads",
        f"/id-in/{cnt['ri']}",
        "//any.sp/id-in/cse-in/meter/reads",
    ]
    for to in forms:
        response = await meter.handle(retrieve(to, AE))
        assert response.status == RSC.OK, to
        assert response.content["m2m:cnt"]["ri"] == cnt["ri"]
    await _post(meter, "v")
    la = await meter.handle(retrieve(f"{cnt['ri']}/la", AE))
    assert la.content["m2m:cin"]["con"] == "v"


async def test_nested_containers_and_subtree_delete(meter: CommonServicesEntity) -> None:
    await _container(meter)
    inner = await meter.handle(create("cse-in/meter/reads", 3, {"m2m:cnt": {"rn": "inner"}}, AE))
    assert inner.status == RSC.CREATED
    cin = await _post(meter, "x", to="cse-in/meter/reads/inner")
    assert (await meter.handle(delete("cse-in/meter/reads", AE))).status == RSC.DELETED
    for to in ("cse-in/meter/reads", "cse-in/meter/reads/inner", cin["ri"]):
        assert (await meter.handle(retrieve(to, AE))).status == RSC.NOT_FOUND
    assert (await meter.handle(retrieve("cse-in/meter", AE))).status == RSC.OK


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"m2m:cnt": {"rn": "c", "bogus": 1}}, RSC.BAD_REQUEST, "bogus"),
        ({"m2m:cnt": {"rn": "c", "cni": 3}}, RSC.BAD_REQUEST, "read-only"),
        ({"m2m:cnt": {"rn": "c", "mni": -1}}, RSC.BAD_REQUEST, "mni"),
        ({"m2m:cnt": {"rn": "c", "mni": True}}, RSC.BAD_REQUEST, "mni"),
        ({"m2m:cnt": {"rn": "c", "lbl": "x"}}, RSC.BAD_REQUEST, "lbl"),
        ({"m2m:cnt": {"rn": "c/d"}}, RSC.BAD_REQUEST, "name"),
        ({"m2m:cnt": {"rn": "la"}}, RSC.BAD_REQUEST, "name"),
        ({"m2m:cnt": {"rn": "c", "et": "20000101T000000"}}, RSC.BAD_REQUEST, "past"),
        ({"m2m:cnt": {"rn": "c", "et": "tomorrow"}}, RSC.BAD_REQUEST, "et"),
        ({"m2m:cnt": {"rn": "c", "cr": "Cx"}}, RSC.BAD_REQUEST, "cr"),
        ({"m2m:ae": {"rn": "c"}}, RSC.BAD_REQUEST, "m2m:cnt"),
        ({"m2m:cnt": [1]}, RSC.BAD_REQUEST, "object"),
        ("text", RSC.BAD_REQUEST, "wrapped"),
    ],
)
async def test_bad_container_bodies(
    meter: CommonServicesEntity, body: object, status: RSC, words: str
) -> None:
    response = await meter.handle(create("cse-in/meter", 3, body, AE))
    assert response.status == status
    assert words in response.content["m2m:dbg"]
    listing = await meter.handle(retrieve("cse-in/meter", AE, rcn=6))
    assert listing.content["m2m:rrl"]["rrf"] == []  # nothing half-written


async def test_duplicate_name_conflicts(meter: CommonServicesEntity) -> None:
    await _container(meter)
    again = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE))
    assert again.status == RSC.CONFLICT


async def test_wrong_child_type(meter: CommonServicesEntity) -> None:
    response = await meter.handle(create("cse-in/meter", 4, {"m2m:cin": {"con": "x"}}, AE))
    assert response.status == RSC.INVALID_CHILD_RESOURCE_TYPE
    sub_on_cin_parent = await meter.handle(create("cse-in/meter", 2, ae_body("x"), "Cx"))
    assert sub_on_cin_parent.status == RSC.INVALID_CHILD_RESOURCE_TYPE


async def test_unknown_target_and_unsupported_type(meter: CommonServicesEntity) -> None:
    assert (await meter.handle(retrieve("cse-in/nothing", AE))).status == RSC.NOT_FOUND
    response = await meter.handle(create("cse-in/meter", 28, {"m2m:fcnt": {}}, AE))
    assert response.status == RSC.BAD_REQUEST


async def test_result_content_on_create(meter: CommonServicesEntity) -> None:
    body = {"m2m:cnt": {"rn": "r2"}}
    nothing = await meter.handle(create("cse-in/meter", 3, body, AE, rcn=0))
    assert nothing.status == RSC.CREATED and nothing.content is None
    address = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "r3"}}, AE, rcn=2))
    assert address.content == {"m2m:uri": "cse-in/meter/r3"}
    both = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {"rn": "r4"}}, AE, rcn=3))
    assert both.content["m2m:rce"]["uri"] == "cse-in/meter/r4"
    assert both.content["m2m:rce"]["cnt"]["rn"] == "r4"
    modified = await meter.handle(
        create("cse-in/meter", 3, {"m2m:cnt": {"rn": "r5", "mni": 5}}, AE, rcn=9)
    )
    assert "ri" in modified.content["m2m:cnt"] and "mni" not in modified.content["m2m:cnt"]
    invalid = await meter.handle(create("cse-in/meter", 3, {"m2m:cnt": {}}, AE, rcn=4))
    assert invalid.status == RSC.BAD_REQUEST


async def test_result_content_on_retrieve(meter: CommonServicesEntity) -> None:
    await _container(meter)
    await _post(meter, "1")
    await _post(meter, "2")
    with_children = await meter.handle(retrieve("cse-in/meter/reads", AE, rcn=4))
    assert [c["con"] for c in with_children.content["m2m:cnt"]["m2m:cin"]] == ["1", "2"]
    refs = await meter.handle(retrieve("cse-in/meter/reads", AE, rcn=5))
    assert len(refs.content["m2m:cnt"]["ch"]) == 2
    assert refs.content["m2m:cnt"]["ch"][0]["typ"] == 4
    only_refs = await meter.handle(retrieve("cse-in/meter/reads", AE, rcn=6))
    assert len(only_refs.content["m2m:rrl"]["rrf"]) == 2
    only_children = await meter.handle(retrieve("cse-in/meter/reads", AE, rcn=8))
    assert set(only_children.content) == {"m2m:cin"}
    assert (await meter.handle(retrieve("cse-in/meter/reads", AE, rcn=2))).status == (
        RSC.BAD_REQUEST
    )


async def test_partial_retrieve(meter: CommonServicesEntity) -> None:
    await _container(meter, mni=7)
    response = await meter.handle(retrieve("cse-in/meter/reads", AE, attribute_list=("mni", "rn")))
    assert response.content == {"m2m:cnt": {"mni": 7, "rn": "reads"}}


async def test_update_changes_last_modified_and_state(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    before = await _container(meter, lbl=["a"])
    clock.advance(5)
    response = await meter.handle(
        update("cse-in/meter/reads", {"m2m:cnt": {"lbl": ["b"], "mni": None}}, AE, rcn=9)
    )
    assert response.status == RSC.UPDATED
    # rcn 9 shows what the CSE changed beyond the request: lt and st, not lbl.
    assert "lbl" not in response.content["m2m:cnt"] and "lt" in response.content["m2m:cnt"]
    after = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert after["lt"] > before["lt"] and after["st"] == before["st"] + 1
    assert after["ct"] == before["ct"]


async def test_expired_ae_disappears_with_its_children(
    meter: CommonServicesEntity, clock: ManualClock
) -> None:
    soon = "20260101T000100"  # the manual clock starts at 2026-01-01T00:00:00
    assert (
        await meter.handle(create("cse-in", 2, ae_body("brief", et=soon), "Cbrief"))
    ).status == (RSC.CREATED)
    child = await meter.handle(create("cse-in/brief", 3, {"m2m:cnt": {"rn": "c"}}, "Cbrief"))
    assert child.content["m2m:cnt"]["et"] <= soon + ",000000"  # clamped to the parent
    clock.advance(120)
    assert await meter.expiry.sweep() == 2
    assert (await meter.handle(retrieve("cse-in/brief", "CAdmin"))).status == RSC.NOT_FOUND
    assert (await meter.handle(retrieve("cse-in/brief/c", "CAdmin"))).status == RSC.NOT_FOUND


async def test_redelivered_create_is_answered_without_creating_twice(
    meter: CommonServicesEntity,
) -> None:
    from dataclasses import replace

    await _container(meter)
    first = create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "1"}}, AE, deduplicate=True)
    again = replace(first)  # the same originator and request ID, delivered a second time
    one, two = await meter.handle(first), await meter.handle(again)
    assert one.status == two.status == RSC.CREATED
    assert one.content["m2m:cin"]["ri"] == two.content["m2m:cin"]["ri"]
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert cnt["cni"] == 1
    # without the flag (plain HTTP clients often reuse request IDs) both are created
    plain = create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "2"}}, AE)
    await meter.handle(plain)
    await meter.handle(replace(plain))
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert cnt["cni"] == 3


async def test_concurrent_creates_keep_counters_exact(meter: CommonServicesEntity) -> None:
    import asyncio

    await _container(meter, mni=50)
    # The write lock is held by someone else while all 200 requests read the container.
    async with meter.write_lock:
        tasks = [
            asyncio.create_task(
                meter.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "ab"}}, AE))
            )
            for _ in range(200)
        ]
        await asyncio.sleep(0)  # let every request run up to the lock
    responses = await asyncio.gather(*tasks)
    assert all(r.status == RSC.CREATED for r in responses)
    cnt = (await meter.handle(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (cnt["cni"], cnt["cbs"], cnt["st"]) == (50, 100, 200)

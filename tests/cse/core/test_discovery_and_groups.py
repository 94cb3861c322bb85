"""Discovery with filter criteria, and groups with fan-out."""

from __future__ import annotations

import pytest

from cse.core.clock import ManualClock
from cse.core.clock import format_timestamp as ts
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ae_body, create, retrieve


@pytest.fixture
async def tree(cse: CommonServicesEntity, clock: ManualClock) -> CommonServicesEntity:
    for name in ("m1", "m2"):
        await cse.handle(create("cse-in", 2, ae_body(name, lbl=["meter"]), f"C{name}"))
        for cnt in ("reads", "events"):
            body = {"m2m:cnt": {"rn": cnt, "lbl": [f"family:{cnt}"]}}
            await cse.handle(create(f"cse-in/{name}", 3, body, f"C{name}"))
            clock.advance(10)
        for value in range(3):
            await cse.handle(
                create(
                    f"cse-in/{name}/reads", 4, {"m2m:cin": {"con": "x" * (value + 1)}}, f"C{name}"
                )
            )
    return cse


def fc(**kw: object) -> FilterCriteria:
    return FilterCriteria(filter_usage=1, **kw)  # type: ignore[arg-type]


async def _discover(cse: CommonServicesEntity, to: str = "cse-in", **kw: object) -> list[str]:
    response = await cse.handle(retrieve(to, fc=fc(**kw)))
    assert response.status == RSC.OK, response.content
    return list(response.content["m2m:uril"])


async def test_by_type_and_label(tree: CommonServicesEntity) -> None:
    assert await _discover(tree, resource_types=(2,)) == ["cse-in/m1", "cse-in/m2"]
    assert await _discover(tree, labels=("family:events",)) == [
        "cse-in/m1/events",
        "cse-in/m2/events",
    ]
    assert len(await _discover(tree, resource_types=(4,))) == 6


async def test_or_combines_conditions(tree: CommonServicesEntity) -> None:
    found = await _discover(
        tree, resource_types=(2,), labels=("family:events",), filter_operation=2
    )
    assert found == ["cse-in/m1", "cse-in/m1/events", "cse-in/m2", "cse-in/m2/events"]


async def test_limit_offset_and_level(tree: CommonServicesEntity) -> None:
    everything = await _discover(tree)
    assert await _discover(tree, limit=2) == everything[:2]
    assert await _discover(tree, offset=3, limit=2) == everything[2:4]
    assert await _discover(tree, level=1) == ["cse-in/m1", "cse-in/m2"]
    assert await _discover(tree, "cse-in/m1", level=1) == ["cse-in/m1/reads", "cse-in/m1/events"]


async def test_created_and_modified_windows(tree: CommonServicesEntity, clock: ManualClock) -> None:
    start = clock.now() - 40  # the fixture advanced the clock 4 times 10 s
    early = await _discover(tree, resource_types=(3,), created_before=ts(start + 15))
    assert early == ["cse-in/m1/reads", "cse-in/m1/events"]
    late = await _discover(tree, resource_types=(3,), created_after=ts(start + 15))
    assert late == ["cse-in/m2/reads", "cse-in/m2/events"]
    assert await _discover(tree, resource_types=(2,), modified_since=ts(clock.now() + 1)) == []


async def test_size_and_attribute_conditions(tree: CommonServicesEntity) -> None:
    assert len(await _discover(tree, size_above=3)) == 2
    assert len(await _discover(tree, size_below=2)) == 2
    assert await _discover(tree, attributes=(("rn", "events"),)) == [
        "cse-in/m1/events",
        "cse-in/m2/events",
    ]


async def test_unstructured_results_and_references(tree: CommonServicesEntity) -> None:
    response = await tree.handle(
        retrieve("cse-in", fc=fc(resource_types=(2,)), discovery_result_type=2)
    )
    assert response.content["m2m:uril"] == ["Cm1", "Cm2"]
    refs = await tree.handle(retrieve("cse-in", fc=fc(resource_types=(2,)), rcn=6))
    assert [r["nm"] for r in refs.content["m2m:rrl"]["rrf"]] == ["m1", "m2"]


async def test_discovery_hides_what_the_originator_may_not_discover(
    tree: CommonServicesEntity,
) -> None:
    response = await tree.handle(retrieve("cse-in", "Cm1", fc=fc(resource_types=(3,))))
    assert response.content["m2m:uril"] == ["cse-in/m1/reads", "cse-in/m1/events"]


async def _group(cse: CommonServicesEntity, mid: list[str], **attrs: object) -> dict:
    body = {"m2m:grp": {"rn": "g", "mnm": 10, "mid": mid, **attrs}}
    response = await cse.handle(create("cse-in", 9, body))
    assert response.status == RSC.CREATED, response.content
    return dict(response.content["m2m:grp"])


async def test_group_fan_out(tree: CommonServicesEntity) -> None:
    group = await _group(tree, ["cse-in/m1/reads", "cse-in/m2/reads"], mt=3)
    assert group["cnm"] == 2 and group["mtv"] is True
    response = await tree.handle(retrieve("cse-in/g/fopt/la"))
    results = response.content["m2m:agr"]["m2m:rsp"]
    assert [r["rsc"] for r in results] == [2000, 2000]
    assert all(r["pc"]["m2m:cin"]["con"] == "xxx" for r in results)
    created = await tree.handle(create("cse-in/g/fopt", 4, {"m2m:cin": {"con": "cmd"}}))
    assert [r["rsc"] for r in created.content["m2m:agr"]["m2m:rsp"]] == [2001, 2001]


async def test_group_member_type_strategies(tree: CommonServicesEntity) -> None:
    mixed = ["cse-in/m1", "cse-in/m1/reads"]
    abandon_member = await _group(tree, mixed, mt=3)
    assert abandon_member["cnm"] == 1
    body = {"m2m:grp": {"rn": "g2", "mnm": 10, "mid": mixed, "mt": 3, "csy": 2}}
    assert (await tree.handle(create("cse-in", 9, body))).status == (
        RSC.GROUP_MEMBER_TYPE_INCONSISTENT
    )
    body = {"m2m:grp": {"rn": "g3", "mnm": 10, "mid": mixed, "mt": 3, "csy": 3}}
    set_mixed = await tree.handle(create("cse-in", 9, body))
    assert set_mixed.content["m2m:grp"]["mt"] == 0 and set_mixed.content["m2m:grp"]["cnm"] == 2


async def test_group_size_limit(tree: CommonServicesEntity) -> None:
    body = {"m2m:grp": {"mnm": 1, "mid": ["cse-in/m1", "cse-in/m2"]}}
    assert (await tree.handle(create("cse-in", 9, body))).status == (
        RSC.MAX_NUMBER_OF_MEMBER_EXCEEDED
    )


async def test_fan_out_respects_each_members_access(tree: CommonServicesEntity) -> None:
    await tree.handle(
        create(
            "cse-in/m1",
            9,
            {"m2m:grp": {"rn": "g", "mnm": 5, "mid": ["cse-in/m1/reads", "cse-in/m2/reads"]}},
            "Cm1",
        )
    )
    response = await tree.handle(retrieve("cse-in/m1/g/fopt", "Cm1"))
    assert [r["rsc"] for r in response.content["m2m:agr"]["m2m:rsp"]] == [2000, 4103]


async def test_nested_fan_out_is_refused_per_member(tree: CommonServicesEntity) -> None:
    await _group(tree, ["cse-in/m1/reads"])
    outer = {"m2m:grp": {"rn": "outer", "mnm": 5, "mid": ["cse-in/g"]}}
    assert (await tree.handle(create("cse-in", 9, outer))).status == RSC.CREATED
    response = await tree.handle(retrieve("cse-in/outer/fopt/fopt"))
    assert [r["rsc"] for r in response.content["m2m:agr"]["m2m:rsp"]] == [4000]


async def test_zero_limit_finds_nothing(tree: CommonServicesEntity) -> None:
    assert await _discover(tree, limit=0) == []

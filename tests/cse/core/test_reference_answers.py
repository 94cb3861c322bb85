"""Answers where TS-0004 leaves the shape to the implementation and ACME's is followed; each
was a difference `tests/interop/test_differential.py` found."""

from __future__ import annotations

import pytest

from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ae_body, create, retrieve, update

AE = "Cmeter"


@pytest.fixture
async def meter(cse: CommonServicesEntity) -> CommonServicesEntity:
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    reads = create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE)
    assert (await cse.handle(reads)).status == RSC.CREATED
    return cse


async def test_rcn_9_on_update_shows_only_what_the_cse_changed(
    meter: CommonServicesEntity,
) -> None:
    # rcn 9 (modified attributes): the request knows what it sent; the answer carries what
    # the CSE changed besides (lt, st), as on CREATE.
    answer = await meter.handle(update("cse-in/meter/reads", {"m2m:cnt": {"mni": 5}}, AE, rcn=9))
    assert answer.status == RSC.UPDATED
    shown = answer.content["m2m:cnt"]
    assert "mni" not in shown
    assert {"lt", "st"} <= set(shown)


async def test_rcn_3_names_the_resource_inside_rce_without_its_namespace(
    meter: CommonServicesEntity,
) -> None:
    made = await meter.handle(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "1"}}, AE, rcn=3))
    assert made.status == RSC.CREATED
    wrapper = made.content["m2m:rce"]
    assert set(wrapper) == {"uri", "cin"}
    assert wrapper["cin"]["con"] == "1" and wrapper["uri"].startswith("cse-in/meter/reads/")


async def test_a_group_shows_its_consistency_strategy_and_semantic_support(
    meter: CommonServicesEntity,
) -> None:
    # TS-0001 9.6.13: csy defaults to ABANDON_MEMBER (1); ssi (semantic support) to false.
    body = {"m2m:grp": {"rn": "g", "mnm": 2, "mid": ["cse-in/meter/reads"]}}
    made = await meter.handle(create("cse-in/meter", 9, body, AE))
    assert made.status == RSC.CREATED, made.content
    group = (await meter.handle(retrieve("cse-in/meter/g", AE))).content["m2m:grp"]
    assert (group["csy"], group["ssi"]) == (1, False)


async def test_an_empty_list_of_points_of_access_is_refused(cse: CommonServicesEntity) -> None:
    refused = await cse.handle(create("cse-in", 2, ae_body("meter", poa=[]), AE))
    assert refused.status == RSC.BAD_REQUEST
    assert "poa" in refused.content["m2m:dbg"]

"""Access control: the default rule, ACP rules with wildcards and bitmasks, acpi changes."""

from __future__ import annotations

import pytest

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ae_body, create, delete, retrieve, update


@pytest.fixture
async def two_meters(cse: CommonServicesEntity) -> CommonServicesEntity:
    for name in ("m1", "m2"):
        assert (await cse.handle(create("cse-in", 2, ae_body(name), f"C{name}"))).status == (
            RSC.CREATED
        )
        cnt = create(f"cse-in/{name}", 3, {"m2m:cnt": {"rn": "reads"}}, f"C{name}")
        assert (await cse.handle(cnt)).status == RSC.CREATED
    return cse


async def test_one_meter_cannot_touch_another(two_meters: CommonServicesEntity) -> None:
    cse = two_meters
    cin = {"m2m:cin": {"con": "1"}}
    assert (await cse.handle(create("cse-in/m2/reads", 4, cin, "Cm1"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )
    assert (await cse.handle(retrieve("cse-in/m2/reads", "Cm1"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )
    assert (await cse.handle(update("cse-in/m2", {"m2m:ae": {"lbl": ["x"]}}, "Cm1"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )
    assert (await cse.handle(delete("cse-in/m2", "Cm1"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )
    # while each meter keeps full use of its own tree, and the admin of everything
    assert (await cse.handle(create("cse-in/m1/reads", 4, cin, "Cm1"))).status == RSC.CREATED
    assert (await cse.handle(retrieve("cse-in/m2/reads", "CAdmin"))).status == RSC.OK


async def test_admin_created_container_under_an_ae_belongs_to_that_ae(
    two_meters: CommonServicesEntity,
) -> None:
    cse = two_meters
    made = await cse.handle(create("cse-in/m1", 3, {"m2m:cnt": {"rn": "cmd"}}, "CAdmin"))
    assert made.status == RSC.CREATED
    assert (await cse.handle(retrieve("cse-in/m1/cmd", "Cm1"))).status == RSC.OK
    assert (await cse.handle(retrieve("cse-in/m1/cmd", "Cm2"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )


async def _policy(cse: CommonServicesEntity, owner: str, rules: list[dict]) -> str:
    body = {
        "m2m:acp": {
            "rn": "share",
            "pv": {"acr": rules},
            "pvs": {"acr": [{"acor": [owner], "acop": 63}]},
        }
    }
    response = await cse.handle(create(f"cse-in/{owner[1:]}", 1, body, owner))
    assert response.status == RSC.CREATED, response.content
    return str(response.content["m2m:acp"]["ri"])


async def test_policy_grants_by_wildcard_and_operation_bits(
    two_meters: CommonServicesEntity,
) -> None:
    cse = two_meters
    policy = await _policy(
        cse, "Cm2", [{"acor": ["Cm*"], "acop": 2}, {"acor": ["Cm2"], "acop": 63}]
    )
    assert (
        await cse.handle(update("cse-in/m2/reads", {"m2m:cnt": {"acpi": [policy]}}, "Cm2"))
    ).status == (RSC.UPDATED)
    await cse.handle(create("cse-in/m2/reads", 4, {"m2m:cin": {"con": "7"}}, "Cm2"))
    # m1 matches Cm* for RETRIEVE (2) only
    assert (await cse.handle(retrieve("cse-in/m2/reads/la", "Cm1"))).status == RSC.OK
    denied = await cse.handle(create("cse-in/m2/reads", 4, {"m2m:cin": {"con": "8"}}, "Cm1"))
    assert denied.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    # the owner keeps full rights through its own rule
    assert (await cse.handle(delete("cse-in/m2/reads/la", "Cm2"))).status == RSC.DELETED


async def test_all_keyword_and_discover_bit(two_meters: CommonServicesEntity) -> None:
    cse = two_meters
    policy = await _policy(cse, "Cm2", [{"acor": ["all"], "acop": 32}])
    await cse.handle(update("cse-in/m2/reads", {"m2m:cnt": {"acpi": [policy]}}, "Cm2"))
    found = await cse.handle(
        retrieve("cse-in", "Cm1", fc=FilterCriteria(filter_usage=1, resource_types=(3,)))
    )
    assert found.content["m2m:uril"] == ["cse-in/m1/reads", "cse-in/m2/reads"]
    assert (await cse.handle(retrieve("cse-in/m2/reads", "Cm1"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )


async def test_changing_acpi_needs_self_privileges(two_meters: CommonServicesEntity) -> None:
    cse = two_meters
    policy = await _policy(cse, "Cm2", [{"acor": ["Cm1", "Cm2"], "acop": 63}])
    await cse.handle(update("cse-in/m2/reads", {"m2m:cnt": {"acpi": [policy]}}, "Cm2"))
    # m1 may update the container's labels (pv) but not its acpi (pvs holds only m2)
    ok = await cse.handle(update("cse-in/m2/reads", {"m2m:cnt": {"lbl": ["a"]}}, "Cm1"))
    assert ok.status == RSC.UPDATED
    refused = await cse.handle(update("cse-in/m2/reads", {"m2m:cnt": {"acpi": []}}, "Cm1"))
    assert refused.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    # and the policy itself is governed by its pvs
    edit = {"m2m:acp": {"pv": {"acr": [{"acor": ["all"], "acop": 63}]}}}
    assert (await cse.handle(update(policy, edit, "Cm1"))).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await cse.handle(update(policy, edit, "Cm2"))).status == RSC.UPDATED


@pytest.mark.parametrize(
    "pv",
    [{"acr": "x"}, {"acr": [{"acor": "Cm1", "acop": 2}]}, {"acr": [{"acor": ["a"], "acop": 99}]}],
)
async def test_malformed_policies_are_refused(two_meters: CommonServicesEntity, pv: dict) -> None:
    body = {"m2m:acp": {"pv": pv, "pvs": {"acr": [{"acor": ["Cm1"], "acop": 63}]}}}
    response = await two_meters.handle(create("cse-in/m1", 1, body, "Cm1"))
    assert response.status == RSC.BAD_REQUEST


async def test_acpi_must_name_existing_policies(two_meters: CommonServicesEntity) -> None:
    response = await two_meters.handle(
        create("cse-in/m1", 3, {"m2m:cnt": {"acpi": ["acpnothing"]}}, "Cm1")
    )
    assert response.status == RSC.BAD_REQUEST

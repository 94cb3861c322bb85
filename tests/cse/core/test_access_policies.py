"""accessControlPolicy rules beyond originators and operation bits (TS-0001 9.6.2, 7.1;
TS-0004 6.3.5.29 m2m:accessControlRule): what an UPDATE of a policy may do, who may create
one, `acor` naming a group, time windows (`acco`/`actw`), attribute lists (`aca`), and
removing a resource's `acpi`. Where the specification leaves room, ACME's behaviour is the
reference (docs/conformance.md says where we differ and why)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from cse.core.clock import ManualClock
from cse.core.config import CSELimits, CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.limits import Limit
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import LAB, ae_body, create, delete, retrieve, update

OWNER = {"acr": [{"acor": ["Cm1"], "acop": 63}]}


async def _start(clock: ManualClock, **limits: Any) -> CommonServicesEntity:
    settings = CSESettings(
        expiry_check_interval=3600, egress=LAB, limits=replace(CSELimits(), **limits)
    )
    cse = CommonServicesEntity(MemoryStorage(), settings, clock=clock)
    await cse.start()
    for name in ("m1", "m2", "m3"):
        made = await cse.handle(create("cse-in", 2, ae_body(name), f"C{name}"))
        assert made.status == RSC.CREATED, made.content
    made = await cse.handle(create("cse-in/m1", 3, {"m2m:cnt": {"rn": "c", "lbl": ["a"]}}, "Cm1"))
    assert made.status == RSC.CREATED, made.content
    return cse


@pytest.fixture
async def meters(clock: ManualClock) -> AsyncIterator[CommonServicesEntity]:
    """Three registered meters (Cm1, Cm2, Cm3); m1 has a container `c` labelled "a"."""
    cse = await _start(clock)
    yield cse
    await cse.stop()


async def _policy(
    cse: CommonServicesEntity,
    rules: list[dict[str, Any]],
    name: str = "p",
    *,
    parent: str = "cse-in/m1",
    originator: str = "Cm1",
) -> str:
    body = {"m2m:acp": {"rn": name, "pv": {"acr": rules}, "pvs": OWNER}}
    made = await cse.handle(create(parent, 1, body, originator))
    assert made.status == RSC.CREATED, made.content
    return str(made.content["m2m:acp"]["ri"])


async def _govern(cse: CommonServicesEntity, *policies: str) -> None:
    """m1's container `c` governed by these policies."""
    done = await cse.handle(update("cse-in/m1/c", {"m2m:cnt": {"acpi": list(policies)}}, "Cm1"))
    assert done.status == RSC.UPDATED, done.content


async def _reads(cse: CommonServicesEntity, originator: str, *attributes: str) -> RSC:
    return (await cse.handle(retrieve("cse-in/m1/c", originator, attribute_list=attributes))).status


def _acp(**attributes: Any) -> dict[str, Any]:
    return {"m2m:acp": attributes}


# ---- 1. UPDATE of a policy (TS-0001 9.6.2: pv optional to update, pvs mandatory) -----------


async def test_privileges_may_be_updated_to_no_rules(meters: CommonServicesEntity) -> None:
    cse = meters
    policy = await _policy(cse, [{"acor": ["Cm2"], "acop": 2}])
    await _govern(cse, policy)
    assert await _reads(cse, "Cm2") == RSC.OK
    emptied = await cse.handle(update(policy, _acp(pv={"acr": []}), "Cm1"))
    assert emptied.status == RSC.UPDATED
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_privileges_sent_as_an_empty_object_mean_no_rules(
    meters: CommonServicesEntity,
) -> None:
    """ACME accepts `pv: {}` on CREATE and UPDATE (a set of no rules)."""
    cse = meters
    policy = await _policy(cse, [{"acor": ["Cm2"], "acop": 2}])
    emptied = await cse.handle(update(policy, _acp(pv={}), "Cm1"))
    assert emptied.status == RSC.UPDATED, emptied.content
    assert emptied.content["m2m:acp"]["pv"] == {"acr": []}
    body = {"m2m:acp": {"rn": "none", "pv": {}, "pvs": OWNER}}
    made = await cse.handle(create("cse-in/m1", 1, body, "Cm1"))
    assert made.status == RSC.CREATED, made.content
    assert made.content["m2m:acp"]["pv"] == {"acr": []}


@pytest.mark.parametrize("pvs", [None, {}, {"acr": []}])
async def test_self_privileges_cannot_be_removed_or_emptied(
    meters: CommonServicesEntity, pvs: Any
) -> None:
    """pvs is mandatory: nobody could ever change or delete a policy without one (ACME: 4000)."""
    cse = meters
    policy = await _policy(cse, [])
    refused = await cse.handle(update(policy, _acp(pvs=pvs), "Cm1"))
    assert refused.status == RSC.BAD_REQUEST
    kept = await cse.handle(retrieve(policy, "Cm1"))
    assert kept.content["m2m:acp"]["pvs"] == OWNER


async def test_a_policy_cannot_be_created_with_empty_self_privileges(
    meters: CommonServicesEntity,
) -> None:
    body = {"m2m:acp": {"pv": OWNER, "pvs": {"acr": []}}}
    refused = await meters.handle(create("cse-in/m1", 1, body, "Cm1"))
    assert refused.status == RSC.BAD_REQUEST


async def test_privileges_cannot_be_removed(meters: CommonServicesEntity) -> None:
    policy = await _policy(meters, [])
    refused = await meters.handle(update(policy, _acp(pv=None), "Cm1"))
    assert refused.status == RSC.BAD_REQUEST


@pytest.mark.parametrize(
    "rule",
    [
        {"acor": ["Cm2"], "acop": 0},  # no operation at all: ACME refuses it as undefined
        {"acor": ["Cm2"], "acop": 2, "extra": 1},  # not a member of m2m:accessControlRule
        {"acor": ["Cm2"], "acop": 2, "acod": [{"chty": [4]}]},  # object details: not served
        {"acor": ["Cm2"], "acop": 2, "acaf": True},  # authentication flag: not served
        {"acor": ["Cm2"], "acop": 2, "acco": [{"acip": {"ipv4": ["10.0.0.1"]}}]},
        {"acor": ["Cm2"], "acop": 2, "acco": [{"actw": "* * * * * * *"}]},  # not a list
        {"acor": ["Cm2"], "acop": 2, "aca": "lbl"},
    ],
)
async def test_rules_the_cse_cannot_honour_are_refused(
    meters: CommonServicesEntity, rule: dict[str, Any]
) -> None:
    """A rule member that would be ignored could grant more than its author meant: 4000."""
    policy = await _policy(meters, [])
    for attempt in (
        create("cse-in/m1", 1, {"m2m:acp": {"pv": {"acr": [rule]}, "pvs": OWNER}}, "Cm1"),
        update(policy, _acp(pv={"acr": [rule]}), "Cm1"),
        update(policy, _acp(pvs={"acr": [rule, *OWNER["acr"]]}), "Cm1"),
    ):
        assert (await meters.handle(attempt)).status == RSC.BAD_REQUEST


# ---- 2. who may create a policy, and who may then use it ---------------------------------


async def test_an_ae_may_create_a_policy_under_itself_but_not_under_another_ae(
    meters: CommonServicesEntity,
) -> None:
    body = {"m2m:acp": {"pv": OWNER, "pvs": OWNER}}
    assert (await meters.handle(create("cse-in/m1", 1, body, "Cm1"))).status == RSC.CREATED
    refused = await meters.handle(create("cse-in/m2", 1, body, "Cm1"))
    assert refused.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_registered_ae_may_create_a_policy_under_the_cse_base(
    meters: CommonServicesEntity,
) -> None:
    """ACME's CSEBase lets every originator create <accessControlPolicy> (and nothing else)
    under it; here every registered one may."""
    cse = meters
    policy = await _policy(cse, [{"acor": ["Cm2"], "acop": 2}], "shared", parent="cse-in")
    await _govern(cse, policy)
    assert await _reads(cse, "Cm2") == RSC.OK
    container = await cse.handle(create("cse-in", 3, {"m2m:cnt": {"rn": "x"}}, "Cm1"))
    assert container.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_policies_under_the_cse_base_are_limited(clock: ManualClock) -> None:
    cse = await _start(clock, max_policies_under_cse_base=2)
    try:
        body = {"m2m:acp": {"pv": OWNER, "pvs": OWNER}}
        for _ in range(2):
            assert (await cse.handle(create("cse-in", 1, body, "Cm1"))).status == RSC.CREATED
        refused = await cse.handle(create("cse-in", 1, body, "Cm2"))
        assert refused.status == RSC.NOT_ACCEPTABLE
        assert cse.counters.refused[Limit.POLICIES_UNDER_CSE_BASE] == 1
        assert (await cse.handle(create("cse-in", 1, body))).status == RSC.CREATED  # the admin
    finally:
        await cse.stop()


async def test_a_policy_is_governed_by_its_self_privileges_not_by_who_created_it(
    meters: CommonServicesEntity,
) -> None:
    """TS-0001 9.6.2: access to an <accessControlPolicy> is by its pvs (ACME: the creator
    left out of pvs has no access to it)."""
    cse = meters
    body = {
        "m2m:acp": {"rn": "given", "pv": OWNER, "pvs": {"acr": [{"acor": ["Cm2"], "acop": 63}]}}
    }
    assert (await cse.handle(create("cse-in/m1", 1, body, "Cm1"))).status == RSC.CREATED
    denied = RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await cse.handle(retrieve("cse-in/m1/given", "Cm1"))).status == denied
    assert (await cse.handle(delete("cse-in/m1/given", "Cm1"))).status == denied
    assert (await cse.handle(retrieve("cse-in/m1/given", "Cm2"))).status == RSC.OK


# ---- 3. acor naming a group (TS-0001 9.6.2: the group's members are the originators) --------


async def _group(
    cse: CommonServicesEntity, name: str, members: list[str], member_type: int | None = None
) -> str:
    body: dict[str, Any] = {"rn": name, "mnm": 10, "mid": members}
    if member_type is not None:
        body["mt"] = member_type
    made = await cse.handle(create("cse-in/m1", 9, {"m2m:grp": body}, "Cm1"))
    assert made.status == RSC.CREATED, made.content
    return str(made.content["m2m:grp"]["ri"])


async def test_members_of_a_group_named_in_acor_are_allowed(
    meters: CommonServicesEntity,
) -> None:
    cse = meters
    group = await _group(cse, "readers", ["Cm2"])
    await _govern(cse, await _policy(cse, [{"acor": [group], "acop": 2}]))
    assert await _reads(cse, "Cm2") == RSC.OK
    assert await _reads(cse, "Cm3") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_group_may_be_named_by_its_path_and_be_made_after_the_policy(
    meters: CommonServicesEntity,
) -> None:
    """Membership is read when access is decided: a group made later, or changed, counts at
    once (ACME only knows the groups that existed when the policy was written)."""
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["cse-in/m1/readers"], "acop": 2}]))
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    await _group(cse, "readers", ["Cm2"])
    assert await _reads(cse, "Cm2") == RSC.OK
    changed = await cse.handle(update("cse-in/m1/readers", {"m2m:grp": {"mid": ["Cm3"]}}, "Cm1"))
    assert changed.status == RSC.UPDATED
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert await _reads(cse, "Cm3") == RSC.OK


async def test_members_of_nested_groups_are_allowed_and_a_cycle_ends(
    meters: CommonServicesEntity,
) -> None:
    cse = meters
    inner = await _group(cse, "inner", ["Cm2"])
    outer = await _group(cse, "outer", [inner], member_type=9)
    await _govern(cse, await _policy(cse, [{"acor": [outer], "acop": 2}]))
    assert await _reads(cse, "Cm2") == RSC.OK
    # inner now holds outer: a cycle, which the resolution walks once and leaves
    looped = await cse.handle(update("cse-in/m1/inner", {"m2m:grp": {"mid": [outer]}}, "Cm1"))
    assert looped.status == RSC.UPDATED
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_group_resolution_reads_at_most_the_configured_number_of_groups(
    clock: ManualClock,
) -> None:
    """One access decision reads at most `max_group_reads_per_check` groups, however deep the
    nesting or long the acor list: a policy cannot make a check cost more than that."""
    for reads, expected in ((3, RSC.OK), (2, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)):
        cse = await _start(clock, max_group_reads_per_check=reads)
        try:
            first = await _group(cse, "g1", ["Cm2"])
            second = await _group(cse, "g2", [first], member_type=9)
            third = await _group(cse, "g3", [second], member_type=9)
            await _govern(cse, await _policy(cse, [{"acor": [third], "acop": 2}]))
            assert await _reads(cse, "Cm2") == expected
        finally:
            await cse.stop()


# ---- 4. operations, time windows and attributes of a rule ----------------------------------


async def test_each_operation_is_granted_only_by_its_own_bit(
    meters: CommonServicesEntity,
) -> None:
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 1 | 2}]))  # C + R
    cin = {"m2m:cin": {"con": "1"}}
    assert (await cse.handle(create("cse-in/m1/c", 4, cin, "Cm2"))).status == RSC.CREATED
    assert await _reads(cse, "Cm2") == RSC.OK
    denied = RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    label = {"m2m:cnt": {"lbl": ["b"]}}
    assert (await cse.handle(update("cse-in/m1/c", label, "Cm2"))).status == denied
    assert (await cse.handle(delete("cse-in/m1/c", "Cm2"))).status == denied


async def test_a_time_window_grants_only_while_the_clock_is_inside_it(
    meters: CommonServicesEntity, clock: ManualClock
) -> None:
    """actw is a 7-field crontab entry, UTC: second minute hour day month weekday year
    (TS-0004 m2m:scheduleEntry; ACME's format). The clock starts Thursday 2026-01-01 00:00."""
    cse = meters
    office_hours = {"actw": ["* * 8-17 * * 1-5 *"]}
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 2, "acco": [office_hours]}]))
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    clock.advance(9 * 3600)  # Thursday 09:00
    assert await _reads(cse, "Cm2") == RSC.OK
    clock.advance(2 * 86400)  # Saturday 09:00
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_any_context_of_a_rule_may_match(
    meters: CommonServicesEntity, clock: ManualClock
) -> None:
    cse = meters
    contexts = [
        {"actw": ["* * * * * * 2025"]},
        {"actw": ["0-29 * * 1 1 * 2026", "*/2 * * * * * *"]},
    ]
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 2, "acco": contexts}]))
    assert await _reads(cse, "Cm2") == RSC.OK  # 00:00:00 on 1 January 2026
    clock.advance(31)  # second 31: odd, past 29
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_rule_with_an_empty_context_list_never_applies(
    meters: CommonServicesEntity,
) -> None:
    """As ACME reads it: the rule holds only in one of its contexts, and it lists none."""
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 2, "acco": []}]))
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


@pytest.mark.parametrize(
    "window",
    ["* * * * *", "foo * * * * * *", "60 * * * * * *", "*/0 * * * * * *", "5/2 * * * * * *", ""],
)
async def test_malformed_time_windows_are_refused(
    meters: CommonServicesEntity, window: str
) -> None:
    """ACME stores them and fails every later check with 5000; we refuse them at once."""
    rule = {"acor": ["Cm2"], "acop": 2, "acco": [{"actw": [window]}]}
    body = {"m2m:acp": {"pv": {"acr": [rule]}, "pvs": OWNER}}
    assert (await meters.handle(create("cse-in/m1", 1, body, "Cm1"))).status == RSC.BAD_REQUEST


async def test_a_rule_with_attributes_grants_only_those_attributes(
    meters: CommonServicesEntity,
) -> None:
    """aca (TS-0001 R4 accessControlAttributes): RETRIEVE of only listed attributes (a
    partial retrieve), UPDATE of only listed ones; the whole resource is not granted."""
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 2 | 4, "aca": ["lbl"]}]))
    assert await _reads(cse, "Cm2", "lbl") == RSC.OK
    denied = RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert await _reads(cse, "Cm2", "lbl", "mni") == denied
    assert await _reads(cse, "Cm2") == denied
    updated = await cse.handle(update("cse-in/m1/c", {"m2m:cnt": {"lbl": ["b"]}}, "Cm2"))
    assert updated.status == RSC.UPDATED
    assert updated.content == {"m2m:cnt": {"lbl": ["b"]}}  # nothing it may not read
    assert (await cse.handle(update("cse-in/m1/c", {"m2m:cnt": {"mni": 3}}, "Cm2"))).status == (
        denied
    )


async def test_an_attribute_grant_does_not_reach_answers_that_show_other_attributes(
    meters: CommonServicesEntity,
) -> None:
    """With children (rcn 4) the whole resource is shown, and `la` shows an instance's
    attributes: a grant of some attributes covers neither."""
    cse = meters
    await cse.handle(create("cse-in/m1/c", 4, {"m2m:cin": {"con": "1"}}, "Cm1"))
    own = (await cse.handle(retrieve("cse-in/m1/c"))).content["m2m:cnt"]
    names = sorted({*own, "acpi"})  # every attribute of the container, once governed
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 2, "aca": names}]))
    assert await _reads(cse, "Cm2") == RSC.OK
    denied = RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    with_children = retrieve("cse-in/m1/c", "Cm2", rcn=4, attribute_list=("lbl",))
    assert (await cse.handle(with_children)).status == RSC.OK
    assert (await cse.handle(retrieve("cse-in/m1/c/la", "Cm2"))).status == denied  # con, cs...
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 2, "aca": ["lbl"]}], "q"))
    assert await _reads(cse, "Cm2", "lbl") == RSC.OK
    assert (await cse.handle(with_children)).status == denied


async def test_a_rule_with_attributes_grants_nothing_to_other_originators(
    meters: CommonServicesEntity,
) -> None:
    """ACME collects a rule's attributes before it looks at acor, so anyone may read and
    change them; here a rule is only ever for its own originators."""
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm3"], "acop": 2 | 4, "aca": ["lbl"]}]))
    denied = RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert await _reads(cse, "Cm2", "lbl") == denied
    assert (await cse.handle(update("cse-in/m1/c", {"m2m:cnt": {"lbl": ["b"]}}, "Cm2"))).status == (
        denied
    )


async def test_a_create_is_granted_by_attributes_when_it_sets_only_those(
    meters: CommonServicesEntity,
) -> None:
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 1, "aca": ["con"]}]))
    made = await cse.handle(create("cse-in/m1/c", 4, {"m2m:cin": {"con": "x"}}, "Cm2"))
    assert made.status == RSC.CREATED
    assert made.content == {"m2m:cin": {"con": "x"}}
    labelled = {"m2m:cin": {"con": "x", "lbl": ["y"]}}
    refused = await cse.handle(create("cse-in/m1/c", 4, labelled, "Cm2"))
    assert refused.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_redelivered_create_shows_no_more_than_the_first_answer_did(
    meters: CommonServicesEntity,
) -> None:
    # A CREATE delivered twice (MQTT/CoAP redelivery) is answered from the request record;
    # the answer must still show only the attributes the grant covers.
    from dataclasses import replace

    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 1, "aca": ["con"]}]))
    first = create("cse-in/m1/c", 4, {"m2m:cin": {"con": "x"}}, "Cm2", deduplicate=True)
    made = await cse.handle(first)
    again = await cse.handle(replace(first))
    assert made.status == again.status == RSC.CREATED
    assert again.content == made.content == {"m2m:cin": {"con": "x"}}


# ---- 5. changing and removing acpi (TS-0001 9.6.1.3.2) -------------------------------------


async def test_acpi_must_be_the_only_attribute_of_its_update(
    meters: CommonServicesEntity,
) -> None:
    """ACME refuses an UPDATE that changes acpi and anything else with 4000."""
    cse = meters
    policy = await _policy(cse, [])
    both = {"m2m:cnt": {"acpi": [policy], "lbl": ["b"]}}
    assert (await cse.handle(update("cse-in/m1/c", both, "Cm1"))).status == RSC.BAD_REQUEST


async def test_removing_acpi_needs_update_in_self_privileges_and_restores_the_default(
    meters: CommonServicesEntity,
) -> None:
    cse = meters
    await _govern(cse, await _policy(cse, [{"acor": ["Cm2"], "acop": 63}]))
    assert await _reads(cse, "Cm2") == RSC.OK
    removal = {"m2m:cnt": {"acpi": None}}
    # Cm2 holds every pv privilege, but none in pvs
    refused = await cse.handle(update("cse-in/m1/c", removal, "Cm2"))
    assert refused.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    removed = await cse.handle(update("cse-in/m1/c", removal, "Cm1"))
    assert removed.status == RSC.UPDATED
    assert "acpi" not in removed.content["m2m:cnt"]
    # the default rule again: its creator only
    assert await _reads(cse, "Cm1") == RSC.OK
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_resource_whose_policies_are_all_deleted_follows_the_default_rule(
    meters: CommonServicesEntity,
) -> None:
    """ACME removes a deleted policy from every acpi, and a resource left with none is its
    creator's again; reading a missing policy as absent does the same without that scan."""
    cse = meters
    policy = await _policy(cse, [{"acor": ["Cm2"], "acop": 2}])
    await _govern(cse, policy)
    assert await _reads(cse, "Cm1") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await cse.handle(delete(policy, "Cm1"))).status == RSC.DELETED
    assert await _reads(cse, "Cm1") == RSC.OK
    assert await _reads(cse, "Cm2") == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_acpi_is_kept_as_the_policies_resource_ids(meters: CommonServicesEntity) -> None:
    """As ACME does: a policy named by its path is stored by its resource ID, so a policy
    made later under the same name cannot take over the resource."""
    cse = meters
    policy = await _policy(cse, [{"acor": ["Cm2"], "acop": 2}], "byname")
    await _govern(cse, "cse-in/m1/byname")
    shown = await cse.handle(retrieve("cse-in/m1/c", "CAdmin"))
    assert shown.content["m2m:cnt"]["acpi"] == [policy]
    made = await cse.handle(
        create("cse-in/m1", 3, {"m2m:cnt": {"rn": "d", "acpi": ["-/m1/byname"]}}, "Cm1")
    )
    assert made.status == RSC.CREATED
    assert made.content["m2m:cnt"]["acpi"] == [policy]

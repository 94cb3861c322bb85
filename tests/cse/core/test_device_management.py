"""<node> and <mgmtObj>: device management resources (TS-0001 9.6.15, 9.6.18, Annex D;
TS-0004 7.4.15, 7.4.16 and its Annex D attribute tables).

One type number (13) with a specialization per wrapper key and `mgd`: a CREATE names the
specialization by its key, the stored resource keeps it by its `mgd`, and everything shown
of it (answers, notifications, children) uses its own key.
"""

from __future__ import annotations

from typing import Any

import pytest

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import NotificationReceiver, ae_body, create, delete, retrieve, update

NODE = "cse-in/meter-node"
FIRMWARE = {"mgd": 1001, "vr": "3.1.0", "fwn": "metrology", "url": "urn:fw:3.1.0", "ud": False}
# One valid body per specialization this CSE has (TS-0001 Annex D, mandatory ones as ACME).
SPECIALIZATIONS: dict[str, dict[str, Any]] = {
    "m2m:fwr": FIRMWARE,
    "m2m:mem": {"mgd": 1003, "mma": 2048, "mmt": 65536},
    "m2m:bat": {"mgd": 1006, "btl": 87, "bts": 1},
    "m2m:dvi": {"mgd": 1007, "dlb": "SN-1", "man": "Acme", "mod": "E1", "dty": "meter"},
    "m2m:rbo": {"mgd": 1009, "rbo": False, "far": False},
}


@pytest.fixture
async def node(cse: CommonServicesEntity) -> CommonServicesEntity:
    made = await cse.handle(create("cse-in", 14, {"m2m:nod": {"rn": "meter-node", "ni": "m1"}}))
    assert made.status == RSC.CREATED, made.content
    return cse


async def _make(cse: CommonServicesEntity, key: str, name: str, **changes: Any) -> Any:
    body = {key: {"rn": name, **SPECIALIZATIONS[key], **changes}}
    return await cse.handle(create(NODE, 13, body))


# ---- <node> ------------------------------------------------------------------------------------


async def test_a_node_needs_its_node_id(cse: CommonServicesEntity) -> None:
    # TS-0001 9.6.18: nodeID is mandatory (1 RW).
    missing = await cse.handle(create("cse-in", 14, {"m2m:nod": {"rn": "n"}}))
    assert missing.status == RSC.BAD_REQUEST
    assert "ni" in missing.content["m2m:dbg"]
    made = await cse.handle(create("cse-in", 14, {"m2m:nod": {"ni": "dev-1", "mgca": ["x"]}}))
    assert made.status == RSC.CREATED, made.content
    shown = made.content["m2m:nod"]
    assert (shown["ty"], shown["ni"], shown["mgca"]) == (14, "dev-1", ["x"])


async def test_a_node_is_made_under_the_cse_base_or_a_remote_cse_only(
    cse: CommonServicesEntity,
) -> None:
    # TS-0001 9.6.18: <node> lives under <CSEBase> (and, as a device behind a registered CSE,
    # under its <remoteCSE>); elsewhere 4108.
    csr = {"csi": "/id-mn", "cb": "/id-mn/cse-mn", "rr": True, "srv": ["3"]}
    assert (await cse.handle(create("cse-in", 16, {"m2m:csr": csr}, "/id-mn"))).status == (
        RSC.CREATED
    )
    body = {"m2m:nod": {"ni": "dev-2"}}
    assert (await cse.handle(create("cse-in/id-mn", 14, body))).status == RSC.CREATED
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), "Cmeter"))).status == (
        RSC.CREATED
    )
    under_ae = await cse.handle(create("cse-in/meter", 14, body))
    assert under_ae.status == RSC.INVALID_CHILD_RESOURCE_TYPE


async def test_an_ae_may_not_make_a_node_under_the_cse_base(cse: CommonServicesEntity) -> None:
    # The CSEBase's default rule: registered entities may read and discover it, not add to it.
    assert (await cse.handle(create("cse-in", 2, ae_body("meter"), "Cmeter"))).status == (
        RSC.CREATED
    )
    refused = await cse.handle(create("cse-in", 14, {"m2m:nod": {"ni": "x"}}, "Cmeter"))
    assert refused.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


# ---- <mgmtObj> specializations -------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SPECIALIZATIONS))
async def test_each_specialization_is_made_and_shown_under_its_own_key(
    node: CommonServicesEntity, key: str
) -> None:
    made = await _make(node, key, "obj")
    assert made.status == RSC.CREATED, made.content
    shown = made.content[key]
    assert shown["ty"] == 13 and shown["mgd"] == SPECIALIZATIONS[key]["mgd"]
    read = await node.handle(retrieve(f"{NODE}/obj"))
    assert list(read.content) == [key]
    listed = await node.handle(retrieve(NODE, rcn=4))
    assert [child["rn"] for child in listed.content["m2m:nod"][key]] == ["obj"]


@pytest.mark.parametrize("key", sorted(SPECIALIZATIONS))
async def test_every_mandatory_attribute_of_a_specialization_is_required(
    node: CommonServicesEntity, key: str
) -> None:
    # TS-0004 Annex D: the M attributes of each specialization, mgd among them.
    for name in SPECIALIZATIONS[key]:
        if key == "m2m:rbo" and name != "mgd":
            continue  # rbo and far are optional
        body = {key: {n: v for n, v in SPECIALIZATIONS[key].items() if n != name}}
        refused = await node.handle(create(NODE, 13, body))
        assert refused.status == RSC.BAD_REQUEST, (name, refused.content)
        assert name in refused.content["m2m:dbg"]


async def test_mgd_must_be_the_one_of_the_wrapper_key(node: CommonServicesEntity) -> None:
    # mgd 1003 is memory; the content says firmware.
    refused = await _make(node, "m2m:fwr", "fw", mgd=1003)
    assert refused.status == RSC.BAD_REQUEST
    assert "m2m:fwr" in refused.content["m2m:dbg"]
    # mgd is set once: it cannot be changed into another specialization.
    assert (await _make(node, "m2m:fwr", "fw")).status == RSC.CREATED
    changed = await node.handle(update(f"{NODE}/fw", {"m2m:fwr": {"mgd": 1003}}))
    assert changed.status == RSC.BAD_REQUEST


async def test_a_key_that_is_no_known_specialization_is_refused(
    node: CommonServicesEntity,
) -> None:
    for key in ("m2m:mgo", "m2m:swr", "m2m:cnt", "fwr"):
        refused = await node.handle(create(NODE, 13, {key: {"mgd": 1001}}))
        assert refused.status == RSC.BAD_REQUEST, key
    # A specialization's key with another type number is the wrong type, as for any type.
    wrong = await node.handle(create(NODE, 3, {"m2m:fwr": FIRMWARE}))
    assert wrong.status == RSC.BAD_REQUEST


async def test_a_mgmt_obj_is_made_under_a_node_only(node: CommonServicesEntity) -> None:
    # TS-0001 9.6.15: the parent of a <mgmtObj> is a <node>.
    assert (await node.handle(create("cse-in", 2, ae_body("meter"), "Cmeter"))).status == (
        RSC.CREATED
    )
    for parent in ("cse-in", "cse-in/meter"):
        refused = await node.handle(create(parent, 13, {"m2m:fwr": FIRMWARE}))
        assert refused.status == RSC.INVALID_CHILD_RESOURCE_TYPE, parent
    assert (await _make(node, "m2m:fwr", "fw")).status == RSC.CREATED
    nested = await node.handle(create(f"{NODE}/fw", 13, {"m2m:fwr": FIRMWARE}))
    assert nested.status == RSC.INVALID_CHILD_RESOURCE_TYPE


async def test_an_update_is_checked_against_the_specialization(
    node: CommonServicesEntity,
) -> None:
    assert (await _make(node, "m2m:bat", "bat")).status == RSC.CREATED
    for body in ({"btl": 101}, {"bts": 8}, {"vr": "1.0"}):
        refused = await node.handle(update(f"{NODE}/bat", {"m2m:bat": body}))
        assert refused.status == RSC.BAD_REQUEST, body
    other_key = await node.handle(update(f"{NODE}/bat", {"m2m:mem": {"mma": 1}}))
    assert other_key.status == RSC.BAD_REQUEST
    done = await node.handle(update(f"{NODE}/bat", {"m2m:bat": {"btl": 12, "bts": 5}}))
    assert done.status == RSC.UPDATED
    assert (done.content["m2m:bat"]["btl"], done.content["m2m:bat"]["bts"]) == (12, 5)


# ---- firmware: the update trigger and its status (TS-0001 D.2) ---------------------------------


async def test_a_new_firmware_has_not_been_asked_to_update(node: CommonServicesEntity) -> None:
    made = await _make(node, "m2m:fwr", "fw")
    assert made.content["m2m:fwr"]["uds"] == {"acn": "", "sus": 0}  # uninitialized
    # updateStatus is the CSE's to set on CREATE (NP).
    refused = await _make(node, "m2m:fwr", "fw2", uds={"acn": "x", "sus": 1})
    assert refused.status == RSC.BAD_REQUEST


async def test_the_update_trigger_and_its_status_are_kept_as_reported(
    node: CommonServicesEntity,
) -> None:
    assert (await _make(node, "m2m:fwr", "fw")).status == RSC.CREATED
    trigger = {"vr": "3.2.0", "url": "urn:fw:3.2.0", "ud": True, "uds": {"acn": "a", "sus": 3}}
    asked = await node.handle(update(f"{NODE}/fw", {"m2m:fwr": trigger}))
    assert asked.status == RSC.UPDATED, asked.content
    # This CSE carries no update out itself: the trigger stays until the device reports.
    shown = (await node.handle(retrieve(f"{NODE}/fw"))).content["m2m:fwr"]
    assert (shown["ud"], shown["uds"], shown["vr"]) == (True, {"acn": "a", "sus": 3}, "3.2.0")
    done = {"ud": False, "uds": {"acn": "a", "sus": 1}}
    assert (await node.handle(update(f"{NODE}/fw", {"m2m:fwr": done}))).status == RSC.UPDATED
    shown = (await node.handle(retrieve(f"{NODE}/fw"))).content["m2m:fwr"]
    assert (shown["ud"], shown["uds"]["sus"]) == (False, 1)


NOT_ACTION_STATUSES = [
    {"acn": "a"},
    {"acn": "a", "sus": 4},
    {"acn": 1, "sus": 1},
    {"acn": "a", "sus": True},
    {"acn": "a", "sus": 1, "x": 0},
    "done",
]


@pytest.mark.parametrize("status", NOT_ACTION_STATUSES)
async def test_an_update_status_that_is_no_action_status_is_refused(
    node: CommonServicesEntity, status: Any
) -> None:
    assert (await _make(node, "m2m:fwr", "fw")).status == RSC.CREATED
    refused = await node.handle(update(f"{NODE}/fw", {"m2m:fwr": {"uds": status}}))
    assert refused.status == RSC.BAD_REQUEST


async def test_reboot_and_factory_reset_cannot_be_asked_at_once(
    node: CommonServicesEntity,
) -> None:
    assert (await _make(node, "m2m:rbo", "rbo")).status == RSC.CREATED
    both = await node.handle(update(f"{NODE}/rbo", {"m2m:rbo": {"rbo": True, "far": True}}))
    assert both.status == RSC.BAD_REQUEST
    one = await node.handle(update(f"{NODE}/rbo", {"m2m:rbo": {"rbo": True}}))
    assert one.status == RSC.UPDATED and one.content["m2m:rbo"]["rbo"] is True


# ---- discovery, notifications, deletion ---------------------------------------------------------


async def _discover(cse: CommonServicesEntity, **criteria: Any) -> list[str]:
    attributes = tuple(criteria.pop("attributes", ()))
    found = await cse.handle(
        retrieve("cse-in", fc=FilterCriteria(filter_usage=1, attributes=attributes, **criteria))
    )
    assert found.status == RSC.OK, found.content
    return sorted(found.content["m2m:uril"])


async def test_discovery_finds_mgmt_objs_by_type_and_by_mgd(node: CommonServicesEntity) -> None:
    for key in ("m2m:fwr", "m2m:mem", "m2m:bat"):
        assert (await _make(node, key, key[4:])).status == RSC.CREATED
    assert await _discover(node, resource_types=(13,)) == [
        f"{NODE}/bat",
        f"{NODE}/fwr",
        f"{NODE}/mem",
    ]
    assert await _discover(node, resource_types=(13,), attributes=[("mgd", "1001")]) == [
        f"{NODE}/fwr"
    ]
    assert await _discover(node, resource_types=(14,)) == [NODE]
    # A specialization's own attribute works as a condition too.
    assert await _discover(node, attributes=[("fwn", "metrology")]) == [f"{NODE}/fwr"]


async def test_a_subscription_on_a_firmware_hears_its_update_under_its_key(
    node: CommonServicesEntity,
) -> None:
    assert (await _make(node, "m2m:fwr", "fw")).status == RSC.CREATED
    async with NotificationReceiver() as receiver:
        sub = {"m2m:sub": {"rn": "s", "nu": [receiver.url], "enc": {"net": [1]}, "nct": 2}}
        assert (await node.handle(create(f"{NODE}/fw", 23, sub))).status == RSC.CREATED
        changed = await node.handle(update(f"{NODE}/fw", {"m2m:fwr": {"ud": True}}))
        assert changed.status == RSC.UPDATED
        received = await receiver.wait_for(2)  # the verification request, then the update
    representation = received[1]["body"]["m2m:sgn"]["nev"]["rep"]
    assert list(representation) == ["m2m:fwr"] and representation["m2m:fwr"]["ud"] is True


async def test_deleting_a_node_deletes_its_mgmt_objs(node: CommonServicesEntity) -> None:
    assert (await _make(node, "m2m:dvi", "dvi")).status == RSC.CREATED
    assert (await node.handle(delete(NODE))).status == RSC.DELETED
    assert (await node.handle(retrieve(f"{NODE}/dvi"))).status == RSC.NOT_FOUND

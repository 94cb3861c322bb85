"""A group's members (TS-0001 9.6.13, 10.2.7): `mid` and `cnm` lose a member that is deleted,
however it goes (as ACME keeps them), and `fopt` reaches container members."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cse.core.clock import ManualClock, format_timestamp
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.sqlite import SQLiteStorage
from tests.helpers import LAB, ae_body, create, delete, retrieve, update

AE = "Cmeter"


@pytest.fixture
async def meters(cse: CommonServicesEntity) -> CommonServicesEntity:
    for name in ("m1", "m2"):
        await _made(cse, "cse-in", 2, ae_body(name), f"C{name}")
        await _made(cse, f"cse-in/{name}", 3, {"m2m:cnt": {"rn": "cmd"}}, f"C{name}")
        await _made(cse, f"cse-in/{name}/cmd", 4, {"m2m:cin": {"con": f"{name}-1"}}, f"C{name}")
    return cse


async def _made(cse: CommonServicesEntity, to: str, ty: int, body: Any, by: str = "CAdmin") -> dict:
    response = await cse.handle(create(to, ty, body, by))
    assert response.status == RSC.CREATED, response.content
    ((_, attributes),) = response.content.items()
    return dict(attributes)


async def _group(
    cse: CommonServicesEntity, mid: list[str], rn: str = "g", to: str = "cse-in"
) -> dict:
    return await _made(cse, to, 9, {"m2m:grp": {"rn": rn, "mnm": 10, "mid": mid}})


async def _members(cse: CommonServicesEntity, path: str = "cse-in/g") -> tuple[list[str], int]:
    group = (await cse.handle(retrieve(path))).content["m2m:grp"]
    return list(group["mid"]), int(group["cnm"])


async def test_a_deleted_member_leaves_mid_and_cnm(meters: CommonServicesEntity) -> None:
    group = await _group(meters, ["cse-in/m1/cmd", "cse-in/m2/cmd"])
    m2 = group["mid"][1]
    assert (await meters.handle(delete("cse-in/m1/cmd", "Cm1"))).status == RSC.DELETED
    assert await _members(meters) == ([m2], 1)
    fanned = await meters.handle(retrieve("cse-in/g/fopt"))
    assert [r["rsc"] for r in fanned.content["m2m:agr"]["m2m:rsp"]] == [2000]


async def test_deleting_what_holds_a_member_removes_it_from_every_group(
    meters: CommonServicesEntity,
) -> None:
    await _group(meters, ["cse-in/m1/cmd", "cse-in/m2/cmd"], "g")
    await _group(meters, ["cse-in/m1/cmd", "cse-in/m1"], "h")
    assert (await meters.handle(delete("cse-in/m1", "Cm1"))).status == RSC.DELETED
    assert (await _members(meters, "cse-in/g"))[1] == 1
    assert await _members(meters, "cse-in/h") == ([], 0)


async def test_an_expired_member_leaves_the_group(
    meters: CommonServicesEntity, clock: ManualClock
) -> None:
    body = {"m2m:cnt": {"rn": "brief", "et": format_timestamp(clock.now() + 60)}}
    await _made(meters, "cse-in/m1", 3, body, "Cm1")
    await _group(meters, ["cse-in/m1/brief", "cse-in/m2/cmd"])
    clock.advance(120)
    assert await meters.expiry.sweep() == 1
    assert (await _members(meters))[1] == 1


async def test_an_evicted_instance_leaves_the_group(meters: CommonServicesEntity) -> None:
    await meters.handle(update("cse-in/m1/cmd", {"m2m:cnt": {"mni": 1}}, "Cm1"))
    first = (await meters.handle(retrieve("cse-in/m1/cmd/la", "Cm1"))).content["m2m:cin"]
    await _group(meters, [first["ri"], "cse-in/m2/cmd"])
    await _made(meters, "cse-in/m1/cmd", 4, {"m2m:cin": {"con": "m1-2"}}, "Cm1")  # evicts it
    assert (await meters.handle(retrieve(first["ri"], "Cm1"))).status == RSC.NOT_FOUND
    assert (await _members(meters))[1] == 1


async def test_a_group_deleted_with_its_members_stays_deleted(
    meters: CommonServicesEntity,
) -> None:
    await _group(meters, ["cse-in/m1/cmd"], "own", to="cse-in/m1")
    assert (await meters.handle(delete("cse-in/m1", "Cm1"))).status == RSC.DELETED
    assert (await meters.handle(retrieve("cse-in/m1/own"))).status == RSC.NOT_FOUND


async def test_a_member_added_by_update_leaves_when_deleted(meters: CommonServicesEntity) -> None:
    await _group(meters, ["cse-in/m2/cmd"])
    changed = await meters.handle(
        update("cse-in/g", {"m2m:grp": {"mid": ["cse-in/m2/cmd", "cse-in/m1/cmd"]}})
    )
    assert changed.content["m2m:grp"]["cnm"] == 2
    await meters.handle(delete("cse-in/m1/cmd", "Cm1"))
    assert (await _members(meters))[1] == 1


async def test_groups_made_before_a_restart_still_lose_deleted_members(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = CSESettings(egress=LAB, expiry_check_interval=3600)
    async with CommonServicesEntity(
        SQLiteStorage(tmp_path / "cse.db"), settings, clock=clock
    ) as cse:
        await _made(cse, "cse-in", 2, ae_body("meter"), AE)
        await _made(cse, "cse-in/meter", 3, {"m2m:cnt": {"rn": "cmd"}}, AE)
        await _group(cse, ["cse-in/meter/cmd", "cse-in/meter"])
    async with CommonServicesEntity(
        SQLiteStorage(tmp_path / "cse.db"), settings, clock=clock
    ) as cse:
        assert (await cse.handle(delete("cse-in/meter/cmd", AE))).status == RSC.DELETED
        mid, count = await _members(cse)
        assert count == 1 and mid == [AE]


async def test_fan_out_reads_container_members_and_their_latest_instance(
    meters: CommonServicesEntity,
) -> None:
    # Members named in every form (structured, SP-relative, unstructured), read
    # by the AE that made the group: RETRIEVE through fopt and fopt/la (TS-0001 10.2.7.6).
    m1 = (await meters.handle(retrieve("cse-in/m1/cmd", "Cm1"))).content["m2m:cnt"]["ri"]
    mid = ["cse-in/m1/cmd", "/id-in/cse-in/m2/cmd", m1]
    group = await _made(
        meters, "cse-in/m1", 9, {"m2m:grp": {"rn": "g", "mnm": 5, "mid": mid}}, "Cm1"
    )
    assert group["cnm"] == 2  # the same container named twice is one member
    fanned = await meters.handle(retrieve("cse-in/m1/g/fopt", "Cm1"))
    answers = fanned.content["m2m:agr"]["m2m:rsp"]
    assert [a["rsc"] for a in answers] == [2000, 4103]  # m2's container is not Cm1's to read
    assert answers[0]["pc"]["m2m:cnt"]["rn"] == "cmd"
    latest = await meters.handle(retrieve("cse-in/m1/g/fopt/la", "Cm1"))
    answers = latest.content["m2m:agr"]["m2m:rsp"]
    assert answers[0]["rsc"] == 2000 and answers[0]["pc"]["m2m:cin"]["con"] == "m1-1"
    by_admin = await meters.handle(retrieve("cse-in/m1/g/fopt/la"))
    assert [a["pc"]["m2m:cin"]["con"] for a in by_admin.content["m2m:agr"]["m2m:rsp"]] == [
        "m1-1",
        "m2-1",
    ]

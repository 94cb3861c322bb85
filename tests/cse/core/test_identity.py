"""An originator is believed only as far as the principal its transport proved allows."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Principal, Role, Trust, may_speak_as
from cse.core.primitives import Request
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import ae_body, create, retrieve

METER = Principal(Role.DEVICE, "mtr-1", "Cmtr-1", "oscore")
OTHER_METER = Principal(Role.DEVICE, "mtr-2", "Cmtr-2", "oscore")
HEADEND = Principal(Role.CSE, "id-in", "/id-in", "tls")
OPERATOR = Principal(Role.ADMIN, "alice", "CAdmin", "token")
CIN = {"m2m:cin": {"con": "42"}}


def as_(principal: Principal, request: Request) -> Request:
    return replace(request, principal=principal)


@pytest.fixture
async def cse() -> CommonServicesEntity:  # type: ignore[misc]
    settings = CSESettings(
        cse_id="/id-dap1",
        cse_name="dap1",
        role="mn",
        trusted_originators=("/id-in", "Cmdms"),
        expiry_check_interval=3600,
    )
    async with CommonServicesEntity(MemoryStorage(), settings) as entity:
        for principal in (METER, OTHER_METER):
            registered = await entity.handle(
                as_(principal, create("dap1", 2, ae_body(principal.name), principal.originator))
            )
            assert registered.status == RSC.CREATED, registered.content
            made = await entity.handle(
                as_(
                    principal,
                    create(f"dap1/{principal.name}", 3, {"m2m:cnt": {"rn": "reading"}},
                           principal.originator),
                )
            )  # fmt: skip
            assert made.status == RSC.CREATED
        yield entity


async def test_a_meter_writes_its_own_readings(cse: CommonServicesEntity) -> None:
    reply = await cse.handle(as_(METER, create("dap1/mtr-1/reading", 4, CIN, "Cmtr-1")))
    assert reply.status == RSC.CREATED


@pytest.mark.parametrize(
    "claimed",
    ["Cmtr-2", "CAdmin", "/id-in/Cheadend", "/id-dap1", "Cmdms"],
    ids=["another-meter", "admin", "headend-app", "the-gateway-itself", "trusted-app"],
)
async def test_a_meter_cannot_speak_as_anyone_else(cse: CommonServicesEntity, claimed: str) -> None:
    reply = await cse.handle(as_(METER, create("dap1/mtr-2/reading", 4, CIN, claimed)))
    assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    listing = await cse.handle(retrieve("dap1/mtr-2/reading", rcn=4))
    assert listing.content["m2m:cnt"].get("m2m:cin") is None


async def test_a_meter_registers_only_under_its_provisioned_name(
    cse: CommonServicesEntity,
) -> None:
    squat = await cse.handle(as_(METER, create("dap1", 2, ae_body("mtr-9"), "Cmtr-9")))
    assert squat.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    renamed = await cse.handle(as_(METER, create("dap1", 2, ae_body("mtr-9"), "Cmtr-1")))
    assert renamed.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await cse.handle(retrieve("dap1/mtr-9"))).status == RSC.NOT_FOUND


async def test_a_provisioned_meter_without_an_originator_gets_its_own_ae_id() -> None:
    async with CommonServicesEntity(
        MemoryStorage(), CSESettings(expiry_check_interval=3600)
    ) as cse:
        body = {"m2m:ae": {"api": "Nmeter", "rr": True, "srv": ["3"]}}
        reply = await cse.handle(as_(METER, create("cse-in", 2, body, None)))
        assert reply.status == RSC.CREATED
        assert reply.content["m2m:ae"]["aei"] == "Cmtr-1"
        assert reply.content["m2m:ae"]["rn"] == "mtr-1"


@pytest.mark.parametrize(
    "claimed", ["CAdmin", "/id-in", "/id-in/Cheadend", "/id-dap1", "Cmdms", "/id-other"]
)
async def test_a_plain_listener_believes_no_privileged_originator(
    cse: CommonServicesEntity, claimed: str
) -> None:
    reply = await cse.handle(
        as_(Principal.unproven(), create("dap1/mtr-1/reading", 4, CIN, claimed))
    )
    assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_plain_listener_believes_a_claimed_meter(cse: CommonServicesEntity) -> None:
    reply = await cse.handle(
        as_(Principal.unproven(), create("dap1/mtr-1/reading", 4, CIN, "Cmtr-1"))
    )
    assert reply.status == RSC.CREATED


async def test_the_head_end_speaks_for_its_applications_only(cse: CommonServicesEntity) -> None:
    command = create("dap1/mtr-1/reading", 4, CIN, "/id-in/Cheadend")
    assert (await cse.handle(as_(HEADEND, command))).status == RSC.CREATED
    forged = create("dap1/mtr-1/reading", 4, CIN, "/id-other/Capp")
    assert (await cse.handle(as_(HEADEND, forged))).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    admin = create("dap1/mtr-1/reading", 4, CIN, "CAdmin")
    assert (await cse.handle(as_(HEADEND, admin))).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_an_operator_credential_is_the_admin(cse: CommonServicesEntity) -> None:
    reply = await cse.handle(as_(OPERATOR, retrieve("dap1/mtr-1/reading", "CAdmin")))
    assert reply.status == RSC.OK
    other = await cse.handle(as_(OPERATOR, retrieve("dap1/mtr-1/reading", "Cmtr-1")))
    assert other.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_device_named_like_a_trusted_application_gains_nothing(
    cse: CommonServicesEntity,
) -> None:
    impostor = Principal(Role.DEVICE, "mdms", "Cmdms", "oscore")
    reply = await cse.handle(as_(impostor, retrieve("dap1/mtr-1/reading", "Cmdms")))
    assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


def test_what_each_listener_trust_gives_a_request_without_credentials() -> None:
    assert Trust.CREDENTIAL.principal_without_credential() is None
    assert Trust.CLAIMED.principal_without_credential() == Principal.unproven()
    assert Trust.INSECURE.principal_without_credential() == Principal.unchecked()
    assert may_speak_as(Principal.unchecked(), "CAdmin", privileged=True)
    assert may_speak_as(Principal.local(), "/id-in", privileged=True)

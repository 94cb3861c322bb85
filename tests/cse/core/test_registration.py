"""AE and remoteCSE registration, originator checks and release versions."""

from __future__ import annotations

from cse.core.handler import CommonServicesEntity
from cse.core.types import ResponseStatusCode as RSC
from tests.helpers import ae_body, create, delete, retrieve


async def test_ae_registers_with_the_originator_as_ae_id(cse: CommonServicesEntity) -> None:
    response = await cse.handle(create("cse-in", 2, ae_body("meter1"), "Cmeter1"))
    assert response.status == RSC.CREATED
    ae = response.content["m2m:ae"]
    assert ae["ri"] == ae["aei"] == "Cmeter1"
    assert ae["pi"] == "id-in"
    assert ae["ct"] == ae["lt"]
    assert response.location == "cse-in/meter1"


async def test_empty_or_c_originator_gets_a_cse_assigned_id(cse: CommonServicesEntity) -> None:
    first = await cse.handle(create("cse-in", 2, ae_body("a"), ""))
    second = await cse.handle(create("cse-in", 2, ae_body("b"), "C"))
    assert first.status == second.status == RSC.CREATED
    ids = {first.content["m2m:ae"]["aei"], second.content["m2m:ae"]["aei"]}
    assert len(ids) == 2 and all(i.startswith("C") and len(i) > 1 for i in ids)


async def test_reregistration_of_a_live_ae_is_refused(cse: CommonServicesEntity) -> None:
    await cse.handle(create("cse-in", 2, ae_body("m"), "Cm"))
    again = await cse.handle(create("cse-in", 2, ae_body("m2"), "Cm"))
    assert again.status == RSC.ORIGINATOR_HAS_ALREADY_REGISTERED


async def test_sp_relative_originator_names_the_same_ae(cse: CommonServicesEntity) -> None:
    await cse.handle(create("cse-in", 2, ae_body("m"), "Cm"))
    response = await cse.handle(retrieve("cse-in/m", "/id-in/Cm"))
    assert response.status == RSC.OK


async def test_bad_app_id_and_missing_attributes_are_bad_requests(
    cse: CommonServicesEntity,
) -> None:
    bad_api = ae_body("x")
    bad_api["m2m:ae"]["api"] = "meter"
    assert (await cse.handle(create("cse-in", 2, bad_api, "Cx"))).status == RSC.BAD_REQUEST
    no_rr = {"m2m:ae": {"api": "Nx", "srv": ["3"]}}
    response = await cse.handle(create("cse-in", 2, no_rr, "Cx"))
    assert response.status == RSC.BAD_REQUEST
    assert "rr" in response.content["m2m:dbg"]


async def test_an_unregistered_originator_has_no_privilege(cse: CommonServicesEntity) -> None:
    # An AE-ID or CSE-ID this CSE does not know holds no privilege here: 4103, as ACME answers
    # (it never sends 4106), not 4106.
    response = await cse.handle(retrieve("cse-in", "Cnobody"))
    assert response.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert "Cnobody" in response.content["m2m:dbg"]
    from_unknown_cse = await cse.handle(retrieve("cse-in", "/id-unknown"))
    assert from_unknown_cse.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_an_ae_the_cse_forgot_has_no_privilege_until_it_registers_again(
    cse: CommonServicesEntity,
) -> None:
    assert (await cse.handle(create("cse-in", 2, ae_body("gone"), "Cgone"))).status == RSC.CREATED
    assert (await cse.handle(delete("cse-in/gone"))).status == RSC.DELETED
    forgotten = await cse.handle(retrieve("cse-in", "Cgone"))
    assert forgotten.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await cse.handle(create("cse-in", 2, ae_body("gone"), "Cgone"))).status == RSC.CREATED
    assert (await cse.handle(retrieve("cse-in", "Cgone"))).status == RSC.OK


async def test_missing_originator_is_a_bad_request(cse: CommonServicesEntity) -> None:
    response = await cse.handle(retrieve("cse-in", None))
    assert response.status == RSC.BAD_REQUEST


async def test_release_versions(cse: CommonServicesEntity) -> None:
    for version in ("2a", "3", "4", "5"):
        response = await cse.handle(retrieve("cse-in", rvi=version))
        assert response.status == RSC.OK
        assert response.release_version == version
    assert (await cse.handle(retrieve("cse-in", rvi=None))).status == (
        RSC.RELEASE_VERSION_NOT_SUPPORTED
    )
    assert (await cse.handle(retrieve("cse-in", rvi="9"))).status == (
        RSC.RELEASE_VERSION_NOT_SUPPORTED
    )


async def test_cse_base_answers_with_its_identity(cse: CommonServicesEntity) -> None:
    cb = (await cse.handle(retrieve("cse-in"))).content["m2m:cb"]
    assert cb["csi"] == "/id-in" and cb["ri"] == "id-in" and cb["cst"] == 1
    assert {2, 3, 4, 23} <= set(cb["srt"])
    assert "et" not in cb


async def test_cse_base_cannot_be_created_updated_or_deleted(cse: CommonServicesEntity) -> None:
    from tests.helpers import delete, update

    assert (await cse.handle(create("cse-in", 5, {"m2m:cb": {}}))).status == (
        RSC.OPERATION_NOT_ALLOWED
    )
    assert (await cse.handle(update("cse-in", {"m2m:cb": {"lbl": ["x"]}}))).status == (
        RSC.OPERATION_NOT_ALLOWED
    )
    assert (await cse.handle(delete("cse-in"))).status == RSC.OPERATION_NOT_ALLOWED


def _csr(csi: str = "/id-mn") -> dict[str, object]:
    return {
        "m2m:csr": {
            "csi": csi,
            "cb": f"{csi}/cse-mn",
            "rr": True,
            "srv": ["3"],
            "poa": ["http://127.0.0.1:1"],
        }
    }


async def test_remote_cse_registration(cse: CommonServicesEntity) -> None:
    response = await cse.handle(create("cse-in", 16, _csr(), "/id-mn"))
    assert response.status == RSC.CREATED
    assert response.content["m2m:csr"]["ri"] == "id-mn"
    assert response.location == "cse-in/id-mn"
    again = await cse.handle(create("cse-in", 16, _csr(), "/id-mn"))
    assert again.status == RSC.ORIGINATOR_HAS_ALREADY_REGISTERED
    # the registered CSE is now a known originator
    assert (await cse.handle(retrieve("cse-in/id-mn", "/id-mn"))).status == RSC.OK


async def test_remote_cse_registration_by_an_ae_is_not_allowed(
    cse: CommonServicesEntity,
) -> None:
    response = await cse.handle(create("cse-in", 16, _csr(), "Cmeter"))
    assert response.status == RSC.OPERATION_NOT_ALLOWED


async def test_request_to_an_unknown_cse_is_not_found(cse: CommonServicesEntity) -> None:
    response = await cse.handle(retrieve("/id-other/cse-x"))
    assert response.status == RSC.NOT_FOUND

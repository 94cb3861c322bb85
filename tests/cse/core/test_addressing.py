"""SP-relative and absolute targets (TS-0001 9.3.1, TS-0004 7.3.2.6): ours are served, the
others refused as ACME refuses them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.types import Operation
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.helpers import LAB, ae_body, create, request, retrieve

AE = "Cmeter"


@pytest.fixture
async def provider(clock: ManualClock) -> AsyncIterator[CommonServicesEntity]:
    """A CSE that knows its service provider's SP-ID, with one AE registered."""
    settings = CSESettings(sp_id="grid.example.net", egress=LAB, expiry_check_interval=3600)
    async with CommonServicesEntity(MemoryStorage(), settings, clock=clock) as entity:
        assert (await entity.handle(create("cse-in", 2, ae_body("meter"), AE))).status == (
            RSC.CREATED
        )
        yield entity


async def test_our_sp_relative_and_absolute_addresses_reach_the_resource(
    provider: CommonServicesEntity,
) -> None:
    for to in ("/id-in/cse-in/meter", "//grid.example.net/id-in/cse-in/meter", "/id-in/Cmeter"):
        response = await provider.handle(retrieve(to, AE))
        assert response.status == RSC.OK, (to, response.content)
        assert response.content["m2m:ae"]["ri"] == AE


@pytest.mark.parametrize("operation", list(Operation)[:4])
async def test_an_absolute_address_in_another_sp_domain_is_not_found(
    provider: CommonServicesEntity, operation: Operation
) -> None:
    # ACME answers 4004 ("not registered to remote CSE") for a target in another SP domain,
    # whether or not the CSE-ID is ours, for every operation; no route leads there.
    for to in ("//other.example.net/id-in/cse-in/meter", "//other.example.net/id-mn/cse-mn"):
        response = await provider.handle(
            request(
                operation,
                to,
                AE,
                ty=3 if operation == Operation.CREATE else None,
                pc=_pc(operation),
            )
        )
        assert response.status == RSC.NOT_FOUND, (to, response.content)


@pytest.mark.parametrize("operation", list(Operation)[:4])
async def test_a_cse_id_that_is_neither_ours_nor_registered_is_not_found(
    provider: CommonServicesEntity, operation: Operation
) -> None:
    # TS-0004 7.3.2.6: an IN-CSE with no registered CSE of that CSE-ID answers NOT_FOUND; ACME
    # answers 4004 for SP-relative and absolute forms alike.
    for to in ("/id-xx/cse-xx/meter", "//grid.example.net/id-xx/cse-xx", "/id-xx/Cmeter"):
        response = await provider.handle(
            request(
                operation,
                to,
                AE,
                ty=3 if operation == Operation.CREATE else None,
                pc=_pc(operation),
            )
        )
        assert response.status == RSC.NOT_FOUND, (to, response.content)


def _pc(operation: Operation) -> dict[str, object] | None:
    if operation == Operation.CREATE:
        return {"m2m:cnt": {}}
    if operation == Operation.UPDATE:
        return {"m2m:cnt": {"lbl": ["x"]}}
    return None

"""Whom the MQTT binding believes: the topic's originator when it names a usable credential.

The broker here lets anyone publish anywhere (the ACL that ties a login to its topics is
tested on the shipped Mosquitto config in tests/deploy); these tests check the CSE's side of
the bargain: with trust "credential" a request is served only when its topic names a usable
credential of the store, with that credential's principal, and refused (4103) otherwise,
before it reaches the core.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cse.bindings.mqtt import MqttBinding, MqttClient
from cse.bindings.mqtt.server import TopicSender
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Principal, Role, Trust
from cse.core.primitives import Request
from cse.core.types import ResourceType as T
from cse.security.credentials import CredentialStore
from tests.brokers import Broker, private_broker, settings_for

CSE_ID = "/id-in"
ADMIN = "CAdmin"
_ids = itertools.count(1)


def register(meter: str) -> dict[str, Any]:
    return {
        "op": 1,
        "to": "cse-in",
        "fr": "C" + meter,
        "rqi": f"r{next(_ids)}",
        "rvi": "3",
        "ty": int(T.AE),
        "pc": {"m2m:ae": {"rn": meter, "api": "Nmeter", "rr": True, "srv": ["3"]}},
    }


def retrieve(originator: str, to: str = "cse-in") -> dict[str, Any]:
    return {"op": 2, "to": to, "fr": originator, "rqi": f"g{next(_ids)}", "rvi": "3"}


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:  # type: ignore[misc]
    with CredentialStore(tmp_path / "credentials.db") as opened:
        yield opened


class Recorder:
    """Wraps the CSE's handle(): which requests reached the core, with which principal."""

    def __init__(self, cse: CommonServicesEntity) -> None:
        self.seen: list[Request] = []
        self._handle = cse.handle
        cse.handle = self._record  # type: ignore[method-assign]

    async def _record(self, request: Request) -> Any:
        self.seen.append(request)
        return await self._handle(request)


async def test_a_meter_with_a_credential_is_served_as_that_credential(
    cse: CommonServicesEntity, broker: Broker, store: CredentialStore
) -> None:
    store.add_device("mtr-1")
    core = Recorder(cse)
    async with (
        MqttBinding(cse, settings_for(broker), credentials=store),
        MqttClient(settings_for(broker), "Cmtr-1") as meter,
    ):
        response = await meter.request(CSE_ID, register("mtr-1"), registration=True)
        assert response["rsc"] == 2001, response
        assert (await meter.request(CSE_ID, retrieve("Cmtr-1")))["rsc"] == 2000
    assert [request.principal for request in core.seen] == [
        Principal(Role.DEVICE, "mtr-1", "Cmtr-1", "mqtt")
    ] * 2


async def test_a_topic_without_a_credential_is_refused_before_the_core(
    cse: CommonServicesEntity, broker: Broker, store: CredentialStore
) -> None:
    store.add_device("mtr-1")
    core = Recorder(cse)
    async with (
        MqttBinding(cse, settings_for(broker), credentials=store),
        MqttClient(settings_for(broker), "Cstranger") as stranger,
        MqttClient(settings_for(broker), ADMIN) as admin,
    ):
        request = register("stranger")
        response = await stranger.request(CSE_ID, request, registration=True)
        assert response["rsc"] == 4103 and response["rqi"] == request["rqi"], response
        # The admin originator proves nothing over MQTT either: no credential is bound to it.
        assert (await admin.request(CSE_ID, retrieve(ADMIN)))["rsc"] == 4103
    assert core.seen == []


async def test_a_revoked_meter_is_refused_at_its_next_request_on_the_same_connection(
    cse: CommonServicesEntity, broker: Broker, store: CredentialStore, tmp_path: Path
) -> None:
    store.add_device("mtr-1")
    async with (
        MqttBinding(cse, settings_for(broker), credentials=store),
        MqttClient(settings_for(broker), "Cmtr-1") as meter,
    ):
        assert (await meter.request(CSE_ID, register("mtr-1"), registration=True))["rsc"] == 2001
        # Revoked by another process (the CLI), while the meter stays connected.
        with CredentialStore(tmp_path / "credentials.db") as cli:
            cli.revoke("mtr-1")
        assert (await meter.request(CSE_ID, retrieve("Cmtr-1")))["rsc"] == 4103


async def test_a_meter_naming_another_meter_as_originator_is_refused(
    cse: CommonServicesEntity, broker: Broker, store: CredentialStore
) -> None:
    store.add_device("mtr-1")
    store.add_device("mtr-2")
    async with (
        MqttBinding(cse, settings_for(broker), credentials=store),
        MqttClient(settings_for(broker), "Cmtr-1") as meter,
    ):
        assert (await meter.request(CSE_ID, register("mtr-1"), registration=True))["rsc"] == 2001
        forged = retrieve("Cmtr-2", "cse-in/mtr-1")
        assert (await meter.request(CSE_ID, forged))["rsc"] == 4103


async def test_a_cse_credential_speaks_for_the_cse_and_what_is_behind_it(
    store: CredentialStore,
) -> None:
    store.add_cse("/id-dap1", mqtt=True)
    sender = TopicSender(Trust.CREDENTIAL, store)
    assert sender.principal("id-dap1") == Principal(Role.CSE, "id-dap1", "/id-dap1", "mqtt")
    assert sender.principal("Cid-dap1") is None  # no device of that name
    assert sender.principal("id-dap1:Cmeter") is None  # not a broker login


def test_a_device_and_a_cse_sharing_a_login_are_both_refused(store: CredentialStore) -> None:
    store.add_device("x")  # logs in as Cx
    store.add_cse("/Cx")  # would log in as Cx too
    assert TopicSender(Trust.CREDENTIAL, store).principal("Cx") is None


def test_without_a_store_trust_credential_refuses_everything() -> None:
    assert TopicSender(Trust.CREDENTIAL).principal("Cmtr-1") is None


async def test_claimed_trust_believes_meters_but_never_the_admin(
    cse: CommonServicesEntity, broker: Broker
) -> None:
    async with (
        MqttBinding(cse, settings_for(broker), trust=Trust.CLAIMED),
        MqttClient(settings_for(broker), "Cany") as meter,
        MqttClient(settings_for(broker), ADMIN) as admin,
    ):
        assert (await meter.request(CSE_ID, register("any"), registration=True))["rsc"] == 2001
        assert (await admin.request(CSE_ID, retrieve(ADMIN)))["rsc"] == 4103
    sender = TopicSender(Trust.INSECURE)
    assert sender.principal("Cany") == Principal.unchecked()


async def test_the_own_probe_is_answered_quietly_and_a_stranger_naming_the_cse_is_logged(
    cse: CommonServicesEntity, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """On a listener that believes claims, a request naming this CSE proves nothing: refused,
    and logged as the forgery it is, except the binding's own liveness probe, which would
    otherwise log one WARNING each time /health is read."""
    binding = MqttBinding(cse, settings_for(broker), trust=Trust.CLAIMED)
    async with binding, MqttClient(settings_for(broker), CSE_ID) as stranger:
        with caplog.at_level(logging.WARNING):
            assert await binding.probe() and await binding.probe()
            assert binding.liveness().alive
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        with caplog.at_level(logging.WARNING, logger="cse.core.handler"):
            assert (await stranger.request(CSE_ID, retrieve(CSE_ID)))["rsc"] == 4103
        assert any("refused originator /id-in" in r.getMessage() for r in caplog.records)

"""The egress policy of a running CSE (running_cse) against real endpoints: retargeting to
something that is not a CSE, MQTT targets at another broker, registrations of remoteCSEs, and
a meter's own CoAP point of access, which keeps working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from cse.app import ConfigError, CSEConfig, RunningCSE, load_cse_config, running_cse
from cse.bindings.coap import CoapClient
from cse.bindings.http import HttpClient
from cse.bindings.http.server import start_site
from cse.bindings.mqtt import MqttSender, MqttSettings
from cse.core.egress import EgressRefused
from cse.core.primitives import Request, Response
from cse.core.types import ResponseStatusCode as RSC
from cse.security.credentials import CredentialStore
from gridm2m.broker import HOST
from tests.brokers import MosquittoBroker, mosquitto_binary, private_broker, raw_client
from tests.cse.bindings.test_coap import CoapReceiver
from tests.helpers import TcpListener, ae_body, create, retrieve

SECRET = "internal-only-7f3a"  # what an internal endpoint answers; must never come back


def cse_config(tmp_path: Path, **values: Any) -> CSEConfig:
    # "insecure" listeners: these tests are about where the CSE sends, not who may ask.
    return CSEConfig.model_validate(
        {
            "db": str(tmp_path / "cse.db"),
            "http": {"port": 0, "trust": "insecure"},
            "coap": {"port": 0, "trust": "insecure", "oscore": False},
            **values,
        }
    )


@pytest.fixture
async def http() -> AsyncIterator[HttpClient]:
    async with HttpClient(timeout=10) as client:
        yield client


def over(client: HttpClient, running: RunningCSE) -> Any:
    async def send(request: Request) -> Response:
        return await client.send(running.http.url, request)

    return send


def _csr(csi: str, poa: list[str]) -> dict[str, Any]:
    return {"m2m:csr": {"csi": csi, "cb": f"{csi}/cse-x", "rr": True, "srv": ["3"], "poa": poa}}


async def _leaky_site(redirect_to: str | None) -> tuple[web.AppRunner, str]:
    """An HTTP server that is no CSE: it answers anything with an internal secret (or a
    redirect to another internal endpoint), without X-M2M-RSC."""

    async def answer(_: web.Request) -> web.Response:
        if redirect_to is not None:
            raise web.HTTPFound(redirect_to)
        return web.json_response({"status": "ok", "token": SECRET})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner, port = await start_site(app, "127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


# ---- retargeting ----------------------------------------------------------------------------


@pytest.mark.parametrize("redirect", [False, True], ids=["answer", "redirect"])
async def test_a_retargeted_answer_that_is_not_onem2m_becomes_5103(
    tmp_path: Path, http: HttpClient, redirect: bool
) -> None:
    config = cse_config(tmp_path, remote_cses=["/id-x"], egress={"loopback_peers": True})
    async with TcpListener() as inner:
        runner, leaky = await _leaky_site(
            f"http://127.0.0.1:{inner.port}/health" if redirect else None
        )
        try:
            async with running_cse(config) as running:
                send = over(http, running)
                registered = await send(create("cse-in", 16, _csr("/id-x", [leaky]), "/id-x"))
                assert registered.status == RSC.CREATED, registered.content
                reply = await send(retrieve("/id-x/cse-x/meter"))
                assert reply.status == RSC.TARGET_NOT_REACHABLE
                assert SECRET not in str(reply.content)
                assert "not a oneM2M response" in reply.content["m2m:dbg"]
                assert running.cse.egress.refused["not-onem2m"] == 1
        finally:
            await runner.cleanup()
        assert inner.connections == 0  # the redirect was not followed


async def test_a_retargeted_coap_answer_without_rsc_becomes_5103(
    tmp_path: Path, http: HttpClient
) -> None:
    config = cse_config(tmp_path, remote_cses=["/id-x"], egress={"loopback_peers": True})
    async with CoapReceiver(rsc=None) as not_a_cse, running_cse(config) as running:
        send = over(http, running)
        poa = [not_a_cse.url.removesuffix("/notify")]
        assert (await send(create("cse-in", 16, _csr("/id-x", poa), "/id-x"))).status == 2001
        body = {"m2m:cnt": {"rn": "x"}}
        reply = await send(create("/id-x/cse-x", 3, body))
        assert reply.status == RSC.TARGET_NOT_REACHABLE
        assert len(not_a_cse.received) == 1  # it was asked, its answer was not believed


# ---- remoteCSE registration ------------------------------------------------------------------


async def test_an_unknown_cse_cannot_register_and_a_provisioned_one_can(
    tmp_path: Path, http: HttpClient
) -> None:
    config = cse_config(tmp_path)
    credentials = config.credentials_path()
    assert credentials is not None
    with CredentialStore(credentials) as store:
        store.add_cse("/id-dap7", token=True)
    async with running_cse(config) as running:
        send = over(http, running)
        poa = ["http://127.0.0.1:1"]
        refused = await send(create("cse-in", 16, _csr("/id-evil", poa), "/id-evil"))
        assert refused.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        assert (await send(retrieve("cse-in/id-evil"))).status == RSC.NOT_FOUND
        accepted = await send(create("cse-in", 16, _csr("/id-dap7", poa), "/id-dap7"))
        assert accepted.status == RSC.CREATED, accepted.content


# ---- MQTT: our broker only -------------------------------------------------------------------


async def _wait_for_line(log: Path, text: str) -> str:
    """The broker's log once `text` is in it (polled: it is another process's file)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        content = log.read_text() if log.exists() else ""
        if text in content:
            return content
        await asyncio.sleep(0.05)  # polling another process's log file, bounded above
    raise AssertionError(f"{text!r} never appeared in {log}")


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
async def test_the_broker_credentials_go_to_no_other_broker(
    tmp_path: Path, http: HttpClient
) -> None:
    """An mqtt:// target is reached through the CSE's own broker connection, whatever it
    names; one on another host is refused. The other broker never sees the CSE log in."""
    username, password = "cse-dap1", "broker-password-1b7e"
    async with (
        private_broker(tmp_path / "ours") as ours,
        MosquittoBroker(tmp_path / "other") as other,
    ):
        elsewhere = f"mqtt://127.0.0.1:{other.port}"
        config = cse_config(
            tmp_path,
            mqtt={"url": ours.url, "username": username, "password": password},
            egress={"allow": ["127.0.0.1"]},
        )
        async with running_cse(config) as running, raw_client(ours) as watcher:
            await watcher.subscribe("steal", qos=1)
            send = over(http, running)
            assert (await send(create("cse-in", 2, ae_body("app"), "Capp"))).status == 2001
            body = {"m2m:sub": {"nu": [f"{elsewhere}/steal"]}}
            assert (await send(create("cse-in/app", 23, body, "Capp"))).status == RSC.CREATED
            async with asyncio.timeout(10):
                verification = await anext(aiter(watcher.messages))  # on OUR broker
            assert b'"vrq":true' in bytes(verification.payload)  # type: ignore[arg-type]
            settings = MqttSettings(ours.url, username=username, password=password)
            async with MqttSender(settings, egress=running.cse.egress) as sender:
                with pytest.raises(EgressRefused):
                    await sender.send("mqtt://192.0.2.7:1883/x", {"fr": "/id-in", "rqi": "1"})
            assert running.cse.egress.refused["other-broker"] == 1
        # A control login shows the log records logins; it is the only one there.
        async with aiomqtt.Client(HOST, other.port, username="control"):
            pass
        log = await _wait_for_line(other.log, "control")
        assert username not in log
        assert log.count("New client connected") == 1  # MQTT logins (CONNECT), not the probe


# ---- what keeps working ------------------------------------------------------------------------


async def test_a_meter_gets_notifications_at_the_coap_address_it_registered_from(
    tmp_path: Path,
) -> None:
    config = cse_config(tmp_path, egress={"loopback_peers": True})
    async with CoapReceiver() as meter, running_cse(config) as running, CoapClient() as coap:
        assert running.coap is not None
        url = running.coap.url

        async def send(request: Request) -> Response:
            return await coap.send(url, request)

        registration = create("cse-in", 2, ae_body("mtr-1", poa=[meter.url]), "Cmtr-1")
        assert (await send(registration)).status == RSC.CREATED
        container = create("cse-in/mtr-1", 3, {"m2m:cnt": {"rn": "command"}}, "Cmtr-1")
        assert (await send(container)).status == RSC.CREATED
        body = {"m2m:sub": {"nu": ["Cmtr-1"], "enc": {"net": [3]}}}
        assert (await send(create("cse-in/mtr-1/command", 23, body, "Cmtr-1"))).status == 2001
        command = create("cse-in/mtr-1/command", 4, {"m2m:cin": {"con": "read"}})
        assert (await send(command)).status == RSC.CREATED
        (notification,) = await meter.wait_for(1)
        assert notification.content["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "read"


def test_the_egress_settings_are_checked_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError, match=r"egress\.allow: .*gopher"):
        load_cse_config(None, {"egress.allow": ["gopher://x/"]})
    with pytest.raises(ConfigError, match="remote_cses"):
        load_cse_config(None, {"remote_cses": ["id-x"]})
    config = load_cse_config(None, {"egress.allow": ["10.0.0.0/8"], "remote_cses": ["/id-a"]})
    settings = config.settings()
    assert settings.egress.allow == ("10.0.0.0/8",) and settings.remote_cses == ("/id-a",)

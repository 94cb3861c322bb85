"""The same oneM2M cases over HTTP, CoAP and MQTT, against one running CSE.

A real `running_cse` (the composition `gridm2m cse` uses) serves all three bindings on loopback,
with MQTT through a private Mosquitto. Each case is written once against `send(request)` and
runs once per binding: the bindings must agree on every status code and every content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cse.app import CSEConfig, RunningCSE, running_cse
from cse.bindings.coap.client import CoapClient
from cse.bindings.http import HttpClient
from cse.bindings.mqtt.client import MqttClient
from cse.core.primitives import FilterCriteria, Request, Response
from cse.core.types import ResponseStatusCode as RSC
from tests.brokers import private_broker, settings_for
from tests.helpers import NotificationReceiver, ae_body, create, delete, retrieve, update

Send = Callable[[Request], Awaitable[Response]]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[RunningCSE, Any]]:
    async with private_broker(tmp_path) as broker:
        # These cases are about the bindings agreeing on oneM2M, so every listener believes
        # claimed originators (lab mode); tests/cse/bindings/test_http_security.py and the
        # other bindings' security tests cover what a listener proves.
        config = CSEConfig.model_validate(
            {
                "db": str(tmp_path / "cse.db"),
                "http": {"port": 0, "trust": "insecure"},
                "coap": {"port": 0, "trust": "insecure"},
                # The test broker holds nobody to their topics: MQTT proves nothing here.
                "mqtt": {"url": broker.url, "username": "gridm2m-test", "trust": "insecure"},
                "egress": {"allow": ["127.0.0.1"]},  # the notification receiver's host
            }
        )
        async with running_cse(config) as running:
            yield running, broker


@pytest.fixture(params=["http", "coap", "mqtt"])
async def send(
    request: pytest.FixtureRequest, stack: tuple[RunningCSE, Any]
) -> AsyncIterator[Send]:
    running, broker = stack
    if request.param == "http":
        async with HttpClient(timeout=10) as http:
            yield lambda primitive: http.send(running.http.url, primitive)
    elif request.param == "coap":
        assert running.coap is not None
        async with CoapClient(timeout=10) as coap:
            url = running.coap.url
            yield lambda primitive: coap.send(url, primitive)
    else:
        clients: dict[str, MqttClient] = {}

        async def over_mqtt(primitive: Request) -> Response:
            originator = primitive.originator or ""
            if originator not in clients:
                clients[originator] = MqttClient(settings_for(broker), originator, timeout=10)
            return await clients[originator].send("/id-in", primitive)

        yield over_mqtt
        for client in clients.values():
            await client.close()


AE = "Cmeter"


async def _meter(send: Send) -> None:
    assert (await send(create("cse-in", 2, ae_body("meter"), AE))).status == RSC.CREATED
    cnt = create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads", "mni": 3}}, AE)
    assert (await send(cnt)).status == RSC.CREATED


async def test_create_retrieve_update_delete(send: Send) -> None:
    await _meter(send)
    for value in range(5):
        made = await send(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": str(value)}}, AE))
        assert made.status == RSC.CREATED
    latest = await send(retrieve("cse-in/meter/reads/la", AE))
    assert latest.status == RSC.OK and latest.content["m2m:cin"]["con"] == "4"
    container = (await send(retrieve("cse-in/meter/reads", AE))).content["m2m:cnt"]
    assert (container["cni"], container["cbs"]) == (3, 3)
    changed = await send(update("cse-in/meter/reads", {"m2m:cnt": {"lbl": ["x"]}}, AE))
    assert changed.status == RSC.UPDATED and changed.content["m2m:cnt"]["lbl"] == ["x"]
    assert (await send(delete("cse-in/meter/reads/ol", AE))).status == RSC.DELETED
    assert (await send(delete("cse-in/meter", AE))).status == RSC.DELETED
    assert (await send(retrieve("cse-in/meter", "CAdmin"))).status == RSC.NOT_FOUND
    assert (await send(retrieve("cse-in", AE))).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_large_reading_in_cbor_sized_like_a_bulk_interval_read(send: Send) -> None:
    await _meter(send)
    content = "0123456789" * 240  # 2,400 bytes: the largest meter payload in the flow tables
    made = await send(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": content}}, AE))
    assert made.status == RSC.CREATED and made.content["m2m:cin"]["cs"] == 2400
    assert (await send(retrieve("cse-in/meter/reads/la", AE))).content["m2m:cin"]["con"] == content


async def test_discovery(send: Send) -> None:
    await _meter(send)
    body = {"m2m:cnt": {"rn": "events", "lbl": ["family:events"]}}
    await send(create("cse-in/meter", 3, body, AE))
    found = await send(
        retrieve("cse-in", AE, fc=FilterCriteria(filter_usage=1, labels=("family:events",)))
    )
    assert found.status == RSC.OK
    assert found.content["m2m:uril"] == ["cse-in/meter/events"]
    by_type = await send(
        retrieve("cse-in/meter", AE, fc=FilterCriteria(filter_usage=1, resource_types=(3,)))
    )
    assert by_type.content["m2m:uril"] == ["cse-in/meter/reads", "cse-in/meter/events"]


async def test_access_control(send: Send) -> None:
    await _meter(send)
    assert (await send(create("cse-in", 2, ae_body("other"), "Cother"))).status == RSC.CREATED
    foreign = create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "x"}}, "Cother")
    assert (await send(foreign)).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert (await send(retrieve("cse-in/meter/reads", "Cother"))).status == (
        RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    )
    assert (await send(retrieve("cse-in", "Cnobody"))).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_errors_agree(send: Send) -> None:
    await _meter(send)
    duplicate = create("cse-in/meter", 3, {"m2m:cnt": {"rn": "reads"}}, AE)
    assert (await send(duplicate)).status == RSC.CONFLICT
    wrong_child = create("cse-in/meter", 4, {"m2m:cin": {"con": "x"}}, AE)
    assert (await send(wrong_child)).status == RSC.INVALID_CHILD_RESOURCE_TYPE
    unknown = create("cse-in/meter", 3, {"m2m:cnt": {"bogus": 1}}, AE)
    answer = await send(unknown)
    assert answer.status == RSC.BAD_REQUEST and "bogus" in answer.content["m2m:dbg"]
    assert (await send(retrieve("cse-in/nothing", AE))).status == RSC.NOT_FOUND


async def test_subscription_and_notification(send: Send) -> None:
    await _meter(send)
    async with NotificationReceiver() as receiver:
        body = {"m2m:sub": {"rn": "s", "nu": [receiver.url], "enc": {"net": [3]}}}
        assert (await send(create("cse-in/meter/reads", 23, body, AE))).status == RSC.CREATED
        await send(create("cse-in/meter/reads", 4, {"m2m:cin": {"con": "alarm"}}, AE))
        received = await receiver.wait_for(2)
    assert received[0]["body"]["m2m:sgn"]["vrq"] is True
    assert received[1]["body"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "alarm"

"""The MQTT binding against a real, private Mosquitto: requests, errors, notifications, restarts.

Each test gets its own broker on a free loopback port (tests/brokers.py) and a CSE on
in-memory storage served by `MqttBinding`. Originators are `MqttClient`s, or raw aiomqtt
clients where a test needs to publish what no well-behaved client would.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cse.bindings.mqtt import MqttBinding, MqttClient, MqttSender, MqttSettings, answer
from cse.bindings.mqtt.acks import AckSequence
from cse.bindings.mqtt.filters import filter_from_primitive, filter_to_primitive
from cse.bindings.mqtt.primitives import Rejected, request_from_primitive, request_to_primitive
from cse.bindings.mqtt.server import TopicSender
from cse.bindings.mqtt.topics import parse_request_topic, request_filters, topic_id
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.egress import EgressPolicy
from cse.core.errors import BadRequest
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.notifications import DeliveryError
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.memory import MemoryStorage
from tests.brokers import (
    Broker,
    MosquittoBroker,
    free_port,
    make_certificates,
    mosquitto_binary,
    private_broker,
    raw_client,
    settings_for,
)
from tests.helpers import LAB as LAB_EGRESS

CSE_ID = "/id-in"
AE = "Cmeter"
# The test brokers let anyone log in and publish anywhere, so a topic proves nothing: these
# tests run the binding as a lab does (test_mqtt_identity.py has the credential checks).
LAB = Trust.INSECURE
_ids = itertools.count(1)


def primitive(op: int, to: str, fr: str | None = AE, **params: Any) -> dict[str, Any]:
    request = {"op": op, "to": to, "rqi": f"m{next(_ids)}", "rvi": "3", **params}
    if fr is not None:
        request["fr"] = fr
    return request


def ae(name: str = "meter", **extra: Any) -> dict[str, Any]:
    return {"m2m:ae": {"rn": name, "api": "Nmeter", "rr": True, "srv": ["3"], **extra}}


class RawPeer:
    """A plain MQTT client: publishes anything, collects every response to anyone."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.responses: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            await self.responses.put((message.topic.value, message.payload))

    async def publish(self, topic: str, payload: bytes) -> None:
        await self.client.publish(topic, payload, qos=1)

    async def next(self, rqi: str | None = None, timeout: float = 10.0) -> tuple[str, Any]:
        """The next response (to the request `rqi`, if given: others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                topic, payload = await self.responses.get()
                loads = cbor2.loads if topic.endswith("/cbor") else orjson.loads
                content = loads(payload)
                if rqi is None or content.get("rqi") == rqi:
                    return topic, content


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
async def binding(cse: CommonServicesEntity, broker: Broker) -> AsyncIterator[MqttBinding]:
    async with MqttBinding(cse, settings_for(broker), trust=LAB) as running:
        yield running


@pytest.fixture
async def meter(broker: Broker, binding: MqttBinding) -> AsyncIterator[MqttClient]:
    async with MqttClient(settings_for(broker), AE) as client:
        yield client


@pytest.fixture
async def raw(broker: Broker) -> AsyncIterator[RawPeer]:
    async with raw_client(broker) as client:
        await client.subscribe([("/oneM2M/resp/#", 1), ("/oneM2M/reg_resp/#", 1)])
        peer = RawPeer(client)
        reader = asyncio.create_task(peer.read())
        yield peer
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def check_response(request: dict[str, Any], response: dict[str, Any]) -> None:
    """What every response primitive carries."""
    assert response["rqi"] == request["rqi"]
    assert response["rvi"] == request["rvi"]
    assert response["fr"] == CSE_ID
    if "fr" in request:
        assert response["to"] == request["fr"]
    if not 2000 <= response["rsc"] < 3000:
        assert isinstance(response["pc"]["m2m:dbg"], str)


async def call(client: MqttClient, request: dict[str, Any], **kw: Any) -> dict[str, Any]:
    response = await client.request(CSE_ID, request, **kw)
    check_response(request, response)
    return response


# ---- requests ------------------------------------------------------------------------------


@pytest.mark.parametrize("serialization", ["json", "cbor"])
async def test_create_retrieve_update_delete(meter: MqttClient, serialization: str) -> None:
    async def send(request: dict[str, Any]) -> dict[str, Any]:
        return await call(meter, request, serialization=serialization)

    created = await send(primitive(1, "cse-in", ty=2, pc=ae()))
    assert created["rsc"] == RSC.CREATED
    assert created["pc"]["m2m:ae"]["aei"] == AE
    container = await send(primitive(1, "cse-in/meter", ty=3, pc={"m2m:cnt": {"rn": "reads"}}))
    assert container["rsc"] == RSC.CREATED
    reading = {"m2m:cin": {"cnf": "text/plain:0", "con": "21.5"}}
    instance = await send(primitive(1, "cse-in/meter/reads", ty=4, pc=reading))
    assert instance["pc"]["m2m:cin"]["cs"] == 4
    latest = await send(primitive(2, "cse-in/meter/reads/la"))
    assert latest["rsc"] == RSC.OK
    assert latest["pc"]["m2m:cin"]["con"] == "21.5"
    updated = await send(primitive(3, "cse-in/meter/reads", pc={"m2m:cnt": {"lbl": ["a:b"]}}))
    assert updated["rsc"] == RSC.UPDATED
    assert updated["pc"]["m2m:cnt"]["lbl"] == ["a:b"]
    name = instance["pc"]["m2m:cin"]["rn"]
    deleted = await send(primitive(4, f"cse-in/meter/reads/{name}"))
    assert deleted["rsc"] == RSC.DELETED
    gone = await send(primitive(2, f"cse-in/meter/reads/{name}"))
    assert gone["rsc"] == RSC.NOT_FOUND


async def test_registration_on_reg_req(broker: Broker, binding: MqttBinding) -> None:
    settings = settings_for(broker)
    async with MqttClient(settings, "Cnew") as newcomer:
        request = primitive(1, "cse-in", fr=None, ty=2, pc=ae("anonymous"))
        assigned = await call(newcomer, request, registration=True)
        assert assigned["rsc"] == RSC.CREATED
        assert assigned["pc"]["m2m:ae"]["aei"].startswith("C")
        chosen = await call(
            newcomer, primitive(1, "cse-in", "Cnew", ty=2, pc=ae("new")), registration=True
        )
        assert chosen["pc"]["m2m:ae"]["aei"] == "Cnew"
        # reg_req is for registrations only
        other = await call(newcomer, primitive(2, "cse-in", "Cnew"), registration=True)
        assert other["rsc"] == RSC.OPERATION_NOT_ALLOWED


async def test_discovery(meter: MqttClient) -> None:
    await call(meter, primitive(1, "cse-in", ty=2, pc=ae()))
    for name, labels in (("a", ["floor1"]), ("b", ["floor2"]), ("c", ["floor1", "x"])):
        body = {"m2m:cnt": {"rn": name, "lbl": labels}}
        assert (await call(meter, primitive(1, "cse-in/meter", ty=3, pc=body)))["rsc"] == 2001
    found = await call(
        meter, primitive(2, "cse-in/meter", fc={"fu": 1, "ty": [3], "lbl": "floor1"})
    )
    assert found["rsc"] == RSC.OK
    assert sorted(found["pc"]["m2m:uril"]) == ["cse-in/meter/a", "cse-in/meter/c"]
    limited = await call(
        meter, primitive(2, "cse-in/meter", fc={"fu": 1, "ty": 3, "lim": 1}, drt=1, rcn=6)
    )
    assert len(limited["pc"]["m2m:rrl"]["rrf"]) == 1
    bad = await call(meter, primitive(2, "cse-in/meter", fc={"fu": 1, "nonsense": 1}))
    assert bad["rsc"] == RSC.BAD_REQUEST


async def test_request_without_originator(meter: MqttClient) -> None:
    await call(meter, primitive(1, "cse-in", ty=2, pc=ae()))
    request = primitive(1, "cse-in/meter", fr=None, ty=3, pc={"m2m:cnt": {}})
    response = await call(meter, request)
    assert response["rsc"] == RSC.BAD_REQUEST
    assert "originator" in response["pc"]["m2m:dbg"]


async def test_a_client_cannot_act_as_another_originator(meter: MqttClient) -> None:
    await call(meter, primitive(1, "cse-in", ty=2, pc=ae()))
    # Published on the meter's own topic (what a per-client broker ACL pins), but claiming
    # to be someone else in the payload.
    for impostor in ("Cother", "CAdmin", "/id-other/Cmeter"):
        reply = await call(meter, primitive(2, "cse-in/meter", fr=impostor))
        assert reply["rsc"] == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, impostor
    # Its own ID, plain or SP-relative, is fine.
    for own in (AE, f"/id-in/{AE}"):
        reply = await call(meter, primitive(2, "cse-in/meter", fr=own))
        assert reply["rsc"] == RSC.OK, own


async def test_expired_request_is_refused(meter: MqttClient, cse: CommonServicesEntity) -> None:
    await call(meter, primitive(1, "cse-in", ty=2, pc=ae()))
    past = cse.timestamp(-60)
    stale = await call(meter, primitive(2, "cse-in/meter", rqet=past))
    assert stale["rsc"] == RSC.REQUEST_TIMEOUT
    # relative rqet counts from ot: queued too long in the broker
    queued = await call(meter, primitive(2, "cse-in/meter", ot=past, rqet=1000))
    assert queued["rsc"] == RSC.REQUEST_TIMEOUT
    fresh = await call(meter, primitive(2, "cse-in/meter", ot=cse.timestamp(), rqet="60000"))
    assert fresh["rsc"] == RSC.OK


# ---- what no well-behaved client sends ----------------------------------------------------


async def test_bad_payloads_are_answered_and_serving_goes_on(
    raw: RawPeer, binding: MqttBinding
) -> None:
    await raw.publish("/oneM2M/req/Cmeter/id-in/json", b"{not json")
    topic, response = await raw.next()
    assert topic == "/oneM2M/resp/Cmeter/id-in/json"
    assert response["rsc"] == RSC.BAD_REQUEST and response["rqi"] == ""
    assert "JSON" in response["pc"]["m2m:dbg"]

    await raw.publish("/oneM2M/req/Cmeter/id-in/cbor", b"\xff\x00")
    topic, response = await raw.next()
    assert topic.endswith("/cbor") and response["rsc"] == RSC.BAD_REQUEST

    wrapped = {"m2m:rqp": {"op": 2, "to": "cse-in", "fr": "CAdmin", "rqi": "w1", "rvi": "3"}}
    await raw.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(wrapped))
    topic, response = await raw.next()
    assert topic == "/oneM2M/resp/CAdmin/id-in/json"
    assert (response["rsc"], response["rqi"]) == (RSC.OK, "w1")

    for payload in (b"[1, 2]", b"null", b'{"op": 9, "to": "x", "rqi": "q9", "rvi": "3"}'):
        await raw.publish("/oneM2M/req/Cmeter/id-in/json", payload)
        _, response = await raw.next()
        assert response["rsc"] == RSC.BAD_REQUEST
    assert response["rqi"] == "q9"  # what could be read is echoed


async def test_topics_that_do_not_parse(raw: RawPeer, binding: MqttBinding) -> None:
    # No originator segment, no format segment: nothing to answer on; dropped and acknowledged.
    await raw.publish("/oneM2M/req//id-in/json", b"{}")
    await raw.publish("/oneM2M/req/Cmeter/id-in/", b"{}")
    # An unknown serialization is answered in JSON on the json response topic.
    await raw.publish("/oneM2M/req/Cmeter/id-in/xml", b"<m2m:rqp/>")
    topic, response = await raw.next()
    assert topic == "/oneM2M/resp/Cmeter/id-in/json"
    assert response["rsc"] == RSC.UNSUPPORTED_MEDIA_TYPE
    request = primitive(2, "cse-in", "CAdmin")
    await raw.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(request))
    _, response = await raw.next()
    assert (response["rsc"], response["rqi"]) == (RSC.OK, request["rqi"])


async def test_oversized_payload(raw: RawPeer, binding: MqttBinding) -> None:
    huge = primitive(1, "cse-in", "CAdmin", ty=3, pc={"m2m:cnt": {"lbl": ["x" * (10 << 20)]}})
    await raw.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(huge))
    topic, response = await raw.next(timeout=30)
    assert topic == "/oneM2M/resp/CAdmin/id-in/json"
    assert response["rsc"] == RSC.BAD_REQUEST
    assert "exceeds the limit" in response["pc"]["m2m:dbg"]
    small = primitive(2, "cse-in", "CAdmin")
    await raw.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(small))
    _, response = await raw.next()
    assert (response["rsc"], response["rqi"]) == (RSC.OK, small["rqi"])


async def test_redelivered_create_makes_one_resource(
    raw: RawPeer, meter: MqttClient, cse: CommonServicesEntity
) -> None:
    await call(meter, primitive(1, "cse-in", ty=2, pc=ae()))
    await call(meter, primitive(1, "cse-in/meter", ty=3, pc={"m2m:cnt": {"rn": "reads"}}))
    request = primitive(1, "cse-in/meter/reads", ty=4, pc={"m2m:cin": {"con": "7"}})
    payload = orjson.dumps(request)
    await raw.publish("/oneM2M/req/Cmeter/id-in/json", payload)
    _, first = await raw.next(request["rqi"])
    await raw.publish("/oneM2M/req/Cmeter/id-in/json", payload)  # as a broker redelivers it
    _, second = await raw.next(request["rqi"])
    assert first["rsc"] == second["rsc"] == RSC.CREATED
    assert first["pc"]["m2m:cin"]["ri"] == second["pc"]["m2m:cin"]["ri"]
    container = await call(meter, primitive(2, "cse-in/meter/reads"))
    assert container["pc"]["m2m:cnt"]["cni"] == 1


# ---- acknowledgement, sessions, restarts ---------------------------------------------------


async def test_every_message_is_acknowledged_once_answered(
    broker: Broker, cse: CommonServicesEntity, raw: RawPeer, binding: MqttBinding
) -> None:
    messages = [
        ("/oneM2M/req//id-in/json", b"{}"),
        ("/oneM2M/req/Cmeter/id-in/json", b"{broken"),
        ("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(primitive(2, "cse-in", "CAdmin"))),
    ]
    for topic, payload in messages:
        await raw.publish(topic, payload)
    for _ in range(2):
        await raw.next()
    await binding.__aexit__(None, None, None)  # a graceful stop drains and acknowledges
    assert binding.acknowledged == len(messages)
    # Nothing comes again on the next connection of the same persistent session.
    async with MqttBinding(cse, settings_for(broker), trust=LAB) as again:
        request = primitive(2, "cse-in", "CAdmin")
        await raw.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(request))
        _, response = await raw.next()
        assert response["rqi"] == request["rqi"]
    assert again.acknowledged == 1


async def test_requests_published_while_the_cse_is_away_are_served(
    broker: Broker, cse: CommonServicesEntity, raw: RawPeer
) -> None:
    settings = settings_for(broker)
    async with MqttBinding(cse, settings, trust=LAB):
        pass  # the first connection creates the persistent session and its subscriptions
    request = primitive(2, "cse-in", "CAdmin")
    await raw.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(request))  # broker has it
    async with MqttBinding(cse, settings, trust=LAB):
        _, response = await raw.next()
    assert (response["rsc"], response["rqi"]) == (RSC.OK, request["rqi"])


async def test_broker_restart_and_reconnect(
    broker: Broker, cse: CommonServicesEntity, binding: MqttBinding
) -> None:
    settings = settings_for(broker)
    await broker.stop()
    await broker.start()
    await binding.wait_connected(connections=2)
    async with MqttClient(settings, "CAdmin") as admin:
        response = await admin.request(CSE_ID, primitive(2, "cse-in", "CAdmin"))
        assert response["rsc"] == RSC.OK


async def test_session_survives_broker_restart(broker: Broker, cse: CommonServicesEntity) -> None:
    if not broker.persistent:
        pytest.skip("this broker keeps no sessions across a restart")
    settings = settings_for(broker)
    async with MqttBinding(cse, settings, trust=LAB):
        pass
    request = primitive(2, "cse-in", "CAdmin")
    async with raw_client(broker) as client:
        await client.publish("/oneM2M/req/CAdmin/id-in/json", orjson.dumps(request), qos=1)
    await broker.stop()  # Mosquitto saves the session with the queued request
    await broker.start()
    async with MqttClient(settings, "CAdmin") as admin:
        async with MqttBinding(cse, settings, trust=LAB) as binding:
            follow_up = await admin.request(CSE_ID, primitive(2, "cse-in", "CAdmin"))
            assert follow_up["rsc"] == RSC.OK
        assert binding.acknowledged == 2  # the queued one came first


@pytest.mark.skipif(
    shutil.which("openssl") is None or mosquitto_binary() is None,
    reason="needs the openssl command and a mosquitto binary",
)
# paho 2.2 leaves the socket of a failed TLS handshake open for the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_over_tls(tmp_path: Path, cse: CommonServicesEntity) -> None:
    tls = make_certificates(tmp_path / "certificates")
    async with MosquittoBroker(tmp_path / "tls-broker", tls=tls) as broker:
        assert broker.url.startswith("mqtts://")
        settings = settings_for(broker, ca_file=str(tls.ca))
        async with MqttBinding(cse, settings, trust=LAB), MqttClient(settings, "CAdmin") as admin:
            response = await admin.request(CSE_ID, primitive(2, "cse-in", "CAdmin"))
            assert response["rsc"] == RSC.OK
        untrusted = settings_for(broker)  # the system CAs do not know this broker
        with pytest.raises(aiomqtt.MqttError):
            async with MqttBinding(cse, untrusted, trust=LAB):
                pass
        gc.collect()  # that socket's ResourceWarning belongs to this test


# ---- notifications -------------------------------------------------------------------------


@pytest.fixture
async def sender(cse: CommonServicesEntity, broker: Broker) -> AsyncIterator[MqttSender]:
    settings = settings_for(broker)
    cse.egress = EgressPolicy(LAB_EGRESS, broker_url=settings.url)  # as running_cse shares it
    async with MqttSender(settings, timeout=5, egress=cse.egress) as running:
        cse.notifier.senders["mqtt"] = running
        yield running


async def test_notification_to_an_mqtt_topic(
    broker: Broker, meter: MqttClient, sender: MqttSender
) -> None:
    port = broker.port
    async with raw_client(broker) as listener:
        await listener.subscribe("gridm2m/notify", qos=1)
        await call(meter, primitive(1, "cse-in", ty=2, pc=ae()))
        await call(meter, primitive(1, "cse-in/meter", ty=3, pc={"m2m:cnt": {"rn": "reads"}}))
        nu = f"mqtt://127.0.0.1:{port}/gridm2m/notify"
        body = {"m2m:sub": {"rn": "sub", "nu": [nu], "enc": {"net": [3]}}}
        created = await call(meter, primitive(1, "cse-in/meter/reads", ty=23, pc=body))
        assert created["rsc"] == RSC.CREATED
        await call(meter, primitive(1, "cse-in/meter/reads", ty=4, pc={"m2m:cin": {"con": "1"}}))
        received = []
        async with asyncio.timeout(10):
            async for message in listener.messages:
                assert isinstance(message.payload, bytes)
                received.append(orjson.loads(message.payload))
                if "nev" in received[-1]["pc"]["m2m:sgn"]:
                    break
    notify = received[-1]
    assert notify["op"] == 5 and notify["fr"] == CSE_ID and notify["to"] == nu
    assert notify["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == "1"


async def test_notification_to_an_ae_point_of_access(
    broker: Broker, meter: MqttClient, sender: MqttSender, cse: CommonServicesEntity
) -> None:
    port = broker.port
    received: list[dict[str, Any]] = []

    async def serve_as_ae(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            request = orjson.loads(message.payload)
            received.append(request)
            reply = {"rsc": 2000, "rqi": request["rqi"], "rvi": "3"}
            await client.publish(
                message.topic.value.replace("/req/", "/resp/"), orjson.dumps(reply), qos=1
            )

    async with raw_client(broker) as ae_side:
        await ae_side.subscribe("/oneM2M/req/+/Cmeter/+", qos=1)
        serving = asyncio.create_task(serve_as_ae(ae_side))
        try:
            poa = [f"mqtt://127.0.0.1:{port}"]
            await call(meter, primitive(1, "cse-in", ty=2, pc=ae(poa=poa)))
            body = {"m2m:sub": {"rn": "sub", "nu": [AE], "enc": {"net": [1]}}}
            assert (await call(meter, primitive(1, "cse-in/meter", ty=23, pc=body)))["rsc"] == 2001
            update = primitive(3, "cse-in/meter", pc={"m2m:ae": {"lbl": ["x"]}})
            assert (await call(meter, update))["rsc"] == RSC.UPDATED
            async with asyncio.timeout(10):
                await cse.notifier.wait_until(lambda: cse.notifier.delivered >= 1)
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    notify = received[-1]
    assert notify["op"] == 5 and notify["to"] == AE
    assert notify["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:ae"]["lbl"] == ["x"]


async def test_sender_reports_an_unreachable_broker() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    async with MqttSender(MqttSettings(url), timeout=2) as sender:
        with pytest.raises(DeliveryError):
            await sender.send(url, primitive(5, "Cx", CSE_ID, pc={"m2m:sgn": {}}))


# ---- the pieces, without a broker ---------------------------------------------------------


def test_topics() -> None:
    assert topic_id("/id-in") == "id-in"
    assert topic_id("/id-in/Cmeter") == "id-in:Cmeter"
    assert topic_id("Cmeter") == "Cmeter"
    parsed = parse_request_topic("/site7/oneM2M/reg_req/Cnew/id-in/cbor", "/site7")
    assert parsed is not None and parsed.serialization == "cbor"
    assert parsed.response_topic() == "/site7/oneM2M/reg_resp/Cnew/id-in/cbor"
    assert parse_request_topic("/oneM2M/req/Cmeter/id-in/json", "/site7") is None
    for bad in ("/oneM2M/resp/C/id-in/json", "oneM2M/req/C/id-in/json", "/oneM2M/req/C/id-in"):
        assert parse_request_topic(bad) is None
    assert request_filters("id-in") == ["/oneM2M/req/+/id-in/+", "/oneM2M/reg_req/+/id-in/+"]


def test_settings() -> None:
    settings = MqttSettings("mqtts://broker.example:8884/site7", ca_file=None)
    assert (settings.host, settings.port, settings.tls) == ("broker.example", 8884, True)
    assert settings.topic_prefix == "/site7"
    assert settings.identifier("/id-in") == "C::id-in"
    assert MqttSettings("mqtt://h").port == 1883
    for url in ("http://h:1883", "mqtt://:1883", "mqtt://h:port"):
        with pytest.raises(ValueError):
            MqttSettings(url)


def test_filter_criteria_round_trip() -> None:
    criteria = filter_from_primitive(
        {"fu": 1, "ty": [3, 4], "lbl": "a", "crb": "20300101T000000", "lim": 5,
         "atr": [{"nm": "rn", "val": "x"}], "rr": True}
    )  # fmt: skip
    assert criteria is not None and criteria.is_discovery
    assert criteria.attributes == (("rn", "x"), ("rr", "true"))
    assert filter_from_primitive(filter_to_primitive(criteria)) == criteria
    for bad in ([1], {"fu": 3}, {"ty": ["x"]}, {"crb": "yesterday"}, {"lim": -1}, {"zz": 1}):
        with pytest.raises(BadRequest):
            filter_from_primitive(bad)


def test_response_type_carries_its_notification_targets() -> None:
    """TS-0010: the whole primitive travels, so rt is {rtv, nu} (nu: where rt 2 results go)."""
    primitive = {"op": 2, "to": "cse-in", "fr": "Cx", "rqi": "1", "rvi": "3"}
    targets = ["Cx", "mqtt://broker:1883/results"]
    request = request_from_primitive({**primitive, "rt": {"rtv": 2, "nu": targets}})
    assert (request.response_type, request.response_targets) == (2, tuple(targets))
    assert request_to_primitive(request)["rt"] == {"rtv": 2, "nu": targets}
    for bad in ({"rtv": 2, "nu": "Cx"}, {"rtv": 2, "nu": [""]}, {"rtv": 2, "nu": [1]}):
        with pytest.raises(Rejected):
            request_from_primitive({**primitive, "rt": bad})


def test_acknowledgements_go_in_arrival_order() -> None:
    sent: list[int] = []
    acks = AckSequence(sent.append)
    first, second, third = acks.expect(1), acks.expect(2), acks.expect(3)
    acks.finish(third)
    acks.finish(second)
    assert sent == []  # the first one is not answered yet
    acks.finish(first)
    assert sent == [1, 2, 3]
    late = acks.expect(4)
    acks.close()  # the connection is gone: its message IDs mean nothing any more
    acks.finish(late)
    assert sent == [1, 2, 3]


def test_a_response_that_cannot_be_serialized_becomes_5000() -> None:
    from cse.bindings.mqtt.server import _encode

    broken = {"rsc": 2000, "rqi": "r1", "rvi": "3", "to": "Cx", "pc": {"con": {1: b"\x00"}}}
    response = orjson.loads(_encode(broken, "json", CSE_ID))
    assert response["rsc"] == RSC.INTERNAL_SERVER_ERROR
    assert (response["rqi"], response["rvi"], response["to"]) == ("r1", "3", "Cx")


async def test_unreachable_broker_at_start(cse: CommonServicesEntity) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with MqttBinding(cse, MqttSettings(f"mqtt://127.0.0.1:{free_port()}"), trust=LAB):
            pass


# ---- fuzzing the receiving step (no broker) ------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_names = st.sampled_from(
    ["op", "to", "fr", "rqi", "rvi", "ty", "pc", "rcn", "fc", "drt", "rqet", "ot", "rt", "ec",
     "atrl", "gid", "vsi"]
)  # fmt: skip
_primitives = st.dictionaries(_names, _values, max_size=10) | st.fixed_dictionaries(
    {"op": st.integers(0, 6), "to": st.sampled_from(["cse-in", "cse-in/x", "", "/id-in/cse-in"]),
     "fr": st.sampled_from(["CAdmin", "Cx", ""]), "rqi": st.text(max_size=4), "rvi": st.just("3")},
    optional={name: _values for name in ("ty", "pc", "rcn", "fc", "drt", "rqet", "ot", "rt")},
)  # fmt: skip


def _answer(topic: str, payload: bytes) -> Any:
    async def run() -> Any:
        cse = CommonServicesEntity(
            MemoryStorage(), CSESettings(expiry_check_interval=3600), clock=ManualClock()
        )
        async with cse:
            return await answer(cse, topic, payload, max_payload=4096, sender=TopicSender(LAB))

    reply = asyncio.run(run())
    if reply is None:  # rt 5: the originator asked for no response
        return None
    if reply.topic.endswith("/cbor"):
        response = cbor2.loads(reply.payload)
    else:
        response = orjson.loads(reply.payload)
    assert isinstance(response["rsc"], int) and isinstance(response["rqi"], str)
    assert response["rsc"] != RSC.INTERNAL_SERVER_ERROR, response
    return response


@FUZZ
@given(payload=st.binary(max_size=300), fmt=st.sampled_from(["json", "cbor"]))
def test_fuzz_arbitrary_payloads(payload: bytes, fmt: str) -> None:
    _answer(f"/oneM2M/req/Cfuzz/id-in/{fmt}", payload)


@FUZZ
@given(message=_primitives, fmt=st.sampled_from(["json", "cbor"]))
def test_fuzz_request_primitives(message: dict[str, Any], fmt: str) -> None:
    try:
        payload = orjson.dumps(message) if fmt == "json" else cbor2.dumps(message)
    except (TypeError, ValueError, OverflowError):  # e.g. integers JSON cannot carry
        return
    _answer(f"/oneM2M/req/Cfuzz/id-in/{fmt}", payload)

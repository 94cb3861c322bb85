"""docker/mosquitto on a real Mosquitto: who may log in, over what, and publish and read what.

The broker runs the shipped config (only ports and paths changed) with the password file and
ACL that `gridm2m credentials mosquitto` makes from a credential store (tests/deploy/
dap_broker.py). With QoS 1 Mosquitto acknowledges a publish that the ACL refuses and drops
it, and a subscription to topics one may not read simply delivers nothing; nothing fails on
the sender's side. So each check sends the forbidden messages first and the allowed ones
after them; the receiver reads until every allowed one has arrived, and by then a forbidden
one that got through would have arrived too (Mosquitto routes each message into every
subscriber's queue before it acknowledges it, and a queue is delivered in order). Each
payload is its topic.

Meter topics come from the real agent (device_agents/agent), the CSE's from its MQTT binding.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cse.bindings.mqtt.topics import request_filters, response_filter
from gridm2m.broker import HOST, mosquitto_binary
from tests.deploy.dap_broker import (
    GATEWAY,
    HEADEND,
    DapBroker,
    dap_broker,
    gridm2m_credentials,
    shipped_listeners,
)

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs the mosquitto binary (apt install mosquitto)"
)

METER_A, METER_B = "mtr-000001", "mtr-000002"
A, B = "Cmtr-000001", "Cmtr-000002"  # their AE-IDs: their broker user names
GUARD = 15.0  # seconds before a missing message fails the test (a hang guard, not a wait)


def agent_module(name: str) -> Any:
    # The agent is MicroPython code without type hints: imported by name, as gridm2m/cli.py does.
    return importlib.import_module(f"device_agents.agent.{name}")


def agent_topics(meter_id: str, broker: DapBroker) -> Any:
    """The real agent's MQTT link (not connected): its topics and subscriptions."""
    return agent_module("onem2m").Dap(broker.meter_config(meter_id))._link


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DapBroker]:
    async with dap_broker(tmp_path, (METER_A, METER_B)) as running:
        yield running


@contextlib.asynccontextmanager
async def subscribed(
    broker: DapBroker, user: str, filters: Iterable[str], *, tls: bool = True
) -> AsyncIterator[aiomqtt.Client]:
    async with broker.client(user, tls=tls) as client:
        for name in filters:
            await client.subscribe(name, qos=1)
        yield client


async def publish_all(client: aiomqtt.Client, topics: Iterable[str]) -> None:
    for name in topics:
        # aiomqtt returns once the broker has acknowledged (QoS 1), refused or not.
        await client.publish(name, name.encode(), qos=1)


async def receive_until(client: aiomqtt.Client, expected: set[str]) -> list[str]:
    """Payloads in arrival order, up to the one that completes `expected`."""
    received: list[str] = []
    async with asyncio.timeout(GUARD):
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            received.append(message.payload.decode())
            if expected <= set(received):
                return received
    raise AssertionError("the message stream ended")


# ---- who may connect, and how ----------------------------------------------------------------


async def test_only_known_users_with_their_passwords_log_in_over_tls(broker: DapBroker) -> None:
    for user in (A, B, GATEWAY, HEADEND, "health"):
        async with broker.client(user):
            pass
    refused = [
        broker.client(A, password="wrong"),
        broker.client(B, password=broker.password(A)),  # another meter's password
        broker.client("Cmtr-999999", password="anything"),
        aiomqtt.Client(
            HOST, broker.tls_port, identifier="anonymous", tls_context=broker.tls_context()
        ),
    ]
    for client in refused:
        with pytest.raises(aiomqtt.MqttError):
            async with client:
                pass


async def test_the_meters_port_speaks_tls_only(broker: DapBroker) -> None:
    """A meter that forgot TLS must not send its password in clear: the broker does not
    even read a plain CONNECT on the meters' port."""
    plain = aiomqtt.Client(
        HOST, broker.tls_port, username=A, password=broker.password(A), timeout=5
    )
    with pytest.raises(aiomqtt.MqttError):
        async with plain:
            pass


async def test_the_plain_listener_is_on_loopback_only(broker: DapBroker) -> None:
    """As shipped, 1883 is bound to 127.0.0.1: another address of this machine (127.0.0.2,
    standing in for the LAN) finds nothing there, while the TLS port answers on it."""
    assert ["listener", "1883", "127.0.0.1"] in shipped_listeners()
    assert ["listener", "8883"] in shipped_listeners()  # every interface: the meters' port
    async with broker.client(GATEWAY, tls=False):  # the gateway on the same host
        pass
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.2", broker.plain_port)
        writer.close()
    _, writer = await asyncio.open_connection("127.0.0.2", broker.tls_port)
    writer.close()
    await writer.wait_closed()


# ---- what each may publish and read ----------------------------------------------------------


async def test_a_meter_publishes_only_as_itself_to_the_gateway(broker: DapBroker) -> None:
    link = agent_topics(METER_A, broker)
    assert link.request_topic == f"/oneM2M/req/{A}/{GATEWAY}/json"
    allowed = [
        link.request_topic,
        link.registration_topic,
        f"/oneM2M/resp/{GATEWAY}/{A}/json",  # its answer to the gateway's notification
    ]
    forbidden = [
        f"/oneM2M/req/{B}/{GATEWAY}/json",  # a request as meter B
        f"/oneM2M/reg_req/{B}/{GATEWAY}/json",  # registering as meter B
        f"/oneM2M/req/{A}/{HEADEND}/json",  # around the gateway, to the head-end
        f"/oneM2M/req/{A}/{B}/json",  # to meter B directly
        f"/oneM2M/req/{GATEWAY}/{B}/json",  # a notification to B, as the gateway
        f"/oneM2M/resp/{B}/{GATEWAY}/json",  # a fake gateway response to B's request
        f"/oneM2M/resp/{B}/{A}/json",  # a fake response to B, as from itself
        f"/oneM2M/resp/{HEADEND}/{GATEWAY}/json",  # a fake gateway response to the head-end
        "/oneM2M/anything",
        f"/gridm2m/workers/{GATEWAY}/w1/gone",  # a fake death of a worker of the gateway
    ]
    async with (
        subscribed(broker, "observer", ["#"]) as observer,
        broker.client(A) as meter,
    ):
        await publish_all(meter, forbidden + allowed)
        received = await receive_until(observer, set(allowed))
    assert received == allowed


async def test_a_meter_reads_only_what_is_addressed_to_it(broker: DapBroker) -> None:
    link_a, link_b = agent_topics(METER_A, broker), agent_topics(METER_B, broker)
    for_a = [
        f"/oneM2M/resp/{A}/{GATEWAY}/json",
        f"/oneM2M/reg_resp/{A}/{GATEWAY}/json",
        f"/oneM2M/req/{GATEWAY}/{A}/json",  # a command notification
    ]
    for_b = [name.replace(A, B) for name in for_a]
    for_others = [f"/oneM2M/req/{GATEWAY}/{HEADEND}/json", f"/oneM2M/resp/{GATEWAY}/{HEADEND}/json"]
    # Meter A tries everything; B subscribes exactly as the agent does.
    greedy = ["#", *link_b.subscriptions, *link_a.subscriptions]
    async with (
        subscribed(broker, A, greedy) as meter_a,
        subscribed(broker, B, link_b.subscriptions) as meter_b,
        broker.client(GATEWAY, tls=False) as gateway,
        broker.client(HEADEND) as headend,
    ):
        await publish_all(gateway, for_b + for_others[:1])
        await publish_all(headend, for_others[1:])
        await publish_all(gateway, for_a)
        received_a = await receive_until(meter_a, set(for_a))
        received_b = await receive_until(meter_b, set(for_b))
    assert set(received_a) == set(for_a)  # copies through overlapping subscriptions are fine
    assert received_b == for_b


async def test_the_gateway_and_head_end_reach_each_other(broker: DapBroker) -> None:
    gateway_reads = [*request_filters(GATEWAY), response_filter(GATEWAY)]
    headend_reads = [*request_filters(HEADEND), response_filter(HEADEND)]
    # Each sends a request to the other and answers the other's (the receiver answers).
    to_headend = [f"/oneM2M/req/{GATEWAY}/{HEADEND}/json", f"/oneM2M/resp/{HEADEND}/{GATEWAY}/json"]
    to_gateway = [f"/oneM2M/req/{HEADEND}/{GATEWAY}/json", f"/oneM2M/resp/{GATEWAY}/{HEADEND}/json"]
    async with (
        subscribed(broker, GATEWAY, gateway_reads, tls=False) as gateway,
        subscribed(broker, HEADEND, headend_reads) as headend,
    ):
        await publish_all(gateway, to_headend)
        await publish_all(headend, to_gateway)
        assert await receive_until(headend, set(to_headend)) == to_headend
        assert await receive_until(gateway, set(to_gateway)) == to_gateway


async def test_the_health_user_reads_the_uptime_only(broker: DapBroker) -> None:
    # What the compose health check does with mosquitto_sub on the loopback listener.
    async with subscribed(broker, "health", ["$SYS/broker/uptime", "#"], tls=False) as health:
        async with asyncio.timeout(GUARD):
            message = await anext(aiter(health.messages))
    assert message.topic.value == "$SYS/broker/uptime"
    assert isinstance(message.payload, bytes) and message.payload.endswith(b"seconds")


async def test_a_meter_revoked_in_the_store_cannot_log_in_once_the_broker_reloads(
    broker: DapBroker,
) -> None:
    password = broker.password(A)
    async with broker.client(A):
        pass
    gridm2m_credentials(broker.store, "revoke", METER_A)
    gridm2m_credentials(broker.store, "add-device", "mtr-000003")  # shows the reload
    await broker.reload(newcomer="Cmtr-000003")
    with pytest.raises(aiomqtt.MqttError):
        async with broker.client(A, password=password):
            pass
    async with broker.client(B):  # the others are still in
        pass


def test_the_broker_files_hold_no_password_and_only_usable_credentials(broker: DapBroker) -> None:
    secrets = broker.directory / "secrets"
    text = (secrets / "passwd").read_text() + (secrets / "acl").read_text()
    for user in (A, B, GATEWAY, HEADEND, "health"):
        assert broker.password(user) not in text
    for path in ("passwd", "acl", "health.env"):
        assert (secrets / path).stat().st_mode & 0o777 == 0o600, path
    users = [line.split(":", 1)[0] for line in (secrets / "passwd").read_text().splitlines()]
    assert sorted(users) == sorted([A, B, GATEWAY, HEADEND, "health", "observer"])


# ---- a gateway CSE and real meters through the broker ------------------------------------------


def json_dumps(value: Any) -> bytes:
    return json.dumps(value).encode()

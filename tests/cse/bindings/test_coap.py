"""The CoAP binding (TS-0008) over a real loopback aiocoap server: mapping, options, blocks, errors.

Requests go out through aiocoap's own client context (which does Block1/Block2 itself), through
a raw UDP socket where the test needs exact datagrams (duplicates, garbage, NON), and through
the binding's CoapClient. Notifications go to a small aiocoap server that records them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import aiocoap  # type: ignore[import-untyped]
import cbor2
import orjson
import pytest
from aiocoap import resource
from aiocoap.numbers.optionnumbers import OptionNumber  # type: ignore[import-untyped]
from aiocoap.optiontypes import OpaqueOption  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cse.bindings.coap import CoapClient, CoapSender, CoapServer
from cse.bindings.coap import server as coap_server
from cse.bindings.coap.codec import decode_request, encode_request, error_reply
from cse.bindings.coap.mapping import (
    Code,
    coap_code,
    dotted,
    path_from_target,
    rsc_from_coap,
    target_from_path,
)
from cse.bindings.coap.messages import raw_options, to_aiocoap
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.errors import M2MError
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.notifications import DeliveryError
from cse.core.primitives import FilterCriteria, Request
from cse.core.types import Operation, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import CBOR, JSON
from cse.storage.memory import MemoryStorage
from tests.helpers import LAB, ae_body, create, delete, retrieve, update

ADMIN = "CAdmin"
AE = "Cmeter"
CNT = {"m2m:cnt": {"rn": "reads", "lbl": ["kind:energy"]}}
FR, RQI, RVI, TY, RSC_OPTION, EC = 279, 283, 271, 267, 307, 303
OLD_FR, OLD_RQI = 256, 257
_ids = itertools.count(1)
_DEFAULT = object()


def cin(con: str) -> dict[str, Any]:
    return {"m2m:cin": {"cnf": "text/plain:0", "con": con}}


# ---- a oneM2M-over-CoAP test client on aiocoap ----------------------------------------------


@dataclass
class Reply:
    code: int
    options: list[tuple[int, bytes]]
    payload: bytes
    content: Any = None
    block2: Any = None

    def option(self, number: int) -> bytes | None:
        values = [value for n, value in self.options if n == number]
        return values[0] if values else None

    @property
    def rsc(self) -> int:
        raw = self.option(RSC_OPTION)
        assert raw is not None, (dotted(self.code), self.payload)
        return int.from_bytes(raw, "big")

    @property
    def location(self) -> str:
        return "/".join(value.decode() for n, value in self.options if n == 8)

    @property
    def dbg(self) -> str:
        return str(self.content["m2m:dbg"])


def operation_of(method: int, ty: bool) -> Operation:
    if method == Code.POST:
        return Operation.CREATE if ty else Operation.NOTIFY
    return {1: Operation.RETRIEVE, 3: Operation.UPDATE, 4: Operation.DELETE}[method]


# Codes the binding answers itself, before the core sees the request (all carry RSC 4000).
BINDING_CODES = {Code.BAD_OPTION, Code.REQUEST_ENTITY_INCOMPLETE, Code.REQUEST_ENTITY_TOO_LARGE}


def check_reply(reply: Reply, sent_rqi: bytes | None, operation: Operation) -> None:
    """What TS-0008 promises for every response, success or not."""
    rsc = RSC(reply.rsc)
    if reply.code in BINDING_CODES:
        assert rsc == RSC.BAD_REQUEST
    else:
        assert reply.code == coap_code(rsc, operation), (dotted(reply.code), rsc)
    assert rsc != RSC.INTERNAL_SERVER_ERROR, reply.payload
    assert reply.option(RQI) == (sent_rqi or None)
    if reply.payload:
        content_format = int.from_bytes(reply.option(12) or b"", "big")
        assert content_format in (50, 60)
        load = cbor2.loads if content_format == 60 else orjson.loads
        reply.content = load(reply.payload)
    if not rsc.is_success:
        dbg = reply.content["m2m:dbg"]
        assert isinstance(dbg, str) and 0 < len(dbg) < 300


class Coap:
    """Speaks oneM2M over CoAP to one server through an aiocoap client context."""

    def __init__(self, context: aiocoap.Context, server: CoapServer) -> None:
        self.context = context
        self.base = server.url

    def message(
        self,
        method: int,
        path: str,
        *,
        origin: str | None = ADMIN,
        rqi: Any = _DEFAULT,
        rvi: str | None = "3",
        ty: int | bytes | None = None,
        body: Any = None,
        raw: bytes | None = None,
        cbor: bool = False,
        content_format: int | None = None,
        accept: int | None = None,
        query: Iterable[str] = (),
        options: Iterable[tuple[int, bytes]] = (),
        legacy: bool = False,
    ) -> aiocoap.Message:
        message = aiocoap.Message(code=aiocoap.Code(method), uri=self.base)
        message.opt.uri_path = tuple(path.split("/")) if path else ()
        message.opt.uri_query = tuple(query)
        payload = raw if raw is not None else b""
        if body is not None:
            payload = cbor2.dumps(body) if cbor else orjson.dumps(body)
            content_format = content_format or (60 if cbor else 50)
        message.payload = payload
        if content_format is not None:
            message.opt.content_format = content_format
        if accept is not None:
            message.opt.accept = accept
        request_id = f"req-{next(_ids)}" if rqi is _DEFAULT else rqi
        fields: list[tuple[int, Any]] = [
            (OLD_FR if legacy else FR, origin),
            (OLD_RQI if legacy else RQI, request_id),
            (RVI, rvi),
            (TY, bytes([ty]) if isinstance(ty, int) else ty),
        ]
        for number, value in (*fields, *options):
            if value is not None:
                raw_value = value.encode() if isinstance(value, str) else value
                message.opt.add_option(OpaqueOption(OptionNumber(number), raw_value))
        return message

    async def call(self, method: int, path: str, **kw: Any) -> Reply:
        message = self.message(method, path, **kw)
        response = await self.context.request(message).response
        reply = Reply(
            int(response.code), raw_options(response), response.payload, None, response.opt.block2
        )
        sent_rqi = next((v for n, v in raw_options(message) if n in (RQI, OLD_RQI)), None)
        check_reply(reply, sent_rqi, operation_of(method, kw.get("ty") is not None))
        return reply

    async def create(self, path: str, ty: int | bytes, body: Any, **kw: Any) -> Reply:
        return await self.call(Code.POST, path, ty=ty, body=body, **kw)

    async def retrieve(self, path: str, **kw: Any) -> Reply:
        return await self.call(Code.GET, path, **kw)

    async def update(self, path: str, body: Any, **kw: Any) -> Reply:
        return await self.call(Code.PUT, path, body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call(Code.DELETE, path, **kw)


# ---- raw datagrams ---------------------------------------------------------------------------

CON, NON, ACK = 0, 1, 2


def _extended(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def datagram(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: Sequence[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    """An RFC 7252 message, encoded here so tests do not depend on the library under test."""
    out = bytearray([0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF, *token])
    previous = 0
    for number, value in sorted(options, key=lambda option: option[0]):
        delta, delta_ext = _extended(number - previous)
        length, length_ext = _extended(len(value))
        out += bytes([delta << 4 | length]) + delta_ext + length_ext + value
        previous = number
    return bytes(out + (b"\xff" + payload if payload else b""))


def request_options(path: str, rqi: str, *, ty: int | None = None) -> list[tuple[int, bytes]]:
    options = [(11, segment.encode()) for segment in path.split("/")]
    options += [(FR, AE.encode()), (RQI, rqi.encode()), (RVI, b"3"), (12, b"\x32")]
    return options + ([(TY, bytes([ty]))] if ty is not None else [])


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket on loopback: send exact datagrams, receive replies by message ID."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, port: int) -> RawPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, remote_addr=("127.0.0.1", port))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def reply_to(self, mid: int | None = None, token: bytes | None = None) -> aiocoap.Message:
        async with asyncio.timeout(10):
            while True:
                reply = aiocoap.Message.decode(await self.replies.get())
                if (mid is None or reply.mid == mid) and (token is None or reply.token == token):
                    return reply

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[CoapClient]:
    async with CoapClient(timeout=5) as coap_client:
        yield coap_client


@pytest.fixture
async def cse(clock: ManualClock, client: CoapClient) -> AsyncIterator[CommonServicesEntity]:
    """A CSE on in-memory storage whose notifications go out over CoAP."""
    entity = CommonServicesEntity(
        MemoryStorage(),
        CSESettings(expiry_check_interval=3600, notification_timeout=5, egress=LAB),
        clock=clock,
        senders={"coap": CoapSender(client)},
    )
    async with entity:
        yield entity


@pytest.fixture
async def server(cse: CommonServicesEntity) -> AsyncIterator[CoapServer]:
    async with CoapServer(cse, "127.0.0.1", 0, max_body_size=8192, trust=Trust.INSECURE) as running:
        yield running


@pytest.fixture
async def context() -> AsyncIterator[aiocoap.Context]:
    created = await aiocoap.Context.create_client_context(transports=["udp6"])
    yield created
    await created.shutdown()


@pytest.fixture
async def coap(context: aiocoap.Context, server: CoapServer) -> Coap:
    return Coap(context, server)


@pytest.fixture
async def meter(coap: Coap) -> Coap:
    """An AE `meter` (Cmeter) with a container `reads`."""
    assert (await coap.create("cse-in", 2, ae_body("meter"), origin=AE)).rsc == RSC.CREATED
    assert (await coap.create("cse-in/meter", 3, CNT, origin=AE)).rsc == RSC.CREATED
    return coap


@pytest.fixture
async def raw(server: CoapServer) -> AsyncIterator[RawPeer]:
    assert server.port is not None
    peer = await RawPeer.open(server.port)
    yield peer
    peer.close()


# ---- CRUD, addressing, query ----------------------------------------------------------------


async def test_server_reports_its_bound_port(server: CoapServer) -> None:
    assert server.port and server.port > 0
    assert server.url == f"coap://127.0.0.1:{server.port}"


async def test_create_retrieve_update_delete(coap: Coap) -> None:
    ae = await coap.create("cse-in", 2, ae_body("meter"), origin=AE, rqi="req-0001")
    assert (ae.code, ae.rsc) == (Code.CREATED, 2001)
    assert ae.option(RQI) == b"req-0001" and ae.option(RVI) == b"3"
    assert ae.option(RSC_OPTION) == b"\x07\xd1"  # uint, two bytes
    assert ae.location == "cse-in/meter"
    assert ae.content["m2m:ae"]["aei"] == AE

    cnt = await coap.create("cse-in/meter", 3, CNT, origin=AE)
    assert (cnt.code, cnt.location) == (Code.CREATED, "cse-in/meter/reads")
    instance = await coap.create("cse-in/meter/reads", 4, cin("21.5"), origin=AE)
    assert instance.content["m2m:cin"]["con"] == "21.5"

    got = await coap.retrieve("cse-in/meter/reads", origin=AE)
    assert (got.code, got.rsc) == (Code.CONTENT, 2000)
    assert got.content["m2m:cnt"]["cni"] == 1
    changed = await coap.update("cse-in/meter/reads", {"m2m:cnt": {"mni": 5}}, origin=AE)
    assert (changed.code, changed.rsc) == (Code.CHANGED, 2004)
    assert changed.content["m2m:cnt"]["mni"] == 5
    gone = await coap.delete("cse-in/meter/reads", origin=AE)
    assert (gone.code, gone.rsc) == (Code.DELETED, 2002)
    missing = await coap.retrieve("cse-in/meter/reads", origin=AE)
    assert (missing.code, missing.rsc) == (Code.NOT_FOUND, 4004)


async def test_sp_relative_and_absolute_targets(meter: Coap) -> None:
    sp_relative = await meter.retrieve("~/id-in/cse-in/meter/reads", origin=AE)
    assert sp_relative.content["m2m:cnt"]["rn"] == "reads"
    absolute = await meter.retrieve("_/grid.example.net/id-in/cse-in/meter", origin=AE)
    assert absolute.content["m2m:ae"]["rn"] == "meter"


async def test_discovery_and_result_content_via_uri_query(meter: Coap) -> None:
    for value in ("1", "2"):
        await meter.create("cse-in/meter/reads", 4, cin(value), origin=AE)
    found = await meter.retrieve("cse-in", origin=AE, query=["fu=1", "ty=3", "lbl=kind:energy"])
    assert found.content == {"m2m:uril": ["cse-in/meter/reads"]}
    limited = await meter.retrieve("cse-in/meter", origin=AE, query=["fu=1", "ty=4", "lim=1"])
    assert len(limited.content["m2m:uril"]) == 1
    unstructured = await meter.retrieve("cse-in", origin=AE, query=["fu=1", "ty=3", "drt=2"])
    assert unstructured.content["m2m:uril"][0].startswith("cnt")
    children = await meter.retrieve("cse-in/meter/reads", origin=AE, query=["rcn=4"])
    assert [c["con"] for c in children.content["m2m:cnt"]["m2m:cin"]] == ["1", "2"]
    partial = await meter.retrieve("cse-in/meter/reads", origin=AE, query=["atrl=rn+cni"])
    assert partial.content["m2m:cnt"].keys() <= {"rn", "cni"}


async def test_bad_query_values_are_bad_requests(meter: Coap) -> None:
    for query in (["rcn=77"], ["drt=3"], ["lim=-1"], ["nonsense=1"], ["fu=9"]):
        reply = await meter.retrieve("cse-in/meter", origin=AE, query=query)
        assert (reply.code, reply.rsc) == (Code.BAD_REQUEST, 4000), query


# ---- serializations and content formats ------------------------------------------------------


async def test_cbor_request_and_reply(meter: Coap) -> None:
    created = await meter.create("cse-in/meter/reads", 4, cin("7"), origin=AE, cbor=True)
    assert created.option(12) == b"\x3c"  # replies in the request's serialization: 60
    assert created.content["m2m:cin"]["con"] == "7"
    as_json = await meter.retrieve("cse-in/meter/reads/la", origin=AE, accept=50)
    assert as_json.option(12) == b"\x32" and as_json.content["m2m:cin"]["con"] == "7"
    as_cbor = await meter.retrieve("cse-in/meter/reads/la", origin=AE, accept=60)
    assert as_cbor.option(12) == b"\x3c"


@pytest.mark.parametrize(("content_format", "reply_format"), [(10001, 50), (10010, 60)])
async def test_onem2m_content_formats(meter: Coap, content_format: int, reply_format: int) -> None:
    cbor = reply_format == 60
    created = await meter.create(
        "cse-in/meter/reads", 4, cin("1"), origin=AE, cbor=cbor, content_format=content_format
    )
    assert created.rsc == RSC.CREATED
    assert int.from_bytes(created.option(12) or b"", "big") == reply_format
    accepted = await meter.retrieve("cse-in/meter", origin=AE, accept=10003)
    assert accepted.option(12) == b"\x32"


async def test_unsupported_formats(meter: Coap) -> None:
    xml = await meter.create(
        "cse-in/meter/reads", 4, None, origin=AE, raw=b"<cin/>", content_format=41
    )
    assert (xml.code, xml.rsc) == (Code.UNSUPPORTED_CONTENT_FORMAT, 4015)
    unknown = await meter.create("cse-in/meter/reads", 4, cin("1"), origin=AE, content_format=99)
    assert unknown.code == Code.UNSUPPORTED_CONTENT_FORMAT
    not_acceptable = await meter.retrieve("cse-in/meter", origin=AE, accept=41)
    assert (not_acceptable.code, not_acceptable.rsc) == (Code.NOT_ACCEPTABLE, 5207)


@pytest.mark.parametrize(("raw", "content_format"), [(b"{not json", 50), (b"\xff\x00", 60)])
async def test_invalid_payload_is_bad_request(meter: Coap, raw: bytes, content_format: int) -> None:
    reply = await meter.create(
        "cse-in/meter/reads", 4, None, origin=AE, raw=raw, content_format=content_format
    )
    assert (reply.code, reply.rsc) == (Code.BAD_REQUEST, 4000)
    assert "not valid" in reply.dbg


# ---- options ---------------------------------------------------------------------------------


async def test_pre_renumbering_option_numbers(coap: Coap) -> None:
    ae = await coap.create("cse-in", 2, ae_body("old"), origin="Cold", rqi="r-old", legacy=True)
    assert (ae.code, ae.rsc) == (Code.CREATED, 2001)
    assert ae.option(RQI) == b"r-old"  # answered under the current number
    assert ae.content["m2m:ae"]["aei"] == "Cold"
    # ec under its old number 264, rqet under 260: read as such (an expired rqet is 4008)
    expired = await coap.retrieve("cse-in/old", origin="Cold", options=[(260, b"20000101T000000")])
    assert (expired.code, expired.rsc) == (Code.GATEWAY_TIMEOUT, 4008)
    both = await coap.retrieve("cse-in/old", origin="Cold", options=[(OLD_FR, b"Cwrong")])
    assert both.rsc == RSC.OK  # FR 279 (Cold) wins over FR 256


@pytest.mark.parametrize("ty", [b"2", b"\x02", b"\x00\x02"])
async def test_type_as_uint_or_ascii(coap: Coap, ty: bytes) -> None:
    ae = await coap.create("cse-in", ty, ae_body("meter"), origin=AE)
    assert (ae.code, ae.content["m2m:ae"]["ty"]) == (Code.CREATED, 2)


async def test_ascii_type_for_a_content_instance(meter: Coap) -> None:
    created = await meter.create("cse-in/meter/reads", b"4", cin("9"), origin=AE)
    assert created.content["m2m:cin"]["ty"] == 4


async def test_unknown_critical_option_is_bad_option(meter: Coap) -> None:
    reply = await meter.retrieve("cse-in/meter", origin=AE, options=[(285, b"x")], rqi="r-285")
    assert (reply.code, reply.rsc) == (Code.BAD_OPTION, 4000)
    assert reply.option(RQI) == b"r-285" and "285" in reply.dbg
    repeated = await meter.retrieve("cse-in/meter", origin=AE, options=[(FR, b"Cother")])
    assert repeated.code == Code.BAD_OPTION and "repeated" in repeated.dbg
    if_match = await meter.retrieve("cse-in/meter", origin=AE, options=[(1, b"tag")])
    assert if_match.code == Code.BAD_OPTION


async def test_unknown_elective_options_are_ignored(meter: Coap) -> None:
    reply = await meter.retrieve("cse-in/meter", origin=AE, options=[(284, b"x"), (2048, b"")])
    assert (reply.code, reply.rsc) == (Code.CONTENT, 2000)


async def test_r4_options_are_accepted(meter: Coap) -> None:
    reply = await meter.retrieve("cse-in/meter", origin=AE, rvi="4", options=[(343, b"1")])
    assert reply.rsc == RSC.OK


@pytest.mark.parametrize(
    ("method", "kw", "code", "rsc"),
    [
        (Code.GET, {"rvi": None}, Code.NOT_IMPLEMENTED, 4001),
        (Code.GET, {"options": [(291, b"20000101T000000")]}, Code.GATEWAY_TIMEOUT, 4008),
        (Code.GET, {"query": ["rt=9"]}, Code.BAD_REQUEST, 4000),
        (Code.PUT, {"ty": 3, "body": CNT}, Code.BAD_REQUEST, 4000),
        (Code.GET, {"options": [(EC, b"\x00\x00\x00\x00\x01")]}, Code.BAD_REQUEST, 4000),
        (Code.GET, {"options": [(283, b"\xff")], "rqi": None}, Code.BAD_REQUEST, 4000),
    ],
)
async def test_request_errors_map_to_codes(
    meter: Coap, method: int, kw: dict[str, Any], code: int, rsc: int
) -> None:
    message = meter.message(method, "cse-in/meter", origin=AE, **kw)
    response = await meter.context.request(message).response
    reply = Reply(int(response.code), raw_options(response), response.payload)
    assert (dotted(reply.code), reply.rsc) == (dotted(code), rsc)


async def test_methods_without_an_operation(meter: Coap) -> None:
    message = meter.message(5, "cse-in/meter", origin=AE)  # FETCH
    response = await meter.context.request(message).response
    assert int(response.code) == Code.METHOD_NOT_ALLOWED


async def test_notify_is_answered_2_04_without_payload(meter: Coap) -> None:
    body = {"m2m:sgn": {"vrq": True, "sur": "/id-in/sub1", "cr": AE}}
    reply = await meter.call(Code.POST, "cse-in/meter", origin=AE, body=body)
    assert (reply.code, reply.rsc, reply.payload) == (Code.CHANGED, 2000, b"")


# ---- block-wise transfers --------------------------------------------------------------------


async def test_block1_upload_of_2400_bytes(meter: Coap, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks: list[Any] = []
    feed = coap_server._Block1Assembly.feed_and_take

    def spy(self: Any, request: aiocoap.Message) -> aiocoap.Message:
        blocks.append(request.opt.block1)
        return feed(self, request)

    monkeypatch.setattr(coap_server._Block1Assembly, "feed_and_take", spy)
    body = cin("x" * (2400 - len(orjson.dumps(cin("")))))
    assert len(orjson.dumps(body)) == 2400
    created = await meter.create("cse-in/meter/reads", 4, body, origin=AE)
    assert created.rsc == RSC.CREATED
    assert created.content["m2m:cin"]["cs"] == len(body["m2m:cin"]["con"])
    uploaded = [(block.block_number, block.more) for block in blocks if block is not None]
    assert uploaded == [(0, True), (1, True), (2, False)]
    assert created.block2 is not None  # the 2.01 echoes the CIN: its answer went in Block2 too
    container = await meter.retrieve("cse-in/meter/reads", origin=AE)
    assert container.content["m2m:cnt"]["cni"] == 1  # fetching Block2 did not create again


async def test_block2_answer(meter: Coap) -> None:
    for index in range(6):
        await meter.create("cse-in/meter/reads", 4, cin(f"{index}" * 300), origin=AE)
    children = await meter.retrieve("cse-in/meter/reads", origin=AE, query=["rcn=4"])
    assert len(children.payload) > 1024
    assert children.block2 is not None and children.block2.block_number >= 1
    assert len(children.content["m2m:cnt"]["m2m:cin"]) == 6


def _block(coap: Coap, rqi: str, payload: bytes, number: int, more: bool) -> aiocoap.Message:
    message = coap.message(Code.POST, "cse-in/meter/reads", origin=AE, ty=4, rqi=rqi)
    message.opt.content_format = 50
    message.payload = payload
    message.opt.block1 = (number, more, 6)
    return message


async def test_block1_sequence_with_a_hole(meter: Coap) -> None:
    body = orjson.dumps(cin("y" * 5000))

    async def send(rqi: str, start: int, end: int, number: int) -> aiocoap.Message:
        message = _block(meter, rqi, body[start:end], number, more=True)
        return await meter.context.request(message, handle_blockwise=False).response

    assert (await send("hole", 0, 1024, 0)).code == aiocoap.CONTINUE
    hole = await send("hole", 2048, 3072, 2)
    assert int(hole.code) == Code.REQUEST_ENTITY_INCOMPLETE
    check_reply(Reply(int(hole.code), raw_options(hole), hole.payload), b"hole", Operation.CREATE)
    orphan = await send("orphan", 1024, 2048, 1)  # no block 0 ever came
    assert int(orphan.code) == Code.REQUEST_ENTITY_INCOMPLETE
    assert (await send("short", 0, 1024, 0)).code == aiocoap.CONTINUE
    short = await send("short", 1024, 2000, 1)  # a non-final block smaller than its size
    assert int(short.code) == Code.BAD_REQUEST
    still = await meter.retrieve("cse-in/meter/reads", origin=AE)
    assert still.content["m2m:cnt"]["cni"] == 0


async def test_body_over_the_limit(meter: Coap) -> None:
    too_big = await meter.create("cse-in/meter/reads", 4, cin("z" * 9000), origin=AE)
    assert (too_big.code, too_big.rsc) == (Code.REQUEST_ENTITY_TOO_LARGE, 4000)
    assert "8192" in too_big.dbg
    fits = await meter.create("cse-in/meter/reads", 4, cin("z" * 8000), origin=AE)
    assert fits.rsc == RSC.CREATED


async def test_size1_announcing_too_much_is_refused_at_the_first_block(meter: Coap) -> None:
    message = _block(meter, "size1", b"{" * 1024, 0, True)
    message.opt.size1 = 100_000
    response = await meter.context.request(message, handle_blockwise=False).response
    assert int(response.code) == Code.REQUEST_ENTITY_TOO_LARGE
    assert response.opt.size1 == 8192


# ---- message layer: CON duplicates, NON, garbage ---------------------------------------------


async def test_retransmitted_con_creates_once(meter: Coap, raw: RawPeer) -> None:
    options = request_options("cse-in/meter/reads", "dup-1", ty=4)
    con = datagram(CON, Code.POST, 0x1234, b"dup", options, orjson.dumps(cin("once")))
    raw.send(con)
    first = await raw.reply_to(mid=0x1234)
    raw.send(con)
    second = await raw.reply_to(mid=0x1234)
    for reply in (first, second):
        assert (reply.mtype, int(reply.code), reply.token) == (aiocoap.ACK, Code.CREATED, b"dup")
    assert first.payload == second.payload
    container = await meter.retrieve("cse-in/meter/reads", origin=AE)
    assert container.content["m2m:cnt"]["cni"] == 1


async def test_a_create_sent_again_with_a_new_message_id_creates_once(
    meter: Coap, raw: RawPeer
) -> None:
    options = request_options("cse-in/meter/reads", "retry-1", ty=4)
    replies = []
    for mid in (0x2001, 0x2002):  # the client gave up on the first exchange and retried
        raw.send(datagram(CON, Code.POST, mid, b"rt", options, orjson.dumps(cin("retry"))))
        replies.append(await raw.reply_to(mid=mid))
    first, second = (orjson.loads(reply.payload)["m2m:cin"]["ri"] for reply in replies)
    assert first == second
    container = await meter.retrieve("cse-in/meter/reads", origin=AE)
    assert container.content["m2m:cnt"]["cni"] == 1


async def test_non_request_gets_a_non_answer(meter: Coap, raw: RawPeer) -> None:
    raw.send(datagram(NON, Code.GET, 7, b"n7", request_options("cse-in/meter", "non-1")))
    reply = await raw.reply_to(token=b"n7")
    assert (reply.mtype, int(reply.code)) == (aiocoap.NON, Code.CONTENT)
    assert orjson.loads(reply.payload)["m2m:ae"]["rn"] == "meter"


@pytest.mark.both_loops
async def test_the_server_remembers_a_bounded_number_of_exchanges(
    cse: CommonServicesEntity,
) -> None:
    # aiocoap kept every exchange for 247 s: a client sending fast, even only requests that
    # are refused, grew the gateway's memory by ~7 KB a request until it was killed.
    async with CoapServer(
        cse, "127.0.0.1", 0, trust=Trust.INSECURE, remembered_exchanges=50
    ) as server:
        assert server.port is not None
        raw = await RawPeer.open(server.port)
        try:
            assert (await _raw_create(raw, 0x3000, "cse-in", 2, ae_body("meter"))) == 201
            assert (await _raw_create(raw, 0x3001, "cse-in/meter", 3, CNT)) == 201
            for mid in range(0x3100, 0x3100 + 200):
                options = request_options("cse-in/meter", f"get-{mid}")
                raw.send(datagram(CON, Code.GET, mid, b"b", options))
                assert int((await raw.reply_to(mid=mid)).code) == Code.CONTENT
            assert server.remembered_exchanges() == 50
            # A retransmission of a recent CON is still answered from memory, not run twice.
            options = request_options("cse-in/meter/reads", "bounded-1", ty=4)
            con = datagram(CON, Code.POST, 0x3400, b"c", options, orjson.dumps(cin("once")))
            for _ in range(2):
                raw.send(con)
                assert int((await raw.reply_to(mid=0x3400)).code) == Code.CREATED
            container = await cse.handle(retrieve("cse-in/meter/reads"))
            assert container.content["m2m:cnt"]["cni"] == 1
        finally:
            raw.close()


async def _raw_create(raw: RawPeer, mid: int, path: str, ty: int, body: Any) -> int:
    options = request_options(path, f"create-{mid}", ty=ty)
    raw.send(datagram(CON, Code.POST, mid, b"r", options, orjson.dumps(body)))
    code = int((await raw.reply_to(mid=mid)).code)
    return 201 if code == Code.CREATED else code


def test_exchanges_are_forgotten_after_their_lifetime_or_oldest_first() -> None:
    now = [0.0]
    recent = coap_server.RecentExchanges(lifetime=10.0, most=3, clock=lambda: now[0])
    for key in "abc":
        recent.remember(key)
        now[0] += 1.0
    recent["a"] = "answer"  # aiocoap stores the answer under the key it remembered
    recent.remember("d")  # the fourth: "a" goes before its lifetime
    assert list(recent) == ["b", "c", "d"] and recent.forgotten_early == 1
    now[0] = 11.5  # "b" came at 1.0 and "c" at 2.0: "b" has lived 10.5 s
    recent.expire()
    assert list(recent) == ["c", "d"]


GARBAGE = [
    b"",
    b"\x40",  # truncated header
    b"\x80\x01\x00\x01",  # version 2
    b"\x48\x01\x00\x02abc",  # token longer than the datagram
    b"\x40\x01\x00\x03\xf0",  # delta 15 outside the payload marker
    b"\x40\x01\x00\x04\xb5ab",  # option length beyond the end
    b"\x40\x01\x00\x05\xd0",  # extended delta missing
    b"\x40\x01\x00\x06\xb1\xff",  # Uri-Path that is not UTF-8
    b"\x40\x01\x00\x07\xff",  # payload marker without payload
    b"\x60\x00\x00\x08",  # a stray empty ACK
    b"\x40\x00\x00\x09",  # CoAP ping (answered with RST)
    bytes(range(256)),
]


async def test_garbage_datagrams_leave_the_server_serving(
    meter: Coap, raw: RawPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for data in GARBAGE:
        raw.send(data)
    options = [*request_options("cse-in/meter", "after-garbage"), (285, b"?")]
    raw.send(datagram(CON, Code.GET, 0x0A00, b"g1", options))
    rejected = await raw.reply_to(mid=0x0A00)
    assert int(rejected.code) == Code.BAD_OPTION
    raw.send(datagram(CON, Code.GET, 0x0A01, b"g2", request_options("cse-in/meter", "ok")))
    answered = await raw.reply_to(mid=0x0A01)
    assert int(answered.code) == Code.CONTENT
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _send_and_close(port: int, datagrams: Iterable[bytes]) -> None:
    """Send from a UDP socket closed right after: the answers draw ICMP port-unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        for data in datagrams:
            gone.sendto(data, ("127.0.0.1", port))


@pytest.mark.both_loops
async def test_the_server_answers_after_its_answers_met_a_closed_socket(
    meter: Coap, server: CoapServer, raw: RawPeer
) -> None:
    # A meter that reboots mid-exchange: under uvloop the ICMP errors used to stop the server
    # reading its socket for good (the datagrams are the ones that showed it).
    assert server.port is not None
    _send_and_close(server.port, (bytes([0x44, 1, 0, i, 0, 0, 0, i]) for i in range(30)))
    raw.send(datagram(CON, Code.GET, 0x0B00, b"a1", request_options("cse-in/meter", "after-icmp")))
    answered = await raw.reply_to(mid=0x0B00)
    assert int(answered.code) == Code.CONTENT
    assert server.liveness().restarts == 0


@pytest.mark.both_loops
async def test_a_server_that_stopped_reading_is_restarted_on_its_port(
    meter: Coap, server: CoapServer, raw: RawPeer, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.port is not None
    port = server.port
    assert await server.probe()
    # Whatever stops the loop watching the socket (it was uvloop's reaction to ICMP errors):
    # the server then hears nothing, and only a round trip notices.
    sock = coap_server.udp_endpoint(server._context).transport.get_extra_info("socket")
    asyncio.get_running_loop().remove_reader(sock.fileno())
    await server.check_liveness()
    assert server.liveness().alive is False
    await server.check_liveness()
    liveness = server.liveness()
    assert (liveness.alive, liveness.restarts, server.port) == (True, 1, port)
    assert "missed 2 pings in a row and read nothing; restarting" in caplog.text
    options = request_options("cse-in/meter", "after-restart")
    raw.send(datagram(CON, Code.GET, 0x0B01, b"a2", options))
    answered = await raw.reply_to(mid=0x0B01)
    assert int(answered.code) == Code.CONTENT


@pytest.mark.both_loops
async def test_a_busy_server_that_misses_pings_is_not_restarted(
    meter: Coap, server: CoapServer, raw: RawPeer
) -> None:
    """A ping can miss on a server working through a queue of meters' datagrams; restarting
    it would lose every exchange in flight. (Here the ping's wait is zero, so it always misses,
    while a meter's requests keep arriving between the checks.)"""
    for number in range(3):
        mid = 0x0C00 + number
        options = request_options("cse-in/meter", f"busy-{number}")
        raw.send(datagram(CON, Code.GET, mid, b"b%d" % number, options))
        assert int((await raw.reply_to(mid=mid)).code) == Code.CONTENT
        await server.check_liveness(timeout=0)
        assert server.liveness().alive is False
    assert server.liveness().failures == 3
    assert server.liveness().restarts == 0


# ---- notifications ---------------------------------------------------------------------------


@dataclass
class Received:
    code: int
    options: list[tuple[int, bytes]]
    payload: bytes

    def option(self, number: int) -> bytes | None:
        return next((value for n, value in self.options if n == number), None)

    @property
    def content(self) -> Any:
        load = cbor2.loads if self.option(12) == b"\x3c" else orjson.loads
        return load(self.payload)


class CoapReceiver(resource.Resource, resource.PathCapable):  # type: ignore[misc]
    """A coap:// notification target on loopback that records every request it gets.

    It is the server's root resource (not put under a Site), so it sees the whole Uri-Path.
    """

    def __init__(self, rsc: int | None = 2000, code: int = Code.CHANGED) -> None:
        super().__init__()
        self.rsc = rsc
        self.code = code
        self.received: list[Received] = []
        self._arrived = asyncio.Condition()
        self._context: aiocoap.Context | None = None
        self.url = ""

    async def __aenter__(self) -> CoapReceiver:
        self._context = await aiocoap.Context.create_server_context(
            self, bind=("127.0.0.1", 0), transports=["udp6"]
        )
        self.url = f"coap://127.0.0.1:{coap_server.bound_port(self._context)}/notify"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._context is not None
        await self._context.shutdown()

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        async with self._arrived:
            self.received.append(Received(2, raw_options(request), request.payload))
            self._arrived.notify_all()
        reply = aiocoap.Message(code=aiocoap.Code(self.code))
        if self.rsc is not None:
            reply.opt.add_option(OpaqueOption(OptionNumber(RSC_OPTION), self.rsc.to_bytes(2)))
        return reply

    async def wait_for(self, count: int) -> list[Received]:
        async with asyncio.timeout(10), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received


def subscription(url: str) -> dict[str, Any]:
    return {"m2m:sub": {"rn": "sub", "nu": [url], "enc": {"net": [3]}}}


@pytest.mark.parametrize("suffix", ["", "?ct=cbor"])
async def test_notifications_to_a_coap_target(meter: Coap, suffix: str) -> None:
    async with CoapReceiver() as receiver:
        target = receiver.url + suffix
        sub = await meter.create("cse-in/meter/reads", 23, subscription(target), origin=AE)
        assert sub.rsc == RSC.CREATED
        await meter.create("cse-in/meter/reads", 4, cin("42"), origin=AE)
        verification, notification = await receiver.wait_for(2)
    assert verification.content["m2m:sgn"]["vrq"] is True
    sgn = notification.content["m2m:sgn"]
    assert sgn["nev"]["net"] == 3 and sgn["nev"]["rep"]["m2m:cin"]["con"] == "42"
    assert notification.option(FR) == b"/id-in" and notification.option(RVI) == b"3"
    assert notification.option(RQI) and notification.option(TY) is None  # NOTIFY: no TY
    assert [v for n, v in notification.options if n == 11] == [b"notify"]
    assert notification.option(15) is None  # ?ct= is for the sender, not the target
    assert notification.option(12) == (b"\x3c" if suffix else b"\x32")


async def test_a_non_blocking_request_is_a_post_with_op_and_rt_in_the_query(
    meter: Coap,
) -> None:
    """TS-0008: a non-blocking request is a POST with op and rt in Uri-Query; the 1001 that
    made a <request> is 2.01 with its address in Location-Path."""
    reply = await meter.call(Code.POST, "cse-in/meter", origin=AE, query=["op=2", "rt=1"])
    assert (reply.code, reply.rsc) == (Code.CREATED, RSC.ACCEPTED_NON_BLOCKING_REQUEST_SYNCH)
    assert reply.location == f"cse-in/{reply.content['m2m:uri']}"


async def test_rturi_names_where_an_rt_2_result_goes(meter: Coap) -> None:
    async with CoapReceiver() as receiver:
        reply = await meter.call(
            Code.POST,
            "cse-in/meter",
            origin=AE,
            query=["op=2", "rt=2"],
            options=[(263, receiver.url.encode())],
        )
        assert (reply.code, reply.rsc) == (Code.CREATED, 1002)
        (notification,) = await receiver.wait_for(1)
    assert notification.content["m2m:rsp"]["rsc"] == RSC.OK
    assert notification.content["m2m:rsp"]["pc"]["m2m:ae"]["aei"] == AE


async def test_a_latest_only_batch_reaches_a_coap_target_in_cbor_as_category_latest(
    meter: Coap,
) -> None:
    """TS-0001 9.6.8 latestNotify over TS-0008: the aggregated notification in CBOR, with the
    event category "latest" (4) in the oneM2M-EC option."""
    async with CoapReceiver() as receiver:
        body = {"m2m:sub": {"nu": [receiver.url + "?ct=cbor"], "enc": {"net": [3]}}}
        body["m2m:sub"].update({"bn": {"num": 2}, "ln": True})
        assert (await meter.create("cse-in/meter/reads", 23, body, origin=AE)).rsc == 2001
        for value in ("old", "new"):
            await meter.create("cse-in/meter/reads", 4, cin(value), origin=AE)
        _, notification = await receiver.wait_for(2)
    assert notification.option(12) == b"\x3c" and notification.option(EC) == b"\x04"
    (latest,) = notification.content["m2m:agn"]["m2m:sgn"]
    assert latest["nev"]["rep"]["m2m:cin"]["con"] == "new"


async def test_a_target_refusing_verification_fails_the_subscription(meter: Coap) -> None:
    async with CoapReceiver(rsc=4103, code=Code.FORBIDDEN) as receiver:
        sub = await meter.create("cse-in/meter/reads", 23, subscription(receiver.url), origin=AE)
    assert (sub.code, sub.rsc) == (Code.INTERNAL_SERVER_ERROR, 5204)


async def test_sender_guesses_the_status_without_rsc(client: CoapClient) -> None:
    primitive = {"fr": "/id-in", "rqi": "n1", "rvi": "3", "pc": {"m2m:sgn": {"vrq": True}}}
    async with CoapReceiver(rsc=None) as receiver:
        assert await CoapSender(client).send(receiver.url, primitive) == 2000


async def test_sender_to_an_unreachable_target(client: CoapClient) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    transport.close()  # now nothing listens there: ICMP port unreachable
    with pytest.raises(DeliveryError):
        await CoapSender(client).send(f"coap://127.0.0.1:{port}/n", {"rqi": "x", "pc": {}})


async def test_client_timeout_is_a_delivery_error() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        async with CoapClient(timeout=0.2) as slow:
            with pytest.raises(DeliveryError, match="no answer"):
                await slow.send(f"coap://127.0.0.1:{port}", retrieve("cse-in"))
    finally:
        transport.close()


# ---- CoapClient round trip --------------------------------------------------------------------


@pytest.mark.parametrize("serialization", [JSON, CBOR])
async def test_client_round_trip(server: CoapServer, serialization: str) -> None:
    async with CoapClient(serialization=serialization) as uplink:
        ae = await uplink.send(server.url, create("cse-in", 2, ae_body("meter"), AE))
        assert (ae.status, ae.location) == (RSC.CREATED, "cse-in/meter")
        assert ae.request_id and ae.release_version == "3"
        await uplink.send(server.url, create("cse-in/meter", 3, CNT, AE))
        for value in ("1", "2" * 1500):  # the second one needs Block1 and its answer Block2
            made = await uplink.send(server.url, create("cse-in/meter/reads", 4, cin(value), AE))
            assert made.status == RSC.CREATED
        found = await uplink.send(
            server.url,
            retrieve("cse-in", AE, fc=FilterCriteria(filter_usage=1, resource_types=(4,))),
        )
        assert len(found.content["m2m:uril"]) == 2
        children = await uplink.send(server.url, retrieve("cse-in/meter/reads", AE, rcn=4))
        assert children.content["m2m:cnt"]["m2m:cin"][1]["con"] == "2" * 1500
        changed = await uplink.send(
            server.url, update("cse-in/meter/reads", {"m2m:cnt": {"mni": 1}}, AE)
        )
        assert changed.status == RSC.UPDATED
        gone = await uplink.send(server.url, delete("/id-in/cse-in/meter", AE))
        assert gone.status == RSC.DELETED
        missing = await uplink.send(server.url, retrieve("cse-in/meter"))
        assert missing.status == RSC.NOT_FOUND and "m2m:dbg" in missing.content


# ---- mapping tables ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rsc", "operation", "expected"),
    [
        (2000, Operation.RETRIEVE, "2.05"),
        (2000, Operation.NOTIFY, "2.04"),
        (2001, Operation.CREATE, "2.01"),
        (2002, Operation.DELETE, "2.02"),
        (2004, Operation.UPDATE, "2.04"),
        (4000, None, "4.00"),
        (4001, None, "5.01"),
        (4004, None, "4.04"),
        (4005, None, "4.05"),
        (4008, None, "5.04"),
        (4015, None, "4.15"),
        (4103, None, "4.03"),
        (4105, None, "4.03"),
        (4110, None, "4.00"),
        (5000, None, "5.00"),
        (5001, None, "5.01"),
        (5103, None, "4.04"),
        (5106, None, "4.00"),
        (5203, None, "4.03"),
        (5207, None, "4.06"),
        (6010, None, "4.00"),
    ],
)
def test_status_code_table(rsc: int, operation: Operation | None, expected: str) -> None:
    assert dotted(coap_code(rsc, operation)) == expected


def test_rsc_guesses_from_codes() -> None:
    assert rsc_from_coap(Code.CREATED, Operation.NOTIFY) == 2000  # nCube answers 2001
    assert rsc_from_coap(Code.CONTENT, Operation.RETRIEVE) == 2000
    assert rsc_from_coap(Code.GATEWAY_TIMEOUT, Operation.RETRIEVE) == 4008
    assert rsc_from_coap(Code.SERVICE_UNAVAILABLE, Operation.RETRIEVE) == 5000


@pytest.mark.parametrize(
    ("to", "path"),
    [
        ("cse-in/meter", ["cse-in", "meter"]),
        ("/id-in/cse-in", ["~", "id-in", "cse-in"]),
        ("//grid.example.net/id-in/cse-in", ["_", "grid.example.net", "id-in", "cse-in"]),
    ],
)
def test_target_and_uri_path(to: str, path: list[str]) -> None:
    assert path_from_target(to) == path and target_from_path(path) == to


# ---- property tests: the decoder and random datagrams ---------------------------------------

_INTERESTING = [1, 3, 6, 7, 8, 11, 12, 15, 17, 23, 27, 28, 60, 258, 285, 2049]
_INTERESTING += [256, 257, 259, 260, 261, 262, 263, 264, 265, 266, 267, 271, 279, 283, 291]
_INTERESTING += [303, 307, 311, 331, 343]
_VALUES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"4", b"\x02", b"cse-in", b"~", b"_", b"\x32", b"\x3c", b"\x29", b"3"]),
    st.sampled_from([b"rcn=4", b"fu=1", b"ty=3", b"lbl=a+b", b"op=2", b"rt=3", b"drt=2"]),
    st.text(max_size=8).map(str.encode),
)
_OPTIONS = st.lists(
    st.tuples(st.one_of(st.sampled_from(_INTERESTING), st.integers(0, 65535)), _VALUES),
    max_size=12,
)
_INT64 = st.integers(-(2**63), 2**63 - 1)
_PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(st.text(max_size=5), _INT64 | st.text(max_size=5)).map(orjson.dumps),
    st.recursive(st.none() | st.integers() | st.text(max_size=4), st.lists).map(cbor2.dumps),
)
FUZZ = settings(max_examples=400, deadline=None, database=None)


@FUZZ
@given(method=st.integers(0, 255), options=_OPTIONS, payload=_PAYLOADS)
def test_decode_request_raises_only_m2m_errors(
    method: int, options: list[tuple[int, bytes]], payload: bytes
) -> None:
    try:
        primitive, serialization = decode_request(method, options, payload)
    except M2MError as error:
        assert isinstance(error.status, RSC) and error.message
        reply = error_reply(options, error.status, error.message)
        assert reply.code >> 5 in (4, 5) and reply.payload
    else:
        assert isinstance(primitive, Request) and serialization in (JSON, CBOR)
        assert primitive.operation in set(Operation) - {Operation.DISCOVER}


_NAMES = st.text("abcdefghij0123456789-", min_size=1, max_size=6).filter(
    lambda name: name not in ("~", "_")
)
_TARGETS = st.lists(_NAMES, min_size=1, max_size=4).flatmap(
    lambda segments: st.sampled_from(
        ["/".join(segments), "/id-in/" + "/".join(segments), "//sp.example/id-in/" + segments[0]]
    )
)


@FUZZ
@given(
    operation=st.sampled_from([op for op in Operation if op != Operation.DISCOVER]),
    to=_TARGETS,
    originator=st.none() | _NAMES,
    request_id=_NAMES,
    content=st.none() | st.dictionaries(_NAMES, st.integers(-(2**40), 2**40) | _NAMES),
    rcn=st.none() | st.sampled_from(list(ResultContent)),
    types=st.lists(st.sampled_from([2, 3, 4, 23]), max_size=3),
    serialization=st.sampled_from([JSON, CBOR]),
)
def test_client_encoding_decodes_to_the_same_primitive(
    operation: Operation,
    to: str,
    originator: str | None,
    request_id: str,
    content: dict[str, Any] | None,
    rcn: ResultContent | None,
    types: list[int],
    serialization: str,
) -> None:
    criteria = FilterCriteria(filter_usage=1, resource_types=tuple(types)) if types else None
    sent = Request(
        operation=operation,
        to=to,
        originator=originator,
        request_id=request_id,
        release_version="3",
        resource_type=4 if operation == Operation.CREATE else None,
        content=content or None,
        result_content=rcn,
        filter_criteria=criteria,
        event_category=2,
    )
    message = to_aiocoap(encode_request(sent, serialization))
    received, reply_in = decode_request(int(message.code), raw_options(message), message.payload)
    assert received == replace(sent, deduplicate=True) and reply_in == serialization


_HEADERS = st.builds(
    lambda mtype, code, mid, token: bytes([0x40 | mtype << 4 | len(token), code, *mid]) + token,
    st.integers(0, 3),
    st.sampled_from([0, 1, 2, 3, 4, 5, 69, 255]),
    st.binary(min_size=2, max_size=2),
    st.binary(max_size=8),
)
_DATAGRAMS = st.one_of(
    st.binary(max_size=80),
    st.tuples(_HEADERS, st.binary(max_size=60)).map(lambda parts: parts[0] + parts[1]),
    st.tuples(st.integers(0, 3), _OPTIONS, _PAYLOADS).map(
        lambda parts: datagram(parts[0], Code.POST, 0x7000, b"fz", parts[1], parts[2])
    ),
)


async def _serve_after(datagrams: list[bytes]) -> int:
    clock = ManualClock()
    cse = CommonServicesEntity(
        MemoryStorage(), CSESettings(expiry_check_interval=3600), clock=clock
    )
    async with cse, CoapServer(cse, "127.0.0.1", 0, trust=Trust.INSECURE) as server:
        assert server.port is not None
        peer = await RawPeer.open(server.port)
        try:
            for data in datagrams:
                peer.send(data)
            options = [(11, b"cse-in"), (FR, ADMIN.encode()), (RQI, b"probe"), (RVI, b"3")]
            peer.send(datagram(CON, Code.GET, 0xBEEF, b"probe", options))
            return int((await peer.reply_to(mid=0xBEEF, token=b"probe")).code)
        finally:
            peer.close()


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(datagrams=st.lists(_DATAGRAMS, min_size=1, max_size=15))
def test_random_datagrams_then_a_normal_request(datagrams: list[bytes]) -> None:
    # A datagram reusing the probe's message ID would be taken for its duplicate.
    datagrams = [d for d in datagrams if d[2:4] != b"\xbe\xef"]
    assert asyncio.run(_serve_after(datagrams)) == Code.CONTENT


async def test_max_latency_sets_how_long_exchanges_are_remembered(
    cse: CommonServicesEntity,
) -> None:
    from cse.bindings.coap.server import set_max_latency

    before = aiocoap.numbers.TransportTuning().EXCHANGE_LIFETIME
    assert before == 247.0  # RFC 7252's defaults
    try:
        async with CoapServer(cse, "127.0.0.1", 0, max_latency=10.0, trust=Trust.INSECURE):
            # 45 s of retransmission span + 2 x 10 s + 2 s processing delay
            assert aiocoap.numbers.TransportTuning().EXCHANGE_LIFETIME == 67.0
        with pytest.raises(ValueError, match="MAX_LATENCY"):
            set_max_latency(0)
    finally:
        set_max_latency(100.0)  # aiocoap keeps it per process: leave the default behind
    assert before == aiocoap.numbers.TransportTuning().EXCHANGE_LIFETIME

"""A lean CoAP (RFC 7252) load client on a raw asyncio DatagramProtocol.

The benchmark client must cost far less than the server it measures (two cores here), so no
CoAP library: the datagram bytes are built here (header, token, options with delta encoding,
payload marker), and only the header, the token and the Block1 option are read back.

Each simulated client (:class:`CoapPeer`) owns one UDP socket and keeps one exchange in
flight, as a real device would (RFC 7252 NSTART = 1). A request body above the block size goes
out block by block (RFC 7959 Block1, each block a CON of its own, waiting for 2.31 Continue).
A reply that comes as an empty ACK followed by a separate CON response is handled (the CON is
acknowledged). A CON that gets no answer is sent again after ACK_TIMEOUT, doubling, up to
MAX_RETRANSMIT times; a separate response that has not come RESPONSE_TIMEOUT after its empty
ACK (the server restarted, or it was lost) fails the exchange, as a meter gives up on it.
A reply larger than a block arrives as its first Block2 block; the client takes the code and
stops there (it does not fetch the rest of a CREATE's echo).

A server remembers (peer, message ID) for EXCHANGE_LIFETIME (247 s) to drop duplicates, and a
message ID is 16 bits: above ~265 requests/s from one port, IDs would repeat within that time
and the server would answer a new request from its duplicate cache. A peer therefore moves to
a fresh socket (a new port, i.e. a new peer for the server) before its message IDs wrap.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3
POST = 2
CREATED = 65  # 2.01
CONTINUE = 95  # 2.31

URI_PATH = 11
CONTENT_FORMAT = 12
URI_QUERY = 15
BLOCK1 = 27
BLOCK2 = 23
SIZE1 = 60
# oneM2M options, TS-0008 V3.9.0 numbering
ONEM2M_TY = 267
ONEM2M_RVI = 271
ONEM2M_FR = 279
ONEM2M_RQI = 283
ONEM2M_RSC = 307
JSON_FORMAT = 50

ACK_TIMEOUT = 2.0
MAX_RETRANSMIT = 4
RESPONSE_TIMEOUT = 30.0  # after an empty ACK, as the meter agent's CoapClient waits
MID_BUDGET = 60_000  # message IDs one socket may use before the peer moves to a new one


def uint_bytes(value: int) -> bytes:
    """A CoAP uint option value: big-endian, no leading zero bytes (0 is empty)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _nibble(value: int) -> tuple[int, bytes]:
    """The 4-bit field and extended bytes for an option delta or length (RFC 7252 §3.1)."""
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    if value < 65805:
        return 14, (value - 269).to_bytes(2, "big")
    raise ValueError(f"option delta or length {value} is too large")


def encode_option(delta: int, value: bytes) -> bytes:
    """One option given its delta from the previous option number."""
    d, d_ext = _nibble(delta)
    length, l_ext = _nibble(len(value))
    return bytes([(d << 4) | length]) + d_ext + l_ext + value


def encode_options(options: Sequence[tuple[int, bytes]], previous: int = 0) -> bytes:
    """Options sorted by number (stable, so repeated options keep their order), delta-coded."""
    out = bytearray()
    for number, value in sorted(options, key=lambda item: item[0]):
        out += encode_option(number - previous, value)
        previous = number
    return bytes(out)


def encode_header(mtype: int, code: int, mid: int, token: bytes) -> bytes:
    if len(token) > 8:
        raise ValueError("a token is at most 8 bytes")
    return bytes([(VERSION << 6) | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF]) + token


def encode_message(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: Sequence[tuple[int, bytes]] = (),
    payload: bytes = b"",
) -> bytes:
    """A whole CoAP datagram."""
    out = encode_header(mtype, code, mid, token) + encode_options(options)
    return out + b"\xff" + payload if payload else out


def block_value(num: int, more: bool, szx: int) -> bytes:
    """A Block1/Block2 option value: NUM, M, SZX (RFC 7959 §2.2)."""
    if not 0 <= szx <= 6:
        raise ValueError("SZX must be 0..6")
    return uint_bytes((num << 4) | (int(more) << 3) | szx)


def empty_ack(mid: int) -> bytes:
    return bytes([(VERSION << 6) | (ACK << 4), 0, mid >> 8, mid & 0xFF])


@dataclass(frozen=True, slots=True)
class Reply:
    mtype: int
    code: int
    mid: int
    token: bytes
    data: bytes = b""


def parse_header(data: bytes) -> Reply | None:
    """Type, code, message ID and token of a datagram (None if it is no CoAP message)."""
    if len(data) < 4 or data[0] >> 6 != VERSION:
        return None
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        return None
    return Reply((data[0] >> 4) & 3, data[1], (data[2] << 8) | data[3], bytes(data[4 : 4 + tkl]))


def parse_options(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """All options (number, value) and the payload of a datagram (for checks, not the hot path)."""
    position = 4 + (data[0] & 0x0F)
    number = 0
    options: list[tuple[int, bytes]] = []
    while position < len(data):
        first = data[position]
        position += 1
        if first == 0xFF:
            return options, bytes(data[position:])
        fields = []
        for nibble in (first >> 4, first & 0x0F):
            if nibble == 13:
                fields.append(data[position] + 13)
                position += 1
            elif nibble == 14:
                fields.append(int.from_bytes(data[position : position + 2], "big") + 269)
                position += 2
            elif nibble == 15:
                raise ValueError("reserved nibble 15 in an option header")
            else:
                fields.append(nibble)
        number += fields[0]
        options.append((number, bytes(data[position : position + fields[1]])))
        position += fields[1]
    return options, b""


class CreateTemplate:
    """Pre-encoded oneM2M CREATE over CoAP: only message ID, token, RQI and Block1 vary.

    Options in number order: Uri-Path…, Content-Format 50, [Block1], TY, RVI, FR, RQI; RQI is
    the last option, so a request is header + token + fixed middle + RQI option + payload.
    """

    def __init__(
        self,
        path: Sequence[str],
        originator: str,
        body: bytes,
        *,
        resource_type: int = 4,
        release: str = "3",
        szx: int = 6,
    ) -> None:
        self.body = body
        self.block_size = 1 << (szx + 4)
        fixed: list[tuple[int, bytes]] = [(URI_PATH, segment.encode()) for segment in path]
        fixed.append((CONTENT_FORMAT, uint_bytes(JSON_FORMAT)))
        tail = [
            (ONEM2M_TY, uint_bytes(resource_type)),
            (ONEM2M_RVI, release.encode()),
            (ONEM2M_FR, originator.encode()),
        ]
        if len(body) <= self.block_size:
            self.blocks = [(encode_options([*fixed, *tail]), body)]
        else:
            count = -(-len(body) // self.block_size)
            self.blocks = []
            for num in range(count):
                more = num < count - 1
                block = (BLOCK1, block_value(num, more, szx))
                chunk = body[num * self.block_size : (num + 1) * self.block_size]
                extra = [(SIZE1, uint_bytes(len(body)))] if num == 0 else []
                options = encode_options([*fixed, block, *extra, *tail])
                self.blocks.append((options, chunk))

    def datagrams(self, mid: int, token: bytes, rqi: str) -> list[bytes]:
        """One CON datagram per block, message IDs mid, mid+1, … (mod 2**16)."""
        rqi_bytes = rqi.encode()
        rqi_option = encode_option(ONEM2M_RQI - ONEM2M_FR, rqi_bytes)
        out = []
        for index, (options, chunk) in enumerate(self.blocks):
            header = encode_header(CON, POST, (mid + index) & 0xFFFF, token)
            out.append(header + options + rqi_option + b"\xff" + chunk)
        return out


class _PeerProtocol(asyncio.DatagramProtocol):
    """One socket's receive side: hands the awaited reply (matched by token) to a future."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.token = b""
        self.mid = -1
        self.waiter: asyncio.Future[Reply] | None = None
        self.sent_at = 0.0
        self.acked_at = 0.0  # when an empty ACK came: the answer follows separately
        self.timeout = ACK_TIMEOUT
        self.tries = 0
        self.datagram = b""
        self.retransmissions = 0
        self.strays = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = parse_header(data)
        if reply is None:
            self.strays += 1
            return
        if reply.mtype == CON and self.transport is not None:
            self.transport.sendto(empty_ack(reply.mid))  # a separate response: acknowledge it
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.strays += 1
            return
        if reply.mtype == ACK:
            if reply.mid != self.mid:
                self.strays += 1  # e.g. a late ACK of an earlier block that was sent twice
                return
            if reply.code == 0:  # empty ACK: the answer comes separately
                self.datagram = b""  # acknowledged: no more retransmissions
                self.acked_at = time.monotonic()
                return
        if reply.token != self.token:
            self.strays += 1
            return
        waiter.set_result(Reply(reply.mtype, reply.code, reply.mid, reply.token, bytes(data)))

    def error_received(self, exc: Exception) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, datagram: bytes, mid: int, token: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self.token = token
        self.mid = mid
        self.datagram = datagram
        self.tries = 0
        self.timeout = ACK_TIMEOUT * (1 + random.random() * 0.5)
        self.sent_at = time.monotonic()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.sendto(datagram)
        return self.waiter

    def check_retransmit(self, now: float) -> None:
        """Called now and then: resend an unanswered CON, or give up after MAX_RETRANSMIT;
        give up on a separate response RESPONSE_TIMEOUT after its empty ACK."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self.datagram:
            if now - self.acked_at > RESPONSE_TIMEOUT:
                waiter.set_exception(TimeoutError("the separate response did not come"))
            return
        if now - self.sent_at < self.timeout:
            return
        if self.tries >= MAX_RETRANSMIT:
            waiter.set_exception(TimeoutError("no answer to a CON after retransmissions"))
            return
        assert self.transport is not None
        self.tries += 1
        self.retransmissions += 1
        self.sent_at = now
        self.timeout *= 2
        try:
            self.transport.sendto(self.datagram)
        except OSError as error:  # this exchange fails, not the sweep over every peer
            waiter.set_exception(error)


class CoapPeer:
    """A simulated CoAP client: its own socket, one exchange at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.protocol: _PeerProtocol | None = None
        self._mid = 0
        self._used = 0
        self._tokens = itertools.count(random.randrange(1 << 30))
        self.retransmissions = 0
        self.sockets = 0

    async def open(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            _PeerProtocol, remote_addr=(self.host, self.port)
        )
        self.protocol = protocol
        self._mid = random.randrange(1 << 16)
        self._used = 0
        self.sockets += 1

    async def close(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None and protocol.transport is not None:
            self.retransmissions += protocol.retransmissions
            protocol.transport.close()

    async def exchange(self, template: CreateTemplate, rqi: str) -> int:
        """Send one request (all its blocks); return the final reply's code."""
        if self.protocol is None or self._used + len(template.blocks) > MID_BUDGET:
            await self.open()
        protocol = self.protocol
        assert protocol is not None
        token = (next(self._tokens) & 0xFFFFFFFF).to_bytes(4, "big")
        mid = self._mid
        datagrams = template.datagrams(mid, token, rqi)
        self._mid = (mid + len(datagrams)) & 0xFFFF
        self._used += len(datagrams)
        code = 0
        for index, datagram in enumerate(datagrams):
            reply = await protocol.send(datagram, (mid + index) & 0xFFFF, token)
            code = reply.code
            if index < len(datagrams) - 1 and code != CONTINUE:
                return code  # the server refused a block: that is the answer
        return code

    def check_retransmit(self, now: float) -> None:
        if self.protocol is not None:
            self.protocol.check_retransmit(now)

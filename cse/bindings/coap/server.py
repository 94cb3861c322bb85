"""CoAP server binding: an aiocoap context whose one resource turns CoAP requests into primitives.

aiocoap's message layer acknowledges CONs and answers a retransmitted CON (same message ID and
peer) from its cache instead of passing it on twice; its block-wise layer, driven by the
resource base class, reassembles Block1 uploads and serves large answers in Block2. The
resource itself only decodes (codec.py), calls `CommonServicesEntity.handle()` and encodes.
What aiocoap leaves to resources is checked here on every block, before anything is stored:
unknown critical options (4.02) and the body size limit (4.13); a Block1 sequence with a hole
becomes 4.08 instead of aiocoap's 5.00.

With an OSCORE keyring (oscore.py), a protected request is opened first and then handled exactly
as a plain one (option checks, Block1 reassembly of the inner blocks, the codec, the core), as
the principal of the keys that opened it; every answer to it, the binding's own refusals and
2.31 Continue included, is sealed. An unprotected request is believed what the listener's
`trust` says (cse/core/identity.py), or gets 4.01.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap import resource
from aiocoap.blockwise import Block1Spool, IncompleteException  # type: ignore[import-untyped]
from aiocoap.error import RenderableError  # type: ignore[import-untyped]

from cse.bindings.coap.codec import (
    OptionRejected,
    check_options,
    decode_request,
    encode_response,
    error_reply,
)
from cse.bindings.coap.mapping import Code
from cse.bindings.coap.messages import raw_options, to_aiocoap
from cse.bindings.coap.oscore import OscoreContexts, OscoreKeyring, OscoreRefused, open_request
from cse.core.errors import M2MError
from cse.core.identity import Principal, Trust
from cse.core.types import ResponseStatusCode as RSC

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

logger = logging.getLogger(__name__)


class _Refused(Exception):
    """A request the binding answers itself, before any block is stored or the core is asked."""

    def __init__(self, code: Code, message: str, size1: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.size1 = size1


class _Block1Assembly(Block1Spool):  # type: ignore[misc]
    """aiocoap's Block1 reassembly, but a gap or an overlap is 4.08 (aiocoap lets a 5.00 out)."""

    def feed_and_take(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            return super().feed_and_take(request)
        except ValueError:
            raise IncompleteException from None


class _CseResource(resource.Resource, resource.PathCapable):  # type: ignore[misc]
    """The whole URI space of the CSE: every path is a oneM2M target, decoded by the codec."""

    def __init__(
        self,
        cse: CommonServicesEntity,
        max_body_size: int,
        oscore: OscoreContexts | None = None,
        plain: Principal | None = None,
    ) -> None:
        super().__init__()
        self._cse = cse
        self._max_body_size = max_body_size
        self._oscore = oscore
        self._plain = plain  # what an unprotected request is believed to be; None: refused
        self._block1 = _Block1Assembly()

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        if self._oscore is not None and request.opt.oscore is not None:
            try:
                opened = open_request(self._oscore, request)
            except OscoreRefused as refused:
                pipe.add_response(refused.answer, is_last=True)
                return
            answer = await self._answer(opened.request, opened.principal)
            pipe.add_response(opened.seal(answer), is_last=True)
        elif self._plain is not None:
            pipe.add_response(await self._answer(request, self._plain), is_last=True)
        else:
            logger.warning("refused a plain CoAP request from %s: OSCORE only", request.remote)
            refusal = _Refused(Code.UNAUTHORIZED, "this CSE takes OSCORE-protected requests only")
            pipe.add_response(self._refusal(request, refusal), is_last=True)

    async def _answer(self, request: aiocoap.Message, principal: Principal) -> aiocoap.Message:
        """The answer to a plain or opened request, for each block (2.31 until the last)."""
        try:
            self._admit(request)
            whole = self._block1.feed_and_take(request)
            answer = await self._block2.extract_or_insert(
                whole, lambda: self._render(whole, principal)
            )
            answer.opt.block1 = whole.opt.block1
            return answer
        except _Refused as error:
            refusal = error
        except IncompleteException:
            refusal = _Refused(Code.REQUEST_ENTITY_INCOMPLETE, "block-wise transfer incomplete")
        except aiocoap.error.BadRequest as error:  # a block whose size contradicts its Block1
            refusal = _Refused(Code.BAD_REQUEST, str(error) or "malformed block-wise transfer")
        except RenderableError as error:  # 2.31 Continue: more blocks to come
            return error.to_message()
        return self._refusal(request, refusal)

    def _admit(self, request: aiocoap.Message) -> None:
        try:
            check_options(raw_options(request))
        except OptionRejected as error:
            raise _Refused(Code.BAD_OPTION, error.message) from None
        block1 = request.opt.block1
        size = len(request.payload)
        if block1 is not None:
            size = max(block1.start + size, request.opt.size1 or 0)
        if size > self._max_body_size:
            message = f"body exceeds the limit of {self._max_body_size} bytes"
            raise _Refused(Code.REQUEST_ENTITY_TOO_LARGE, message, self._max_body_size)

    def _refusal(self, request: aiocoap.Message, refusal: _Refused) -> aiocoap.Message:
        reply = error_reply(raw_options(request), RSC.BAD_REQUEST, refusal.message, refusal.code)
        message = to_aiocoap(reply)
        if refusal.size1 is not None:
            message.opt.size1 = refusal.size1  # RFC 7959 §2.9.3: the largest body accepted
        return message

    @staticmethod
    def _source(request: aiocoap.Message) -> str | None:
        """The peer's IP address as the UDP socket saw it (IPv4 without its v6 mapping)."""
        sockaddr = getattr(request.remote, "sockaddr", None)
        if not sockaddr:
            return None
        try:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(address)

    async def _render(self, request: aiocoap.Message, principal: Principal) -> aiocoap.Message:
        options = raw_options(request)
        try:
            primitive, serialization = decode_request(int(request.code), options, request.payload)
        except M2MError as error:
            code = error.coap if isinstance(error, OptionRejected) else None
            return to_aiocoap(error_reply(options, error.status, error.message, code))
        except Exception:
            logger.exception("could not read the CoAP request %r", request)
            status = RSC.INTERNAL_SERVER_ERROR
            return to_aiocoap(error_reply(options, status, "internal error"))
        # Always set: a request from the network never keeps the in-process default.
        primitive = replace(primitive, principal=principal, source=self._source(request))
        response = await self._cse.handle(primitive)
        return to_aiocoap(encode_response(response, primitive.operation, serialization))


def udp_endpoint(context: aiocoap.Context) -> Any:
    """The udp6 message interface of an aiocoap context (under its token and message managers)."""
    for interface in context.request_interfaces:
        endpoint = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if endpoint is not None:
            return endpoint
    raise RuntimeError("aiocoap opened no UDP endpoint")


def bound_port(context: aiocoap.Context) -> int:
    """The UDP port an aiocoap server context listens on (what port 0 became)."""
    port: int = udp_endpoint(context).transport.get_extra_info("socket").getsockname()[1]
    return port


def _drop_undecodable(endpoint: Any, on_datagram: Callable[[], None]) -> None:
    """Drop datagrams whose string options are not UTF-8 quietly, like other unparsable ones.
    `on_datagram` is called for every datagram read (the watchdog counts them).

    aiocoap 0.4.17 only catches UnparsableMessage while decoding; a UnicodeDecodeError from a
    Uri-Path escapes into the event loop's exception handler with a traceback per datagram.
    """
    receive = endpoint.datagram_msg_received

    def guarded(data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        on_datagram()
        try:
            receive(data, ancdata, flags, address)
        except UnicodeDecodeError:
            logger.debug("dropped a CoAP datagram with a non-UTF-8 option from %s", address)

    endpoint.datagram_msg_received = guarded


# Linux socket options (aiocoap turns them on for its udp6 sockets); Python's socket module
# does not name them.
_IP_RECVERR = 11
_IPV6_RECVERR = 25


def _ignore_icmp_errors(endpoint: Any) -> None:
    """Stop ICMP errors from reaching the server socket's error queue.

    aiocoap's udp6 transport asks for ICMP errors (IP_RECVERR) so a client learns at once that
    a peer is gone. A server gains nothing from them, and under uvloop they are fatal: a queued
    error makes the socket report POLLERR, on which libuv stops watching the socket for good.
    Thirty answers sent to a peer that closed its socket (a meter rebooting mid-exchange) then
    left the CoAP server silent for ever. Without IP_RECVERR, Linux drops ICMP errors for an
    unconnected UDP socket, so nothing can reach the error queue.
    """
    sock = endpoint.transport.get_extra_info("socket")
    for level, option in ((socket.IPPROTO_IPV6, _IPV6_RECVERR), (socket.IPPROTO_IP, _IP_RECVERR)):
        # Not Linux, or not that address family: then nothing was turned on there either.
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, 0)


# Exchanges remembered against retransmissions (see RecentExchanges): a storm of 5,000 meters'
# alarms fits whole, and at ~7 KB an exchange the memory stays under ~100 MB whatever the rate.
REMEMBERED_EXCHANGES = 12_000


class RecentExchanges(dict[Any, Any]):
    """aiocoap's memory of received exchanges (`MessageManager._recent_messages`: the answer
    of each (peer, message ID), sent again when a CON is retransmitted), bounded.

    aiocoap keeps every exchange for EXCHANGE_LIFETIME (247 s) behind a timer of its own, so
    its memory grows with the request rate: a LAN client sending 1,000 requests/s, refused or
    not, holds a quarter of a million exchanges, about 2 GB. Here an exchange is forgotten
    after the lifetime or, when `most` are held, oldest first, without a timer each. A CON
    retransmitted after its exchange was forgotten is handled again: a CREATE then finds its
    request ID in the CSE's request log and is not stored twice.
    """

    def __init__(self, lifetime: float, most: int, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.lifetime = lifetime
        self.most = most
        self._clock = clock
        self._received: dict[Any, float] = {}  # insertion order is age order
        self.forgotten_early = 0  # dropped at the count bound, before their lifetime

    def remember(self, key: Any) -> None:
        self.expire()
        while len(self._received) >= self.most:
            oldest = next(iter(self._received))
            del self._received[oldest]
            self.pop(oldest, None)
            self.forgotten_early += 1
        self._received[key] = self._clock()
        self[key] = None  # no answer yet; aiocoap stores it when it is sent

    def expire(self) -> None:
        limit = self._clock() - self.lifetime
        while self._received:
            oldest, received = next(iter(self._received.items()))
            if received > limit:
                return
            del self._received[oldest]
            self.pop(oldest, None)


def _bound_recent_exchanges(context: aiocoap.Context, most: int) -> RecentExchanges:
    """Put a RecentExchanges in place of aiocoap's unbounded memory of exchanges.

    Reaches into aiocoap 0.4.17's MessageManager (`_recent_messages`,
    `_deduplicate_message`, `_send_initially`), in this one function: the rest of aiocoap
    (`_store_response_for_duplicates`) keeps using the dictionary as before. Leave it when
    aiocoap bounds that memory itself.
    """
    manager = next(
        interface.token_interface
        for interface in context.request_interfaces
        if getattr(interface, "token_interface", None) is not None
    )
    lifetime = float(aiocoap.numbers.TransportTuning().EXCHANGE_LIFETIME)
    recent = RecentExchanges(lifetime, most)
    manager._recent_messages = recent

    def deduplicate(message: Any) -> bool:
        """aiocoap's own check, without a timer per exchange: True for a duplicate."""
        key = (message.remote, message.mid)
        recent.expire()
        if key in recent:
            answer = recent[key]
            if message.mtype is aiocoap.CON and answer is not None:
                manager._send_initially(answer)
            return True
        recent.remember(key)
        return False

    manager._deduplicate_message = deduplicate
    return recent


RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024


def _enlarge_receive_buffer(endpoint: Any) -> None:
    """Ask for a 4 MiB UDP receive buffer: thousands of meters answering at once overflow the
    default (~200 KB) and the kernel drops the datagrams. The OS caps what it grants (Linux:
    net.core.rmem_max), so the granted size is logged."""
    sock = endpoint.transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    except OSError as error:
        logger.warning("could not set the CoAP receive buffer: %s", error)
        return
    logger.info(
        "CoAP UDP receive buffer: asked for %d bytes, granted %d", RECEIVE_BUFFER_BYTES, granted
    )


def set_max_latency(seconds: float) -> float:
    """Set RFC 7252's MAX_LATENCY for this process's CoAP stack; returns the previous value.

    The server remembers each received exchange, with its answer, for EXCHANGE_LIFETIME =
    MAX_TRANSMIT_SPAN + 2 x MAX_LATENCY + PROCESSING_DELAY (247 s with the defaults, ~7 KB
    an exchange on a gateway; at most REMEMBERED_EXCHANGES), to answer retransmissions. On
    a local meter network a MAX_LATENCY of 10 s instead of the Internet's 100 s keeps that
    memory 3.7 times shorter (67 s). aiocoap keeps these constants per process, not per
    server, so this applies to every CoAP endpoint of the process.
    """
    if not seconds > 0:
        raise ValueError("MAX_LATENCY must be more than zero seconds")
    tuning = aiocoap.numbers.constants.TransportTuning
    previous = float(tuning.MAX_LATENCY)
    tuning.MAX_LATENCY = float(seconds)
    return previous


class _PingReply(asyncio.DatagramProtocol):
    def __init__(self, message_id: int) -> None:
        self._message_id = message_id
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # RST (type 3), empty code, our message ID: the server's message layer read the ping.
        is_reset = len(data) >= 4 and data[0] >> 4 == 0x07 and data[1] == 0
        ours = is_reset and int.from_bytes(data[2:4], "big") == self._message_id
        if ours and not self.answered.done():
            self.answered.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc)


async def coap_ping(host: str, port: int, timeout: float) -> bool:
    """One CoAP ping (RFC 7252 §4.3) to host:port; True when its RST came back in time."""
    message_id = int.from_bytes(os.urandom(2), "big")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _PingReply(message_id), remote_addr=(host, port)
    )
    try:
        transport.sendto(bytes([0x40, 0x00]) + message_id.to_bytes(2, "big"))
        async with asyncio.timeout(timeout):
            await protocol.answered
        return True
    except (TimeoutError, OSError):
        return False
    finally:
        transport.close()


@dataclass(frozen=True, slots=True)
class Liveness:
    """What the last round trip to a listener found."""

    alive: bool
    checked_at: float | None  # time.time() of the last probe; None before the first
    failures: int  # probes failed in a row
    restarts: int  # times the listener was restarted because it stopped answering

    def as_dict(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "checked_at": self.checked_at,
            "failures": self.failures,
            "restarts": self.restarts,
        }


def _probe_host(host: str) -> str:
    """Where a probe reaches a server bound to `host` (a wildcard is reached on loopback)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class CoapServer:
    """Serves one CSE over CoAP/UDP; an async context manager that reports its bound port."""

    RESTART_AFTER = 2  # pings missed in a row before the server is restarted

    def __init__(
        self,
        cse: CommonServicesEntity,
        host: str = "127.0.0.1",
        port: int = 5683,
        *,
        max_body_size: int = 64 * 1024,
        max_latency: float | None = None,  # seconds; None keeps RFC 7252's 100 s
        liveness_interval: float | None = 10.0,  # seconds between pings; None: no watchdog
        oscore: OscoreKeyring | OscoreContexts | None = None,
        trust: Trust = Trust.CREDENTIAL,  # what an unprotected request is believed to be
        remembered_exchanges: int = REMEMBERED_EXCHANGES,
    ) -> None:
        plain = trust.principal_without_credential()
        if oscore is None and plain is None:
            raise ValueError("trust 'credential' needs an OSCORE keyring: nothing could get in")
        if oscore is not None and not isinstance(oscore, OscoreContexts):
            oscore = OscoreContexts(oscore)
        self.oscore = oscore  # hand it to the CoapClient that notifies meters
        self._plain = plain
        self._cse = cse
        self._host = host
        self._port = port
        self._max_body_size = max_body_size
        self._max_latency = max_latency
        self._liveness_interval = liveness_interval
        self._remembered_exchanges = remembered_exchanges
        self._recent: RecentExchanges | None = None
        self._context: aiocoap.Context | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._restarting = asyncio.Lock()
        self._liveness = Liveness(alive=True, checked_at=None, failures=0, restarts=0)
        self._datagrams_read = 0  # by the server's socket, ever
        self._read_at_last_probe = 0
        self._read_since_probe = False
        self._missed = 0  # watchdog checks in a row that found the socket deaf
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"coap://{host}:{self.port}"

    async def start(self) -> None:
        if self._max_latency is not None:
            set_max_latency(self._max_latency)
        await self._open(self._port)
        if self._liveness_interval is not None:
            self._watchdog = asyncio.create_task(
                self._watch(self._liveness_interval), name="CoAP liveness"
            )

    async def _open(self, port: int) -> None:
        site = _CseResource(self._cse, self._max_body_size, self.oscore, self._plain)
        self._context = await aiocoap.Context.create_server_context(
            site, bind=(self._host, port), transports=["udp6"]
        )
        self._recent = _bound_recent_exchanges(self._context, self._remembered_exchanges)
        endpoint = udp_endpoint(self._context)
        _ignore_icmp_errors(endpoint)
        _drop_undecodable(endpoint, self._count_datagram)
        _enlarge_receive_buffer(endpoint)
        self.port = bound_port(self._context)

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        if self._context is not None:
            await self._context.shutdown()
            self._context = None
        if self.oscore is not None:
            self.oscore.save()  # a clean stop: the next start needs no Echo round

    async def __aenter__(self) -> CoapServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def remembered_exchanges(self) -> int:
        """Exchanges held now against retransmissions (at most `remembered_exchanges`)."""
        if self._recent is None:
            return 0
        self._recent.expire()
        return len(self._recent)

    # ---- liveness ------------------------------------------------------------------------

    def liveness(self) -> Liveness:
        return self._liveness

    def _count_datagram(self) -> None:
        self._datagrams_read += 1

    async def probe(self, timeout: float = 2.0) -> bool:
        """Ping the server through its socket, as a meter would reach it; record the result."""
        assert self.port is not None
        self._read_since_probe = self._datagrams_read != self._read_at_last_probe
        alive = await coap_ping(_probe_host(self._host), self.port, timeout)
        self._read_since_probe |= self._datagrams_read != self._read_at_last_probe
        self._read_at_last_probe = self._datagrams_read
        previous = self._liveness
        self._liveness = Liveness(
            alive=alive,
            checked_at=time.time(),
            failures=0 if alive else previous.failures + 1,
            restarts=previous.restarts,
        )
        return alive

    async def restart(self) -> None:
        """Reopen the server on the port it had; exchanges in flight are lost (clients retry)."""
        async with self._restarting:
            assert self.port is not None
            port = self.port
            if self._context is not None:
                await self._context.shutdown()
                self._context = None
            await self._open(port)
            previous = self._liveness
            self._liveness = Liveness(
                alive=previous.alive,
                checked_at=previous.checked_at,
                failures=previous.failures,
                restarts=previous.restarts + 1,
            )

    async def check_liveness(self, timeout: float = 2.0) -> None:
        """Probe once; restart the server when it has missed RESTART_AFTER pings in a row
        and read nothing at all since the probe before each (a socket nobody reads).

        A busy server misses pings too: thousands of meters' datagrams queue before the ping
        and the loop works through them. Restarting it then would lose every exchange in
        flight, and its meters' retransmissions would meet a server that forgot them."""
        if await self.probe(timeout):
            self._missed = 0
            return
        if self._read_since_probe:
            self._missed = 0
            logger.info("the CoAP server on port %s is slow to answer a ping (busy)", self.port)
            return
        self._missed += 1
        if self._missed < self.RESTART_AFTER:
            return
        logger.error(
            "the CoAP server on port %s missed %d pings in a row and read nothing; restarting it",
            self.port,
            self._missed,
        )
        self._missed = 0
        await self.restart()
        await self.probe(timeout)

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_liveness()
            except Exception:
                logger.exception("the CoAP liveness check failed")

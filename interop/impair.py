"""A network-impairment relay: loss, delay, jitter and duplication between meters and a gateway.

The interop runner puts a relay between the meters and the gateway (CoAP over UDP) or the MQTT
broker (TCP) to check that what the meters send still arrives when the link is bad. Everything
runs on the asyncio loop of the caller, without threads: UDP sockets are non-blocking and
registered with the loop's reader callbacks, delays are `loop.call_at` timers (no task per
datagram, nor per client); the TCP relay runs one short task per connection to connect upstream.

    async with UdpRelay("127.0.0.1", 0, "127.0.0.1", 5683, Impairment(loss=0.1, seed=1)) as relay:
        ...  # meters talk to coap://127.0.0.1:{relay.port}
    print(relay.stats.summary())

or, by hand in the lab, `python -m interop.impair udp --listen 127.0.0.1:5684 --target
127.0.0.1:5683 --loss 0.1 --delay 20 --jitter 10` (and `tcp`); Ctrl-C prints the counters.

The model
---------
Each direction (client -> target, "upstream", and target -> client, "downstream") has its own
impairment (the same one for both unless `downstream=` gives another) and its own random
generator. With a `seed` both generators are seeded from it (and from the direction's name), so
a run that sends the same traffic in the same order makes the same decisions.

Delay: every datagram or chunk waits `delay_ms` plus a jitter drawn uniformly from
[-jitter_ms, +jitter_ms]; a negative total is taken as zero, so a datagram is never sent before
it arrived (with jitter_ms > delay_ms some datagrams go through at once).

UDP (`UdpRelay`): each datagram is lost with probability `loss`, decided independently per
datagram and per direction. One that survives is sent after its delay; as each datagram has its
own delay, jitter reorders datagrams, as a real path with several routes does. With probability
`duplicate` a surviving datagram is sent twice, each copy with its own delay. Every client
address that sends to the relay gets its own upstream socket (its own source port at the
target), so replies go back to the right client and a CoAP server sees distinct endpoints; a
mapping with no traffic either way for `idle_timeout` seconds is closed, like a NAT binding,
and beyond `max_clients` the least recently active one is closed first. The default idle time
(120 s) is longer than CoAP's MAX_TRANSMIT_WAIT (93 s), so a meter keeps its endpoint through
every retransmission of a request and the server's duplicate detection still recognises them.

TCP (`TcpRelay`): TCP hides loss from the application: a lost segment is sent again after the
retransmission timeout, and everything behind it waits. So the relay loses no bytes; instead
each chunk it reads (one `recv`, usually one MQTT packet or a few) counts as lost with
probability `loss`, and so does each of its retransmissions, and a chunk lost k times in a row
is held back for `retransmit_penalty_ms` x (2^k - 1) on top of its delay: the first
retransmission timeout (default 200 ms, Linux's minimum RTO), doubling per retry as TCP's
backoff does (k is capped at 15, the retries Linux makes before giving up). Chunks never
overtake each other within a connection: a chunk is released no earlier than the one before
it, so a penalised chunk delays those behind it (head-of-line blocking), and jitter only
stretches the gaps. `duplicate` has no effect on TCP (the receiver's TCP discards duplicates).
Links also fail outright: with `drop_rate` > 0 (taken from the upstream impairment, as a cut
ends both directions) each connection is cut after a time drawn from an exponential
distribution with mean 60 / drop_rate seconds (a Poisson process of `drop_rate` drops per
connection-minute; for small rates that is about the probability that a connection dies within
a given minute). A cut aborts both sides at once (queued data is lost, as on a link that went
down); the client sees the connection reset and has to reconnect.

Counters (`relay.stats`, a `RelayStats`) count per direction what was received, forwarded
(including duplicate copies), dropped, duplicated and penalised, plus clients and
connections; `await relay.wait_for(lambda s: ..., timeout)` waits until they satisfy a
condition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import signal
import socket
import sys
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

__all__ = [
    "Counters",
    "Impairment",
    "RelayStats",
    "TcpRelay",
    "UdpRelay",
    "main",
]

log = logging.getLogger(__name__)

MAX_DATAGRAM = 65535
# A chunk lost more often than this would make Linux give up on the connection (tcp_retries2).
MAX_TCP_RETRIES = 15
# Datagrams read from one socket per wake-up, so one busy client cannot starve the others.
_READ_BATCH = 64


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Impairment:
    """What a link does to traffic in one direction (see the module docstring for the model).

    loss: probability in [0, 1] that a datagram is dropped (UDP) or that a chunk, and each of
        its retransmissions, is lost and must wait for a retransmission timeout (TCP, < 1).
    delay_ms: fixed one-way delay, >= 0.
    jitter_ms: the delay varies uniformly by up to +/- jitter_ms (>= 0); never below zero.
    duplicate: probability in [0, 1] that a surviving datagram is delivered twice (UDP only).
    seed: seeds the relay's random generators; None draws a fresh seed.
    retransmit_penalty_ms: TCP's first retransmission timeout (> 0), doubled per retry.
    drop_rate: TCP connection cuts per connection-minute (>= 0; 0 = never).
    """

    loss: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    duplicate: float = 0.0
    seed: int | None = None
    retransmit_penalty_ms: float = 200.0
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate"):
            value = _number(name, getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability between 0 and 1, not {value!r}")
        for name in ("delay_ms", "jitter_ms", "drop_rate"):
            if _number(name, getattr(self, name)) < 0:
                raise ValueError(f"{name} must be zero or more, not {getattr(self, name)!r}")
        if _number("retransmit_penalty_ms", self.retransmit_penalty_ms) <= 0:
            raise ValueError(
                f"retransmit_penalty_ms must be more than zero, not {self.retransmit_penalty_ms!r}"
            )
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an integer or None, not {self.seed!r}")

    def rng(self, stream: str) -> random.Random:
        """A generator for one named stream: seeded from `seed` and the name, or fresh."""
        return random.Random(None if self.seed is None else f"{self.seed}/{stream}")

    def lost(self, rng: random.Random) -> bool:
        return self.loss > 0.0 and rng.random() < self.loss

    def duplicated(self, rng: random.Random) -> bool:
        return self.duplicate > 0.0 and rng.random() < self.duplicate

    def delay_s(self, rng: random.Random) -> float:
        """One sampled one-way delay in seconds: delay +/- uniform jitter, never negative."""
        delay = self.delay_ms
        if self.jitter_ms > 0.0:
            delay += rng.uniform(-self.jitter_ms, self.jitter_ms)
        return max(0.0, delay) / 1000.0

    def retransmissions(self, rng: random.Random) -> int:
        """How many times in a row a TCP chunk is lost (0 when it gets through at once)."""
        count = 0
        while count < MAX_TCP_RETRIES and self.lost(rng):
            count += 1
        return count

    def penalty_s(self, retransmissions: int) -> float:
        """The time the retransmissions add: RTO + 2 RTO + 4 RTO + ..."""
        return self.retransmit_penalty_ms * ((1 << retransmissions) - 1) / 1000.0

    def describe(self, kind: str = "udp") -> str:
        """The settings that matter for a UDP or a TCP relay, for a log line."""
        parts = [
            f"loss={self.loss:g}",
            f"delay={self.delay_ms:g}ms",
            f"jitter={self.jitter_ms:g}ms",
        ]
        if kind == "udp" and self.duplicate:
            parts.append(f"duplicate={self.duplicate:g}")
        if kind == "tcp":
            parts.append(f"rto={self.retransmit_penalty_ms:g}ms")
            if self.drop_rate:
                parts.append(f"drop_rate={self.drop_rate:g}/min")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return " ".join(parts)


@dataclass
class Counters:
    """One direction's counts (datagrams for UDP, chunks for TCP)."""

    received: int = 0  # read from the sending side
    forwarded: int = 0  # written to the far side, duplicate copies included
    dropped: int = 0  # lost on the way (UDP)
    duplicated: int = 0  # extra copies sent (UDP)
    penalised: int = 0  # held back for retransmission timeouts (TCP)
    bytes: int = 0  # bytes forwarded

    def line(self) -> str:
        return (
            f"received {self.received} forwarded {self.forwarded} dropped {self.dropped} "
            f"duplicated {self.duplicated} penalised {self.penalised} bytes {self.bytes}"
        )


@dataclass
class RelayStats:
    upstream: Counters = field(default_factory=Counters)  # client -> target
    downstream: Counters = field(default_factory=Counters)  # target -> client
    clients: int = 0  # open UDP mappings or TCP connections
    clients_total: int = 0  # every mapping or connection ever opened
    expired: int = 0  # UDP mappings closed after idle_timeout
    evicted: int = 0  # UDP mappings closed to stay within max_clients
    connections_dropped: int = 0  # TCP connections cut by the drop model
    connect_failures: int = 0  # TCP connections the target refused or did not answer
    errors: int = 0  # socket errors (ICMP unreachable, full send buffers, ...)

    def summary(self) -> str:
        return "\n".join(
            [
                f"upstream   (client -> target): {self.upstream.line()}",
                f"downstream (target -> client): {self.downstream.line()}",
                f"clients: open {self.clients} total {self.clients_total} expired {self.expired} "
                f"evicted {self.evicted} dropped {self.connections_dropped} "
                f"connect failures {self.connect_failures} errors {self.errors}",
            ]
        )


Predicate = Callable[[RelayStats], bool]


class _Relay:
    """What both relays share: the impairments, the counters, start/close and waiting."""

    kind = ""

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        impairment: Impairment,
        downstream: Impairment | None,
    ) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.target_host = target_host
        self.target_port = target_port
        self.impairment = impairment
        self.downstream_impairment = impairment if downstream is None else downstream
        self.stats = RelayStats()
        self._up_rng = impairment.rng("upstream")
        self._down_rng = self.downstream_impairment.rng("downstream")
        self._port: int | None = None
        self._closed = False
        self._waiters: list[tuple[Predicate, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The port the relay listens on (known once started)."""
        if self._port is None:
            raise RuntimeError("the relay is not started")
        return self._port

    @property
    def counters(self) -> RelayStats:
        """The same as `stats`."""
        return self.stats

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the relay is not started")
        return self._loop

    async def start(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def wait_for(self, predicate: Predicate, timeout: float) -> None:
        """Return once `predicate(self.stats)` holds; TimeoutError after `timeout` seconds."""
        if predicate(self.stats):
            return
        entry = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await entry[1]
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def _changed(self) -> None:
        if self._waiters:
            for predicate, future in list(self._waiters):
                if not future.done() and predicate(self.stats):
                    future.set_result(None)

    def describe(self) -> str:
        listen = f"{self.listen_host}:{self.port}"
        text = f"{self.kind} {listen} -> {self.target_host}:{self.target_port}"
        text += f"; upstream {self.impairment.describe(self.kind)}"
        if self.downstream_impairment is not self.impairment:
            text += f", downstream {self.downstream_impairment.describe(self.kind)}"
        return text


async def _resolve(host: str, port: int, kind: socket.SocketKind, passive: bool = False) -> Any:
    loop = asyncio.get_running_loop()
    flags = socket.AI_PASSIVE if passive else 0
    infos = await loop.getaddrinfo(host, port, type=kind, flags=flags)
    if not infos:
        raise OSError(f"cannot resolve {host}:{port}")
    return infos[0]


# ---- UDP --------------------------------------------------------------------------------------


class _UdpClient:
    """One client address and its own socket towards the target."""

    __slots__ = ("address", "closed", "last_seen", "sock", "upstream_port")

    def __init__(self, address: Any, sock: socket.socket, now: float) -> None:
        self.address = address
        self.sock = sock
        self.upstream_port: int = sock.getsockname()[1]
        self.last_seen = now
        self.closed = False


class UdpRelay(_Relay):
    """A datagram relay with one upstream socket per client address.

    `impairment` applies to both directions (each with its own random stream) unless
    `downstream` gives the target -> client direction its own. A client mapping closes after
    `idle_timeout` seconds without traffic either way; at most `max_clients` are kept, the
    least recently active going first.
    """

    kind = "udp"

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        impairment: Impairment | None = None,
        *,
        downstream: Impairment | None = None,
        idle_timeout: float = 120.0,
        max_clients: int = 20000,
    ) -> None:
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be more than zero, not {idle_timeout!r}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be at least 1, not {max_clients!r}")
        super().__init__(
            listen_host,
            listen_port,
            target_host,
            target_port,
            impairment or Impairment(),
            downstream,
        )
        self.idle_timeout = float(idle_timeout)
        self.max_clients = max_clients
        self._clients: OrderedDict[Any, _UdpClient] = OrderedDict()  # least recent first
        self._listener: socket.socket | None = None
        self._target: Any = None
        self._target_family = socket.AF_INET
        self._sweep: asyncio.TimerHandle | None = None

    def upstream_port(self, client_address: Any) -> int | None:
        """The source port the target sees for a client, if it has a mapping now."""
        client = self._clients.get(client_address)
        return None if client is None else client.upstream_port

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the relay is already started")
        loop = asyncio.get_running_loop()
        target = await _resolve(self.target_host, self.target_port, socket.SOCK_DGRAM)
        self._target_family, self._target = target[0], target[4]
        family, _, _, _, address = await _resolve(
            self.listen_host, self.listen_port, socket.SOCK_DGRAM, passive=True
        )
        listener = socket.socket(family, socket.SOCK_DGRAM)
        try:
            listener.setblocking(False)
            with contextlib.suppress(OSError):  # a deeper queue for bursts from many meters
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            listener.bind(address)
        except BaseException:
            listener.close()
            raise
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._loop = loop
        loop.add_reader(listener.fileno(), self._read_clients)

    async def aclose(self) -> None:
        if self._closed or self._loop is None:
            self._closed = True
            return
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._clients:
            _, client = self._clients.popitem(last=False)
            self._close_client(client)
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
        self._changed()

    # client -> target

    def _read_clients(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(_READ_BATCH):
            try:
                data, address = listener.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier reply to a client that went away
                self.stats.errors += 1
                continue
            self._from_client(data, address)

    def _from_client(self, data: bytes, address: Any) -> None:
        now = self.loop.time()
        counters = self.stats.upstream
        counters.received += 1
        client = self._clients.get(address)
        if client is None:
            client = self._open_client(address, now)
            if client is None:  # no socket for it (out of file descriptors): the datagram is lost
                counters.dropped += 1
                self.stats.errors += 1
                self._changed()
                return
        else:
            self._clients.move_to_end(address)
            client.last_seen = now
        self._impair(self.impairment, self._up_rng, counters, self._send_up, client, data)

    def _open_client(self, address: Any, now: float) -> _UdpClient | None:
        if len(self._clients) >= self.max_clients:
            _, oldest = self._clients.popitem(last=False)
            self.stats.evicted += 1
            self._close_client(oldest)
        try:
            sock = socket.socket(self._target_family, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("no upstream socket for %s: %s", address, exc)
            return None
        try:
            sock.setblocking(False)
            sock.connect(self._target)  # only replies from the target reach this socket
        except OSError as exc:
            sock.close()
            log.warning("no upstream socket for %s towards %s: %s", address, self._target, exc)
            return None
        client = _UdpClient(address, sock, now)
        self._clients[address] = client
        self.loop.add_reader(sock.fileno(), self._read_target, client)
        self.stats.clients += 1
        self.stats.clients_total += 1
        if self._sweep is None:
            self._sweep = self.loop.call_at(now + self.idle_timeout, self._expire)
        return client

    def _send_up(self, client: _UdpClient, data: bytes) -> None:
        if client.closed:
            return
        try:
            client.sock.send(data)
        except OSError:  # refused by an earlier ICMP error, or the send buffer is full
            self.stats.errors += 1
            return
        counters = self.stats.upstream
        counters.forwarded += 1
        counters.bytes += len(data)
        self._changed()

    # target -> client

    def _read_target(self, client: _UdpClient) -> None:
        for _ in range(_READ_BATCH):
            if client.closed:
                return
            try:
                data = client.sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable from the target
                self.stats.errors += 1
                self._changed()
                continue
            client.last_seen = self.loop.time()
            if self._clients.get(client.address) is client:
                self._clients.move_to_end(client.address)
            counters = self.stats.downstream
            counters.received += 1
            self._impair(
                self.downstream_impairment, self._down_rng, counters, self._send_down, client, data
            )

    def _send_down(self, client: _UdpClient, data: bytes) -> None:
        if self._closed or self._listener is None:
            return
        try:
            self._listener.sendto(data, client.address)
        except OSError:
            self.stats.errors += 1
            return
        counters = self.stats.downstream
        counters.forwarded += 1
        counters.bytes += len(data)
        self._changed()

    # both

    def _impair(
        self,
        impairment: Impairment,
        rng: random.Random,
        counters: Counters,
        send: Callable[[_UdpClient, bytes], None],
        client: _UdpClient,
        data: bytes,
    ) -> None:
        if impairment.lost(rng):
            counters.dropped += 1
            self._changed()
            return
        copies = 1
        if impairment.duplicated(rng):
            counters.duplicated += 1
            copies = 2
        for _ in range(copies):
            delay = impairment.delay_s(rng)
            if delay > 0.0:
                self.loop.call_at(self.loop.time() + delay, send, client, data)
            else:
                send(client, data)

    def _close_client(self, client: _UdpClient) -> None:
        client.closed = True
        self.loop.remove_reader(client.sock.fileno())
        client.sock.close()
        self.stats.clients -= 1
        self._changed()

    def _expire(self) -> None:
        self._sweep = None
        deadline = self.loop.time() - self.idle_timeout
        while self._clients:
            client = next(iter(self._clients.values()))
            if client.last_seen > deadline:
                break
            del self._clients[client.address]
            self.stats.expired += 1
            self._close_client(client)
        if self._clients and not self._closed:
            oldest = next(iter(self._clients.values()))
            self._sweep = self.loop.call_at(oldest.last_seen + self.idle_timeout, self._expire)


# ---- TCP --------------------------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One end of a relayed TCP connection: the accepted client or the connection upstream."""

    def __init__(self, connection: _TcpConnection, upstream: bool) -> None:
        self.connection = connection
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.set_reading(True)  # until both sides are there and the pipes are set up
        if not self.upstream:
            self.connection.accepted()

    def data_received(self, data: bytes) -> None:
        self.connection.pipe_from(self).push(data)

    def eof_received(self) -> bool:
        self.connection.pipe_from(self).finish(half=True)
        return True  # keep the other direction open until it ends too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.connection.side_lost(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.connection.flow_changed(self)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.connection.flow_changed(self)

    def set_reading(self, paused: bool) -> None:
        if paused == self.reading_paused or self.lost or self.transport is None:
            return
        self.reading_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()


class _Pipe:
    """One direction of a connection: chunks queued with release times that never decrease."""

    def __init__(
        self,
        relay: TcpRelay,
        impairment: Impairment,
        rng: random.Random,
        counters: Counters,
        source: _Side,
        destination: _Side,
    ) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.impairment = impairment
        self.rng = rng
        self.counters = counters
        self.source = source
        self.destination = destination
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued_bytes = 0
        self.last_release = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.ending: str | None = None  # "eof" or "close" once the source has finished
        self.ended = False

    def push(self, data: bytes) -> None:
        if self.ended or self.ending is not None:
            return
        self.counters.received += 1
        now = self.loop.time()
        delay = self.impairment.delay_s(self.rng)
        retries = self.impairment.retransmissions(self.rng)
        if retries:
            self.counters.penalised += 1
            delay += self.impairment.penalty_s(retries)
        release = max(now + delay, self.last_release)
        self.last_release = release
        if release <= now and not self.queue:
            self._write(data)
            return
        self.queue.append((release, data))
        self.queued_bytes += len(data)
        if self.timer is None:
            self.timer = self.loop.call_at(release, self._flush)
        self.update_flow()

    def _write(self, data: bytes) -> None:
        transport = self.destination.transport
        if self.destination.lost or transport is None or transport.is_closing():
            return
        transport.write(data)
        self.counters.forwarded += 1
        self.counters.bytes += len(data)
        self.relay._changed()

    def _flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.queued_bytes -= len(data)
            self._write(data)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._flush)
        elif self.ending is not None:
            self._end()
        self.update_flow()

    def update_flow(self) -> None:
        """Stop reading the source while too much waits here or in the destination's buffer."""
        if self.ended:
            return
        self.source.set_reading(
            self.queued_bytes > self.relay.max_buffer or self.destination.writing_paused
        )

    def finish(self, half: bool) -> None:
        """The source has ended: pass that on once everything queued is delivered."""
        if self.ended:
            return
        if self.ending != "close":
            self.ending = "eof" if half else "close"
        if not self.queue:
            self._end()

    def discard(self) -> None:
        """The destination is gone (or the link was cut): nothing more goes through."""
        self.queue.clear()
        self.queued_bytes = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.ended = True

    def _end(self) -> None:
        self.ended = True
        transport = self.destination.transport
        if not self.destination.lost and transport is not None and not transport.is_closing():
            try:
                if self.ending == "eof" and transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
            except OSError:  # the peer went first (ENOTCONN): the pipe is over all the same
                transport.abort()
        self.source.connection.pipe_ended()


class _TcpConnection:
    def __init__(self, relay: TcpRelay) -> None:
        self.relay = relay
        self.client = _Side(self, upstream=False)
        self.target = _Side(self, upstream=True)
        self.up: _Pipe | None = None
        self.down: _Pipe | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.drop_timer: asyncio.TimerHandle | None = None
        self.finished = False

    def accepted(self) -> None:
        relay = self.relay
        relay._connections.add(self)
        relay.stats.clients += 1
        relay.stats.clients_total += 1
        self.connecting = relay.loop.create_task(self._connect())
        relay._changed()

    async def _connect(self) -> None:
        relay = self.relay
        try:
            async with asyncio.timeout(relay.connect_timeout):
                await relay.loop.create_connection(lambda: self.target, *relay._target)
        except (OSError, TimeoutError) as exc:
            log.info("cannot connect to %s:%s: %s", relay.target_host, relay.target_port, exc)
            relay.stats.connect_failures += 1
            relay._changed()
            self._close(self.client)
            return
        finally:
            self._maybe_finish(connecting_over=True)
        if self.client.lost or relay._closed:
            self._close(self.target)
            return
        self.up = _Pipe(
            relay, relay.impairment, relay._up_rng, relay.stats.upstream, self.client, self.target
        )
        self.down = _Pipe(
            relay,
            relay.downstream_impairment,
            relay._down_rng,
            relay.stats.downstream,
            self.target,
            self.client,
        )
        if relay.impairment.drop_rate > 0:
            lifetime = relay._drop_rng.expovariate(relay.impairment.drop_rate / 60.0)
            self.drop_timer = relay.loop.call_later(lifetime, self.drop)
        self.client.set_reading(False)
        self.target.set_reading(False)

    def pipe_from(self, side: _Side) -> _Pipe:
        pipe = self.up if side is self.client else self.down
        assert pipe is not None, "no data is read before the pipes are set up"
        return pipe

    def flow_changed(self, side: _Side) -> None:
        """The socket buffer towards `side` filled or drained."""
        pipe = self.down if side is self.client else self.up
        if pipe is not None:
            pipe.update_flow()

    def pipe_ended(self) -> None:
        """Both directions half-closed and delivered: close what is still open."""
        if self.up is not None and self.down is not None and self.up.ended and self.down.ended:
            self._close(self.client)
            self._close(self.target)

    def side_lost(self, side: _Side) -> None:
        other = self.target if side is self.client else self.client
        into = self.down if side is self.client else self.up
        if into is not None:
            into.discard()
        if self.up is not None and self.down is not None:
            self.pipe_from(side).finish(half=False)  # closes the other side once delivered
        else:
            self._close(other)  # lost before the relay was set up
        self._maybe_finish()

    def drop(self) -> None:
        """The link fails: both sides are reset, whatever was queued is lost."""
        self.drop_timer = None
        if self.finished:
            return
        self.relay.stats.connections_dropped += 1
        for pipe in (self.up, self.down):
            if pipe is not None:
                pipe.discard()
        self.abort()
        self.relay._changed()

    def abort(self) -> None:
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        for side in (self.client, self.target):
            if side.transport is not None and not side.lost:
                side.transport.abort()

    @staticmethod
    def _close(side: _Side) -> None:
        if side.transport is not None and not side.lost:
            side.transport.close()

    def _maybe_finish(self, connecting_over: bool = False) -> None:
        if not connecting_over and self.connecting is not None and not self.connecting.done():
            return  # _connect() still has to look at the sides
        if self.client.lost and (self.target.lost or self.target.transport is None):
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.drop_timer is not None:
            self.drop_timer.cancel()
            self.drop_timer = None
        relay = self.relay
        relay._connections.discard(self)
        relay.stats.clients -= 1
        if not relay._connections:
            relay._idle.set()
        relay._changed()


class TcpRelay(_Relay):
    """A TCP relay: each accepted connection gets its own connection to the target.

    Delay, jitter and loss (as retransmission penalties) apply per chunk and direction without
    reordering; `drop_rate` (of `impairment`, the upstream one) cuts connections. Reading from a
    side pauses while more than `max_buffer` bytes wait for release or the far side's socket
    buffer is full.
    """

    kind = "tcp"

    def __init__(
        self,
        listen_host: str,
        listen_port: int,
        target_host: str,
        target_port: int,
        impairment: Impairment | None = None,
        *,
        downstream: Impairment | None = None,
        connect_timeout: float = 10.0,
        max_buffer: int = 1 << 20,
    ) -> None:
        super().__init__(
            listen_host,
            listen_port,
            target_host,
            target_port,
            impairment or Impairment(),
            downstream,
        )
        for which in {self.impairment, self.downstream_impairment}:
            if which.loss >= 1.0:
                raise ValueError("TCP loss must be below 1 (for a dead link use drop_rate)")
        self.connect_timeout = connect_timeout
        self.max_buffer = max_buffer
        self._drop_rng = self.impairment.rng("drop")
        self._server: asyncio.Server | None = None
        self._target: tuple[str, int] = (target_host, target_port)
        self._connections: set[_TcpConnection] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the relay is already started")
        self._loop = asyncio.get_running_loop()
        target = await _resolve(self.target_host, self.target_port, socket.SOCK_STREAM)
        self._target = (target[4][0], target[4][1])
        self._server = await self._loop.create_server(
            self._accept, self.listen_host, self.listen_port
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    def _accept(self) -> _Side:
        self._idle.clear()
        return _TcpConnection(self).client

    async def aclose(self) -> None:
        if self._closed or self._loop is None:
            self._closed = True
            return
        self._closed = True
        assert self._server is not None
        self._server.close()
        for connection in list(self._connections):
            connection.abort()
        if self._connections:
            async with asyncio.timeout(10):
                await self._idle.wait()
        await self._server.wait_closed()
        self._changed()


# ---- command line -----------------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m interop.impair",
        description="Relay UDP or TCP traffic with loss, delay and jitter; Ctrl-C prints counters.",
    )
    commands = parser.add_subparsers(dest="protocol", required=True)
    for name in ("udp", "tcp"):
        command = commands.add_parser(name, help=f"relay {name.upper()}")
        command.add_argument("--listen", type=_address, required=True, help="HOST:PORT (0 = any)")
        command.add_argument("--target", type=_address, required=True, help="HOST:PORT")
        command.add_argument("--loss", type=float, default=0.0, help="probability, 0..1")
        command.add_argument("--delay", type=float, default=0.0, help="one-way delay, ms")
        command.add_argument("--jitter", type=float, default=0.0, help="+/- ms, uniform")
        command.add_argument("--seed", type=int, default=None)
        command.add_argument("--duration", type=float, default=None, help="stop after seconds")
        if name == "udp":
            command.add_argument("--duplicate", type=float, default=0.0, help="probability")
            command.add_argument("--idle-timeout", type=float, default=120.0, help="seconds")
            command.add_argument("--max-clients", type=int, default=20000)
        else:
            command.add_argument(
                "--rto", type=float, default=200.0, help="retransmission timeout, ms"
            )
            command.add_argument(
                "--drop-rate", type=float, default=0.0, help="connection cuts per minute"
            )
    return parser


async def _serve(relay: _Relay, duration: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    try:
        async with relay:
            print(f"relaying {relay.describe()}", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(duration):
                    await stop.wait()
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
    print(relay.stats.summary(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        impairment = Impairment(
            loss=args.loss,
            delay_ms=args.delay,
            jitter_ms=args.jitter,
            seed=args.seed,
            duplicate=getattr(args, "duplicate", 0.0),
            retransmit_penalty_ms=getattr(args, "rto", 200.0),
            drop_rate=getattr(args, "drop_rate", 0.0),
        )
        (listen_host, listen_port), (target_host, target_port) = args.listen, args.target
        relay: _Relay
        if args.protocol == "udp":
            relay = UdpRelay(
                listen_host,
                listen_port,
                target_host,
                target_port,
                impairment,
                idle_timeout=args.idle_timeout,
                max_clients=args.max_clients,
            )
        else:
            relay = TcpRelay(listen_host, listen_port, target_host, target_port, impairment)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(relay, args.duration))
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The impairment relay (interop/impair.py) on real loopback sockets.

UDP: real client sockets, an echo or recording target, the relay between; TCP: an echo server,
a private Mosquitto with a real aiomqtt client, and the connection-drop model; end to end: an
aiocoap client whose CON requests cross a 30 % loss link to an aiocoap server. Every wait is on
an event or on the relay's counters, bounded by a timeout; delays are checked as lower bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiocoap  # type: ignore[import-untyped]
import aiomqtt
import pytest
from aiocoap import resource
from aiocoap.numbers.constants import TransportTuning  # type: ignore[import-untyped]

from cse.bindings.coap.server import bound_port
from gridm2m.broker import free_port, free_udp_port
from interop.impair import Impairment, RelayStats, TcpRelay, UdpRelay
from tests.brokers import USERNAME, private_broker

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0
# call_at may fire a hair before its deadline by the loop's clock resolution; far below 1 ms.
SLACK = 0.0005


# ---- UDP helpers ------------------------------------------------------------------------------


class Peer(asyncio.DatagramProtocol):
    """A UDP socket that records what arrives and, as a target, may answer it.

    echo: send each datagram back; tag: append "|<source port>" to the answer.
    """

    def __init__(self, echo: bool = False, tag: bool = False) -> None:
        self.echo = echo
        self.tag = tag
        self.received: list[tuple[bytes, Any, float]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self._want: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr, time.monotonic()))
        if self.echo:
            assert self.transport is not None
            reply = data + f"|{addr[1]}".encode() if self.tag else data
            self.transport.sendto(reply, addr)
        want = self._want
        if want is not None and len(self.received) >= want[0] and not want[1].done():
            want[1].set_result(None)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, (HOST, port))

    async def wait(self, count: int, timeout: float = TIMEOUT) -> list[bytes]:
        if len(self.received) < count:
            self._want = (count, asyncio.get_running_loop().create_future())
            try:
                async with asyncio.timeout(timeout):
                    await self._want[1]
            finally:
                self._want = None
        return [data for data, _, _ in self.received]


@contextlib.asynccontextmanager
async def peers(count: int = 1, **options: bool) -> AsyncIterator[list[Peer]]:
    loop = asyncio.get_running_loop()
    opened: list[Peer] = []
    try:
        for _ in range(count):
            _, peer = await loop.create_datagram_endpoint(
                lambda: Peer(**options), local_addr=(HOST, 0)
            )
            opened.append(peer)
        yield opened
    finally:
        for peer in opened:
            assert peer.transport is not None
            peer.transport.close()


@contextlib.asynccontextmanager
async def peer(**options: bool) -> AsyncIterator[Peer]:
    async with peers(1, **options) as opened:
        yield opened[0]


async def send_paced(
    relay: UdpRelay, client: Peer, payloads: list[bytes], receiver: Peer, batch: int = 50
) -> None:
    """Send in batches, each once the last has reached `receiver` (no socket overflows).

    A datagram transport reads one datagram per loop turn, the relay up to 64: without the
    pacing the receiver's socket buffer would overflow and the kernel would drop datagrams.
    """
    sent = relay.stats.upstream.received
    for start in range(0, len(payloads), batch):
        for data in payloads[start : start + batch]:
            client.send(data, relay.port)
            sent += 1
        await read_by_relay(relay, sent)
        await relay.wait_for(released, TIMEOUT)
        await receiver.wait(relay.stats.upstream.forwarded)


def released(stats: RelayStats) -> bool:
    """Every datagram the relay read upstream is sent or dropped (none waits for its delay)."""
    up = stats.upstream
    return up.forwarded >= up.received - up.dropped + up.duplicated


async def read_by_relay(relay: UdpRelay | TcpRelay, count: int) -> None:
    """Wait until the relay has read `count` datagrams (or chunks) from its clients."""
    await relay.wait_for(lambda s: s.upstream.received >= count, TIMEOUT)


# ---- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": 1.5}, "loss is a probability"),
        ({"loss": -0.1}, "loss is a probability"),
        ({"duplicate": 2}, "duplicate is a probability"),
        ({"delay_ms": -1}, "delay_ms must be zero or more"),
        ({"jitter_ms": -5}, "jitter_ms must be zero or more"),
        ({"drop_rate": -1}, "drop_rate must be zero or more"),
        ({"delay_ms": float("nan")}, "delay_ms must be finite"),
        ({"loss": "0.1"}, "loss must be a number"),
        ({"loss": True}, "loss must be a number"),
        ({"retransmit_penalty_ms": 0}, "retransmit_penalty_ms must be more than zero"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_impairment_rejects_values_out_of_range(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Impairment(**options)


def test_relays_reject_what_they_cannot_model() -> None:
    with pytest.raises(ValueError, match="TCP loss must be below 1"):
        TcpRelay(HOST, 0, HOST, 1, Impairment(loss=1.0))
    with pytest.raises(ValueError, match="idle_timeout"):
        UdpRelay(HOST, 0, HOST, 1, idle_timeout=0)
    with pytest.raises(ValueError, match="max_clients"):
        UdpRelay(HOST, 0, HOST, 1, max_clients=0)


def test_delay_is_uniform_around_the_mean_and_never_negative() -> None:
    rng = random.Random(1)
    wide = Impairment(delay_ms=10, jitter_ms=30)
    samples = [wide.delay_s(rng) for _ in range(10_000)]
    assert all(0.0 <= sample <= 0.040 for sample in samples)
    # Uniform on [-20, 40] ms clamped at 0: a third of the samples are exactly 0.
    assert 0.28 < samples.count(0.0) / len(samples) < 0.39
    assert max(samples) > 0.039
    narrow = Impairment(delay_ms=50, jitter_ms=10)
    assert all(0.040 <= narrow.delay_s(rng) <= 0.060 for _ in range(1000))
    assert Impairment(delay_ms=25).delay_s(rng) == 0.025


def test_tcp_loss_becomes_doubling_retransmission_penalties() -> None:
    model = Impairment(loss=0.5, retransmit_penalty_ms=200)
    assert [model.penalty_s(k) for k in (0, 1, 2, 3)] == pytest.approx([0, 0.2, 0.6, 1.4])
    rng = random.Random(2)
    counts = [model.retransmissions(rng) for _ in range(4000)]
    # Geometric: P(k = 0) = 1/2, P(k = 1) = 1/4.
    assert 0.45 < counts.count(0) / len(counts) < 0.55
    assert 0.20 < counts.count(1) / len(counts) < 0.30
    assert Impairment().retransmissions(rng) == 0
    assert Impairment(loss=0.999999).retransmissions(rng) <= 15


def test_a_seed_gives_the_same_decisions_per_direction() -> None:
    a, b = Impairment(seed=3).rng("upstream"), Impairment(seed=3).rng("upstream")
    assert [a.random() for _ in range(5)] == [b.random() for _ in range(5)]
    up, down = Impairment(seed=3).rng("upstream"), Impairment(seed=3).rng("downstream")
    assert [up.random() for _ in range(5)] != [down.random() for _ in range(5)]


# ---- UDP --------------------------------------------------------------------------------------


async def test_udp_relays_datagrams_both_ways() -> None:
    async with (
        peer(echo=True) as target,
        peer() as client,
        UdpRelay(HOST, 0, HOST, target.port) as relay,
    ):
        payloads = [f"reading {n}".encode() for n in range(20)]
        await send_paced(relay, client, payloads, target)
        assert await client.wait(20) == payloads
        assert {addr for _, addr, _ in client.received} == {(HOST, relay.port)}
        assert [data for data, _, _ in target.received] == payloads
        assert relay.stats.upstream.forwarded == relay.stats.downstream.forwarded == 20
        assert relay.stats.upstream.bytes == sum(map(len, payloads))
        assert relay.stats.clients == relay.stats.clients_total == 1


async def delivered_with_loss(seed: int, count: int = 2000) -> tuple[list[int], RelayStats]:
    """Send `count` numbered datagrams through a relay losing half upstream; what arrived."""
    async with peer() as sink, peer() as client:
        impairment = Impairment(loss=0.5, seed=seed)
        async with UdpRelay(HOST, 0, HOST, sink.port, impairment) as relay:
            await send_paced(relay, client, [str(n).encode() for n in range(count)], sink)
            arrived = await sink.wait(relay.stats.upstream.forwarded)
            return [int(data) for data in arrived], relay.stats


async def test_udp_loss_follows_the_probability_and_the_seed() -> None:
    delivered, stats = await delivered_with_loss(seed=42)
    assert stats.upstream.received == 2000
    assert 800 <= stats.upstream.dropped <= 1200
    assert len(delivered) == stats.upstream.forwarded == 2000 - stats.upstream.dropped
    assert delivered == sorted(set(delivered))  # no delay: in order, nothing twice
    again, _ = await delivered_with_loss(seed=42)
    assert again == delivered
    other, _ = await delivered_with_loss(seed=43)
    assert other != delivered


async def test_udp_impairment_is_independent_per_direction() -> None:
    async with peer(echo=True) as target, peer() as client:
        lossy_down = Impairment(loss=1.0)
        async with UdpRelay(HOST, 0, HOST, target.port, downstream=lossy_down) as relay:
            await send_paced(relay, client, [b"%d" % n for n in range(50)], target)
            await relay.wait_for(lambda s: s.downstream.received >= 50, TIMEOUT)
            assert len(await target.wait(50)) == 50
            assert relay.stats.upstream.dropped == 0
            assert relay.stats.downstream.dropped == 50
            assert relay.stats.downstream.forwarded == 0


async def test_udp_delay_holds_each_datagram_back_both_ways() -> None:
    delay = 0.030
    async with (
        peer(echo=True) as target,
        peer() as client,
        UdpRelay(HOST, 0, HOST, target.port, Impairment(delay_ms=30)) as relay,
    ):
        sent: dict[bytes, float] = {}
        for n in range(10):
            data = b"%d" % n
            sent[data] = time.monotonic()
            client.send(data, relay.port)
        await client.wait(10)
        for data, _, arrived in target.received:
            assert arrived - sent[data] >= delay - SLACK
        for data, _, arrived in client.received:
            assert arrived - sent[data] >= 2 * delay - SLACK


async def test_udp_jitter_reorders_but_loses_nothing() -> None:
    async with peer() as sink, peer() as client:
        impairment = Impairment(delay_ms=20, jitter_ms=20, seed=5)
        async with UdpRelay(HOST, 0, HOST, sink.port, impairment) as relay:
            payloads = [b"%d" % n for n in range(200)]
            await send_paced(relay, client, payloads, sink)
            arrived = await sink.wait(200)
            assert sorted(arrived) == sorted(payloads)
            assert arrived != payloads
            assert relay.stats.upstream.dropped == 0


async def test_udp_duplicates_arrive_twice() -> None:
    async with peer() as sink, peer() as client:
        impairment = Impairment(duplicate=1.0)
        async with UdpRelay(HOST, 0, HOST, sink.port, impairment) as relay:
            payloads = [b"%d" % n for n in range(10)]
            await send_paced(relay, client, payloads, sink)
            arrived = await sink.wait(20)
            assert sorted(arrived) == sorted(payloads * 2)
            assert relay.stats.upstream.duplicated == 10
            assert relay.stats.upstream.forwarded == 20


async def test_udp_a_thousand_clients_get_their_own_upstream_ports() -> None:
    count = 1000
    async with (
        peer(echo=True, tag=True) as target,
        peers(count) as clients,
        UdpRelay(HOST, 0, HOST, target.port) as relay,
    ):
        sent = 0
        for start in range(0, count, 100):
            for n, client in enumerate(clients[start : start + 100], start):
                client.send(b"meter-%d" % n, relay.port)
                sent += 1
            await read_by_relay(relay, sent)
            await target.wait(sent)  # see send_paced
        ports: list[int] = []
        for n, client in enumerate(clients):
            (reply,) = await client.wait(1)
            name, _, port = reply.partition(b"|")
            assert name == b"meter-%d" % n  # the reply went back to the right client
            assert relay.upstream_port(client.address) == int(port)
            ports.append(int(port))
        assert len(set(ports)) == count
        assert relay.port not in ports
        assert relay.stats.clients == relay.stats.clients_total == count


async def test_udp_idle_mappings_expire_and_come_back() -> None:
    async with (
        peer(echo=True, tag=True) as target,
        peers(5) as clients,
        UdpRelay(HOST, 0, HOST, target.port, idle_timeout=0.2) as relay,
    ):
        for client in clients:
            client.send(b"hello", relay.port)
            await client.wait(1)
        await relay.wait_for(lambda s: s.clients == 0, TIMEOUT)
        assert relay.stats.expired == 5
        assert relay.upstream_port(clients[0].address) is None
        clients[0].send(b"again", relay.port)
        replies = await clients[0].wait(2)
        assert replies[1].startswith(b"again|")
        assert relay.stats.clients_total == 6


async def test_udp_beyond_max_clients_the_least_recent_goes() -> None:
    async with (
        peer(echo=True) as target,
        peers(5) as clients,
        UdpRelay(HOST, 0, HOST, target.port, max_clients=3) as relay,
    ):
        for client in clients:
            client.send(b"hi", relay.port)
            await client.wait(1)
        assert relay.stats.evicted == 2
        assert relay.stats.clients == 3
        assert relay.upstream_port(clients[0].address) is None
        assert relay.upstream_port(clients[1].address) is None
        assert relay.upstream_port(clients[4].address) is not None
        clients[0].send(b"back", relay.port)
        assert (await clients[0].wait(2))[1] == b"back"
        assert relay.upstream_port(clients[2].address) is None  # now the least recent


# ---- TCP --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_echo() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(echo, HOST, 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_tcp_keeps_every_byte_in_order_under_jitter_and_loss() -> None:
    impairment = Impairment(delay_ms=5, jitter_ms=5, loss=0.3, retransmit_penalty_ms=10, seed=7)
    async with tcp_echo() as port, TcpRelay(HOST, 0, HOST, port, impairment) as relay:
        reader, writer = await asyncio.open_connection(HOST, relay.port)
        lines = [b"line %d\n" % n for n in range(300)]
        for n, line in enumerate(lines, 1):
            writer.write(line)
            # Each line is its own chunk at the relay, with many still held back behind it.
            await read_by_relay(relay, n)
        expected = b"".join(lines)
        async with asyncio.timeout(TIMEOUT):
            echoed = await reader.readexactly(len(expected))
        assert echoed == expected
        stats = relay.stats
        assert stats.upstream.received == 300
        assert stats.upstream.penalised > 0
        assert stats.upstream.bytes == stats.downstream.bytes == len(expected)
        await close_writer(writer)
        await relay.wait_for(lambda s: s.clients == 0, TIMEOUT)


async def test_tcp_delay_holds_each_round_trip_back() -> None:
    async with tcp_echo() as port, TcpRelay(HOST, 0, HOST, port, Impairment(delay_ms=25)) as relay:
        reader, writer = await asyncio.open_connection(HOST, relay.port)
        for _ in range(3):
            started = time.monotonic()
            writer.write(b"ping\n")
            async with asyncio.timeout(TIMEOUT):
                assert await reader.readline() == b"ping\n"
            assert time.monotonic() - started >= 0.050 - SLACK
        await close_writer(writer)


async def test_tcp_a_half_close_arrives_after_the_data_held_back() -> None:
    async def reply_at_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # everything until the client's EOF
        writer.write(b"got " + data)
        await close_writer(writer)

    server = await asyncio.start_server(reply_at_eof, HOST, 0)
    port = int(server.sockets[0].getsockname()[1])
    async with server, TcpRelay(HOST, 0, HOST, port, Impairment(delay_ms=20)) as relay:
        reader, writer = await asyncio.open_connection(HOST, relay.port)
        writer.write(b"last words")
        writer.write_eof()  # reaches the relay while "last words" is still held back
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b"got last words"
        await close_writer(writer)
        await relay.wait_for(lambda s: s.clients == 0, TIMEOUT)


async def test_tcp_a_target_that_refuses_closes_the_client() -> None:
    async with TcpRelay(HOST, 0, HOST, free_port()) as relay:
        reader, writer = await asyncio.open_connection(HOST, relay.port)
        async with asyncio.timeout(TIMEOUT):
            assert await reader.read() == b""
        await close_writer(writer)
        await relay.wait_for(lambda s: s.clients == 0, TIMEOUT)
        assert relay.stats.connect_failures == 1


async def test_tcp_an_mqtt_client_through_the_relay_gets_qos1_messages_in_order(
    tmp_path: Path,
) -> None:
    impairment = Impairment(delay_ms=5, jitter_ms=5, loss=0.2, retransmit_penalty_ms=20, seed=11)
    async with (
        private_broker(tmp_path) as broker,
        TcpRelay(HOST, 0, HOST, broker.port, impairment) as relay,
    ):
        client = aiomqtt.Client(HOST, relay.port, username=USERNAME, identifier="impair-1")
        async with client:
            await client.subscribe("meters/impair/#", qos=1)
            payloads = [b"reading %d" % n for n in range(50)]
            for payload in payloads:
                await client.publish("meters/impair/1", payload, qos=1)
            received: list[bytes] = []
            async with asyncio.timeout(TIMEOUT):
                async for message in client.messages:
                    assert message.qos == 1
                    assert isinstance(message.payload, bytes)
                    received.append(message.payload)
                    if len(received) == len(payloads):
                        break
            assert received == payloads
        stats = relay.stats
        assert stats.upstream.penalised + stats.downstream.penalised > 0
        assert stats.upstream.forwarded > 50 and stats.downstream.forwarded > 0


async def test_tcp_drop_rate_cuts_connections_and_the_client_reconnects() -> None:
    # 600 cuts per connection-minute: each connection lives 0.1 s on average.
    impairment = Impairment(delay_ms=2, drop_rate=600, seed=13)
    async with tcp_echo() as port, TcpRelay(HOST, 0, HOST, port, impairment) as relay:
        echoed_per_connection: list[int] = []
        async with asyncio.timeout(60):
            while len(echoed_per_connection) < 3:
                reader, writer = await asyncio.open_connection(HOST, relay.port)
                echoed = 0
                try:
                    while True:
                        writer.write(b"ping\n")
                        line = await reader.readline()
                        if not line:
                            break
                        assert line == b"ping\n"
                        echoed += 1
                except ConnectionError:
                    pass
                echoed_per_connection.append(echoed)
                await close_writer(writer)
        assert relay.stats.connections_dropped == 3
        assert relay.stats.clients_total == 3
        assert sum(echoed_per_connection) > 0
        await relay.wait_for(lambda s: s.clients == 0, TIMEOUT)


# ---- end to end: CoAP over a lossy link -------------------------------------------------------


class Recorder(resource.Resource):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.handled: list[bytes] = []

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        self.handled.append(request.payload)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"ok " + request.payload)


class PatientTuning(TransportTuning):  # type: ignore[misc]
    """Quick retransmissions, and enough of them that 30 % loss each way cannot win."""

    ACK_TIMEOUT = 0.25
    MAX_RETRANSMIT = 12


async def test_coap_con_requests_all_succeed_across_30_percent_loss() -> None:
    recorder = Recorder()
    site = resource.Site()
    site.add_resource(["reads"], recorder)
    server = await aiocoap.Context.create_server_context(
        site, bind=(HOST, free_udp_port()), transports=["udp6"]
    )
    client = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        impairment = Impairment(loss=0.3, seed=17)
        async with UdpRelay(HOST, 0, HOST, bound_port(server), impairment) as relay:
            for n in range(20):
                request = aiocoap.Message(
                    code=aiocoap.POST,
                    uri=f"coap://{HOST}:{relay.port}/reads",
                    payload=b"%d" % n,
                    transport_tuning=PatientTuning(),
                )
                async with asyncio.timeout(120):
                    response = await client.request(request).response
                assert response.code == aiocoap.CHANGED
                assert response.payload == b"ok %d" % n
            # A retransmitted CON comes from the same upstream port, so the server's
            # duplicate detection answers it from its cache instead of handling it again.
            assert recorder.handled == [b"%d" % n for n in range(20)]
            stats = relay.stats
            assert stats.upstream.dropped > 0 and stats.downstream.dropped > 0
            assert stats.upstream.received > 20  # retransmissions made up for the losses
            assert stats.clients_total == 1
    finally:
        await client.shutdown()
        await server.shutdown()


# ---- the command line -------------------------------------------------------------------------


async def test_cli_relays_until_interrupted_and_prints_counters() -> None:
    async with peer(echo=True) as target, peer() as client:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "interop.impair",
            "udp",
            "--listen",
            f"{HOST}:0",
            "--target",
            f"{HOST}:{target.port}",
            "--delay",
            "5",
            "--seed",
            "1",
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(TIMEOUT):
                first = (await process.stdout.readline()).decode()
            assert first.startswith(f"relaying udp {HOST}:"), first
            port = int(first.split()[2].rpartition(":")[2])
            client.send(b"over the relay", port)
            assert await client.wait(1) == [b"over the relay"]
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(TIMEOUT):
                rest, errors = await process.communicate()
            assert process.returncode == 0, errors
            summary = rest.decode()
            assert "upstream   (client -> target): received 1 forwarded 1 dropped 0" in summary
            assert "downstream (target -> client): received 1 forwarded 1 dropped 0" in summary
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_cli_refuses_an_impossible_impairment() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "interop.impair",
        "tcp",
        "--listen",
        f"{HOST}:0",
        "--target",
        f"{HOST}:1",
        "--loss",
        "1.5",
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT):
        _, errors = await process.communicate()
    assert process.returncode == 2
    assert b"loss is a probability between 0 and 1" in errors

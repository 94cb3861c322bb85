"""The hostile client of the soak benchmark (bench/bench_soak.py), run as its own process.

    python -m bench.soak_hostile --coap-port P --https-url URL --ops-port P --headend-url URL
        --pki DIR --credential NAME --duration S [--workers 4] [--report-every 1]

It runs beside the honest meters so that its CPU does not distort their figures, and goes
through the attacks in rotation, each worker one round after another, as fast as the gateway
answers:

- junk: undecodable and truncated datagrams, and CON requests whose answers meet a socket
  closed right after sending (ICMP errors: what once left the CoAP server silent for ever);
- oversize: a 70 KB contentInstance (Block1, above the CoAP body limit), a 20 KB one (above a
  container's default byte size), a container asking for more instances than the cap;
- exhaust: a new AE each round (until the registration rate or the AE count refuses), a
  container and a subscription on its own AE each round (until the per-AE count refuses);
- ssrf: subscriptions whose nu points at a loopback port nobody announced, the gateway's ops
  port, its own CoAP port, a foreign mqtt:// broker, the link-local metadata address, and a
  path of its own choosing on the head-end (the scheme, host and port of a remoteCSE's poa);
- discovery: fu=1&lim=1 over the whole tree, and a filter that matches nothing;
- impersonation: over the CoAP listener (trust "claimed"), the head-end's CSE-ID and the admin
  as originator; over HTTPS with a device certificate of its own, another meter's AE-ID, the
  head-end's CSE-ID and the admin (write and read).

Every `--report-every` seconds it prints one JSON line: {"t": seconds, "counts": {"kind/what":
{"answer": n}}}, cumulative. An answer is the oneM2M RSC (`rsc 4103`), else the CoAP code
(`coap 4.13`) or HTTP status, or `timeout`, `sent` (junk: nothing expected back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import aiohttp
import orjson

from bench.rawcoap import (
    ACK,
    BLOCK1,
    CON,
    CONTENT_FORMAT,
    CONTINUE,
    JSON_FORMAT,
    ONEM2M_FR,
    ONEM2M_RQI,
    ONEM2M_RSC,
    ONEM2M_RVI,
    ONEM2M_TY,
    POST,
    SIZE1,
    URI_PATH,
    URI_QUERY,
    block_value,
    empty_ack,
    encode_message,
    parse_header,
    parse_options,
    uint_bytes,
)
from cse.security.pki import client_context
from gridm2m.pki import client_files

HOST = "127.0.0.1"
CSE_NAME = "dap1"
GET = 1
BASE_AE = "hostile"  # the hostile's own AE on the claimed CoAP listener (AE-ID Chostile)
ANSWER_TIMEOUT = 10.0
TARGET_METER = "m00001"  # the honest meter it names as originator

ATTACKS = ("junk", "oversize", "exhaust", "ssrf", "discovery", "impersonate")

Counts = dict[str, dict[str, int]]


class CoapAnswer(asyncio.DatagramProtocol):
    """One socket, one exchange at a time: the answer matched by token."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.token = b""
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = parse_header(data)
        if reply is None or self.waiter is None or self.waiter.done():
            return
        if reply.mtype == CON and self.transport is not None:
            self.transport.sendto(empty_ack(reply.mid))  # a separate response
        if reply.mtype == ACK and reply.code == 0:
            return  # the answer comes separately
        if reply.token == self.token:
            self.waiter.set_result(bytes(data))

    def error_received(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


def answer_of(datagram: bytes) -> str:
    """`rsc NNNN` when the answer carries the oneM2M-RSC option, else `coap C.DD`."""
    code = datagram[1]
    with contextlib.suppress(ValueError, IndexError):
        for number, value in parse_options(datagram)[0]:
            if number == ONEM2M_RSC:
                return f"rsc {int.from_bytes(value, 'big')}"
    return f"coap {code >> 5}.{code & 31:02d}"


class CoapAttacker:
    """CoAP requests built byte by byte, one exchange at a time on one socket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.protocol: CoapAnswer | None = None
        self._mids = itertools.count(random.randrange(1 << 16))
        self._tokens = itertools.count(random.randrange(1 << 30))

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(CoapAnswer, remote_addr=(HOST, self.port))
        self.protocol = protocol

    def close(self) -> None:
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.close()

    async def request(
        self,
        code: int,
        path: Sequence[str],
        originator: str,
        *,
        query: Sequence[str] = (),
        body: bytes = b"",
        resource_type: int | None = None,
    ) -> str:
        """Send one request (Block1 above 1,024 bytes); its answer, or `timeout`."""
        protocol = self.protocol
        assert protocol is not None and protocol.transport is not None
        options = [(URI_PATH, segment.encode()) for segment in path]
        options += [(URI_QUERY, item.encode()) for item in query]
        options += [(ONEM2M_FR, originator.encode()), (ONEM2M_RVI, b"3")]
        options.append((ONEM2M_RQI, f"h{next(self._tokens)}".encode()))
        if body:
            options.append((CONTENT_FORMAT, uint_bytes(JSON_FORMAT)))
        if resource_type is not None:
            options.append((ONEM2M_TY, uint_bytes(resource_type)))
        size = 1024
        blocks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        token = (next(self._tokens) & 0xFFFFFFFF).to_bytes(4, "big")
        answer = "timeout"
        for number, chunk in enumerate(blocks):
            extra = []
            if len(blocks) > 1:
                extra.append((BLOCK1, block_value(number, number < len(blocks) - 1, 6)))
                if number == 0:
                    extra.append((SIZE1, uint_bytes(len(body))))
            mid = next(self._mids) & 0xFFFF
            datagram = encode_message(CON, code, mid, token, [*options, *extra], chunk)
            protocol.token = token
            protocol.waiter = asyncio.get_running_loop().create_future()
            protocol.transport.sendto(datagram)
            try:
                async with asyncio.timeout(ANSWER_TIMEOUT):
                    reply = await protocol.waiter
            except (TimeoutError, OSError):
                return "timeout"
            if reply[1] != CONTINUE:
                return answer_of(reply)
            answer = answer_of(reply)
        return answer


def _ae(name: str) -> bytes:
    return orjson.dumps({"m2m:ae": {"rn": name, "api": "Nhostile", "rr": False, "srv": ["3"]}})


def _cnt(name: str, **extra: int) -> bytes:
    return orjson.dumps({"m2m:cnt": {"rn": name, **extra}})


def _cin(size: int) -> bytes:
    return orjson.dumps({"m2m:cin": {"cnf": "text/plain:0", "con": "x" * size}})


def _sub(name: str, targets: list[str]) -> bytes:
    return orjson.dumps({"m2m:sub": {"rn": name, "nu": targets, "nct": 1}})


class Hostile:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts: Counts = defaultdict(lambda: defaultdict(int))
        self.started = time.monotonic()
        self.names = itertools.count(1)
        files = client_files(Path(args.pki), args.credential)
        self.tls = client_context(Path(args.pki) / "ca.pem", files.cert, files.key)

    def count(self, what: str, answer: str) -> None:
        self.counts[what][answer] += 1

    # ---- one round of each attack ------------------------------------------------------------

    async def junk(self, coap: CoapAttacker, http: aiohttp.ClientSession) -> None:
        """Junk and truncated datagrams, and requests whose socket is gone when answered."""
        port = self.args.coap_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            for number in range(20):
                mid = number.to_bytes(2, "big")
                for datagram in (
                    b"\x40\x01" + mid + b"\xf0junk",  # option nibble 15: unparsable
                    b"\x48\x01" + mid,  # token length 8, no token: truncated
                    b"\x40\x01" + mid + b"\xb3\xff\xfe",  # a Uri-Path that is not UTF-8
                    bytes([0x44, 1]) + mid + b"\x00\x00\x00\x01",  # CON GET /: answered
                    b"\x7f",  # one byte
                ):
                    gone.sendto(datagram, (HOST, port))
        self.count("junk/datagrams", "sent")
        await asyncio.sleep(0)  # nothing to wait for: let the other workers' answers in

    async def oversize(self, coap: CoapAttacker, http: aiohttp.ClientSession) -> None:
        me = f"C{BASE_AE}"
        path = [CSE_NAME, BASE_AE, "box"]
        self.count(
            "oversize/cin 70 KB",
            await coap.request(POST, path, me, body=_cin(70_000), resource_type=4),
        )
        self.count(
            "oversize/cin 20 KB",
            await coap.request(POST, path, me, body=_cin(20_000), resource_type=4),
        )
        body = _cnt(f"big{next(self.names)}", mni=10_000_000)
        self.count(
            "oversize/cnt mni", await coap.request(POST, path[:2], me, body=body, resource_type=3)
        )

    async def exhaust(self, coap: CoapAttacker, http: aiohttp.ClientSession) -> None:
        name = f"x{next(self.names)}"
        self.count(
            "exhaust/new AE",
            await coap.request(POST, [CSE_NAME], f"C{name}", body=_ae(name), resource_type=2),
        )
        me = f"C{BASE_AE}"
        self.count(
            "exhaust/container",
            await coap.request(
                POST, [CSE_NAME, BASE_AE], me, body=_cnt(f"c{name}"), resource_type=3
            ),
        )
        body = _sub(f"s{name}", [me])  # the subscriber itself: no verification needed
        self.count(
            "exhaust/subscription",
            await coap.request(POST, [CSE_NAME, BASE_AE, "box"], me, body=body, resource_type=23),
        )

    async def ssrf(self, coap: CoapAttacker, http: aiohttp.ClientSession) -> None:
        args = self.args
        targets = {
            "loopback port": f"http://127.0.0.1:{args.free_port}/x",
            "ops port": f"http://127.0.0.1:{args.ops_port}/health",
            "own coap port": f"coap://127.0.0.1:{args.coap_port}/{CSE_NAME}",
            "foreign mqtt": "mqtt://203.0.113.7:1883/oneM2M/req",
            "link-local": "http://169.254.169.254/latest/meta-data",
            "head-end path": f"{args.headend_url}/cse-in/anything",
        }
        me = f"C{BASE_AE}"
        for what, target in targets.items():
            body = _sub(f"r{next(self.names)}", [target])
            answer = await coap.request(POST, [CSE_NAME, BASE_AE], me, body=body, resource_type=23)
            self.count(f"ssrf/{what}", answer)

    async def discovery(self, coap: CoapAttacker, http: aiohttp.ClientSession) -> None:
        me = f"C{BASE_AE}"
        self.count(
            "discovery/lim=1", await coap.request(GET, [CSE_NAME], me, query=["fu=1", "lim=1"])
        )
        query = ["fu=1", "lim=1", "lbl=no-such-label"]
        self.count("discovery/no match", await coap.request(GET, [CSE_NAME], me, query=query))

    async def impersonate(self, coap: CoapAttacker, http: aiohttp.ClientSession) -> None:
        reading = [CSE_NAME, TARGET_METER, "reading"]
        for who in ("/id-in", "CAdmin"):
            answer = await coap.request(POST, reading, who, body=_cin(10), resource_type=4)
            self.count(f"impersonate/coap as {who}", answer)
        url = f"{self.args.https_url}/{'/'.join(reading)}"
        for who in (f"C{TARGET_METER}", "/id-in", "CAdmin"):
            headers = {
                "X-M2M-Origin": who,
                "X-M2M-RI": f"h{next(self.names)}",
                "X-M2M-RVI": "3",
                "Content-Type": "application/json;ty=4",
            }
            self.count(
                f"impersonate/https as {who}",
                await self._http(http, "POST", url, headers, _cin(10)),
            )
        headers = {"X-M2M-Origin": f"C{TARGET_METER}", "X-M2M-RI": "hr", "X-M2M-RVI": "3"}
        self.count("impersonate/https read", await self._http(http, "GET", url + "/la", headers))

    async def _http(
        self,
        http: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes = b"",
    ) -> str:
        try:
            async with http.request(method, url, headers=headers, data=body or None) as reply:
                await reply.read()
                rsc = reply.headers.get("X-M2M-RSC")
                return f"rsc {rsc}" if rsc else f"http {reply.status}"
        except (aiohttp.ClientError, TimeoutError) as error:
            return f"error {type(error).__name__}"

    # ---- the run -------------------------------------------------------------------------------

    async def setup(self, coap: CoapAttacker) -> None:
        me = f"C{BASE_AE}"
        self.count(
            "setup/AE", await coap.request(POST, [CSE_NAME], me, body=_ae(BASE_AE), resource_type=2)
        )
        self.count(
            "setup/box",
            await coap.request(POST, [CSE_NAME, BASE_AE], me, body=_cnt("box"), resource_type=3),
        )

    async def worker(self, number: int, end: float, http: aiohttp.ClientSession) -> None:
        coap = CoapAttacker(self.args.coap_port)
        await coap.open()
        rounds = [getattr(self, name) for name in self.args.attacks.split(",")]
        try:
            for turn in itertools.count(number):
                if time.monotonic() >= end:
                    return
                await rounds[turn % len(rounds)](coap, http)
        finally:
            coap.close()

    async def report(self) -> None:
        while True:
            line = {"t": round(time.monotonic() - self.started, 2), "counts": self.counts}
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()
            await asyncio.sleep(self.args.report_every)

    async def run(self) -> None:
        end = time.monotonic() + self.args.duration
        timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)
        connector = aiohttp.TCPConnector(ssl=self.tls, limit=self.args.workers)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            setup = CoapAttacker(self.args.coap_port)
            await setup.open()
            await self.setup(setup)
            setup.close()
            reporter = asyncio.create_task(self.report())
            try:
                await asyncio.gather(*(self.worker(n, end, http) for n in range(self.args.workers)))
            finally:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        line = {"t": round(time.monotonic() - self.started, 2), "counts": self.counts}
        print(orjson.dumps({**line, "done": True}).decode(), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coap-port", type=int, required=True)
    parser.add_argument("--https-url", required=True)
    parser.add_argument("--ops-port", type=int, required=True)
    parser.add_argument("--headend-url", required=True)
    parser.add_argument("--free-port", type=int, required=True, help="a loopback port")
    parser.add_argument("--pki", required=True)
    parser.add_argument("--credential", required=True, help="its device credential (HTTPS)")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--report-every", type=float, default=1.0)
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="a comma-separated subset")
    args = parser.parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(Hostile(args).run())


if __name__ == "__main__":
    main()

"""Builders shared by the tests: request primitives, a NOTIFY receiver and listeners that
count what reaches them, on loopback."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web

from cse.core.egress import EgressSettings
from cse.core.primitives import FilterCriteria, Request
from cse.core.types import Operation, ResultContent
from cse.serialization import CBOR, JSON, decode

_ids = itertools.count(1)

ADMIN = "CAdmin"

# The egress policy of a test CSE: its notification receivers run on loopback, where a CSE
# sends only to what it is told to allow (tests of the policy itself use stricter ones).
LAB = EgressSettings(allow=("127.0.0.1",))
# Meters on this machine: their points of access, registered from loopback, are reached.
ON_THIS_MACHINE = EgressSettings(loopback_peers=True)


def request(
    operation: Operation,
    to: str,
    originator: str | None = ADMIN,
    *,
    ty: int | None = None,
    pc: Any = None,
    rcn: int | None = None,
    rvi: str | None = "3",
    fc: FilterCriteria | None = None,
    **extra: Any,
) -> Request:
    return Request(
        operation=operation,
        to=to,
        originator=originator,
        request_id=f"rq-{next(_ids)}",
        release_version=rvi,
        resource_type=ty,
        content=pc,
        result_content=None if rcn is None else ResultContent(rcn),
        filter_criteria=fc,
        **extra,
    )


def create(to: str, ty: int, pc: Any, originator: str | None = ADMIN, **kw: Any) -> Request:
    return request(Operation.CREATE, to, originator, ty=ty, pc=pc, **kw)


def retrieve(to: str, originator: str | None = ADMIN, **kw: Any) -> Request:
    return request(Operation.RETRIEVE, to, originator, **kw)


def update(to: str, pc: Any, originator: str | None = ADMIN, **kw: Any) -> Request:
    return request(Operation.UPDATE, to, originator, pc=pc, **kw)


def delete(to: str, originator: str | None = ADMIN, **kw: Any) -> Request:
    return request(Operation.DELETE, to, originator, **kw)


def ae_body(name: str, **extra: Any) -> dict[str, Any]:
    return {"m2m:ae": {"rn": name, "api": "Nmeter", "rr": True, "srv": ["3"], **extra}}


class NotificationReceiver:
    """A real HTTP endpoint on loopback that records every NOTIFY it gets (JSON or CBOR).

    It answers with `status` (which a test may change between notifications); with `hold`
    it answers only once that event is set."""

    def __init__(
        self, status: int = 2000, port: int = 0, hold: asyncio.Event | None = None
    ) -> None:
        self.status = status
        self.port = port
        self.hold = hold
        self.received: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> NotificationReceiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._on_notify)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}/notify"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _on_notify(self, http_request: web.Request) -> web.Response:
        raw = await http_request.read()
        serialization = CBOR if "cbor" in http_request.content_type else JSON
        body = decode(raw, serialization) if raw else None
        async with self._arrived:
            self.received.append({"headers": dict(http_request.headers), "body": body})
            self._arrived.notify_all()
        if self.hold is not None:
            await self.hold.wait()
        return web.Response(status=200, headers={"X-M2M-RSC": str(self.status)})

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `count` notifications arrived (a condition, not a sleep)."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    def bodies(self) -> list[dict[str, Any]]:
        return [item["body"] for item in self.received]


class TcpListener:
    """A real TCP listener on loopback that counts the connections it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> TcpListener:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()


class UdpListener(asyncio.DatagramProtocol):
    """A real UDP socket on loopback that counts the datagrams it receives."""

    def __init__(self) -> None:
        self.datagrams = 0
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> UdpListener:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._transport is not None
        self._transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1

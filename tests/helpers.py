"""Builders shared by the tests: request primitives and a NOTIFY receiver on loopback."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from aiohttp import web

from cse.core.primitives import FilterCriteria, Request
from cse.core.types import Operation, ResultContent

_ids = itertools.count(1)

ADMIN = "CAdmin"


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
    """A real HTTP endpoint on loopback that records every NOTIFY it gets."""

    def __init__(self, status: int = 2000, port: int = 0) -> None:
        self.status = status
        self.port = port
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
        body = await http_request.json()
        async with self._arrived:
            self.received.append({"headers": dict(http_request.headers), "body": body})
            self._arrived.notify_all()
        return web.Response(status=200, headers={"X-M2M-RSC": str(self.status)})

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until `count` notifications arrived (a condition, not a sleep)."""
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received

    def bodies(self) -> list[dict[str, Any]]:
        return [item["body"] for item in self.received]

"""A CSE served over a real loopback HTTP server, and a small oneM2M-over-HTTP client for it."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import cbor2
import orjson
import pytest
from multidict import CIMultiDictProxy

from cse.bindings.http import HttpServer
from cse.bindings.http.mapping import http_status
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.types import ResponseStatusCode as RSC

ADMIN = "CAdmin"
_ids = itertools.count(1)
_DEFAULT = object()


@dataclass
class Reply:
    status: int  # HTTP status
    headers: CIMultiDictProxy[str]
    body: bytes
    content: Any  # decoded per Content-Type (None without a body)

    @property
    def rsc(self) -> int:
        return int(self.headers["X-M2M-RSC"])

    @property
    def dbg(self) -> str:
        return str(self.content["m2m:dbg"])


class M2M:
    """Speaks oneM2M over HTTP to one server and checks what every reply must carry."""

    def __init__(self, session: aiohttp.ClientSession, server: HttpServer) -> None:
        self.session = session
        self.server = server
        self.base = server.url

    async def call(
        self,
        method: str,
        path: str,
        *,
        origin: str | None = ADMIN,
        ri: str | object | None = _DEFAULT,
        rvi: str | None = "3",
        body: Any = None,
        raw: bytes | None = None,
        content_type: str | None = None,
        ty: int | None = None,
        cbor: bool = False,
        accept: str | None = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent: dict[str, str] = {}
        if origin is not None:
            sent["X-M2M-Origin"] = origin
        request_id = f"req-{next(_ids)}" if ri is _DEFAULT else ri
        if isinstance(request_id, str):
            sent["X-M2M-RI"] = request_id
        if rvi is not None:
            sent["X-M2M-RVI"] = rvi
        data = raw
        if body is not None:
            data = cbor2.dumps(body) if cbor else orjson.dumps(body)
            if content_type is None:
                content_type = "application/cbor" if cbor else "application/json"
                if ty is not None:
                    content_type += f";ty={ty}"
        if content_type is not None:
            sent["Content-Type"] = content_type
        if accept is not None:
            sent["Accept"] = accept
        sent.update(headers or {})
        async with self.session.request(
            method, self.base + path, data=data, headers=sent, params=params
        ) as response:
            payload = await response.read()
            reply = Reply(response.status, response.headers, payload, None)
        check_reply(reply, sent, method)
        return reply

    async def create(self, path: str, ty: int, body: Any, **kw: Any) -> Reply:
        return await self.call("POST", path, body=body, ty=ty, **kw)

    async def retrieve(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def update(self, path: str, body: Any, **kw: Any) -> Reply:
        return await self.call("PUT", path, body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)


def check_reply(reply: Reply, sent: dict[str, str], method: str) -> None:
    """What TS-0009 promises for every response, success or not."""
    headers = reply.headers
    assert "X-M2M-RSC" in headers, (reply.status, reply.body)
    rsc = RSC(int(headers["X-M2M-RSC"]))
    assert reply.status == http_status(rsc) or (reply.status, rsc) == (413, RSC.BAD_REQUEST)
    assert rsc != RSC.INTERNAL_SERVER_ERROR, reply.body
    # The one 500 TS-0009 asks for: a notification target failed its verification.
    assert reply.status != 500 or rsc == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
    assert headers.get("X-M2M-RI", "") == sent.get("X-M2M-RI", "")
    if "X-M2M-RVI" in sent:
        assert headers["X-M2M-RVI"] == sent["X-M2M-RVI"]
    if reply.body:
        media = headers["Content-Type"].split(";")[0]
        assert media in ("application/json", "application/cbor")
        reply.content = cbor2.loads(reply.body) if "cbor" in media else orjson.loads(reply.body)
    if not rsc.is_success and method != "HEAD":
        assert isinstance(reply.content, dict), reply.body
        dbg = reply.content.get("m2m:dbg")
        assert isinstance(dbg, str) and 0 < len(dbg) < 300, reply.content


@pytest.fixture
async def server(cse: CommonServicesEntity) -> AsyncIterator[HttpServer]:
    # These tests are about the oneM2M mapping, so every claimed originator is believed;
    # test_http_security.py tests what a listener proves.
    async with HttpServer(cse, "127.0.0.1", 0, trust=Trust.INSECURE) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # No automatic Content-Type: a test that sends a body without one means it.
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as client:
        yield client


@pytest.fixture
async def m2m(session: aiohttp.ClientSession, server: HttpServer) -> M2M:
    return M2M(session, server)

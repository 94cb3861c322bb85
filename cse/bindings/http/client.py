"""HTTP client binding: sends primitives to other CSEs and notifications to HTTP targets.

Over HTTPS it verifies the server against the TLS context's CA and presents the context's
client certificate (`cse.security.pki.client_context`); a bearer token, when given, goes in
the Authorization header of `send()` (the link to one upstream CSE), never of a notification,
which may go to any URL a subscriber named.

With an egress policy (cse/core/egress.py) every request is checked before it leaves: the
policy resolves the host once and checks each address, and the connection goes to the address
it checked (the session's resolver answers only with checked addresses). Redirects are never
followed: a redirect would lead to a target nobody checked.
"""

from __future__ import annotations

import itertools
import socket
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from cse.bindings.http.mapping import rsc_from_http, status_code, target_to_path
from cse.bindings.query import request_query
from cse.core.egress import EgressPolicy, NotOneM2MAnswer
from cse.core.errors import BadRequest, DeliveryError
from cse.core.primitives import Request, Response
from cse.core.types import ContentStatus, Operation, ResponseStatusCode
from cse.serialization import CBOR, CONTENT_TYPES, JSON, decode, encode

_METHODS = {
    Operation.CREATE: "POST",
    Operation.RETRIEVE: "GET",
    Operation.UPDATE: "PUT",
    Operation.DELETE: "DELETE",
    Operation.NOTIFY: "POST",
}


def _optional_int(value: str | None) -> int | None:
    """A numeric header (X-M2M-CTS, X-M2M-CTO), or None when absent or not a number."""
    return int(value) if value is not None and value.isdigit() else None


class _CheckedResolver(AbstractResolver):
    """Answers a host lookup only with the address the egress policy checked for it."""

    def __init__(self) -> None:
        self.checked: dict[tuple[str, int], str] = {}

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.checked.get((host, port))
        if address is None:
            raise OSError(f"{host}:{port} was not checked by the egress policy")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        self.checked.clear()


class HttpClient:
    """One keep-alive connection pool for everything this process sends over HTTP."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        serialization: str = JSON,
        tls: ssl.SSLContext | None = None,
        token: str | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._serialization = serialization
        self._tls = tls
        self._token = token
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._egress = egress
        self._resolver = _CheckedResolver() if egress is not None else None

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Without a context of ours, https:// URLs are verified against the system's CAs.
            # With an egress policy, hosts resolve only to the addresses it checked.
            connector = aiohttp.TCPConnector(
                ssl=self._tls if self._tls is not None else True,
                resolver=self._resolver,
                use_dns_cache=self._resolver is None,
            )
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._session

    async def check(self, url: str) -> None:
        """Ask the egress policy before sending to `url` (EgressRefused: send nothing)."""
        if self._egress is None or self._resolver is None:
            return
        destination = await self._egress.destination(url)
        self._resolver.checked[(destination.host, destination.port)] = destination.address

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, base_url: str, request: Request, *, require_rsc: bool = False) -> Response:
        """Send a request primitive to the CSE at base_url (http://host:port). With
        `require_rsc` an answer without X-M2M-RSC (not a oneM2M entity) is a NotOneM2MAnswer."""
        serialization = self._serialization
        headers = {
            "X-M2M-Origin": request.originator or "",
            "X-M2M-RI": request.request_id,
            "X-M2M-RVI": request.release_version or "3",
            "Accept": CONTENT_TYPES[serialization],
        }
        optional = {
            "X-M2M-RET": request.request_expiration,
            "X-M2M-OT": request.originating_timestamp,
            "X-M2M-EC": None if request.event_category is None else str(request.event_category),
            "X-M2M-GID": request.group_request_id,
            "X-M2M-VSI": request.vendor_information,
            "X-M2M-RTU": "&".join(request.response_targets) or None,
        }
        headers.update({name: value for name, value in optional.items() if value is not None})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        url = base_url.rstrip("/") + target_to_path(request.to)
        try:
            body = encode(request.content, serialization)
        except (TypeError, ValueError) as error:
            raise DeliveryError(f"{url}: content cannot be sent as {serialization}") from error
        if request.operation == Operation.CREATE:
            # The ty parameter is what makes a POST a CREATE, so it goes even without a body.
            resource_type = int(request.resource_type or 0)
            headers["Content-Type"] = f"{CONTENT_TYPES[serialization]};ty={resource_type}"
        elif body:
            headers["Content-Type"] = CONTENT_TYPES[serialization]
        await self.check(url)
        try:
            async with self._open().request(
                _METHODS[request.operation],
                url,
                data=body or None,
                headers=headers,
                params=request_query(request),
                allow_redirects=False,
            ) as reply:
                rsc = status_code(reply.headers.get("X-M2M-RSC"))
                if rsc is None and require_rsc:
                    raise NotOneM2MAnswer(f"{url}: the answer is not a oneM2M response")
                payload = await reply.read()
                reply_serialization = CBOR if "cbor" in reply.content_type else JSON
                try:
                    content = decode(payload, reply_serialization) if payload else None
                except BadRequest as error:
                    raise DeliveryError(f"{url}: unreadable reply: {error.message}") from None
                location = reply.headers.get("Content-Location")
                content_status = _optional_int(reply.headers.get("X-M2M-CTS"))
                return Response(
                    rsc or ResponseStatusCode(rsc_from_http(reply.status)),
                    reply.headers.get("X-M2M-RI", request.request_id),
                    reply.headers.get("X-M2M-RVI"),
                    content,
                    to=request.originator,
                    location=location.lstrip("/") if location else None,
                    content_status=(
                        ContentStatus(content_status) if content_status in (1, 2) else None
                    ),
                    content_offset=_optional_int(reply.headers.get("X-M2M-CTO")),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise DeliveryError(f"{url}: {error}") from error


class HttpSender:
    """Delivers NOTIFY primitives to http:// and https:// targets (a `?ct=cbor` picks CBOR)."""

    def __init__(self, client: HttpClient) -> None:
        self._client = client

    async def send(self, url: str, primitive: dict[str, Any]) -> int:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        serialization = CBOR if query.pop("ct", JSON) == CBOR else JSON
        target = urlunsplit(parts._replace(query=urlencode(query)))
        headers = {
            "X-M2M-Origin": str(primitive.get("fr", "")),
            "X-M2M-RI": str(primitive.get("rqi", "")),
            "X-M2M-RVI": str(primitive.get("rvi", "3")),
            "Content-Type": CONTENT_TYPES[serialization],
        }
        if primitive.get("ec") is not None:
            headers["X-M2M-EC"] = str(primitive["ec"])
        try:
            body = encode(primitive.get("pc"), serialization)
        except (TypeError, ValueError) as error:
            raise DeliveryError(f"{url}: content cannot be sent as {serialization}") from error
        await self._client.check(target)
        try:
            session = self._client._open()
            async with session.post(
                target, data=body, headers=headers, allow_redirects=False
            ) as reply:
                await reply.read()
                rsc = status_code(reply.headers.get("X-M2M-RSC"))
                return int(rsc) if rsc is not None else rsc_from_http(reply.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise DeliveryError(f"{url}: {error}") from error

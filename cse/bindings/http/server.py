"""HTTP server binding: an aiohttp application that turns HTTP requests into primitives.

Served over HTTPS when given a TLS context. Every request carries the principal its client
certificate or bearer token proved (`cse/bindings/http/auth.py`), or the listener's trust for
requests that prove nothing; a request without an identity the listener accepts is refused
(4103, HTTP 403) before its body is read.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from cse.bindings.http.auth import HttpAuthenticator, NotAuthenticated
from cse.bindings.http.client import HttpClient
from cse.bindings.http.mapping import http_status, path_to_target, rsc_from_http
from cse.bindings.liveness import ProbeRecord, probe_request
from cse.bindings.query import parameters_from_query, response_targets
from cse.core.egress import normalized
from cse.core.errors import BadRequest, M2MError, OperationNotAllowed
from cse.core.identity import Principal, Trust
from cse.core.notifications import DeliveryError
from cse.core.primitives import Request, Response, error_content
from cse.core.types import Operation, ResponseStatusCode
from cse.security.credentials import CredentialStore
from cse.security.pki import self_probe_context
from cse.serialization import (
    CONTENT_TYPES,
    JSON,
    accepted_serialization,
    decode,
    encode,
    serialization_of,
)

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity

logger = logging.getLogger(__name__)

_METHODS = {"GET": Operation.RETRIEVE, "PUT": Operation.UPDATE, "DELETE": Operation.DELETE}


def _text(value: str | None) -> str | None:
    """A header, path or query value as clean Unicode.

    aiohttp keeps bytes that are not UTF-8 as lone surrogates; those cannot be encoded again
    (in a JSON or CBOR reply, or in a header), so they become U+FFFD here.
    """
    if value is None or value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def _reply_serialization(headers: Mapping[str, str]) -> str:
    """Best guess for answering a request that failed before it was understood."""
    default = JSON
    content_type = headers.get("Content-Type")
    if content_type:
        with contextlib.suppress(M2MError):
            default = serialization_of(content_type.split(";", 1)[0])
    try:
        return accepted_serialization(headers.get("Accept"), default)
    except M2MError:
        return default


def _peer_address(http_request: web.Request) -> str | None:
    """The peer's IP address (an IPv4 peer of a dual-stack socket as IPv4)."""
    remote = http_request.remote
    address = normalized(remote) if remote else None
    return str(address) if address is not None else remote


def _content_type(header: str | None) -> tuple[str | None, int | None]:
    """(serialization, ty) from e.g. 'application/json;ty=4'."""
    if not header:
        return None, None
    media, *parameters = header.split(";")
    resource_type = None
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "ty":
            value = value.strip()
            if not (value.isascii() and value.isdigit()) or len(value) > 9:
                raise BadRequest(f"ty={value[:20]!r} in Content-Type is not a number")
            resource_type = int(value)
    return serialization_of(media), resource_type


def _event_category(header: str | None) -> int | None:
    if header is None:
        return None
    value = header.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise BadRequest("X-M2M-EC must be an event category number")
    return int(value)


async def start_site(
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    reuse_port: bool = False,
) -> tuple[web.AppRunner, int]:
    """Serve an aiohttp app on host:port (0 picks a free port), over TLS with a context;
    returns the runner (call `cleanup()` to stop) and the bound port.

    `reuse_port` (SO_REUSEPORT) lets several processes listen on the same port, the kernel
    spreading new connections between them (the workers of a scaled-out CSE); Linux lets
    only processes of the same user share a port this way."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        site = web.SockSite(runner, sock, backlog=1024, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        sock.close()  # a port in use: not left for the garbage collector to close
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])


class HttpServer:
    """Serves one CSE over HTTP or HTTPS; an async context manager that reports its bound port.

    `trust` says what a request that proves no credential is believed to be (by default
    nothing: it is refused); `credentials` is the store client certificates and tokens are
    looked up in; `tls` (see `cse.security.pki.server_context`) makes it an HTTPS listener,
    and `probe_tls` is what `probe()` connects to it with (default: no verification, no
    client certificate). With `reuse_port` other processes may listen on the same port.
    """

    def __init__(
        self,
        cse: CommonServicesEntity,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        max_body_size: int = 1 << 20,
        trust: Trust = Trust.CREDENTIAL,
        credentials: CredentialStore | None = None,
        tls: ssl.SSLContext | None = None,
        probe_tls: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        self._cse = cse
        self._reuse_port = reuse_port
        self._host = host
        self._port = port
        self._max_body_size = max_body_size
        self._auth = HttpAuthenticator(trust, credentials)
        self._tls = tls
        self._probe_tls = probe_tls or (self_probe_context() if tls is not None else None)
        self._probe_id: str | None = None  # the request ID of the probe in flight
        self._runner: web.AppRunner | None = None
        self._liveness = ProbeRecord()
        self.port: int | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    def liveness(self) -> ProbeRecord:
        return self._liveness

    async def probe(self, timeout: float = 2.0) -> bool:
        """Send the CSE a request through this listener, as a client would; alive when the
        CSE's answer comes back. The result is kept for `liveness()`."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self._host)
        scheme = "https" if self._tls is not None else "http"
        url = f"{scheme}://{host}:{self.port}" if host else self.url
        request = probe_request(self._cse.settings.cse_id, self._cse.settings.cse_name)
        self._probe_id = request.request_id
        # Any answer proves the listener alive, a refusal of the unauthenticated probe too.
        tls = self._probe_tls if self._tls is not None else None
        try:
            async with HttpClient(timeout=timeout, tls=tls) as client:
                reply = await client.send(url, request)
            alive = reply.request_id == request.request_id
        except DeliveryError:
            alive = False
        self._liveness = self._liveness.after(alive)
        return alive

    async def start(self) -> None:
        app = web.Application(client_max_size=self._max_body_size, middlewares=[self._http_errors])
        app.router.add_route("*", "/{tail:.*}", self._on_request)
        self._runner, self.port = await start_site(
            app, self._host, self._port, self._tls, reuse_port=self._reuse_port
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @web.middleware
    async def _http_errors(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """What aiohttp itself refuses (no route, say) still gets an X-M2M-RSC and a dbg."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            status = ResponseStatusCode(rsc_from_http(error.status))
            if error.status < 500 and not 4000 <= status < 5000:
                status = ResponseStatusCode.BAD_REQUEST
            return self._error(request, status, error.reason, http_status=error.status)

    def _error(
        self,
        http_request: web.Request,
        status: ResponseStatusCode,
        message: str,
        *,
        http_status: int | None = None,
    ) -> web.Response:
        headers = http_request.headers
        response = Response(
            status,
            _text(headers.get("X-M2M-RI")) or "",
            _text(headers.get("X-M2M-RVI")),
            error_content(message),
        )
        return self._reply(response, _reply_serialization(headers), http_status)

    def _not_authenticated(
        self, http_request: web.Request, error: NotAuthenticated
    ) -> web.Response:
        reply = self._error(
            http_request, ResponseStatusCode.ORIGINATOR_HAS_NO_PRIVILEGE, error.message
        )
        # TS-0009 maps every security refusal to 403; the header (RFC 9110 11.6.1, RFC 6750)
        # tells an HTTP client that a bearer token would change the answer.
        challenge = 'Bearer realm="oneM2M"'
        if error.bad_token:
            challenge += ', error="invalid_token"'
        reply.headers["WWW-Authenticate"] = challenge
        return reply

    async def _on_request(self, http_request: web.Request) -> web.StreamResponse:
        try:
            # The CSE's own liveness probe (its request ID is known only to this process) is
            # refused like any request without a credential, but not logged each time.
            own_probe = http_request.headers.get("X-M2M-RI") == self._probe_id
            principal = self._auth.principal(http_request, log=not own_probe)
        except NotAuthenticated as error:
            return self._not_authenticated(http_request, error)
        try:
            primitive, serialization = await self._to_primitive(http_request, principal)
            reply_in = accepted_serialization(http_request.headers.get("Accept"), serialization)
        except web.HTTPRequestEntityTooLarge:
            message = f"body exceeds the limit of {self._max_body_size} bytes"
            return self._error(
                http_request, ResponseStatusCode.BAD_REQUEST, message, http_status=413
            )
        except M2MError as error:
            return self._error(http_request, error.status, error.message)
        except Exception:
            logger.exception("could not read the HTTP request %s", http_request.path)
            return self._error(
                http_request, ResponseStatusCode.INTERNAL_SERVER_ERROR, "internal error"
            )
        response = await self._cse.handle(primitive)
        return self._reply(response, reply_in)

    async def _to_primitive(
        self, http_request: web.Request, principal: Principal
    ) -> tuple[Request, str]:
        headers = http_request.headers
        serialization, resource_type = _content_type(headers.get("Content-Type"))
        body = await http_request.read()
        if body and serialization is None:
            raise BadRequest("a body needs a Content-Type")
        method = http_request.method
        if method == "POST":
            operation = Operation.CREATE if resource_type is not None else Operation.NOTIFY
        elif method in _METHODS:
            operation = _METHODS[method]
        else:
            raise OperationNotAllowed(f"HTTP method {method} has no oneM2M operation")
        if resource_type is not None and operation != Operation.CREATE:
            raise BadRequest("ty is only allowed in a CREATE")
        serialization = serialization or JSON
        query: dict[str, list[str]] = {}
        for name, value in http_request.query.items():
            query.setdefault(_text(name) or "", []).append(_text(value) or "")
        parameters = parameters_from_query(query)
        primitive = Request(
            operation=operation,
            to=path_to_target(_text(http_request.path) or "/"),
            originator=_text(headers.get("X-M2M-Origin")),
            request_id=_text(headers.get("X-M2M-RI")) or "",
            release_version=_text(headers.get("X-M2M-RVI")),
            resource_type=resource_type,
            content=decode(body, serialization),
            result_content=parameters.result_content,
            filter_criteria=parameters.filter_criteria,
            discovery_result_type=parameters.discovery_result_type,
            request_expiration=_text(headers.get("X-M2M-RET")),
            originating_timestamp=_text(headers.get("X-M2M-OT")),
            event_category=_event_category(headers.get("X-M2M-EC")),
            group_request_id=_text(headers.get("X-M2M-GID")),
            attribute_list=parameters.attribute_list,
            vendor_information=_text(headers.get("X-M2M-VSI")),
            response_type=parameters.response_type,
            response_targets=response_targets(_text(headers.get("X-M2M-RTU"))),
            principal=principal,
            source=_peer_address(http_request),  # what a registered poa is checked against
        )
        return primitive, serialization

    def _reply(
        self, response: Response, serialization: str, http_status_override: int | None = None
    ) -> web.Response:
        headers = {
            "X-M2M-RSC": str(int(response.status)),
            "X-M2M-RI": response.request_id,
        }
        if response.release_version:
            headers["X-M2M-RVI"] = response.release_version
        if response.location is not None:
            headers["Content-Location"] = "/" + response.location
        if response.content_status is not None:
            headers["X-M2M-CTS"] = str(int(response.content_status))
        if response.content_offset is not None:
            headers["X-M2M-CTO"] = str(response.content_offset)
        try:
            body = encode(response.content, serialization)
        except Exception:  # the core produced content that cannot be serialized: a bug
            logger.exception("cannot serialize the response to %s", response.request_id)
            headers["X-M2M-RSC"] = str(int(ResponseStatusCode.INTERNAL_SERVER_ERROR))
            headers.pop("Content-Location", None)
            body = encode(error_content("response could not be serialized"), serialization)
            http_status_override = 500
        if body:
            headers["Content-Type"] = CONTENT_TYPES[serialization]
        return web.Response(
            status=http_status_override or http_status(int(headers["X-M2M-RSC"])),
            body=body,
            headers=headers,
        )

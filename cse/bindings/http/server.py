"""HTTP server binding: an aiohttp application that turns HTTP requests into primitives."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from cse.bindings.http.mapping import REQUEST_QUERY, filter_from_query, http_status, path_to_target
from cse.core.errors import BadRequest, M2MError, OperationNotAllowed
from cse.core.primitives import Request, Response, error_content
from cse.core.types import Operation, ResponseStatusCode, ResultContent
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


def _content_type(header: str | None) -> tuple[str | None, int | None]:
    """(serialization, ty) from e.g. 'application/json;ty=4'."""
    if not header:
        return None, None
    media, *parameters = header.split(";")
    resource_type = None
    for parameter in parameters:
        name, _, value = parameter.strip().partition("=")
        if name.strip().lower() == "ty":
            try:
                resource_type = int(value.strip())
            except ValueError:
                raise BadRequest(f"ty={value!r} in Content-Type is not a number") from None
    return serialization_of(media), resource_type


def _integer_query(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer") from None


class HttpServer:
    """Serves one CSE over HTTP; an async context manager that reports its bound port."""

    def __init__(
        self,
        cse: CommonServicesEntity,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        max_body_size: int = 1 << 20,
    ) -> None:
        self._cse = cse
        self._host = host
        self._port = port
        self._max_body_size = max_body_size
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=self._max_body_size)
        app.router.add_route("*", "/{tail:.*}", self._on_request)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self._host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, backlog=1024)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _on_request(self, http_request: web.Request) -> web.StreamResponse:
        headers = http_request.headers
        request_id = headers.get("X-M2M-RI", "")
        release = headers.get("X-M2M-RVI")
        serialization = JSON
        try:
            primitive, serialization = await self._to_primitive(http_request)
            reply_in = accepted_serialization(headers.get("Accept"), serialization)
        except web.HTTPRequestEntityTooLarge:
            message = f"body exceeds the limit of {self._max_body_size} bytes"
            return self._reply(
                Response(
                    ResponseStatusCode.BAD_REQUEST, request_id, release, error_content(message)
                ),
                serialization,
                http_status_override=413,
            )
        except M2MError as error:
            return self._reply(
                Response(error.status, request_id, release, error_content(error.message)),
                serialization,
            )
        response = await self._cse.handle(primitive)
        return self._reply(response, reply_in)

    async def _to_primitive(self, http_request: web.Request) -> tuple[Request, str]:
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
        query = {name: http_request.query.getall(name) for name in http_request.query}
        result_content = _integer_query(http_request, "rcn")
        try:
            rcn = None if result_content is None else ResultContent(result_content)
        except ValueError:
            raise BadRequest(f"result content {result_content} is not defined") from None
        attribute_list = tuple(
            part
            for value in query.get("atrl", [])
            for part in value.replace(" ", "+").split("+")
            if part
        )
        primitive = Request(
            operation=operation,
            to=path_to_target(http_request.path),
            originator=headers.get("X-M2M-Origin"),
            request_id=headers.get("X-M2M-RI", ""),
            release_version=headers.get("X-M2M-RVI"),
            resource_type=resource_type,
            content=decode(body, serialization),
            result_content=rcn,
            filter_criteria=filter_from_query(
                {k: v for k, v in query.items() if k not in REQUEST_QUERY}
            ),
            discovery_result_type=_integer_query(http_request, "drt"),
            request_expiration=headers.get("X-M2M-RET"),
            originating_timestamp=headers.get("X-M2M-OT"),
            event_category=None,
            group_request_id=headers.get("X-M2M-GID"),
            attribute_list=attribute_list,
            vendor_information=headers.get("X-M2M-VSI"),
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
        body = encode(response.content, serialization)
        if body:
            headers["Content-Type"] = CONTENT_TYPES[serialization]
        return web.Response(
            status=http_status_override or http_status(int(response.status)),
            body=body,
            headers=headers,
        )

"""CoAP client binding: sends primitives to other CSEs and notifications to coap:// targets.

One aiocoap client context per process does the CoAP work (CON retransmission, Block1 for
large requests, Block2 reassembly of large answers); the codec builds and reads the messages.
Every failure to get an answer (unreachable, timed out, unreadable) becomes a DeliveryError.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiocoap  # type: ignore[import-untyped]

from cse.bindings.coap.codec import (
    CoapMessage,
    decode_response,
    encode_notification,
    encode_request,
    reply_status,
)
from cse.bindings.coap.messages import raw_options, to_aiocoap
from cse.core.errors import M2MError
from cse.core.notifications import DeliveryError
from cse.core.primitives import Request, Response
from cse.core.types import Operation
from cse.serialization import CBOR, JSON


class CoapClient:
    """One client context for everything this process sends over CoAP."""

    def __init__(self, *, timeout: float = 10.0, serialization: str = JSON) -> None:
        self._timeout = timeout
        self._serialization = serialization
        self._context: aiocoap.Context | None = None
        self._opening = asyncio.Lock()

    async def __aenter__(self) -> CoapClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _open(self) -> aiocoap.Context:
        async with self._opening:
            if self._context is None:
                # simple6 gives each peer its own connected socket, so an ICMP error from a
                # dead target reaches only that peer's exchanges. With udp6 (one shared socket
                # reading the error queue), under uvloop a dead meter broke deliveries to live
                # ones (tests/cse/test_coap_notifications_process.py).
                self._context = await aiocoap.Context.create_client_context(transports=["simple6"])
            return self._context

    async def close(self) -> None:
        async with self._opening:
            if self._context is not None:
                await self._context.shutdown()
                self._context = None

    async def exchange(self, base_url: str, message: CoapMessage) -> aiocoap.Message:
        """Send `message` to the peer in base_url (coap://host:port[/prefix]); return its answer."""
        context = await self._open()
        try:
            request = to_aiocoap(message, uri=base_url)
            async with asyncio.timeout(self._timeout):
                return await context.request(request).response
        except TimeoutError as error:
            raise DeliveryError(f"{base_url}: no answer within {self._timeout} s") from error
        except (aiocoap.error.Error, OSError, ValueError) as error:
            raise DeliveryError(f"{base_url}: {error}") from error

    async def send(self, base_url: str, request: Request) -> Response:
        """Send a request primitive to the CSE at base_url (coap://host:port)."""
        try:
            message = encode_request(request, self._serialization)
        except (TypeError, ValueError) as error:
            raise DeliveryError(f"{base_url}: content cannot be sent as CoAP") from error
        reply = await self.exchange(base_url, message)
        try:
            return decode_response(int(reply.code), raw_options(reply), reply.payload, request)
        except M2MError as error:
            raise DeliveryError(f"{base_url}: unreadable reply: {error.message}") from None


class CoapSender:
    """Delivers NOTIFY primitives to coap:// targets (a `?ct=cbor` picks CBOR)."""

    def __init__(self, client: CoapClient) -> None:
        self._client = client

    async def send(self, url: str, primitive: dict[str, Any]) -> int:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        serialization = CBOR if ("ct", CBOR) in query else JSON
        try:
            message = encode_notification(
                primitive,
                path=(unquote(segment) for segment in parts.path.split("/") if segment),
                query=(f"{name}={value}" for name, value in query if name != "ct"),
                serialization=serialization,
            )
        except (TypeError, ValueError) as error:
            raise DeliveryError(f"{url}: content cannot be sent as {serialization}") from error
        reply = await self._client.exchange(f"coap://{parts.netloc}", message)
        return reply_status(int(reply.code), raw_options(reply), Operation.NOTIFY)

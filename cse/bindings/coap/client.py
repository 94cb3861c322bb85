"""CoAP client binding: sends primitives to other CSEs and notifications to coap:// targets.

One aiocoap client context per process does the CoAP work (CON retransmission, Block1 for
large requests, Block2 reassembly of large answers); the codec builds and reads the messages.
Every failure to get an answer (unreachable, timed out, unreadable) becomes a DeliveryError.

A request to a meter with OSCORE keys is protected with the keys' security context (shared with
the CoapServer through one `OscoreContexts`), its body sent as inner Block1 when over 1024 bytes,
and its answer verified; a meter that lost its replay window after a reboot answers 4.01 with
an Echo value, and the request goes once more carrying it (RFC 8613 B.1.2).

With an egress policy (cse/core/egress.py) each exchange is checked first and sent to the
address the policy checked, written into the URI as an IP literal (no second lookup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import aiocoap  # type: ignore[import-untyped]

from cse.bindings.coap.codec import (
    CoapMessage,
    decode_response,
    encode_notification,
    encode_request,
    has_rsc,
    reply_status,
)
from cse.bindings.coap.messages import raw_options, to_aiocoap
from cse.bindings.coap.oscore import (
    OscoreContexts,
    OscoreKeys,
    SecurityContext,
    open_answer,
    protect_request,
)
from cse.core.egress import EgressPolicy, NotOneM2MAnswer
from cse.core.errors import DeliveryError, M2MError
from cse.core.primitives import Request, Response
from cse.core.types import Operation
from cse.serialization import CBOR, JSON

_BLOCK_SIZE = 1024  # an OSCORE request's inner Block1 size (szx 6), as a meter's listener takes
_BLOCK_SZX = 6


class CoapClient:
    """One client context for everything this process sends over CoAP."""

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        serialization: str = JSON,
        oscore: OscoreContexts | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._timeout = timeout
        self._serialization = serialization
        self._oscore = oscore  # the CoapServer's: one sequence number space per meter
        self._egress = egress
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

    async def _checked(self, base_url: str, target_url: str) -> str:
        """base_url with its host replaced by the address the egress policy checked."""
        if self._egress is None:
            return base_url
        destination = await self._egress.destination(target_url)
        parts = urlsplit(base_url)
        return urlunsplit(parts._replace(netloc=destination.netloc))

    async def exchange(
        self,
        base_url: str,
        message: CoapMessage,
        *,
        keys: OscoreKeys | None = None,
        target_url: str | None = None,
    ) -> aiocoap.Message:
        """Send `message` to the peer in base_url (coap://host:port[/prefix]); return its answer
        (with `keys`: protected with OSCORE, and the verified inner answer). `target_url` is
        the whole URL the egress policy judges (default base_url)."""
        uri = await self._checked(base_url, target_url or base_url)
        context = await self._open()
        try:
            request = to_aiocoap(message, uri=uri)
            async with asyncio.timeout(self._timeout):
                if keys is None:
                    return await context.request(request).response
                return await self._protected(context, self._security(keys), request)
        except TimeoutError as error:
            raise DeliveryError(f"{base_url}: no answer within {self._timeout} s") from error
        except (aiocoap.error.Error, OSError, ValueError) as error:
            raise DeliveryError(f"{base_url}: {error}") from error

    def _security(self, keys: OscoreKeys) -> SecurityContext:
        if self._oscore is None:
            raise ValueError("OSCORE keys given to a CoapClient made without OscoreContexts")
        return self._oscore.for_keys(keys)

    async def _protected(
        self, context: aiocoap.Context, security: SecurityContext, request: aiocoap.Message
    ) -> aiocoap.Message:
        """Inner block-wise: each 1024-byte block is a request of its own, protected alone."""
        payload = request.payload
        if len(payload) <= _BLOCK_SIZE:
            return await self._protected_once(context, security, request)
        answer = None
        for start in range(0, len(payload), _BLOCK_SIZE):
            more = start + _BLOCK_SIZE < len(payload)
            block = request.copy(
                payload=payload[start : start + _BLOCK_SIZE],
                block1=(start // _BLOCK_SIZE, more, _BLOCK_SZX),
                size1=len(payload) if start == 0 else None,
            )
            answer = await self._protected_once(context, security, block)
            if more and answer.code != aiocoap.CONTINUE:
                return answer  # refused midway
        assert answer is not None
        return answer

    async def _protected_once(
        self, context: aiocoap.Context, security: SecurityContext, request: aiocoap.Message
    ) -> aiocoap.Message:
        for attempt in range(2):
            outer, request_id = protect_request(security, request)
            outer.remote = request.remote
            reply = await context.request(outer, handle_blockwise=False).response
            answer = open_answer(security, reply, request_id)
            echo = answer.opt.echo if answer.code == aiocoap.UNAUTHORIZED else None
            if echo is None or attempt:
                return answer
            # The meter rebooted and lost its replay window: it takes the request again if it
            # repeats this Echo value (a recorded request cannot).
            request = request.copy(echo=echo)
        raise AssertionError("unreachable")

    async def send(self, base_url: str, request: Request, *, require_rsc: bool = False) -> Response:
        """Send a request primitive to the CSE at base_url (coap://host:port). With
        `require_rsc` an answer without the oneM2M-RSC option is a NotOneM2MAnswer."""
        try:
            message = encode_request(request, self._serialization)
        except (TypeError, ValueError) as error:
            raise DeliveryError(f"{base_url}: content cannot be sent as CoAP") from error
        reply = await self.exchange(base_url, message)
        if require_rsc and not has_rsc(raw_options(reply)):
            raise NotOneM2MAnswer(f"{base_url}: the answer is not a oneM2M response")
        try:
            return decode_response(int(reply.code), raw_options(reply), reply.payload, request)
        except M2MError as error:
            raise DeliveryError(f"{base_url}: unreadable reply: {error.message}") from None


class CoapSender:
    """Delivers NOTIFY primitives to coap:// targets (a `?ct=cbor` picks CBOR).

    `keys_for(target)` (e.g. `OscoreKeyring.keys_for_originator`) names the OSCORE keys of a
    notification's target (its `to`, the AE-ID); a target with keys is only ever notified
    protected."""

    def __init__(
        self,
        client: CoapClient,
        keys_for: Callable[[str], OscoreKeys | None] | None = None,
    ) -> None:
        self._client = client
        self._keys_for = keys_for

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
        keys = None
        if self._keys_for is not None and isinstance(primitive.get("to"), str):
            keys = self._keys_for(primitive["to"])
        reply = await self._client.exchange(
            f"coap://{parts.netloc}", message, keys=keys, target_url=url
        )
        return reply_status(int(reply.code), raw_options(reply), Operation.NOTIFY)

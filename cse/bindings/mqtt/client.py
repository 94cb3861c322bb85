"""The MQTT binding, sending side: requests to other entities and NOTIFY delivery.

`MqttClient` publishes a request primitive on `/oneM2M/req/<own-id>/<receiver>/<fmt>` (or
`reg_req` for a registration) and waits for the response with the same rqi on the matching
`resp` / `reg_resp` topic. Its session is clean: a response only matters to a caller that
is still waiting, and a caller that gave up retries with the same rqi.

`MqttSender` is the core's `Sender` for `mqtt://` and `mqtts://` notification targets:

- a `nu` that is itself a URL, `mqtt://host:port/some/topic`: the NOTIFY request primitive is
  published to exactly the topic `some/topic` (the URL path without its first `/`; write
  `mqtt://host:port//x` for `/x`), JSON or, with `?ct=cbor`, CBOR. Nobody answers on a plain
  topic, so the broker's PUBACK counts as delivery (2000).
- an AE or CSE reached through its poa `mqtt://host:port[/prefix]`: the primitive goes to
  `[prefix]/oneM2M/req/<cse-id>/<target-id>/json` and the rsc of the response on
  `[prefix]/oneM2M/resp/<cse-id>/<target-id>/json` is the result. The target ID is the `to`
  of the NOTIFY in topic form; an AE-ID under this CSE is used as its bare stem.

Only the CSE's own broker (`[cse.mqtt] url`) is ever connected to: a target naming another
broker is refused (EgressRefused) before any connection, so the CSE's broker username and
password go nowhere else. A target naming our broker by another host or address of the same
machine is sent through our own connection. One connection per topic prefix and originator is
opened on first use and reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiomqtt

from cse.bindings.mqtt.primitives import (
    decode_primitive,
    encode_primitive,
    request_to_primitive,
    response_from_primitive,
)
from cse.bindings.mqtt.settings import MqttSettings, open_client
from cse.bindings.mqtt.topics import (
    FORMATS,
    REGISTRATION_REQUEST,
    REGISTRATION_RESPONSE,
    REQUEST,
    RESPONSE,
    response_filter,
    topic,
    topic_id,
)
from cse.core.egress import EgressPolicy
from cse.core.errors import DeliveryError, M2MError
from cse.core.primitives import Request, Response
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import CBOR, JSON

logger = logging.getLogger(__name__)


_ANSWERS = (RESPONSE, REGISTRATION_RESPONSE)


class MqttClientError(Exception):
    """A request could not be published, or no response came in time."""


class MqttClient:
    """Request/response over MQTT for one originator; an async context manager."""

    def __init__(
        self,
        settings: MqttSettings,
        originator: str,
        *,
        timeout: float = 10.0,
        serialization: str = JSON,
        identifier: str | None = None,
    ) -> None:
        self.settings = settings
        self.originator = originator
        self.own_id = topic_id(originator)
        self.timeout = timeout
        self.serialization = serialization
        self.identifier = identifier or f"{self.own_id}-{secrets.token_hex(4)}"
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._connection: contextlib.AsyncExitStack | None = None
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> MqttClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> aiomqtt.Client:
        """The live connection; (re)connects if there is none. Raises aiomqtt.MqttError."""
        async with self._lock:
            if self._client is not None and self._reader is not None and not self._reader.done():
                return self._client
            await self._disconnect()
            client = open_client(self.settings, self.identifier, clean_session=True)
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(client)
                prefix = self.settings.topic_prefix
                filters = [response_filter(self.own_id, prefix, kind) for kind in _ANSWERS]
                await client.subscribe([(name, 1) for name in filters])
                self._connection = stack.pop_all()
            self._client = client
            self._reader = asyncio.create_task(self._read(client), name=f"mqtt {self.identifier}")
            return client

    async def close(self) -> None:
        async with self._lock:
            await self._disconnect()

    async def _disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        self._fail_pending("the client was closed")
        if self._connection is not None:
            connection, self._connection, self._client = self._connection, None, None
            with contextlib.suppress(aiomqtt.MqttError):
                await connection.aclose()

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MqttClientError(reason))

    async def _read(self, client: aiomqtt.Client) -> None:
        try:
            async for message in client.messages:
                self._resolve(message)
        except aiomqtt.MqttError as error:
            logger.info("MQTT client %s lost its connection: %s", self.identifier, error)
            self._fail_pending(f"connection lost: {error}")

    def _resolve(self, message: aiomqtt.Message) -> None:
        serialization = FORMATS.get(message.topic.value.rsplit("/", 1)[-1])
        payload = message.payload
        if serialization is None or not isinstance(payload, bytes | bytearray):
            return
        try:
            primitive = decode_primitive(bytes(payload), serialization, "m2m:rsp")
        except M2MError:
            logger.info("unreadable MQTT response on %s", message.topic.value[:200])
            return
        request_id = primitive.get("rqi")
        future = self._pending.get(request_id) if isinstance(request_id, str) else None
        if future is not None and not future.done():
            future.set_result(primitive)

    async def publish(self, name: str, payload: bytes) -> None:
        """Publish at QoS 1 to exactly `name`; returns once the broker has accepted it."""
        try:
            async with asyncio.timeout(self.timeout):
                client = await self.connect()
                await client.publish(name, payload, qos=1, timeout=self.timeout)
        except (aiomqtt.MqttError, TimeoutError) as error:
            raise MqttClientError(f"cannot publish to {name}: {error or 'timed out'}") from error

    async def request(
        self,
        receiver: str,
        primitive: dict[str, Any],
        *,
        registration: bool = False,
        serialization: str | None = None,
    ) -> dict[str, Any]:
        """Send a request primitive to `receiver` (an ID) and return the response primitive."""
        request_id = primitive.get("rqi")
        if not isinstance(request_id, str) or not request_id:
            raise MqttClientError("a request primitive needs a string rqi")
        serialization = serialization or self.serialization
        fmt = "cbor" if serialization == CBOR else "json"
        kind = REGISTRATION_REQUEST if registration else REQUEST
        name = topic(kind, self.own_id, topic_id(receiver), fmt, self.settings.topic_prefix)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.timeout):
                client = await self.connect()
                self._pending[request_id] = future  # after connect(): a reconnect fails these
                payload = encode_primitive(primitive, serialization)
                await client.publish(name, payload, qos=1, timeout=self.timeout)
                return await future
        except TimeoutError as error:
            raise MqttClientError(f"no response to {request_id} within {self.timeout}s") from error
        except aiomqtt.MqttError as error:
            raise MqttClientError(f"cannot send {request_id}: {error}") from error
        finally:
            if self._pending.get(request_id) is future:
                del self._pending[request_id]

    async def send(self, receiver: str, request: Request) -> Response:
        """Send a Request primitive and return the Response (uplink use)."""
        primitive = request_to_primitive(request)
        reply = await self.request(receiver, primitive)
        try:
            return response_from_primitive(reply)
        except M2MError as error:
            raise MqttClientError(f"unreadable response to {request.request_id}: {error}") from None


class MqttSender:
    """Delivers NOTIFY primitives to mqtt:// and mqtts:// targets (see the module docstring).

    `settings` is the CSE's own broker connection (None: it has none, and every MQTT target
    is refused); a target URL only adds its topic prefix (its path).
    """

    def __init__(
        self,
        settings: MqttSettings | None = None,
        *,
        timeout: float = 5.0,
        egress: EgressPolicy | None = None,
    ) -> None:
        self._template = settings
        self._egress = egress or EgressPolicy(broker_url=settings.url if settings else None)
        self._timeout = timeout
        self._clients: dict[tuple[str, str], MqttClient] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> MqttSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def _client(self, prefix: str, originator: str) -> MqttClient:
        """A client of our own broker whose oneM2M topics start with `prefix`."""
        assert self._template is not None
        async with self._lock:
            key = (prefix, originator)
            if key not in self._clients:
                own = urlsplit(self._template.url)
                url = urlunsplit((own.scheme, own.netloc, prefix, "", ""))
                settings = dataclasses.replace(self._template, url=url)
                self._clients[key] = MqttClient(settings, originator, timeout=self._timeout)
            return self._clients[key]

    async def send(self, url: str, primitive: dict[str, Any]) -> int:
        await self._egress.destination(url)  # our broker, or EgressRefused: no connection
        parts = urlsplit(url)
        serialization = CBOR if dict(parse_qsl(parts.query)).get("ct") == "cbor" else JSON
        originator = str(primitive.get("fr") or "")
        target = str(primitive.get("to") or "")
        try:
            if "://" in target:  # the nu is this URL: publish to exactly its topic
                name = parts.path[1:]
                if not name:
                    raise DeliveryError(f"{url} names no topic to publish to")
                client = await self._client("", originator)
                await client.publish(name, encode_primitive(primitive, serialization))
                return int(RSC.OK)
            client = await self._client(parts.path.rstrip("/"), originator)
            receiver = target.removeprefix(originator + "/") if originator else target
            reply = await client.request(receiver, primitive, serialization=serialization)
        except (MqttClientError, ValueError, TypeError) as error:
            raise DeliveryError(f"{url}: {error}") from error
        status = reply.get("rsc")
        if isinstance(status, bool) or not isinstance(status, int):
            raise DeliveryError(f"{url}: the response carries no rsc")
        return status

"""The MQTT binding (TS-0010), receiving side: broker → request primitive → core → response.

`answer()` is the whole protocol step without I/O: a topic and a payload in, the response
topic and payload out (or nothing, when no topic can be derived). `MqttBinding` owns the
broker connection around it: one persistent session (clean session false, a stable client
ID), QoS 1 subscriptions to the request and registration topics addressed to this CSE, a
PUBACK only after the answer (see acks.py), and reconnection with backoff.

Who sent a request: MQTT carries no identity of the publisher, so the binding relies on the
broker. With trust "credential" the broker logged every client in with its password and its
ACL (both made from this CSE's credential store by `gridm2m credentials mosquitto`) lets a
client publish requests only under its own originator; the originator segment of the topic is
then believed when it names a usable credential of the store (a meter's AE-ID, a CSE's CSE-ID
in topic form), and anything else is refused (4103) before it reaches the core. A credential
revoked in the store is refused at its next request, while the broker may still hold its
connection. "claimed" and "insecure" (a broker without that ACL) prove nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

import aiomqtt

from cse.bindings.liveness import ProbeRecord, probe_request
from cse.bindings.mqtt.acks import AckSequence, PendingAck, acknowledge_manually
from cse.bindings.mqtt.client import MqttClient, MqttClientError
from cse.bindings.mqtt.primitives import (
    Rejected,
    decode_primitive,
    encode_primitive,
    error_primitive,
    request_from_primitive,
    response_to_primitive,
)
from cse.bindings.mqtt.settings import MqttSettings, open_client
from cse.bindings.mqtt.topics import (
    FORMATS,
    REGISTRATION_REQUEST,
    RequestTopic,
    parse_request_topic,
    request_filters,
    topic_id,
)
from cse.core.addressing import normalize_originator
from cse.core.errors import M2MError
from cse.core.identity import Principal, Trust
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.core.types import ResourceType as T
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import JSON

if TYPE_CHECKING:
    from cse.core.handler import CommonServicesEntity
    from cse.security.credentials import Credential, CredentialStore

logger = logging.getLogger(__name__)

NO_RESPONSE = 5  # rt.rtv: the originator wants no response at all
_ECHO = (("rqi", "rqi"), ("rvi", "rvi"), ("to", "fr"))


class Reply(NamedTuple):
    topic: str
    payload: bytes


def _read_request(
    topic: RequestTopic, payload: bytes, max_payload: int, cse_id: str, sender: TopicSender
) -> Request:
    serialization = topic.serialization
    if serialization is None:
        message = f"serialization {topic.format[:20]!r} is not supported: use /json or /cbor"
        raise Rejected(RSC.UNSUPPORTED_MEDIA_TYPE, message)
    if len(payload) > max_payload:
        raise Rejected(
            RSC.BAD_REQUEST, f"request of {len(payload)} bytes exceeds the limit of {max_payload}"
        )
    try:
        primitive = decode_primitive(payload, serialization, "m2m:rqp")
    except M2MError as error:
        raise Rejected(error.status, error.message) from None
    request = request_from_primitive(primitive)
    claimed = (("rqi", request.request_id), ("rvi", request.release_version))
    echo = {name: value for name, value in (*claimed, ("fr", request.originator)) if value}
    principal = sender.principal(topic.originator)
    if principal is None:
        raise Rejected(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            f"{topic.originator[:80]!r} holds no usable credential of this CSE",
            echo,
        )
    if topic.kind != REGISTRATION_REQUEST and not _sent_by(
        request.originator, topic.originator, cse_id
    ):
        # With per-client topic ACLs on the broker, the topic's originator is who logged in;
        # `fr` must be that entity, or an entity behind that CSE (a CSE forwarding for its
        # AEs), so one meter cannot write as another by changing the payload.
        raise Rejected(
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE,
            f"originator {str(request.originator)[:80]!r} does not match the request topic",
            echo,
        )
    if topic.kind == REGISTRATION_REQUEST and not (
        request.operation == Operation.CREATE and request.resource_type in (T.AE, T.REMOTE_CSE)
    ):
        raise Rejected(
            RSC.OPERATION_NOT_ALLOWED,
            "reg_req carries registrations only (CREATE of an AE or remoteCSE)",
            echo,
        )
    return dataclasses.replace(request, principal=principal)


class TopicSender:
    """Who published a request, from the originator segment of its topic (see the module
    docstring): `principal()` is None when the request must be refused."""

    def __init__(self, trust: Trust, credentials: CredentialStore | None = None) -> None:
        self.trust = trust
        self.credentials = credentials

    def principal(self, topic_originator: str) -> Principal | None:
        if self.trust is not Trust.CREDENTIAL:
            return self.trust.principal_without_credential()
        credential = self.credential(topic_originator)
        return None if credential is None else credential.principal("mqtt")

    def credential(self, topic_originator: str) -> Credential | None:
        """The usable credential whose broker login is `topic_originator`: a device's AE-ID
        as it is, a CSE's CSE-ID without its slash. None if there is none, or two (a device
        and a CSE cannot share a login: `gridm2m credentials mosquitto` refuses them too)."""
        if self.credentials is None or not topic_originator or ":" in topic_originator:
            return None
        device = self.credentials.by_originator(topic_originator)
        cse = self.credentials.by_originator("/" + topic_originator)
        if device is not None and cse is not None:
            return None
        return device or cse


def _sent_by(originator: str | None, topic_originator: str, cse_id: str) -> bool:
    if not originator:
        return True  # the core answers a missing originator (4000)
    for candidate in (originator, normalize_originator(originator, cse_id)):
        sender = topic_id(candidate)
        if sender == topic_originator or sender.startswith(topic_originator + ":"):
            return True
    return False


def _encode(primitive: dict[str, Any], serialization: str, cse_id: str) -> bytes:
    try:
        return encode_primitive(primitive, serialization)
    except Exception:  # the core produced content the serialization cannot carry: a bug
        logger.exception("cannot serialize the response to %s", primitive.get("rqi"))
        # What the request carried: its rqi and rvi, and its originator (the response's to).
        echo = {key: str(primitive[wire]) for wire, key in _ECHO if wire in primitive}
        message = "response could not be serialized"
        failure = error_primitive(RSC.INTERNAL_SERVER_ERROR, message, echo, cse_id)
        return encode_primitive(failure, serialization)


async def answer(
    cse: CommonServicesEntity,
    topic: str,
    payload: bytes,
    *,
    max_payload: int,
    prefix: str = "",
    sender: TopicSender | None = None,
) -> Reply | None:
    """Serve one request message; None when nothing can or should be published back.
    `sender` says whom a topic proves (default: trust "credential" without a store, which
    refuses every request)."""
    cse_id = cse.settings.cse_id
    parsed = parse_request_topic(topic, prefix)
    if parsed is None or parsed.receiver != topic_id(cse_id):
        logger.warning("dropped a message on %r: not a request topic of this CSE", topic[:200])
        return None
    try:
        request = _read_request(
            parsed, payload, max_payload, cse_id, sender or TopicSender(Trust.CREDENTIAL)
        )
    except Rejected as rejected:
        logger.info("refused a request on %s: %s", topic[:200], rejected.message)
        fmt = parsed.format if parsed.serialization else "json"
        primitive = error_primitive(rejected.status, rejected.message, rejected.echo, cse_id)
        return Reply(parsed.response_topic(fmt), _encode(primitive, FORMATS[fmt], cse_id))
    response = await cse.handle(request)
    if request.response_type == NO_RESPONSE:
        return None
    primitive = response_to_primitive(response, request.originator)
    return Reply(parsed.response_topic(), _encode(primitive, parsed.serialization or JSON, cse_id))


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a wait we no longer need, and collect whatever it ended with."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


def _queued_message(client: aiomqtt.Client) -> aiomqtt.Message | None:
    """A message aiomqtt has already received, without waiting (None if there is none)."""
    queue = getattr(client, "_queue", None)  # aiomqtt keeps received messages in this queue
    if queue is None:
        return None
    try:
        message = queue.get_nowait()
    except asyncio.QueueEmpty:
        return None
    return message if isinstance(message, aiomqtt.Message) else None


class _Session:
    """One connection: its client, its PUBACK order, and whether it failed to publish."""

    def __init__(self, client: aiomqtt.Client, acks: AckSequence) -> None:
        self.client = client
        self.acks = acks
        self.broken = asyncio.Event()


class MqttBinding:
    """Serves one CSE over an MQTT broker; an async context manager.

    Entering connects and subscribes (raising aiomqtt.MqttError if the broker cannot be
    reached then); later losses of the connection are repaired in the background.
    """

    def __init__(
        self,
        cse: CommonServicesEntity,
        settings: MqttSettings | None = None,
        *,
        trust: Trust = Trust.CREDENTIAL,
        credentials: CredentialStore | None = None,
    ) -> None:
        self._cse = cse
        self.settings = settings or MqttSettings()
        self.sender = TopicSender(trust, credentials)
        self.connections = 0  # successful connections so far (the first one included)
        self.acknowledged = 0  # PUBACKs sent
        self._connected = False
        self._state = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._liveness = ProbeRecord()
        self._prober: MqttClient | None = None

    @property
    def client_id(self) -> str:
        return self.settings.identifier(self._cse.settings.cse_id)

    @property
    def is_connected(self) -> bool:
        return self._connected

    async def wait_connected(self, connections: int = 1) -> None:
        """Wait until connected, after at least `connections` connections in all."""
        async with self._state:
            await self._state.wait_for(lambda: self._connected and self.connections >= connections)

    async def _set_connected(self, connected: bool) -> None:
        async with self._state:
            self._connected = connected
            self.connections += connected
            self._state.notify_all()

    async def __aenter__(self) -> MqttBinding:
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name="mqtt binding")
        try:
            await first
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    def liveness(self) -> ProbeRecord:
        return self._liveness

    async def probe(self, timeout: float = 2.0) -> bool:
        """Publish a request on this CSE's own request topic, as a client would, and wait for
        the answer to come back through the broker. The result is kept for `liveness()`."""
        cse_id = self._cse.settings.cse_id
        if self._prober is None:
            identifier = f"{self.client_id}-probe"
            self._prober = MqttClient(self.settings, cse_id, timeout=timeout, identifier=identifier)
        request = probe_request(cse_id, self._cse.settings.cse_name)
        try:
            reply = await self._prober.send(cse_id, request)
            alive = reply.request_id == request.request_id
        except MqttClientError:
            alive = False
        self._liveness = self._liveness.after(alive)
        return alive

    async def _stop(self) -> None:
        if self._prober is not None:
            await self._prober.close()
        self._stopping.set()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        await self._cancel_handlers()

    async def _cancel_handlers(self) -> None:
        """Requests not finished by now are not acknowledged: the broker will resend them."""
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    # ---- connection life cycle -------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        delay = self.settings.reconnect_delay
        while not self._stopping.is_set():
            before = self.connections
            try:
                await self._session(first)
            except aiomqtt.MqttError as error:
                if not first.done():
                    first.set_exception(error)
                    return
                logger.warning("MQTT connection to %s lost: %s", self.settings.url, error)
            if self.connections != before:
                delay = self.settings.reconnect_delay
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)  # backoff, cut short by stop
            delay = min(delay * 2, self.settings.reconnect_max_delay)

    async def _session(self, first: asyncio.Future[None]) -> None:
        client = open_client(self.settings, self.client_id, clean_session=False)
        send_ack = acknowledge_manually(client)

        def acknowledge(mid: int) -> None:
            send_ack(mid)
            self.acknowledged += 1

        session = _Session(client, AckSequence(acknowledge))
        async with client:
            try:
                own = topic_id(self._cse.settings.cse_id)
                filters = request_filters(own, self.settings.topic_prefix)
                granted = await client.subscribe([(name, 1) for name in filters])
                if any(getattr(code, "is_failure", False) for code in granted):
                    raise aiomqtt.MqttError(f"the broker refused the subscriptions {filters}")
                await self._set_connected(True)
                logger.info("MQTT: %s subscribed at %s", self.client_id, self.settings.url)
                if not first.done():
                    first.set_result(None)
                await self._consume(session)
                await self._drain()
            finally:
                session.acks.close()
                await self._set_connected(False)

    async def _consume(self, session: _Session) -> None:
        """Take messages until stopped (return) or the connection fails (MqttError)."""
        messages = aiter(session.client.messages)
        stop = asyncio.ensure_future(self._stopping.wait())
        broken = asyncio.ensure_future(session.broken.wait())
        try:
            while True:
                await self._slots.acquire()
                incoming = asyncio.ensure_future(anext(messages))
                await asyncio.wait({incoming, stop, broken}, return_when=asyncio.FIRST_COMPLETED)
                if not incoming.done():
                    _abandon(incoming)
                    self._slots.release()
                    if broken.done():
                        raise aiomqtt.MqttError("a response could not be published")
                    return
                try:
                    message = incoming.result()
                except BaseException:
                    self._slots.release()
                    raise
                self._accept(session, message)
                # Take everything already queued in the same pass, so the requests of one
                # burst are applied together and share one group commit (one fsync).
                while not self._stopping.is_set() and not self._slots.locked():
                    await self._slots.acquire()  # free: returns at once
                    queued = _queued_message(session.client)
                    if queued is None:
                        self._slots.release()
                        break
                    self._accept(session, queued)
        finally:
            stop.cancel()
            broken.cancel()

    def _accept(self, session: _Session, message: aiomqtt.Message) -> None:
        pending = session.acks.expect(message.mid) if message.qos > 0 else None
        self._spawn(self._serve(session, pending, message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _drain(self) -> None:
        """On stop: let requests in progress answer and acknowledge before disconnecting."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=self.settings.drain_timeout)
        await self._cancel_handlers()

    # ---- one request -----------------------------------------------------------------------

    async def _serve(
        self, session: _Session, pending: PendingAck | None, message: aiomqtt.Message
    ) -> None:
        settings = self.settings
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        try:
            reply = await answer(
                self._cse,
                message.topic.value,
                bytes(payload),
                max_payload=settings.max_payload,
                prefix=settings.topic_prefix,
                sender=self.sender,
            )
            if reply is not None:
                await session.client.publish(
                    reply.topic, reply.payload, qos=1, timeout=settings.publish_timeout
                )
        except aiomqtt.MqttError as error:
            # Not acknowledged: the broker delivers the request again on the next connection.
            logger.warning("MQTT response on %s not sent: %s", message.topic.value[:200], error)
            session.broken.set()
            return
        except Exception:  # a bug; acknowledge anyway so one message cannot block the session
            logger.exception("MQTT request on %s failed", message.topic.value[:200])
        finally:
            self._slots.release()
        session.acks.finish(pending)

"""The MQTT binding (TS-0010), receiving side: broker → request primitive → core → response.

`answer()` is the whole protocol step without I/O: a topic and a payload in, the response
topic and payload out (or nothing, when no topic can be derived). `MqttBinding` owns the
broker connection around it: one persistent session (clean session false, a stable client
ID), QoS 1 subscriptions to the request and registration topics addressed to this CSE, a
PUBACK only after the answer (see acks.py), and reconnection with backoff. As one of several
workers of a CSE it takes its share through an MQTT 5 shared subscription (`MqttBinding`,
docs/scale-out.md).

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
import collections
import contextlib
import dataclasses
import logging
import secrets
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple

import aiomqtt

from cse.bindings.liveness import ProbeRecord, probe_request
from cse.bindings.mqtt.acks import AckSequence, PendingAck
from cse.bindings.mqtt.client import MqttClient, MqttClientError
from cse.bindings.mqtt.internals import acknowledge_manually, queued_message
from cse.bindings.mqtt.primitives import (
    Rejected,
    decode_primitive,
    encode_primitive,
    error_primitive,
    request_from_primitive,
    response_to_primitive,
)
from cse.bindings.mqtt.settings import Mqtt5Session, MqttSettings, open_client, will_message
from cse.bindings.mqtt.topics import (
    FORMATS,
    REGISTRATION_REQUEST,
    WORKER_DRAINED,
    WORKER_GONE,
    RequestTopic,
    parse_request_topic,
    request_filters,
    shared,
    topic_id,
    worker_gone,
    worker_topic,
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


async def ended(task: asyncio.Task[Any], grace: float, what: str) -> None:
    """Wait for `task` to end, cancelling it (again) whenever it has not within `grace`.

    aiomqtt waits without a bound for a DISCONNECT to take effect (the broker closing the
    socket), so a broker that has stopped reading would otherwise hold a stopping CSE for
    ever; a second cancel ends that wait."""
    while True:
        await asyncio.wait({task}, timeout=grace)
        if task.done():
            if not task.cancelled() and (error := task.exception()) is not None:
                logger.debug("MQTT: %s ended with %r", what, error)
            return
        logger.warning("MQTT: %s has not ended within %.0f s; cancelling it", what, grace)
        task.cancel()


async def answer(
    cse: CommonServicesEntity,
    topic: str,
    payload: bytes,
    *,
    max_payload: int,
    prefix: str = "",
    sender: TopicSender | None = None,
    own_probe: str | None = None,
) -> Reply | None:
    """Serve one request message; None when nothing can or should be published back.
    `sender` says whom a topic proves (default: trust "credential" without a store, which
    refuses every request). `own_probe`: the request ID of this binding's liveness probe in
    flight."""
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
    if own_probe is not None and request.request_id == own_probe:
        # The probe proves the way through the broker and this binding. It names this CSE
        # and proves nothing, so it is refused as the core would, but here: the core would
        # log it as a forged originator every time /health is read.
        echo = {"rqi": own_probe, "rvi": request.release_version or "3"}
        message = "a liveness probe is refused like any request without a credential"
        primitive = error_primitive(RSC.ORIGINATOR_HAS_NO_PRIVILEGE, message, echo, cse_id)
        return Reply(
            parsed.response_topic(), _encode(primitive, parsed.serialization or JSON, cse_id)
        )
    response = await cse.handle(request)
    if request.response_type == NO_RESPONSE:
        return None
    primitive = response_to_primitive(response, request.originator)
    return Reply(parsed.response_topic(), _encode(primitive, parsed.serialization or JSON, cse_id))


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a wait we no longer need, and collect whatever it ended with."""
    task.cancel()
    task.add_done_callback(lambda done: done.cancelled() or done.exception())


class _Session:
    """One connection: its client, its PUBACK order, whether it failed to publish, and when it
    has taken its last message (`done`). `worker` is the worker whose session it is (None: the
    single binding of a CSE that runs in one process)."""

    def __init__(
        self, client: aiomqtt.Client, acks: AckSequence, done: asyncio.Event, worker: str | None
    ) -> None:
        self.client = client
        self.acks = acks
        self.broken = asyncio.Event()
        self.done = done
        self.worker = worker
        self.marker: bytes | None = None  # the end-of-session marker, once published
        self.handlers: set[asyncio.Task[None]] = set()


class MqttBinding:
    """Serves one CSE over an MQTT broker; an async context manager.

    Entering connects and subscribes (raising aiomqtt.MqttError if the broker cannot be
    reached then); later losses of the connection are repaired in the background.

    With `settings.worker` this process is one of several serving the CSE (docs/scale-out.md):
    it speaks MQTT 5, takes its share of the requests through a shared subscription, keeps a
    session of its own with a will that announces its death, and takes over the session of a
    worker that died, to answer what that one left unacknowledged (Mosquitto keeps such
    requests in the dead worker's session instead of giving them to another member).
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
        # Requests the core answered from each worker's session: this worker's own name, and
        # those of dead workers whose sessions it took over (a single binding counts under "").
        self.served: collections.Counter[str] = collections.Counter()
        self.taken_over: list[str] = []  # workers whose sessions this one emptied, in order
        self._connected = False
        self._state = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._takeovers: dict[str, asyncio.Task[None]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.settings.max_concurrent)
        self._liveness = ProbeRecord()
        self._prober: MqttClient | None = None
        self._probe_id: str | None = None  # the request ID of the probe in flight

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

    async def wait_taken_over(self, worker: str) -> None:
        """Wait until this worker has emptied the session of the dead worker `worker`."""
        async with self._state:
            await self._state.wait_for(lambda: worker in self.taken_over)

    async def _set_connected(self, connected: bool) -> None:
        async with self._state:
            self._connected = connected
            self.connections += connected
            self._state.notify_all()

    async def __aenter__(self) -> MqttBinding:
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(first), name="mqtt binding")
        try:
            await asyncio.wait({first, self._runner}, return_when=asyncio.FIRST_COMPLETED)
            if not first.done():  # the runner died of something other than MQTT
                self._runner.result()
                raise aiomqtt.MqttError("the MQTT binding ended before it was connected")
            first.result()
        except BaseException:
            await self._stop()
            raise
        if self.settings.worker is not None:
            self._watcher = asyncio.create_task(self._watch_workers(), name="mqtt workers")
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
            identifier = f"{self.client_id}:probe"  # ":" is in no worker name
            self._prober = MqttClient(self.settings, cse_id, timeout=timeout, identifier=identifier)
        request = probe_request(cse_id, self._cse.settings.cse_name)
        self._probe_id = request.request_id
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
        # Each wait is bounded: retiring a session takes a few broker round trips and two
        # drains at most; past that, the task is cancelled.
        settings = self.settings
        if self._watcher is not None:  # no new takeovers
            self._watcher.cancel()
            await ended(self._watcher, settings.publish_timeout, "the watch for dead workers")
        if self._runner is not None:
            grace = 2 * settings.drain_timeout + 3 * settings.publish_timeout
            await ended(self._runner, grace, "the MQTT session")
            self._runner = None
        takeovers = set(self._takeovers.values())
        if takeovers:
            # What a takeover has not emptied by then stays in the dead worker's session.
            await asyncio.wait(takeovers, timeout=settings.drain_timeout)
            for task in takeovers:
                task.cancel()
                await ended(task, settings.publish_timeout, "a session takeover")
        await self._cancel_handlers()

    async def _cancel_handlers(self) -> None:
        """Requests not finished by now are not acknowledged: the broker will resend them."""
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    # ---- connection life cycle -------------------------------------------------------------

    def _open_session(self, identifier: str, done: asyncio.Event, worker: str | None) -> _Session:
        """A client for `identifier` with a persistent session, acknowledging manually."""
        mqtt5 = None
        if self.settings.worker is not None and worker is not None:
            # The worker's will: its death is announced (after the delay) to the others.
            will = will_message(
                self._worker_topic(worker, WORKER_GONE), self.settings.worker.will_delay
            )
            mqtt5 = Mqtt5Session(self.settings.worker.session_expiry, will)
        client = open_client(self.settings, identifier, clean_session=False, mqtt5=mqtt5)
        send_ack = acknowledge_manually(client)

        def acknowledge(mid: int) -> None:
            send_ack(mid)
            self.acknowledged += 1

        return _Session(client, AckSequence(acknowledge), done, worker)

    def _request_filters(self) -> list[str]:
        own = topic_id(self._cse.settings.cse_id)
        filters = request_filters(own, self.settings.topic_prefix)
        worker = self.settings.worker
        return filters if worker is None else [shared(worker.group, name) for name in filters]

    def _worker_topic(self, worker: str, event: str) -> str:
        own = topic_id(self._cse.settings.cse_id)
        return worker_topic(own, worker, event, self.settings.topic_prefix)

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
        worker = self.settings.worker
        # A worker's session ends once it has retired (see _retire); a single binding's at stop.
        done = self._stopping if worker is None else asyncio.Event()
        session = self._open_session(self.client_id, done, None if worker is None else worker.name)
        client = session.client
        async with client:
            try:
                filters = self._request_filters()
                granted = await client.subscribe([(name, 1) for name in filters])
                if any(getattr(code, "is_failure", False) for code in granted):
                    raise aiomqtt.MqttError(f"the broker refused the subscriptions {filters}")
                await self._set_connected(True)
                logger.info("MQTT: %s subscribed at %s", self.client_id, self.settings.url)
                if not first.done():
                    first.set_result(None)
                if worker is None:
                    await self._consume(session)
                else:
                    await self._consume_then_retire(session, self._stopping)
                await self._drain(session)
            finally:
                session.acks.close()
                await self._set_connected(False)

    async def _consume(self, session: _Session) -> None:
        """Take messages until the session is done (return) or fails (MqttError)."""
        messages = aiter(session.client.messages)
        done = asyncio.ensure_future(session.done.wait())
        broken = asyncio.ensure_future(session.broken.wait())
        try:
            while True:
                await self._slots.acquire()
                incoming = asyncio.ensure_future(anext(messages))
                await asyncio.wait({incoming, done, broken}, return_when=asyncio.FIRST_COMPLETED)
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
                while not session.done.is_set() and not self._slots.locked():
                    await self._slots.acquire()  # free: returns at once
                    queued = queued_message(session.client)
                    if queued is None:
                        self._slots.release()
                        break
                    self._accept(session, queued)
        finally:
            done.cancel()
            broken.cancel()

    def _accept(self, session: _Session, message: aiomqtt.Message) -> None:
        pending = session.acks.expect(message.mid) if message.qos > 0 else None
        if session.worker is not None and message.topic.value == self._worker_topic(
            session.worker, WORKER_DRAINED
        ):
            # An end-of-session marker; one of an earlier holder of the session means nothing.
            self._slots.release()
            session.acks.finish(pending)
            if session.marker is not None and message.payload == session.marker:
                session.done.set()
            return
        self._spawn(session, self._serve(session, pending, message))

    def _spawn(self, session: _Session, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        for tasks in (self._handlers, session.handlers):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _drain(self, session: _Session) -> None:
        """On stop: let requests in progress answer and acknowledge before disconnecting."""
        if session.handlers:
            await asyncio.wait(set(session.handlers), timeout=self.settings.drain_timeout)
        for task in session.handlers:
            task.cancel()
        await asyncio.gather(*session.handlers, return_exceptions=True)

    # ---- workers -----------------------------------------------------------------------------

    async def _consume_then_retire(self, session: _Session, when: asyncio.Event | None) -> None:
        """Serve a worker's session, and retire it once `when` is set (at once if None)."""
        retiring = asyncio.create_task(self._retire(session, when))
        try:
            await self._consume(session)
        finally:
            retiring.cancel()
            await asyncio.gather(retiring, return_exceptions=True)

    async def _retire(self, session: _Session, when: asyncio.Event | None) -> None:
        """Leave the share group and take what the session still holds.

        After the UNSUBACK nothing new enters the session; a marker published then to a topic
        only this session subscribes to is queued behind everything it holds, so its arrival
        means every request the session held has arrived (Mosquitto delivers a session's
        messages in the order they were queued). Then the session is done.
        """
        if when is not None:
            await when.wait()
        assert session.worker is not None
        client = session.client
        marker_topic = self._worker_topic(session.worker, WORKER_DRAINED)
        try:
            await client.unsubscribe(self._request_filters())
            await client.subscribe(marker_topic, qos=1)
            session.marker = secrets.token_hex(8).encode()
            await client.publish(marker_topic, session.marker, qos=1)
            if when is not None:  # stopping: bounded; a takeover takes what there is
                await asyncio.wait_for(session.done.wait(), self.settings.drain_timeout)
        except aiomqtt.MqttError as error:
            logger.warning("MQTT: could not retire the session of %s: %s", session.worker, error)
            session.broken.set()
        except TimeoutError:
            logger.warning(
                "MQTT: %s stops with requests left in its session; they wait for its return "
                "or its session's expiry",
                session.worker,
            )
            session.done.set()

    async def _watch_workers(self) -> None:
        """Hear of dead workers (their wills, through a shared subscription: one worker hears
        of each) and take over their sessions. A clean session of its own, so that a dead
        worker's session never holds the announcement of another death."""
        worker = self.settings.worker
        assert worker is not None
        own = topic_id(self._cse.settings.cse_id)
        prefix = self.settings.topic_prefix
        wills = shared(worker.group, worker_topic(own, "+", WORKER_GONE, prefix))
        delay = self.settings.reconnect_delay
        while not self._stopping.is_set():
            client = open_client(
                self.settings, f"{self.client_id}:watch", clean_session=True, mqtt5=Mqtt5Session(0)
            )
            try:
                async with client:
                    await client.subscribe(wills, qos=1)
                    delay = self.settings.reconnect_delay
                    async for message in client.messages:
                        dead = worker_gone(message.topic.value, own, prefix)
                        # Our own name: this process is that worker back again, on its session.
                        if dead is not None and dead != worker.name:
                            self._take_over(dead)
            except aiomqtt.MqttError as error:
                logger.warning("MQTT: lost the watch for dead workers: %s", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.settings.reconnect_max_delay)

    def _take_over(self, worker: str) -> None:
        if worker in self._takeovers or self._stopping.is_set():
            return
        task = asyncio.create_task(self._empty_session_of(worker), name=f"mqtt take over {worker}")
        self._takeovers[worker] = task
        task.add_done_callback(lambda _: self._takeovers.pop(worker, None))

    async def _empty_session_of(self, worker: str) -> None:
        """Connect as the dead `worker` (its client ID, its session), answer what its session
        holds, and leave it empty and out of the share group. The connection carries that
        worker's will again: if this process dies too, another one takes over. If the worker
        comes back meanwhile, the broker hands it its session and this ends (what was not
        acknowledged here goes back to it)."""
        identifier = self.settings.worker_identifier(self._cse.settings.cse_id, worker)
        session = self._open_session(identifier, asyncio.Event(), worker)
        logger.warning("MQTT: worker %s is gone; %s takes over its session", worker, self.client_id)
        try:
            async with session.client:
                try:
                    await self._consume_then_retire(session, None)
                    await self._drain(session)
                finally:
                    session.acks.close()
        except aiomqtt.MqttError as error:
            logger.warning("MQTT: took over %s's session until: %s", worker, error)
            return
        logger.info("MQTT: the session of %s is empty", worker)
        async with self._state:
            self.taken_over.append(worker)
            self._state.notify_all()

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
                own_probe=self._probe_id,
            )
            self.served[session.worker or ""] += 1
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

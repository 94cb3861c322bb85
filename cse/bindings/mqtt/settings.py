"""Where and how an MQTT connection goes: broker URL, identity, credentials, TLS, limits.

`open_client` is the one place an aiomqtt client is built, so the binding, the request client
and the notification sender connect the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
# A worker's name and a share group's name go into topics and client IDs: no `/`, `+`, `#`.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """This process is one of several serving the same CSE through the broker
    (docs/scale-out.md, "Spreading requests across workers").

    Every worker subscribes to the CSE's request topics through the MQTT 5 shared subscription
    `$share/<group>/<filter>`, so the broker hands each request to one of them. `name` tells
    the workers apart: each keeps its own session (client ID `<client id>.<name>`) for
    `session_expiry` seconds after its connection ends, and a worker that dies is announced
    `will_delay` seconds later, when another worker takes over its session and answers what
    it left unacknowledged. A worker that comes back within the delay resumes its own session.
    """

    name: str
    group: str
    session_expiry: int = 24 * 3600
    will_delay: int = 5

    def __post_init__(self) -> None:
        for what, value in (("worker name", self.name), ("share group", self.group)):
            if not _NAME.match(value):
                raise ValueError(f"{what} {value[:70]!r} must be 1-64 letters, digits, _ or -")
        if self.session_expiry < 1 or self.will_delay < 0:
            raise ValueError("session_expiry must be positive and will_delay not negative")
        if self.will_delay >= self.session_expiry:
            raise ValueError("will_delay must be shorter than session_expiry")


def default_worker_name() -> str:
    """This host and process: unique among running workers; a restarted one gets a new name,
    and its old session is taken over by another worker like that of any dead worker."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


def default_share_group(cse_id: str, password: str | None) -> str:
    """The share group of a CSE's workers, unguessable by other logins of the broker.

    Mosquitto 2.0 checks a client's read access when it delivers a message, after it has
    picked the group member to deliver to: a login that joined the group would receive
    nothing, and the requests the broker picked it for would be dropped. So the name is
    derived from the CSE's broker password, which every worker has and no other login
    knows (docs/security.md). Without a password (a lab broker) it is only the CSE-ID."""
    own = cse_id.lstrip("/").replace("/", "-")
    if not password:
        return f"gridm2m-{own}"[:64]
    digest = hmac.new(password.encode(), f"share group of {cse_id}".encode(), hashlib.sha256)
    return f"gridm2m-{digest.hexdigest()[:32]}"


@dataclass(frozen=True, slots=True)
class Mqtt5Session:
    """An MQTT 5 connection's session: kept `expiry` seconds after the connection ends
    (0: it ends with it), and the `will` the broker publishes if the connection dies."""

    expiry: int
    will: aiomqtt.Will | None = None


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho's MQTT 5 properties


def will_message(topic: str, delay: int) -> aiomqtt.Will:
    """A QoS 1 will with an empty payload, published `delay` seconds after the connection
    died unless a connection with the same client ID is made before then."""
    properties = _properties(PacketTypes.WILLMESSAGE)
    properties.WillDelayInterval = delay
    return aiomqtt.Will(topic, b"", qos=1, properties=properties)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """One broker connection. `url` is `mqtt://host:port` or `mqtts://host:port`; a path in it
    (`mqtt://host:1883/site7`) prefixes every oneM2M topic, as a path in an MQTT poa does."""

    url: str = "mqtt://127.0.0.1:1883"
    # None: "C::" + the CSE-ID without its leading "/" (TS-0010, as ACME does).
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None  # trust these CAs instead of the system store (mqtts)
    cert_file: str | None = None  # client certificate (mqtts)
    key_file: str | None = None
    keepalive: int = 60
    # A request payload above this size is refused with 4000 without being decoded.
    max_payload: int = 256 * 1024
    # Requests handled at once; the broker's in-flight window (Mosquitto: 20) bounds it too.
    max_concurrent: int = 64
    # How long to wait for the broker to confirm (PUBACK) a published response.
    publish_timeout: float = 10.0
    # Reconnect backoff: doubles from the first delay up to the last.
    reconnect_delay: float = 0.1
    reconnect_max_delay: float = 30.0
    # How long a stopping binding waits for requests in progress before cancelling them.
    drain_timeout: float = 10.0
    # One of several workers of this CSE (None: the only process serving it).
    worker: WorkerSettings | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"MQTT broker URL {self.url!r} is not mqtt://host:port")
        _ = parts.port  # raises ValueError for a port that is not a number
        if self.max_payload < 1 or self.max_concurrent < 1 or self.keepalive < 1:
            raise ValueError("max_payload, max_concurrent and keepalive must be positive")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or SCHEMES[parts.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def topic_prefix(self) -> str:
        return urlsplit(self.url).path.rstrip("/")

    def identifier(self, cse_id: str) -> str:
        """The binding's client ID; a worker's has its name after a dot."""
        base = self.client_id or "C::" + cse_id.lstrip("/")
        return base if self.worker is None else self.worker_identifier(cse_id, self.worker.name)

    def worker_identifier(self, cse_id: str, name: str) -> str:
        """The client ID of the worker `name` of this CSE (another one's, to take over)."""
        return f"{self.client_id or 'C::' + cse_id.lstrip('/')}.{name}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def open_client(
    settings: MqttSettings,
    identifier: str,
    *,
    clean_session: bool,
    mqtt5: Mqtt5Session | None = None,
) -> aiomqtt.Client:
    """A client, not yet connected (enter it with `async with`): MQTT 3.1.1, or MQTT 5 with
    the session `mqtt5` (then `clean_session` is MQTT 5's clean start)."""
    properties = None
    if mqtt5 is not None:
        properties = _properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = mqtt5.expiry
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=identifier,
        username=settings.username,
        password=settings.password,
        keepalive=settings.keepalive,
        tls_context=settings.tls_context(),
        timeout=settings.publish_timeout,
        # paho leaves Nagle on: a PUBACK right after a PUBLISH would wait for a delayed ACK.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        protocol=aiomqtt.ProtocolVersion.V311 if mqtt5 is None else aiomqtt.ProtocolVersion.V5,
        clean_session=clean_session if mqtt5 is None else None,
        # MQTT 5's clean start; paho refuses anything but its default on MQTT 3.1.1.
        clean_start=MQTT_CLEAN_START_FIRST_ONLY if mqtt5 is None else clean_session,
        properties=properties,
        will=None if mqtt5 is None else mqtt5.will,
    )
    # aiomqtt warns once more than 10 publishes await their PUBACK; a CSE answering a burst
    # of requests has hundreds in flight by design.
    client.pending_calls_threshold = 10 * settings.max_concurrent
    return client

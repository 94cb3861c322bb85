"""Where and how an MQTT connection goes: broker URL, identity, credentials, TLS, limits.

`open_client` is the one place an aiomqtt client is built, so the binding, the request client
and the notification sender connect the same way.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt

SCHEMES = {"mqtt": 1883, "mqtts": 8883}


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
        return self.client_id or "C::" + cse_id.lstrip("/")

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def open_client(settings: MqttSettings, identifier: str, *, clean_session: bool) -> aiomqtt.Client:
    """An MQTT 3.1.1 client, not yet connected (enter it with `async with`)."""
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=identifier,
        username=settings.username,
        password=settings.password,
        clean_session=clean_session,
        keepalive=settings.keepalive,
        tls_context=settings.tls_context(),
        timeout=settings.publish_timeout,
        # paho leaves Nagle on: a PUBACK right after a PUBLISH would wait for a delayed ACK.
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    # aiomqtt warns once more than 10 publishes await their PUBACK; a CSE answering a burst
    # of requests has hundreds in flight by design.
    client.pending_calls_threshold = 10 * settings.max_concurrent
    return client

"""Composition of a runnable CSE: config → storage → core → bindings, run until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cse.bindings.coap.client import CoapClient, CoapSender
from cse.bindings.coap.oscore import OscoreContexts
from cse.bindings.coap.server import CoapServer
from cse.bindings.http import HttpClient, HttpSender, HttpServer
from cse.bindings.mqtt.client import MqttSender
from cse.bindings.mqtt.server import MqttBinding
from cse.bindings.mqtt.settings import (
    MqttSettings,
    WorkerSettings,
    default_share_group,
    default_worker_name,
)
from cse.bindings.mqtt.topics import topic_id
from cse.config_files import CseId, CseName, load_section
from cse.core.config import CSELimits, CSESettings
from cse.core.egress import AllowEntry, EgressPolicy, EgressSettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.notifications import Sender
from cse.forwarding import PointOfAccessForwarder
from cse.security.credentials import CredentialStore, Kind
from cse.security.oscore_keyring import CredentialKeyring
from cse.security.pki import client_context, self_probe_context, server_context
from cse.storage.base import Storage
from cse.storage.memory import MemoryStorage
from cse.storage.sqlite import SQLiteStorage

logger = logging.getLogger(__name__)

ENV_PREFIX = "GRIDM2M_CSE__"
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def default_data_dir() -> Path:
    base = os.environ.get("GRIDM2M_DATA_DIR")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "gridm2m"


class TlsConfig(BaseModel):
    """TLS for a listener: its certificate, and the CA its clients' certificates come from."""

    model_config = ConfigDict(extra="forbid")
    cert: str
    key: str
    client_ca: str | None = None  # verify client certificates from this CA
    # Without a client certificate a client must prove itself with a bearer token.
    require_client_cert: bool = False

    def context(self) -> ssl.SSLContext:
        _check_files("[http.tls]", cert=self.cert, key=self.key, client_ca=self.client_ca)
        try:
            return server_context(
                self.cert, self.key, self.client_ca, require_client=self.require_client_cert
            )
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(f"[http.tls]: cannot use {self.cert} / {self.key}: {error}") from None


class HttpClientConfig(BaseModel):
    """TLS for what this CSE sends over https:// (notifications, requests to other CSEs)."""

    model_config = ConfigDict(extra="forbid")
    ca: str | None = None  # verify servers against this CA (default: the system's CAs)
    cert: str | None = None  # the client certificate presented to servers that ask for one
    key: str | None = None

    def context(self) -> ssl.SSLContext | None:
        if self.ca is None and self.cert is None:
            return None
        _check_files("[http.client]", ca=self.ca, cert=self.cert, key=self.key)
        try:
            return client_context(self.ca, self.cert, self.key)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(f"[http.client]: cannot use {self.cert}: {error}") from None


def _check_files(section: str, **files: str | None) -> None:
    for key, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ConfigError(
                f"{section} {key} = {path!r}: no such file (a lab makes them with "
                "`gridm2m pki lab DIR`, see docs/security.md)"
            )


class HttpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_size: int = Field(1 << 20, ge=1024)
    # What requests that prove no credential (no client certificate or token from the
    # credential store) are believed to be: nothing ("credential"), AEs only ("claimed"), or
    # anyone they claim to be ("insecure", an isolated lab only). See docs/security.md.
    trust: Trust = Trust.CREDENTIAL
    tls: TlsConfig | None = None  # None: plain HTTP
    client: HttpClientConfig = HttpClientConfig()
    # Let other processes of this user listen on the same port (SO_REUSEPORT), the kernel
    # spreading connections between them; on in every process of a scaled-out CSE.
    reuse_port: bool = False

    def probe_context(self) -> ssl.SSLContext | None:
        """How the CSE probes its own HTTPS listener: with its client certificate when the
        listener requires one."""
        if self.tls is None or not self.tls.require_client_cert or self.client.cert is None:
            return None
        return self_probe_context(self.client.cert, self.client.key)


class CoapConfig(BaseModel):
    """CoAP is off unless a port is given (0 picks a free one)."""

    model_config = ConfigDict(extra="forbid")
    host: str | None = None  # default: the HTTP host
    port: int | None = Field(None, ge=0, le=65535)
    max_body_size: int = Field(64 * 1024, ge=1024)
    # RFC 7252 MAX_LATENCY in seconds (None: the RFC's 100 s). It sets how long every exchange
    # is remembered against retransmissions, and so the memory a busy CoAP server holds; a
    # local meter network can use 10-20 s. Process-wide in aiocoap.
    max_latency: float | None = Field(None, gt=0)
    # Seconds between CoAP pings the server sends itself; a server that misses two in a row is
    # restarted on its port. None turns the watchdog off.
    liveness_interval: float | None = Field(10.0, gt=0)
    # OSCORE (RFC 8613) with the meters' keys from the credential store. `trust` says what an
    # unprotected request is believed to be: "credential" refuses it (4.01).
    oscore: bool = True
    trust: Trust = Trust.CREDENTIAL


class MqttConfig(BaseModel):
    """MQTT is off unless a broker URL is given."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None  # mqtt://host:port or mqtts://host:port
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    keepalive: int = Field(60, ge=1)
    max_payload: int = Field(256 * 1024, ge=1024)
    # "credential": the broker authenticated each client and holds it to its own topics (the
    # ACL made from the credential store), so a request's topic originator is believed when it
    # names a credential of the store; "claimed"/"insecure" as for HTTP.
    trust: Trust = Trust.CREDENTIAL
    # A scaled-out CSE ([cse] scale_out): each process is a worker of the MQTT 5 shared
    # subscription (docs/scale-out.md). Its name (default: host and process ID), the share
    # group (default: derived from the CSE's broker password, so no other login can join),
    # how long the broker keeps a worker's session, and how long after a worker's death the
    # others take its session over (a worker restarted sooner resumes it itself).
    worker_name: str | None = None
    share_group: str | None = Field(None, repr=False)
    session_expiry: int = Field(24 * 3600, ge=1)
    will_delay: int = Field(5, ge=0)

    def worker(self, cse_id: str, password: str | None) -> WorkerSettings:
        """This process as a worker of the CSE `cse_id` (logged in with `password`)."""
        try:
            return WorkerSettings(
                name=self.worker_name or default_worker_name(),
                group=self.share_group or default_share_group(cse_id, password),
                session_expiry=self.session_expiry,
                will_delay=self.will_delay,
            )
        except ValueError as error:
            raise ConfigError(f"[cse.mqtt]: {error}") from error

    def settings(self) -> MqttSettings | None:
        if self.url is None:
            return None
        try:
            return MqttSettings(
                url=self.url,
                client_id=self.client_id,
                username=self.username,
                password=self.password,
                ca_file=self.ca_file,
                cert_file=self.cert_file,
                key_file=self.key_file,
                keepalive=self.keepalive,
                max_payload=self.max_payload,
            )
        except ValueError as error:
            raise ConfigError(f"invalid MQTT settings: {error}") from error


_LIMITS = CSELimits()


class LimitsConfig(BaseModel):
    """[cse.limits]: quotas and rate limits (docs/gateway.md, "Limits"). 0 switches off a
    limit that can be off."""

    model_config = ConfigDict(extra="forbid")
    max_name_length: int = Field(_LIMITS.max_name_length, ge=8, le=255)
    max_nesting_depth: int = Field(_LIMITS.max_nesting_depth, ge=2, le=64)
    max_resources_per_ae: int = Field(_LIMITS.max_resources_per_ae or 0, ge=0)
    max_aes: int = Field(_LIMITS.max_aes or 0, ge=0)
    default_max_instances: int = Field(_LIMITS.default_max_instances or 0, ge=0)
    default_max_byte_size: int = Field(_LIMITS.default_max_byte_size or 0, ge=0)
    max_instances_cap: int = Field(_LIMITS.max_instances_cap or 0, ge=0)
    max_byte_size_cap: int = Field(_LIMITS.max_byte_size_cap or 0, ge=0)
    max_subscriptions_per_resource: int = Field(_LIMITS.max_subscriptions_per_resource or 0, ge=0)
    max_policies_under_cse_base: int = Field(_LIMITS.max_policies_under_cse_base or 0, ge=0)
    max_group_reads_per_check: int = Field(_LIMITS.max_group_reads_per_check, ge=1, le=1000)
    registrations_per_minute: int = Field(_LIMITS.registrations_per_minute or 0, ge=0)
    registration_burst: int = Field(_LIMITS.registration_burst, ge=1)
    registrations_per_minute_per_source: int = Field(
        _LIMITS.registrations_per_minute_per_source or 0, ge=0
    )
    requests_per_second: float = Field(_LIMITS.requests_per_second or 0.0, ge=0)
    request_burst: int = Field(_LIMITS.request_burst, ge=1)
    discovery_result_cap: int = Field(_LIMITS.discovery_result_cap, ge=1, le=100_000)
    max_channel_requests: int = Field(_LIMITS.max_channel_requests or 0, ge=0)
    max_channel_requests_total: int = Field(_LIMITS.max_channel_requests_total or 0, ge=0)
    max_polls_per_channel: int = Field(_LIMITS.max_polls_per_channel or 0, ge=0)
    max_polls_total: int = Field(_LIMITS.max_polls_total or 0, ge=0)
    max_pending_requests_per_originator: int = Field(
        _LIMITS.max_pending_requests_per_originator or 0, ge=0
    )
    max_pending_requests: int = Field(_LIMITS.max_pending_requests or 0, ge=0)
    max_request_resources: int = Field(_LIMITS.max_request_resources or 0, ge=0)

    @model_validator(mode="after")
    def _defaults_within_caps(self) -> LimitsConfig:
        for default, cap, name in (
            (self.default_max_instances, self.max_instances_cap, "instances"),
            (self.default_max_byte_size, self.max_byte_size_cap, "byte_size"),
        ):
            if default and cap and default > cap:
                raise ValueError(f"default_max_{name} is above max_{name}_cap")
        return self

    def settings(self) -> CSELimits:
        values = self.model_dump()
        for name, value in values.items():
            if value == 0:
                values[name] = None  # "off"; every field that takes 0 has None as its off
        return CSELimits(**values)


class EgressConfig(BaseModel):
    """Where the CSE may send besides the points of access its registered entities announced
    from their own address (cse/core/egress.py, docs/security.md "Egress policy")."""

    model_config = ConfigDict(extra="forbid")
    # Hosts ("mdms.example.net", "10.20.0.7"), networks ("10.20.0.0/16") or URL prefixes
    # ("https://mdms.example.net/onem2m") a nu or poa may name although no entity announced
    # it from there; an entry also lifts the loopback/link-local refusal for what it names,
    # and a URL prefix even the refusal of this process's own ports.
    allow: list[str] = []
    # Reach points of access on loopback addresses (every part on one machine: a lab, the
    # demo, tests). Off: a poa on 127.0.0.0/8 or ::1 is never sent to.
    loopback_peers: bool = False

    @field_validator("allow")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            AllowEntry.parse(entry)  # ValueError says which entry and why
        return value

    def settings(self) -> EgressSettings:
        return EgressSettings(allow=tuple(self.allow), loopback_peers=self.loopback_peers)


_POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(db: str | None) -> bool:
    url = _URL.match(db or "")
    return url is not None and url.group(1).lower() in _POSTGRES_SCHEMES


def database_label(db: str) -> str:
    """`db` as logs may show it: a URL without its password."""
    if not is_postgres_url(db):
        return db
    parts = urllib.parse.urlsplit(db)
    if parts.password is None:
        return db
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class PostgresConfig(BaseModel):
    """[cse.postgres]: how the CSE uses a PostgreSQL `db` (several workers may share it; see
    docs/scale-out.md)."""

    # `schema` in files; by its name too, as a copy of the settings (model_dump) is read back.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # The tables' schema (made if missing): one per CSE when several share a database.
    schema_name: str | None = Field(None, alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,47}$")
    # Seconds after its last renewal that a stopped worker's outbox entries go to another.
    lease: float = Field(15.0, ge=1.0, le=3600.0)
    connect_timeout: float = Field(10.0, gt=0, le=300.0)


class CSEConfig(BaseModel):
    """The [cse] section of a config file; every field can also come from a flag or env var."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["in", "mn"] = "in"
    cse_id: CseId = "/id-in"
    cse_name: CseName = "cse-in"
    admin_originator: str = "CAdmin"
    # Originators that pass every access check (a CSE-ID covers its AEs): a gateway lists
    # its head-end so the head-end's applications can command meters.
    trusted_originators: list[str] = []
    sp_id: str | None = None
    # A SQLite path (":memory:" for a throwaway one), or a postgresql:// URL, which several
    # CSE processes can share ([cse.postgres], docs/scale-out.md; the password belongs in
    # ~/.pgpass or PGPASSWORD, not here: docs/security.md).
    db: str | None = None
    # The credential store (cse/security/credentials.py): who may use this CSE's listeners.
    # Default: beside the database, `<cse-id>-credentials.db`; none with a ":memory:" database.
    credentials: str | None = None
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    cache_size: int = Field(8192, ge=0)
    default_lifetime: float = Field(5 * 365 * 24 * 3600.0, gt=0)
    # Points of access announced to other CSEs; by default the bound URLs (set this when
    # listening on 0.0.0.0 or behind NAT, e.g. ["http://dap1.lab:8081"]).
    poa: list[str] = []
    # CSE-IDs that may register here as a remoteCSE besides those with a CSE credential in the
    # credential store (`gridm2m credentials add-cse`); any other is refused (4103).
    remote_cses: list[CseId] = []
    http: HttpConfig = HttpConfig()
    coap: CoapConfig = CoapConfig()
    mqtt: MqttConfig = MqttConfig()
    limits: LimitsConfig = LimitsConfig()
    egress: EgressConfig = EgressConfig()
    postgres: PostgresConfig = PostgresConfig()
    # Several processes serve this CSE (`gridm2m cse --worker`, `gridm2m headend --worker`;
    # docs/scale-out.md): HTTP listeners share their port, MQTT requests are split between
    # the processes through a shared subscription. Needs a database they all share.
    scale_out: bool = False

    @model_validator(mode="after")
    def _scale_out_needs(self) -> CSEConfig:
        if not self.scale_out:
            return self
        problem = scale_out_problem(self.db, self.coap.port)
        if problem is not None:
            raise ValueError(problem)
        return self

    @field_validator("db")
    @classmethod
    def _a_file_or_postgres(cls, value: str | None) -> str | None:
        url = _URL.match(value or "")
        if url and not is_postgres_url(value):
            # Only the scheme is repeated: the rest of a database URL may hold a password.
            raise ValueError(
                f"db is a {url.group(1)}:// URL: the CSE stores its data in a SQLite file "
                "(a path, or ':memory:') or on PostgreSQL (a postgresql:// URL)"
            )
        return value

    def settings(self, points_of_access: tuple[str, ...] = ()) -> CSESettings:
        return CSESettings(
            cse_id=self.cse_id,
            cse_name=self.cse_name,
            role=self.role,
            admin_originator=self.admin_originator,
            trusted_originators=tuple(self.trusted_originators),
            sp_id=self.sp_id,
            points_of_access=points_of_access,
            default_lifetime=self.default_lifetime,
            limits=self.limits.settings(),
            egress=self.egress.settings(),
            remote_cses=tuple(self.remote_cses),
        )

    def database_path(self) -> str:
        return self.db or str(default_data_dir() / f"{self.cse_id.lstrip('/')}.db")

    def credentials_path(self) -> str | None:
        if self.credentials is not None:
            return self.credentials
        database = self.database_path()
        if database == ":memory:":
            return None
        if is_postgres_url(database):  # a file on this host; every worker here shares it
            return str(default_data_dir() / f"{self.cse_id.lstrip('/')}-credentials.db")
        return str(Path(database).with_name(f"{self.cse_id.lstrip('/')}-credentials.db"))


class ConfigError(Exception):
    """A config file or flag that cannot be used; the message says which and why."""


# Databases several processes can share.
SHARED_DATABASES = ("postgresql://", "postgres://")


def scale_out_problem(db: str | None, coap_port: int | None) -> str | None:
    """Why a CSE with this database and CoAP port cannot run as several processes, or None."""
    if not (db or "").startswith(SHARED_DATABASES):
        if db == ":memory:":
            what = "':memory:', which each process would keep to itself"
        else:
            what = (
                "a SQLite file, which one process holds (its storage locks the file and keeps "
                "a cache of its own): several workers on one SQLite file cannot work"
            )
        return (
            f"scale_out (--worker) needs a database all the workers share, and db is {what}; "
            'give db = "postgresql://..." (docs/scale-out.md)'
        )
    if coap_port is not None:
        return (
            "scale_out (--worker) serves HTTP and MQTT only: CoAP's exchanges and OSCORE's "
            "sequence numbers live in one process; leave [cse.coap] port unset"
        )
    return None


def load_cse_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> CSEConfig:
    """File, then GRIDM2M_CSE__* environment variables, then flags (`http.port` style keys)."""
    return load_section(
        CSEConfig,
        "cse",
        path,
        env_prefix=ENV_PREFIX,
        error=ConfigError,
        overrides=overrides,
        environ=environ,
    )


def open_storage(config: CSEConfig) -> Storage:
    path = config.database_path()
    if path == ":memory:":
        return MemoryStorage()
    if is_postgres_url(path):
        # Imported here: a CSE on SQLite never loads psycopg (or libpq).
        from cse.storage.postgres import PostgresStorage

        return PostgresStorage(
            path,
            schema=config.postgres.schema_name,
            cache_size=config.cache_size,
            lease=config.postgres.lease,
            connect_timeout=config.postgres.connect_timeout,
        )
    return SQLiteStorage(path, cache_size=config.cache_size, synchronous=config.synchronous)


@dataclass
class RunningCSE:
    cse: CommonServicesEntity
    http: HttpServer
    coap: CoapServer | None
    mqtt: MqttBinding | None
    credentials: CredentialStore | None = None

    @property
    def urls(self) -> list[str]:
        urls = [self.http.url]
        if self.coap is not None:
            urls.append(self.coap.url)
        if self.mqtt is not None:
            urls.append(self.mqtt.settings.url)
        return urls


def open_credentials(config: CSEConfig) -> CredentialStore | None:
    """The CSE's credential store, open; None when it keeps none (a ":memory:" database)."""
    path = config.credentials_path()
    return None if path is None else CredentialStore(path).open()


def own_mqtt_login(
    settings: MqttSettings, credentials: CredentialStore | None, cse_id: str
) -> MqttSettings:
    """How this CSE's own MQTT clients log in: as configured, else with its own credential
    from its store, whose password `gridm2m credentials mosquitto` put in the broker's
    password file (user name: the CSE-ID in topic form)."""
    if settings.username is not None or credentials is None:
        return settings
    own = credentials.by_originator(cse_id)
    if own is None or own.mqtt_password is None:
        return settings
    return dataclasses.replace(settings, username=topic_id(cse_id), password=own.mqtt_password)


def _provisioned_cse(credentials: CredentialStore | None) -> Callable[[str], bool] | None:
    """Is a CSE-ID provisioned (a usable CSE credential in the store)? None without a store."""
    if credentials is None:
        return None
    store = credentials

    def provisioned(cse_id: str) -> bool:
        credential = store.by_originator(cse_id)
        return credential is not None and credential.kind is Kind.CSE

    return provisioned


@contextlib.asynccontextmanager
async def running_cse(
    config: CSEConfig,
    prepare: Callable[[CommonServicesEntity], Awaitable[None]] | None = None,
    *,
    local_senders: Mapping[str, Sender] | None = None,
) -> AsyncIterator[RunningCSE]:
    """Start storage, core and every configured binding; stop them in reverse order.

    `prepare` runs once the core has opened its storage and before any binding serves: an
    application checks there that its own state agrees with the database (the gateway's
    outbox does). `local_senders` deliver notifications to applications in this process (by
    URL scheme).
    """
    mqtt_settings = config.mqtt.settings()
    server_tls = config.http.tls.context() if config.http.tls is not None else None
    client_tls = config.http.client.context()
    async with contextlib.AsyncExitStack() as stack:
        # The store proves HTTP clients (certificates, tokens), MQTT logins and OSCORE keys.
        credentials = open_credentials(config)
        if credentials is not None:
            stack.callback(credentials.close)
        uses_mqtt_logins = mqtt_settings is not None and config.mqtt.trust is Trust.CREDENTIAL
        uses_oscore = config.coap.port is not None and config.coap.oscore
        if uses_mqtt_logins and credentials is not None and mqtt_settings is not None:
            mqtt_settings = own_mqtt_login(mqtt_settings, credentials, config.cse_id)
        if config.scale_out and mqtt_settings is not None:
            worker = config.mqtt.worker(config.cse_id, mqtt_settings.password)
            mqtt_settings = dataclasses.replace(mqtt_settings, worker=worker)
        # One set of OSCORE contexts for the CoAP server and the client that notifies meters:
        # both send from the same sequence numbers.
        keyring = CredentialKeyring(credentials) if uses_oscore and credentials else None
        oscore = OscoreContexts(keyring) if keyring is not None else None
        egress = EgressPolicy(
            config.egress.settings(),
            broker_url=config.mqtt.url,
            remote_cses=config.remote_cses,
            provisioned_cse=_provisioned_cse(credentials),
            local_schemes=local_senders or (),
        )
        # Every client checks its sends against the CSE's egress policy.
        http_client = await stack.enter_async_context(HttpClient(tls=client_tls, egress=egress))
        coap_client = await stack.enter_async_context(CoapClient(oscore=oscore, egress=egress))
        mqtt_sender = await stack.enter_async_context(MqttSender(mqtt_settings, egress=egress))
        senders: dict[str, Sender] = {
            "http": HttpSender(http_client),
            "https": HttpSender(http_client),
            "coap": CoapSender(coap_client, keyring.keys_for_originator if keyring else None),
            "mqtt": mqtt_sender,
            "mqtts": mqtt_sender,
            **(local_senders or {}),
        }
        forwarder = PointOfAccessForwarder(
            config.cse_id, http_client, coap_client, mqtt_settings, egress=egress
        )
        stack.push_async_callback(forwarder.close)
        cse = CommonServicesEntity(
            open_storage(config),
            config.settings(),
            senders=senders,
            forwarder=forwarder,
            egress=egress,
        )
        # Known before anything listens; a port 0 is added once bound.
        if config.http.port:
            egress.add_own_port(config.http.port)
        if config.coap.port:
            egress.add_own_port(config.coap.port, "udp")
        await stack.enter_async_context(cse)
        if prepare is not None:
            await prepare(cse)
        http = await stack.enter_async_context(
            HttpServer(
                cse,
                config.http.host,
                config.http.port,
                max_body_size=config.http.max_body_size,
                trust=config.http.trust,
                credentials=credentials,
                tls=server_tls,
                probe_tls=config.http.probe_context(),
                reuse_port=config.http.reuse_port or config.scale_out,
            )
        )
        assert http.port is not None
        egress.add_own_port(http.port)
        coap = None
        if config.coap.port is not None:
            coap = await stack.enter_async_context(
                CoapServer(
                    cse,
                    config.coap.host or config.http.host,
                    config.coap.port,
                    max_body_size=config.coap.max_body_size,
                    max_latency=config.coap.max_latency,
                    liveness_interval=config.coap.liveness_interval,
                    oscore=oscore,
                    trust=config.coap.trust,
                )
            )
            assert coap.port is not None
            egress.add_own_port(coap.port, "udp")
        mqtt = None
        if mqtt_settings is not None:
            mqtt = await stack.enter_async_context(
                MqttBinding(cse, mqtt_settings, trust=config.mqtt.trust, credentials=credentials)
            )
        _warn_of_weak_trust(config)
        running = RunningCSE(cse, http, coap, mqtt, credentials)
        cse.settings = config.settings(points_of_access=tuple(config.poa or running.urls))
        yield running


def _warn_of_weak_trust(config: CSEConfig) -> None:
    """Say at start which listeners believe requests that prove nothing: a lab setting that
    must not reach a meter network unnoticed."""
    listeners = {"http": config.http.trust}
    if config.coap.port is not None:
        listeners["coap"] = config.coap.trust
    if config.mqtt.url is not None:
        listeners["mqtt"] = config.mqtt.trust
    for name, trust in listeners.items():
        if trust is not Trust.CREDENTIAL:
            logger.warning(
                "%s listener: trust %r, requests without a credential are believed (%s); "
                "for a lab only",
                name,
                trust.value,
                "as meters" if trust is Trust.CLAIMED else "as anyone they name",
            )


async def serve_until_stopped(config: CSEConfig, stop: asyncio.Event) -> None:
    async with running_cse(config) as running:
        print(
            f"gridm2m cse {config.cse_id} ({config.cse_name}) listening on "
            f"{' '.join(running.urls)} (db {database_label(config.database_path())})",
            flush=True,
        )
        await stop.wait()
    logger.info("stopped")

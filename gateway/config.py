"""The gateway's `[gateway]` config section: its own MN-CSE, the upstream IN-CSE, the outbox."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cse.app import (
    ConfigError,
    CSEConfig,
    HttpConfig,
    LimitsConfig,
    default_data_dir,
    is_postgres_url,
)
from cse.bindings.mqtt.settings import MqttSettings
from cse.config_files import CseId, CseName, load_section, merge_tables
from cse.security.pki import client_context

ENV_PREFIX = "GRIDM2M_GATEWAY__"


class GatewayConfigError(Exception):
    """A gateway config that cannot be used; the message names the key."""


# What the meter LAN may take of the gateway's SD card (docs/gateway.md, "Limits"): a meter's
# containers keep 32 instances or 16 KiB (about six 15-minute interval reads) unless it asks
# for less, 128 / 64 KiB at most; a meter needs 9 resources (7 families, command, its
# subscription) and may hold 16. With ~0.5 KB of database per instance beside its content,
# one meter stays under 0.7 MB (2.8 MB if it asks for the caps everywhere).
GATEWAY_LIMITS = LimitsConfig(
    default_max_instances=32,
    default_max_byte_size=16 * 1024,
    max_instances_cap=128,
    max_byte_size_cap=64 * 1024,
    max_resources_per_ae=16,
    max_aes=12_000,
    requests_per_second=20.0,
    request_burst=200,
)


def _gateway_cse() -> CSEConfig:
    return CSEConfig(
        role="mn",
        cse_id="/id-dap1",
        cse_name="dap1",
        http=HttpConfig(port=8081),
        limits=GATEWAY_LIMITS,
    )


class UpstreamConfig(BaseModel):
    """The head-end's IN-CSE that the gateway registers with and mirrors meter data into."""

    model_config = ConfigDict(extra="forbid")
    url: str = "http://127.0.0.1:8080"  # http(s)://host:port or mqtt(s)://broker:port
    cse_id: CseId = "/id-in"
    cse_name: CseName = "cse-in"
    username: str | None = None  # MQTT broker credentials
    password: str | None = None
    # TLS for https:// and mqtts://: the CA the head-end's certificate is checked against
    # (default: the system's) and the gateway's client certificate (mutual TLS).
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None  # a bearer token for an HTTP IN-CSE that takes one (not logged)
    # Access control policy IDs on the upstream CSE that the gateway links to its remoteCSE and
    # family containers there when it creates them: how an IN-CSE that does not trust its
    # applications (ACME's creator-only default) gives them access to the mirrored data. The
    # policies must also grant the gateway's own CSE-ID every operation.
    acpi: list[str] = []
    timeout: float = Field(10.0, gt=0)  # per request
    check_interval: float = Field(30.0, gt=0)  # how often the registration is verified

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https", "mqtt", "mqtts"):
            raise ValueError("upstream url must be http(s)://host:port or mqtt(s)://host:port")
        return value

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of an https:// link; None for http:// (or MQTT's own settings)."""
        if urlsplit(self.url).scheme != "https":
            return None
        for key, path in (("ca_file", self.ca_file), ("cert_file", self.cert_file),
                          ("key_file", self.key_file)):  # fmt: skip
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"[gateway.upstream] {key} = {path!r}: no such file")
        try:
            return client_context(self.ca_file, self.cert_file, self.key_file)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(f"[gateway.upstream]: cannot use {self.cert_file}: {error}") from None

    @property
    def uses_mqtt(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtt", "mqtts")

    def mqtt_settings(self, client_id: str) -> MqttSettings:
        return MqttSettings(
            url=self.url,
            client_id=client_id,
            username=self.username,
            password=self.password,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
        )


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    db: str | None = None  # default: <data dir>/<cse-id>-outbox.db
    # Disk budget for queued payloads. When it is full, bulk interval data is shed first,
    # then on-demand data, then acks; alarms and alerts are always kept.
    budget_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    concurrency: int = Field(32, ge=1, le=1024)  # CREATEs in flight to the upstream CSE
    retry_min: float = Field(0.5, gt=0)
    retry_max: float = Field(60.0, gt=0)


class OpsConfig(BaseModel):
    """The operations endpoint: /metrics (Prometheus text) and /health."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int | None = Field(9110, ge=0, le=65535)  # None switches it off


class MirrorConfig(BaseModel):
    """What goes upstream and how it is classified."""

    model_config = ConfigDict(extra="forbid")
    # Containers of meter AEs that are not mirrored (the downlink).
    exclude_containers: list[str] = ["command"]
    # Flow families created upstream at registration; others are created on first use.
    families: list[str] = ["reading", "ondemand", "event", "prepay", "drdlc", "han", "firmware"]
    # Containers holding bulk interval data (lowest priority).
    bulk_containers: list[str] = ["reading", "esi"]
    status_interval: float = Field(10.0, gt=0)  # how often the gateway reports its state
    online_window: float = Field(900.0, gt=0)  # a meter heard from within this is online


class RegistersConfig(BaseModel):
    """Each meter's latest register values as a TS-0023 flexContainer (gateway/registers.py)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True  # docs/gateway.md, "Meter registers", says why on by default


class SeriesConfig(BaseModel):
    """Interval reads also kept as time series on the gateway, to find missing intervals
    (gateway/interval_series.py). Off by default: it costs a write per interval."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = False
    name: CseName = "intervals"  # the <timeSeries> under each meter's AE
    containers: list[str] = ["reading"]  # the families whose instances hold interval reads
    max_instances: int = Field(192, ge=1)  # mni: intervals kept per meter (2 days of 15 min)
    max_missing: int = Field(96, ge=1)  # mdn: missing intervals listed per meter
    # mdt: how long after an interval's expected time its value may still arrive before the
    # interval counts as missing. Above the longest gap between a meter's reads (a gas meter
    # reports every 4 or 6 hours).
    detect_after: float = Field(7 * 3600.0, gt=0)


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cse: CSEConfig = Field(default_factory=_gateway_cse)
    upstream: UpstreamConfig = UpstreamConfig()
    outbox: OutboxConfig = OutboxConfig()
    ops: OpsConfig = OpsConfig()
    mirror: MirrorConfig = MirrorConfig()
    registers: RegistersConfig = RegistersConfig()
    series: SeriesConfig = SeriesConfig()

    @model_validator(mode="before")
    @classmethod
    def _mn_defaults(cls, data: Any) -> Any:
        # A [gateway.cse] table fills in over the gateway's defaults, not the bare CSE's.
        if isinstance(data, dict) and isinstance(data.get("cse"), dict):
            base = _gateway_cse().model_dump()
            merged = merge_tables(base, data["cse"])
            data = {**data, "cse": merged}
        return data

    @model_validator(mode="after")
    def _trust_the_head_end(self) -> GatewayConfig:
        if self.upstream.cse_id not in self.cse.trusted_originators:
            self.cse.trusted_originators.append(self.upstream.cse_id)
        # The gateway registers its head-end's remoteCSE on its own CSE (gateway/registration.py).
        if self.upstream.cse_id not in self.cse.remote_cses:
            self.cse.remote_cses.append(self.upstream.cse_id)
        if self.upstream.cse_id == self.cse.cse_id:
            raise ValueError("the gateway and its upstream CSE need different CSE-IDs")
        return self

    def outbox_path(self) -> str:
        if self.outbox.db:
            return self.outbox.db
        if self.cse.db == ":memory:":
            return ":memory:"
        if self.cse.db and not is_postgres_url(self.cse.db):
            return str(Path(self.cse.db).with_suffix("")) + "-outbox.db"
        return str(default_data_dir() / f"{self.cse.cse_id.lstrip('/')}-outbox.db")


def load_gateway_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """File, then GRIDM2M_GATEWAY__* environment variables, then flags (dotted keys)."""
    return load_section(
        GatewayConfig,
        "gateway",
        path,
        env_prefix=ENV_PREFIX,
        error=GatewayConfigError,
        overrides=overrides,
        environ=environ,
    )

"""The [fleet] section of configs/fleet.toml, validated at load with messages that name the key.

Precedence: the file, then GRIDM2M_FLEET__* environment variables (`__` separates nested
keys: GRIDM2M_FLEET__DAP__COAP_PORT), then explicit overrides (the command line's flags).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cse.config_files import CseId, CseName, load_section

ENV_PREFIX = "GRIDM2M_FLEET__"
KINDS = ("electric", "gas")
TRANSPORTS = ("coap", "mqtt")
# How a gas meter's interval data reaches the DAP: itself (row 1Dg), through the ESI inside an
# electric meter of its premises (16Ga, 5Ba), or through a utility ESI (16Gb, 5Bb).
GAS_PATHS = ("direct", "esi_meter", "esi_utility")


class FleetConfigError(Exception):
    """A fleet config that cannot be used; the message says which key and why."""


class DapConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    coap_port: int = Field(5683, ge=1, le=65535)
    mqtt_port: int = Field(1883, ge=1, le=65535)
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(0, ge=0, le=65535)
    # MQTT over TLS: the CA certificate (PEM or DER file) of the broker's certificate, and the
    # name on that certificate when `host` is not on it. None: plain MQTT (a lab broker).
    mqtt_ca: str | None = None
    mqtt_server_name: str | None = None


def _shares(value: Mapping[str, float], allowed: tuple[str, ...], what: str) -> dict[str, float]:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)} (use {', '.join(allowed)})")
    if any(share < 0 for share in value.values()):
        raise ValueError("shares must not be negative")
    if sum(value.values()) <= 0:
        raise ValueError(f"at least one {what} needs a share above 0")
    return {name: float(value.get(name, 0.0)) for name in allowed}


class FleetConfig(BaseModel):
    """Every key is documented in configs/fleet.toml."""

    model_config = ConfigDict(extra="forbid")
    meters: int = Field(200, ge=1, le=1_000_000)
    id_prefix: str = "mtr-"
    first_number: int = Field(1, ge=0)
    id_digits: int = Field(6, ge=1, le=12)
    duration: float = Field(60.0, gt=0)
    clock_speed: float = Field(1440.0, gt=0)
    rate_scale: float = Field(1.0, gt=0)
    start_ts: int | None = Field(None, ge=0)
    tick_ms: int = Field(1000, ge=10)
    seed: int = 1
    ramp: float = Field(10.0, ge=0)
    max_starting: int = Field(64, ge=1)
    serialization: Literal["json", "cbor"] = "json"
    buffer_max: int = Field(200, ge=1)
    dr_opt_out_rate: float = Field(0.1, ge=0, le=1)
    timeout_ms: int = Field(10000, ge=100)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    cse_id: CseId = "/id-in"
    cse_name: CseName = "cse-in"
    mix: dict[str, float] = {"electric": 0.9, "gas": 0.1}
    transports: dict[str, float] = {"coap": 0.5, "mqtt": 0.5}
    gas_paths: dict[str, float] = {"direct": 1.0}
    esi_group: int = Field(8, ge=1, le=10_000)  # gas meters per utility ESI
    dap: DapConfig = DapConfig()
    # The DAP's credential store: each CoAP meter speaks OSCORE with its own keys from it, each
    # MQTT meter logs in to the broker with its own password from it (the broker's files come
    # from the same store: gridm2m credentials mosquitto). None: plain CoAP and anonymous
    # MQTT, for a lab DAP that takes claimed AE-IDs.
    credentials: str | None = None
    # Make the credentials of meters the store does not know yet (for MQTT meters, then make
    # the broker's files again and reload it before the run); false: such a meter is an error.
    provision: bool = False
    # More options for every agent (docs/agents.md lists them), e.g. coap_ack_timeout_ms,
    # mqtt_username. In a string, {meter_id} and {ae_id} become the meter's own.
    agent: dict[str, str | int | float | bool] = {}

    @field_validator("id_prefix")
    @classmethod
    def _prefix_form(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._~-]*", value):
            raise ValueError("id_prefix may hold only A-Z a-z 0-9 . _ ~ -")
        return value

    @field_validator("mix")
    @classmethod
    def _mix_kinds(cls, value: dict[str, float]) -> dict[str, float]:
        return _shares(value, KINDS, "meter kind")

    @field_validator("transports")
    @classmethod
    def _transport_names(cls, value: dict[str, float]) -> dict[str, float]:
        return _shares(value, TRANSPORTS, "transport")

    @field_validator("gas_paths")
    @classmethod
    def _gas_path_names(cls, value: dict[str, float]) -> dict[str, float]:
        return _shares(value, GAS_PATHS, "gas path")

    @model_validator(mode="after")
    def _ids_fit(self) -> FleetConfig:
        last = self.first_number + self.meters - 1
        if len(str(last)) > self.id_digits:
            raise ValueError(f"meter number {last} needs more than id_digits={self.id_digits}")
        if len(self.id_prefix) + self.id_digits > 64:
            raise ValueError("id_prefix + id_digits make meter ids longer than 64 characters")
        return self

    def meter_id(self, index: int) -> str:
        return f"{self.id_prefix}{self.first_number + index:0{self.id_digits}d}"


def load_fleet_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FleetConfig:
    """File, then GRIDM2M_FLEET__* variables, then `overrides` (None values are skipped)."""
    return load_section(
        FleetConfig,
        "fleet",
        path,
        env_prefix=ENV_PREFIX,
        error=FleetConfigError,
        overrides=overrides,
        environ=environ,
    )

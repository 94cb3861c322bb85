"""The head-end's `[headend]` config section: its IN-CSE, the MDMS store, the dashboard, the
commands and the CIS/Billing application."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cse.app import CSEConfig, default_data_dir
from cse.config_files import load_section

ENV_PREFIX = "GRIDM2M_HEADEND__"

# The head-end's own applications (AE-IDs on the IN-CSE). They read every DAP's mirrored data
# and command meters, so the IN-CSE trusts them like its admin (see docs/gateway.md).
MDMS_AE = "Cmdms"
APPS_AE = "Cheadend"
# The CIS/Billing application's AE-ID. Not trusted: the IN-CSE holds it to the access control
# policies of what it touches, like any utility application (docs/security.md).
CIS_AE = "Ccis"


class HeadendConfigError(Exception):
    """A head-end config that cannot be used; the message names the key."""


class MdmsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    db: str | None = None  # SQLite file; default <data dir>/mdms.db
    postgres_url: str | None = None  # postgresql://... stores in PostgreSQL instead
    # A CIS bulk read request is answered when every meter of its batch has, or this many
    # seconds after it arrived, with the silent meters listed as missing: within the tables'
    # 1 hour (rows 1Aa), with half of it left for the answer to reach CIS.
    bulk_read_deadline: float = Field(1800.0, gt=0, le=3600)
    # The most bytes of meter reads one contentInstance of bulk read data carries; a larger
    # answer is sent as numbered segments. A quarter of the 1 MiB an IN-CSE's HTTP listener
    # takes by default, so the segments would also reach a CIS that is not in this process.
    bulk_read_segment_bytes: int = Field(256 * 1024, ge=4096, le=16 * 1024 * 1024)
    # PostgreSQL only: messages created more than this many whole days ago are dropped, a day
    # partition at a time (the summaries keep counting them). None keeps every message.
    retention_days: int | None = Field(None, ge=1)
    # The ESIs (Energy Services Interfaces) and the gas meters each relays for: an ESI's AE
    # (its meter id) -> gas meter ids. A message that says it relays a gas meter's record
    # (`gm`) is stored as that gas meter's only if it comes from an ESI listed for it here;
    # any other is not stored (docs/security.md, "ESI relays").
    esi: dict[str, list[str]] = {}

    def sqlite_path(self) -> str:
        return self.db or str(default_data_dir() / "mdms.db")

    @field_validator("esi")
    @classmethod
    def _esi_ids(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for esi, meters in value.items():
            if not esi or not all(meters):
                raise ValueError("an ESI and each of its gas meters need a non-empty id")
            if esi in meters:
                raise ValueError(f"ESI {esi} cannot relay for itself")
        return value

    @model_validator(mode="after")
    def _retention_needs_postgres(self) -> MdmsConfig:
        if self.retention_days is not None and not self.postgres_url:
            raise ValueError(
                "retention_days needs postgres_url: on SQLite the MDMS keeps every message "
                "(a DELETE by time over one file is not offered; docs/scale-out.md)"
            )
        return self


class DashboardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535)
    # The operator's password, hashed into password_file at start. Unset: the one in
    # password_file, or on the first start a new one, printed once.
    password: str | None = Field(None, repr=False)
    password_file: str | None = None  # default: beside the MDMS's SQLite file
    session_hours: float = Field(8.0, gt=0)  # a login lasts this long


class CommandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # A command that has no answer after this long is reported as timed out.
    timeout: float = Field(300.0, gt=0)


class CisConfig(BaseModel):
    """The CIS/Billing application: bulk meter read requests to the MDMS, on the tables'
    clock (18:00-06:00, "x per utility per day, in batches of y meters")."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    batches_per_day: int = Field(4, ge=0, le=10_000)  # x: requests a day, 0 sends none
    batch_size: int = Field(50, ge=1, le=1000)  # y: meters a request names
    # The utility clock the window is read on: seconds of utility time per wall second, and
    # the utility time at `clock_t0_wall` (both unset: the wall clock). A lab run sets
    # them through the API to the fleet's accelerated clock.
    clock_speed: float = Field(1.0, gt=0)
    clock_start_ts: float | None = None
    clock_t0_wall: float | None = None


class HeadendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cse: CSEConfig = CSEConfig()
    mdms: MdmsConfig = MdmsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    commands: CommandConfig = CommandConfig()
    cis: CisConfig = CisConfig()

    def password_path(self) -> Path:
        if self.dashboard.password_file:
            return Path(self.dashboard.password_file)
        return Path(self.mdms.sqlite_path()).with_name("dashboard-password")

    @model_validator(mode="after")
    def _trust_own_apps(self) -> HeadendConfig:
        for ae_id in (MDMS_AE, APPS_AE):
            if ae_id not in self.cse.trusted_originators:
                self.cse.trusted_originators.append(ae_id)
        return self


def load_headend_config(
    path: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> HeadendConfig:
    """File, then GRIDM2M_HEADEND__* environment variables, then flags (dotted keys)."""
    return load_section(
        HeadendConfig,
        "headend",
        path,
        env_prefix=ENV_PREFIX,
        error=HeadendConfigError,
        overrides=overrides,
        environ=environ,
    )

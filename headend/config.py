"""The head-end's `[headend]` config section: its IN-CSE, the MDMS store, the dashboard."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cse.app import CSEConfig, default_data_dir
from cse.config_files import load_section

ENV_PREFIX = "GRIDM2M_HEADEND__"

# The head-end's own applications (AE-IDs on the IN-CSE). They read every DAP's mirrored data
# and command meters, so the IN-CSE trusts them like its admin (see docs/gateway.md).
MDMS_AE = "Cmdms"
APPS_AE = "Cheadend"


class HeadendConfigError(Exception):
    """A head-end config that cannot be used; the message names the key."""


class MdmsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    db: str | None = None  # SQLite file; default <data dir>/mdms.db
    postgres_url: str | None = None  # postgresql://... stores in PostgreSQL instead

    def sqlite_path(self) -> str:
        return self.db or str(default_data_dir() / "mdms.db")


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


class HeadendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cse: CSEConfig = CSEConfig()
    mdms: MdmsConfig = MdmsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    commands: CommandConfig = CommandConfig()

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

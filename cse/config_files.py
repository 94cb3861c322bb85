"""Loading one section of a TOML config file, with environment and flag overrides.

Every runnable part (the CSE, the fleet emulator, later the gateway and head-end) reads its
settings the same way: the file's `[section]`, then `<PREFIX><KEY>` environment variables
(`__` between nested keys), then flags given as `dotted.key` overrides; a pydantic model
validates the result and every problem is reported with the key it concerns.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def _cse_id_form(value: str) -> str:
    if not value.startswith("/") or value.count("/") != 1 or len(value) < 2:
        raise ValueError("cse_id must look like /id-in")
    return value


def _cse_name_form(value: str) -> str:
    if not value or "/" in value:
        raise ValueError("cse_name must be a single name such as cse-in")
    return value


# Config fields every part checks the same way: an SP-relative CSE-ID, a CSEBase name.
CseId = Annotated[str, AfterValidator(_cse_id_form)]
CseName = Annotated[str, AfterValidator(_cse_name_form)]


def _set_path(target: dict[str, Any], dotted: list[str], value: Any) -> None:
    for key in dotted[:-1]:
        target = target.setdefault(key, {})
    target[dotted[-1]] = value


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it, nested tables merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_section(
    model: type[Model],
    section: str,
    path: str | Path | None,
    *,
    env_prefix: str,
    error: type[Exception],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Model:
    """File, then environment variables, then `overrides` (None values are skipped)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle).get(section, {})
        except OSError as exc:
            raise error(f"cannot read config {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise error(f"config {path} is not valid TOML: {exc}") from exc
    for name, value in (environ if environ is not None else os.environ).items():
        if name.startswith(env_prefix):
            _set_path(data, name[len(env_prefix) :].lower().split("__"), value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, dotted.split("."), value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or section}: {e['msg']}" for e in exc.errors()
        )
        raise error(f"invalid {section} config: {problems}") from exc

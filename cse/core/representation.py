"""How resources appear in response content, per result content (rcn)."""

from __future__ import annotations

from typing import Any

from cse.core.errors import BadRequest
from cse.core.registry import SPECS
from cse.core.types import ResultContent as RCN
from cse.storage.base import Resource


def wrap(resource: Resource, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"m2m:cnt": {...}}: the resource (or some of its attributes) under its wrapper key."""
    return {SPECS[resource.ty].key: resource.attributes if attributes is None else attributes}


def partial(resource: Resource, names: tuple[str, ...]) -> dict[str, Any]:
    unknown = [name for name in names if name not in SPECS[resource.ty].attributes]
    if unknown:
        raise BadRequest(f"attribute(s) {', '.join(unknown)} not in {SPECS[resource.ty].key}")
    return wrap(resource, {n: resource.attributes[n] for n in names if n in resource.attributes})


def child_reference(resource: Resource) -> dict[str, Any]:
    return {"nm": resource.rn, "typ": resource.ty, "val": resource.path}


def nest_children(attributes: dict[str, Any] | None, children: list[Resource]) -> dict[str, Any]:
    """Children grouped by wrapper key, optionally beside the parent's own attributes."""
    nested: dict[str, Any] = dict(attributes or {})
    for child in children:
        nested.setdefault(SPECS[child.ty].key, []).append(child.attributes)
    return nested


def check_result_content(value: RCN | None, allowed: set[RCN], default: RCN) -> RCN:
    if value is None:
        return default
    if value not in allowed:
        raise BadRequest(f"result content {int(value)} is not valid for this operation")
    return value

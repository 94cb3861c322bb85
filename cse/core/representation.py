"""How resources appear in response content, per result content (rcn)."""

from __future__ import annotations

from typing import Any

from cse.core.errors import BadRequest
from cse.core.registry import SPECS, spec_of
from cse.core.types import ResultContent as RCN
from cse.storage.base import Resource


def wrap(resource: Resource, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """{"m2m:cnt": {...}}: the resource (or some of its attributes) under its wrapper key."""
    return {spec_of(resource).key: resource.attributes if attributes is None else attributes}


def granted(attributes: dict[str, Any], shown: frozenset[str] | None) -> dict[str, Any]:
    """The attributes an access grant limited to some (`aca`) lets the originator see; all of
    them when the grant is not limited (None)."""
    if shown is None:
        return attributes
    return {name: value for name, value in attributes.items() if name in shown}


def changed_by_cse(attributes: dict[str, Any], requested: dict[str, Any]) -> dict[str, Any]:
    """rcn 9 (modified attributes, TS-0004): what the CSE set or changed beyond what the
    request asked for, on CREATE and UPDATE alike."""
    return {
        name: value
        for name, value in attributes.items()
        if name not in requested or requested[name] != value
    }


def partial(resource: Resource, names: tuple[str, ...]) -> dict[str, Any]:
    spec = spec_of(resource)
    unknown = [name for name in names if name not in spec.attributes]
    if unknown:
        raise BadRequest(f"attribute(s) {', '.join(unknown)} not in {spec.key}")
    return wrap(resource, {n: resource.attributes[n] for n in names if n in resource.attributes})


def child_reference(resource: Resource) -> dict[str, Any]:
    reference: dict[str, Any] = {"nm": resource.rn, "typ": resource.ty, "val": resource.path}
    telling = SPECS[resource.ty].specialized_by
    if telling is not None:  # TS-0004 childResourceRef: which flexContainer or mgmtObj it is
        reference["spty"] = resource.attributes.get(telling)
    return reference


def nest_children(attributes: dict[str, Any] | None, children: list[Resource]) -> dict[str, Any]:
    """Children grouped by wrapper key, optionally beside the parent's own attributes."""
    nested: dict[str, Any] = dict(attributes or {})
    for child in children:
        nested.setdefault(spec_of(child).key, []).append(child.attributes)
    return nested


def check_result_content(value: RCN | None, allowed: set[RCN], default: RCN) -> RCN:
    if value is None:
        return default
    if value not in allowed:
        raise BadRequest(f"result content {int(value)} is not valid for this operation")
    return value

"""The registry of resource types: every type module, by type number and wire key.

A type's attributes and rules live in its own module under `cse/core/resources/`; adding a
type is one module and one line in `_MODULES`. A type with specializations (one type number,
a wrapper key and a value of one telling attribute per specialization: mgmtObj's `mgd`,
flexContainer's `cnd`) lists its own module there and each specialization's spec in
`_SPECIALIZATIONS`: a CREATE picks the specialization by its wrapper key (`spec_for`), a
stored resource by the attribute that tells them apart (`spec_of`). The checks every
request's attributes go through (kind, create/update policy, mandatory ones) are here.
"""

from __future__ import annotations

from typing import Any

from cse.core.clock import parse_timestamp
from cse.core.errors import BadRequest
from cse.core.resources import (
    access_control_policy,
    ae,
    battery,
    container,
    content_instance,
    cse_base,
    device_info,
    firmware,
    flex_container,
    group,
    memory,
    mgmt_obj,
    node,
    polling_channel,
    reboot,
    remote_cse,
    request,
    subscription,
    time_series,
    time_series_instance,
)
from cse.core.resources.base import NP, Attribute, Kind, M, O, ResourceSpec, TypeRules
from cse.storage.base import Resource

__all__ = [
    "NP",
    "SPECS",
    "Attribute",
    "Kind",
    "M",
    "O",
    "ResourceSpec",
    "TypeRules",
    "spec_for",
    "spec_of",
]

_MODULES = (
    cse_base,
    ae,
    container,
    content_instance,
    subscription,
    access_control_policy,
    group,
    remote_cse,
    node,
    mgmt_obj,
    polling_channel,
    request,
    time_series,
    time_series_instance,
    flex_container,
)
_SPECIALIZATIONS: tuple[ResourceSpec, ...] = (
    *(module.SPEC for module in (firmware, memory, battery, device_info, reboot)),
    *flex_container.SPECIALIZATIONS,
)

# The spec of each type number: for a type with specializations, the type as a whole
# (children, access, discovery), which no resource is created or shown as.
SPECS: dict[int, ResourceSpec] = {module.SPEC.type: module.SPEC for module in _MODULES}

# Every spec by its wrapper key, specializations included.
SPECS_BY_KEY: dict[str, ResourceSpec] = {
    spec.key: spec for spec in [*SPECS.values(), *_SPECIALIZATIONS] if spec.specialized_by is None
}

_BY_SPECIALIZATION: dict[tuple[int, int | str | None], ResourceSpec] = {
    (spec.type, spec.specialization): spec for spec in _SPECIALIZATIONS
}


def content_key(content: Any) -> str | None:
    """The wrapper key of a request's content ({"m2m:xxx": {...}}), if it has exactly one."""
    if isinstance(content, dict) and len(content) == 1:
        (key,) = content
        return str(key)
    return None


def spec_for(resource_type: int, key: str | None = None) -> ResourceSpec:
    """The spec a CREATE of `resource_type` follows; for a type with specializations, the one
    its content's wrapper key names."""
    spec = SPECS.get(resource_type)
    if spec is None:
        raise BadRequest(f"resource type {resource_type} is not supported")
    if spec.specialized_by is None:
        return spec
    chosen = SPECS_BY_KEY.get(key or "")
    if chosen is None or chosen.type != resource_type:
        raise BadRequest(
            f"{key or 'content without a wrapper key'} is not a supported specialization "
            f"of resource type {resource_type}"
        )
    return chosen


def spec_of(resource: Resource) -> ResourceSpec:
    """The spec a stored resource follows: its type's, or its specialization's."""
    spec = SPECS[resource.ty]
    if spec.specialized_by is None:
        return spec
    which = resource.attributes.get(spec.specialized_by)
    if not isinstance(which, int | str):
        return spec
    return _BY_SPECIALIZATION.get((resource.ty, which), spec)


def _plain_data(value: Any, depth: int = 0) -> bool:
    """JSON-representable: what can be stored and sent in either serialization."""
    if depth > 32:
        return False
    if value is None or isinstance(value, str | bool):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**64
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, list):
        return all(_plain_data(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _plain_data(item, depth + 1) for key, item in value.items()
        )
    return False


def _is_time(value: Any) -> bool:
    """An absolute timestamp, or a relative time as an integer or a string of digits."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if not isinstance(value, str):
        return False
    if value.lstrip("-").isdigit():
        return True
    try:
        parse_timestamp(value)
    except ValueError:
        return False
    return True


def _check_kind(name: str, kind: Kind, value: Any) -> None:
    if not _plain_data(value):
        raise BadRequest(f"attribute {name} holds a value that is not plain data")
    ok: bool
    if kind is Kind.ANY:
        ok = True
    elif kind is Kind.STRING:
        ok = isinstance(value, str)
    elif kind is Kind.COUNT:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif kind is Kind.POSITIVE:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    elif kind is Kind.TIME:
        ok = _is_time(value)
    elif kind is Kind.INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is Kind.NUMBER:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind is Kind.BOOLEAN:
        ok = isinstance(value, bool)
    elif kind is Kind.STRINGS:
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    elif kind is Kind.OBJECT:
        ok = isinstance(value, dict)
    else:  # TIMESTAMP
        ok = isinstance(value, str)
        if ok:
            try:
                parse_timestamp(value)
            except ValueError:
                ok = False
    if not ok:
        raise BadRequest(f"attribute {name} must be a {kind.value}")


def unwrap_content(spec: ResourceSpec, content: Any) -> dict[str, Any]:
    """Take the attributes out of {"m2m:xxx": {...}}, checking the wrapper matches the type."""
    if not isinstance(content, dict) or len(content) != 1:
        raise BadRequest(f"content must be one object wrapped as {spec.key}")
    ((key, attributes),) = content.items()
    if key != spec.key:
        raise BadRequest(f"content is wrapped as {key}, expected {spec.key}")
    if not isinstance(attributes, dict):
        raise BadRequest(f"{spec.key} must be an object")
    return attributes


def check_attributes(spec: ResourceSpec, attributes: dict[str, Any], *, create: bool) -> None:
    """Reject unknown, read-only, mistyped or missing attributes with 4000."""
    for name, value in attributes.items():
        policy = spec.attributes.get(name)
        if policy is None:
            raise BadRequest(f"attribute {name} is not an attribute of {spec.key}")
        rule = policy.create if create else policy.update
        if rule == NP:
            raise BadRequest(f"attribute {name} is read-only for {spec.key}")
        if value is None:
            # null in an UPDATE deletes an optional attribute; in a CREATE only cr may be null.
            if create and name != "cr":
                raise BadRequest(f"attribute {name} must not be null")
            if not create and M in (rule, policy.create):
                raise BadRequest(f"attribute {name} is mandatory and cannot be removed")
            continue
        if name == "cr":
            raise BadRequest("attribute cr may only be sent as null")
        _check_kind(name, policy.kind, value)
        if name == "poa" and not value:
            # An empty list of points of access says nothing a missing one does not; ACME
            # refuses it (4000), so a client learns at once that it named none.
            raise BadRequest("poa must list at least one point of access")
    if create:
        for name, policy in spec.attributes.items():
            if policy.create == M and name not in attributes:
                raise BadRequest(f"mandatory attribute {name} is missing from {spec.key}")

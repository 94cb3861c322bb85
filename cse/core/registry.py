"""Resource types as data: wire key, allowed children and an attribute policy per type.

An attribute policy says what kind of value an attribute holds and whether a CREATE or
UPDATE may set it: M (mandatory), O (optional) or NP (not permitted: the CSE sets it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from cse.core.clock import parse_timestamp
from cse.core.errors import BadRequest
from cse.core.types import ResourceType as T


class Kind(Enum):
    STRING = "string"
    COUNT = "non-negative integer"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    STRINGS = "list of strings"
    OBJECT = "object"
    TIMESTAMP = "timestamp"
    ANY = "any value"


M, O, NP = "M", "O", "NP"  # noqa: E741 - the spec's own letters


@dataclass(frozen=True, slots=True)
class Attribute:
    kind: Kind
    create: str = O
    update: str = O


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    type: T
    key: str  # wrapper key on the wire, e.g. m2m:cnt
    short: str  # the part after "m2m:"
    attributes: dict[str, Attribute]
    children: frozenset[T]
    has_acpi: bool = True
    subscribable: bool = True
    id_prefix: str = ""


_COMMON = {
    "ty": Attribute(Kind.INTEGER, NP, NP),
    "ri": Attribute(Kind.STRING, NP, NP),
    "rn": Attribute(Kind.STRING, O, NP),
    "pi": Attribute(Kind.STRING, NP, NP),
    "ct": Attribute(Kind.TIMESTAMP, NP, NP),
    "lt": Attribute(Kind.TIMESTAMP, NP, NP),
    "et": Attribute(Kind.TIMESTAMP, O, O),
    "lbl": Attribute(Kind.STRINGS, O, O),
    "at": Attribute(Kind.STRINGS, O, O),
    "aa": Attribute(Kind.STRINGS, O, O),
    "cr": Attribute(Kind.ANY, O, NP),  # only null is accepted: the CSE fills in the creator
}
_ACPI = {"acpi": Attribute(Kind.STRINGS, O, O)}


def _spec(
    type_: T,
    short: str,
    attributes: dict[str, Attribute],
    children: set[T],
    *,
    has_acpi: bool = True,
    subscribable: bool = True,
    id_prefix: str = "",
) -> ResourceSpec:
    merged = dict(_COMMON)
    if has_acpi:
        merged.update(_ACPI)
    merged.update(attributes)
    return ResourceSpec(
        type_,
        f"m2m:{short}",
        short,
        merged,
        frozenset(children),
        has_acpi,
        subscribable,
        id_prefix or short,
    )


SPECS: dict[int, ResourceSpec] = {
    spec.type: spec
    for spec in (
        _spec(
            T.CSE_BASE,
            "cb",
            {
                "cst": Attribute(Kind.INTEGER, NP, NP),
                "csi": Attribute(Kind.STRING, NP, NP),
                "srt": Attribute(Kind.ANY, NP, NP),
                "poa": Attribute(Kind.STRINGS, NP, NP),
                "nl": Attribute(Kind.STRING, NP, NP),
                "csz": Attribute(Kind.STRINGS, NP, NP),
                "srv": Attribute(Kind.STRINGS, NP, NP),
            },
            {T.AE, T.CONTAINER, T.GROUP, T.ACCESS_CONTROL_POLICY, T.SUBSCRIPTION, T.REMOTE_CSE},
        ),
        _spec(
            T.AE,
            "ae",
            {
                "api": Attribute(Kind.STRING, M, NP),
                "apn": Attribute(Kind.STRING),
                "aei": Attribute(Kind.STRING, NP, NP),
                "poa": Attribute(Kind.STRINGS),
                "rr": Attribute(Kind.BOOLEAN, M, O),
                "nl": Attribute(Kind.STRING),
                "csz": Attribute(Kind.STRINGS),
                "srv": Attribute(Kind.STRINGS, M, O),
                "or": Attribute(Kind.STRING),
            },
            {T.CONTAINER, T.GROUP, T.ACCESS_CONTROL_POLICY, T.SUBSCRIPTION},
        ),
        _spec(
            T.CONTAINER,
            "cnt",
            {
                "mni": Attribute(Kind.COUNT),
                "mbs": Attribute(Kind.COUNT),
                "mia": Attribute(Kind.COUNT),
                "cni": Attribute(Kind.COUNT, NP, NP),
                "cbs": Attribute(Kind.COUNT, NP, NP),
                "st": Attribute(Kind.COUNT, NP, NP),
                "li": Attribute(Kind.STRING, NP, NP),
                "disr": Attribute(Kind.BOOLEAN),
                "or": Attribute(Kind.STRING),
            },
            {T.CONTENT_INSTANCE, T.CONTAINER, T.SUBSCRIPTION},
        ),
        _spec(
            T.CONTENT_INSTANCE,
            "cin",
            {
                "cnf": Attribute(Kind.STRING, O, NP),
                "con": Attribute(Kind.ANY, M, NP),
                "cs": Attribute(Kind.COUNT, NP, NP),
                "conr": Attribute(Kind.STRING, O, NP),
                "st": Attribute(Kind.COUNT, NP, NP),
                "or": Attribute(Kind.STRING, O, NP),
            },
            set(),
            has_acpi=False,
            subscribable=False,
        ),
        _spec(
            T.SUBSCRIPTION,
            "sub",
            {
                "nu": Attribute(Kind.STRINGS, M, O),
                "enc": Attribute(Kind.OBJECT),
                "exc": Attribute(Kind.COUNT),
                "nct": Attribute(Kind.INTEGER),
                "su": Attribute(Kind.STRING, O, NP),
                "bn": Attribute(Kind.OBJECT),
                "rl": Attribute(Kind.OBJECT),
                "pn": Attribute(Kind.INTEGER),
                "ln": Attribute(Kind.BOOLEAN),
                "nec": Attribute(Kind.INTEGER),
                "nfu": Attribute(Kind.STRINGS),
                "gpi": Attribute(Kind.STRING, O, NP),
                "psn": Attribute(Kind.COUNT),
            },
            set(),
            subscribable=False,
        ),
        _spec(
            T.ACCESS_CONTROL_POLICY,
            "acp",
            {"pv": Attribute(Kind.OBJECT, M, O), "pvs": Attribute(Kind.OBJECT, M, O)},
            {T.SUBSCRIPTION},
            has_acpi=False,
        ),
        _spec(
            T.GROUP,
            "grp",
            {
                "mt": Attribute(Kind.INTEGER, O, NP),
                "cnm": Attribute(Kind.COUNT, NP, NP),
                "mnm": Attribute(Kind.COUNT, M, O),
                "mid": Attribute(Kind.STRINGS, M, O),
                "macp": Attribute(Kind.STRINGS),
                "mtv": Attribute(Kind.BOOLEAN, NP, NP),
                "csy": Attribute(Kind.INTEGER, O, NP),
                "gn": Attribute(Kind.STRING),
            },
            {T.SUBSCRIPTION},
        ),
        _spec(
            T.REMOTE_CSE,
            "csr",
            {
                "cst": Attribute(Kind.INTEGER, O, NP),
                "poa": Attribute(Kind.STRINGS),
                "cb": Attribute(Kind.STRING, M, NP),
                "csi": Attribute(Kind.STRING, M, NP),
                "rr": Attribute(Kind.BOOLEAN, M, O),
                "nl": Attribute(Kind.STRING),
                "csz": Attribute(Kind.STRINGS),
                "srv": Attribute(Kind.STRINGS, M, O),
                "dcse": Attribute(Kind.STRINGS),
            },
            {T.CONTAINER, T.GROUP, T.ACCESS_CONTROL_POLICY, T.SUBSCRIPTION},
        ),
    )
}

SPECS_BY_KEY: dict[str, ResourceSpec] = {spec.key: spec for spec in SPECS.values()}


def spec_for(resource_type: int) -> ResourceSpec:
    try:
        return SPECS[resource_type]
    except KeyError:
        raise BadRequest(f"resource type {resource_type} is not supported") from None


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
    elif kind is Kind.INTEGER:
        ok = isinstance(value, int) and not isinstance(value, bool)
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
    if create:
        for name, policy in spec.attributes.items():
            if policy.create == M and name not in attributes:
                raise BadRequest(f"mandatory attribute {name} is missing from {spec.key}")

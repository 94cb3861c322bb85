"""Filter criteria as a primitive carries them: the `fc` object of a JSON or CBOR request.

HTTP and CoAP spell filter criteria as query strings; over MQTT they arrive as an object,
`{"fu": 1, "ty": [3], "lbl": ["floor1"], "lim": 10, "atr": [{"nm": "rn", "val": "x"}]}`.
A list may also be given as a single value; an attribute condition may also be a plain
`"<attribute>": value` member, as ACME accepts.
"""

from __future__ import annotations

from typing import Any

from cse.bindings.query import ALL_ATTRIBUTES, INTEGER_FILTERS, TIMESTAMP_FILTERS
from cse.core.clock import parse_timestamp
from cse.core.errors import BadRequest
from cse.core.primitives import FilterCriteria

_TIMESTAMPS = TIMESTAMP_FILTERS
_INTEGERS = INTEGER_FILTERS
_ATTRIBUTE_NAMES = ALL_ATTRIBUTES


def integer(name: str, value: Any, *, lowest: int = 0) -> int:
    """A number as JSON/CBOR carries it (a string of digits is tolerated)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value < 1 << 63:
        raise BadRequest(f"{name} must be an integer of at least {lowest}")
    return value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _condition_value(name: str, value: Any) -> str:
    """An attribute condition compares as text (booleans as the wire spells them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise BadRequest(f"the condition on {name} must be a string, number or boolean")


def _attribute_conditions(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [(_text("atr name", k), _condition_value(str(k), v)) for k, v in value.items()]
    conditions = []
    for item in _list(value):
        if not isinstance(item, dict) or "nm" not in item or "val" not in item:
            raise BadRequest("atr must be a list of {nm, val}")
        name = _text("atr nm", item["nm"])
        conditions.append((name, _condition_value(name, item["val"])))
    return conditions


def filter_from_primitive(fc: Any) -> FilterCriteria | None:
    """FilterCriteria from the `fc` member of a request primitive (None: no filter)."""
    if fc is None:
        return None
    if not isinstance(fc, dict):
        raise BadRequest("filter criteria (fc) must be an object")
    fields: dict[str, Any] = {}
    attributes: list[tuple[str, str]] = []
    for name, value in fc.items():
        if name == "ty":
            fields["resource_types"] = tuple(integer("fc.ty", v) for v in _list(value))
        elif name in ("lbl", "cty"):
            texts = tuple(_text(f"fc.{name}", v) for v in _list(value))
            fields["labels" if name == "lbl" else "content_types"] = texts
        elif name in _TIMESTAMPS:
            try:
                parse_timestamp(value)
            except ValueError:
                raise BadRequest(f"fc.{name} must be a timestamp YYYYMMDDThhmmss") from None
            fields[_TIMESTAMPS[name]] = value
        elif name in _INTEGERS:
            fields[_INTEGERS[name]] = integer(f"fc.{name}", value)
        elif name == "atr":
            attributes.extend(_attribute_conditions(value))
        elif name in _ATTRIBUTE_NAMES:
            attributes.extend((name, _condition_value(name, v)) for v in _list(value))
        else:
            raise BadRequest(f"unknown filter criterion {str(name)[:40]}")
    if fields.get("filter_usage", 2) not in (1, 2):
        raise BadRequest("fc.fu must be 1 (discovery) or 2 (conditional retrieval)")
    if fields.get("filter_operation", 1) not in (1, 2):
        raise BadRequest("fc.fo must be 1 (AND) or 2 (OR)")
    if not fields and not attributes:
        return None
    return FilterCriteria(attributes=tuple(attributes), **fields)


def filter_to_primitive(criteria: FilterCriteria) -> dict[str, Any]:
    """The `fc` object for `criteria` (the inverse of filter_from_primitive)."""
    fc: dict[str, Any] = {}
    if criteria.resource_types:
        fc["ty"] = [int(t) for t in criteria.resource_types]
    if criteria.labels:
        fc["lbl"] = list(criteria.labels)
    if criteria.content_types:
        fc["cty"] = list(criteria.content_types)
    for name, field in (*_TIMESTAMPS.items(), *_INTEGERS.items()):
        value = getattr(criteria, field)
        if value is not None and not (name == "fo" and value == 1):
            fc[name] = value
    if criteria.attributes:
        fc["atr"] = [{"nm": name, "val": value} for name, value in criteria.attributes]
    return fc

"""Request parameters carried as query strings, shared by the bindings that use them.

HTTP (TS-0009) and CoAP (TS-0008) both put `rcn`, `drt`, `atrl`, `rt` and the filter criteria
into the request URI's query with the spec's short names. Each binding collects the query into
`{name: [values...]}` its own way and hands it here; this module knows nothing of transports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cse.core.clock import parse_timestamp
from cse.core.errors import BadRequest
from cse.core.primitives import FilterCriteria, Request
from cse.core.registry import SPECS, SPECS_BY_KEY
from cse.core.types import ResultContent

# Filter-criteria short names and the FilterCriteria field each fills (shared with MQTT).
TIMESTAMP_FILTERS = {
    "crb": "created_before",
    "cra": "created_after",
    "ms": "modified_since",
    "us": "unmodified_since",
    "exb": "expire_before",
    "exa": "expire_after",
}
INTEGER_FILTERS = {
    "sts": "state_tag_smaller",
    "stb": "state_tag_bigger",
    "sza": "size_above",
    "szb": "size_below",
    "lim": "limit",
    "lvl": "level",
    "ofst": "offset",
    "fu": "filter_usage",
    "fo": "filter_operation",
}
# Request parameters (not filter criteria) that may appear in a query.
REQUEST_QUERY = {"rcn", "rt", "rp", "drt", "atrl", "da", "rids", "tids", "ltids", "tqi", "asi",
                 "auri", "sqi"}  # fmt: skip
# Attributes a query may name: those oneM2M defines (of m2m: resources, mgmtObj
# specializations included), not a flexContainer model's data points (TS-0023 cod:/cid:
# keys), which ACME refuses too.
ALL_ATTRIBUTES = {
    name
    for spec in (*SPECS.values(), *SPECS_BY_KEY.values())
    if spec.key.startswith("m2m:")
    for name in spec.attributes
}


def integer(name: str, text: str) -> int:
    """A non-negative integer query value, ASCII digits only."""
    text = text.strip()
    # int() would also take '+5', '1_000' or other scripts' digits; a query holds ASCII digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequest(f"query parameter {name[:40]} must be a non-negative integer")
    return int(text)


def _timestamp(name: str, text: str) -> str:
    try:
        parse_timestamp(text)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a timestamp YYYYMMDDThhmmss") from None
    return text


def values(raw: Iterable[str]) -> list[str]:
    """Multiple values come as repeated keys or joined with '+' (a space once URL-decoded)."""
    return [part for item in raw for part in item.replace(" ", "+").split("+") if part]


def filter_from_query(query: dict[str, list[str]]) -> FilterCriteria | None:
    fields: dict[str, Any] = {}
    attributes: list[tuple[str, str]] = []
    for name, raw in query.items():
        if name in REQUEST_QUERY:
            continue
        if name == "ty":
            fields["resource_types"] = tuple(integer(name, v) for v in values(raw))
        elif name == "lbl":
            fields["labels"] = tuple(values(raw))
        elif name == "cty":
            fields["content_types"] = tuple(values(raw))
        elif name in TIMESTAMP_FILTERS:
            fields[TIMESTAMP_FILTERS[name]] = _timestamp(name, raw[-1])
        elif name in INTEGER_FILTERS:
            fields[INTEGER_FILTERS[name]] = integer(name, raw[-1])
        elif name in ALL_ATTRIBUTES:
            attributes.extend((name, value) for value in raw)
        else:
            raise BadRequest(f"unknown query parameter {name[:40]}")
    if not fields and not attributes:
        return None
    if fields.get("filter_usage", 2) not in (1, 2):
        raise BadRequest("fu must be 1 (discovery) or 2 (conditional retrieval)")
    if fields.get("filter_operation", 1) not in (1, 2):
        raise BadRequest("fo must be 1 (AND) or 2 (OR)")
    return FilterCriteria(attributes=tuple(attributes), **fields)


def filter_to_query(criteria: FilterCriteria) -> list[tuple[str, str]]:
    """The query parameters that carry `criteria` (the inverse of filter_from_query)."""
    query: list[tuple[str, str]] = []
    if criteria.filter_usage is not None:
        query.append(("fu", str(criteria.filter_usage)))
    query.extend(("ty", str(int(t))) for t in criteria.resource_types)
    query.extend(("lbl", label) for label in criteria.labels)
    query.extend(("cty", media) for media in criteria.content_types)
    for name, field in (*TIMESTAMP_FILTERS.items(), *INTEGER_FILTERS.items()):
        if name in ("fu", "fo"):
            continue
        value = getattr(criteria, field)
        if value is not None:
            query.append((name, str(value)))
    if criteria.filter_operation != 1:
        query.append(("fo", str(criteria.filter_operation)))
    query.extend(criteria.attributes)
    return query


@dataclass(frozen=True, slots=True)
class QueryParameters:
    """The request primitive's fields that a query string carries."""

    result_content: ResultContent | None = None
    discovery_result_type: int | None = None
    attribute_list: tuple[str, ...] = ()
    response_type: int | None = None
    filter_criteria: FilterCriteria | None = None


def _single(query: dict[str, list[str]], name: str) -> int | None:
    raw = query.get(name)
    return None if raw is None else integer(name, raw[-1])


def _response_type(query: dict[str, list[str]]) -> int | None:
    value = _single(query, "rt")
    if value is not None and not 1 <= value <= 5:
        raise BadRequest("rt must be a response type 1..5")
    return value


def parameters_from_query(query: dict[str, list[str]]) -> QueryParameters:
    """rcn, drt, atrl, rt and the filter criteria; BadRequest for anything unknown or invalid."""
    result_content = _single(query, "rcn")
    try:
        rcn = None if result_content is None else ResultContent(result_content)
    except ValueError:
        raise BadRequest(f"result content {result_content} is not defined") from None
    drt = _single(query, "drt")
    if drt not in (None, 1, 2):
        raise BadRequest("drt must be 1 (structured) or 2 (unstructured)")
    return QueryParameters(
        result_content=rcn,
        discovery_result_type=drt,
        attribute_list=tuple(values(query.get("atrl", []))),
        response_type=_response_type(query),
        filter_criteria=filter_from_query(query),
    )


def response_targets(text: str | None) -> tuple[str, ...]:
    """rt's notification URIs as HTTP (X-M2M-RTU) and CoAP (oneM2M-RTURI) carry them: one
    string, the URIs joined with '&'."""
    if text is None:
        return ()
    return tuple(part.strip() for part in text.split("&") if part.strip())


def request_query(request: Request) -> list[tuple[str, str]]:
    """Query parameters of a request primitive to be sent (rcn, drt, atrl, rt, filters)."""
    query: list[tuple[str, str]] = []
    if request.result_content is not None:
        query.append(("rcn", str(int(request.result_content))))
    if request.discovery_result_type is not None:
        query.append(("drt", str(request.discovery_result_type)))
    if request.attribute_list:
        query.append(("atrl", "+".join(request.attribute_list)))
    if request.response_type is not None:
        query.append(("rt", str(request.response_type)))
    if request.filter_criteria is not None:
        query.extend(filter_to_query(request.filter_criteria))
    return query

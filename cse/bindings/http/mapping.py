"""TS-0009 mapping tables: status codes, URL paths, headers and query parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cse.core.clock import parse_timestamp
from cse.core.errors import BadRequest
from cse.core.primitives import FilterCriteria, Request
from cse.core.registry import SPECS
from cse.core.types import ResponseStatusCode as RSC

_HTTP_STATUS: dict[int, int] = {
    1000: 202, 1001: 202, 1002: 202,
    2000: 200, 2001: 201, 2002: 200, 2004: 200,
    4000: 400, 4001: 501, 4004: 404, 4005: 405, 4008: 504, 4015: 415,
    4102: 400, 4104: 409, 4105: 409, 4110: 400, 4124: 409,
    5000: 500, 5001: 501, 5103: 404, 5106: 409, 5107: 404, 5204: 500, 5206: 501,
    5207: 406, 5209: 500, 5219: 409, 5220: 409, 6003: 404, 6005: 404, 6010: 400,
}  # fmt: skip


def http_status(rsc: int) -> int:
    if rsc in _HTTP_STATUS:
        return _HTTP_STATUS[rsc]
    if 4100 <= rsc < 4200 or 5100 <= rsc < 5300:
        return 403  # most access and security codes
    return 500 if rsc >= 5000 else 400


def rsc_from_http(status: int) -> int:
    """Best guess when a peer answered without X-M2M-RSC."""
    return {
        200: 2000,
        201: 2001,
        202: 1000,
        204: 2000,
        400: 4000,
        403: 4103,
        404: 4004,
        405: 4005,
        409: 4105,
        415: 4015,
        501: 5001,
        504: 4008,
    }.get(status, 5000)


def path_to_target(path: str) -> str:
    """/cse-in/ae → cse-in/ae; /~/id-in/cse-in → /id-in/cse-in; /_/sp/id-in → //sp/id-in."""
    if path.startswith("/~/"):
        return path[2:]
    if path.startswith("/_/"):
        return "/" + path[2:]
    return path[1:]


def target_to_path(to: str) -> str:
    if to.startswith("//"):
        return "/_/" + to[2:]
    if to.startswith("/"):
        return "/~" + to
    return "/" + to


_TIMESTAMP_FILTERS = {
    "crb": "created_before",
    "cra": "created_after",
    "ms": "modified_since",
    "us": "unmodified_since",
    "exb": "expire_before",
    "exa": "expire_after",
}
_INTEGER_FILTERS = {
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
REQUEST_QUERY = {"rcn", "rt", "rp", "drt", "atrl", "da", "rids", "tids", "ltids", "tqi", "asi",
                 "auri", "sqi"}  # fmt: skip
_ALL_ATTRIBUTES = {name for spec in SPECS.values() for name in spec.attributes}


def _integer(name: str, text: str) -> int:
    text = text.strip()
    # int() would also take '+5', '1_000' or other scripts' digits; a query holds ASCII digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequest(f"query parameter {name} must be a non-negative integer")
    return int(text)


def _timestamp(name: str, text: str) -> str:
    try:
        parse_timestamp(text)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a timestamp YYYYMMDDThhmmss") from None
    return text


def _values(raw: Iterable[str]) -> list[str]:
    # Multiple values come as repeated keys or joined with '+' (a space once decoded).
    return [part for item in raw for part in item.replace(" ", "+").split("+") if part]


def filter_from_query(query: dict[str, list[str]]) -> FilterCriteria | None:
    fields: dict[str, Any] = {}
    attributes: list[tuple[str, str]] = []
    for name, raw in query.items():
        if name in REQUEST_QUERY:
            continue
        if name == "ty":
            fields["resource_types"] = tuple(_integer(name, v) for v in _values(raw))
        elif name == "lbl":
            fields["labels"] = tuple(_values(raw))
        elif name == "cty":
            fields["content_types"] = tuple(_values(raw))
        elif name in _TIMESTAMP_FILTERS:
            fields[_TIMESTAMP_FILTERS[name]] = _timestamp(name, raw[-1])
        elif name in _INTEGER_FILTERS:
            fields[_INTEGER_FILTERS[name]] = _integer(name, raw[-1])
        elif name in _ALL_ATTRIBUTES:
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
    for name, field in (*_TIMESTAMP_FILTERS.items(), *_INTEGER_FILTERS.items()):
        if name in ("fu", "fo"):
            continue
        value = getattr(criteria, field)
        if value is not None:
            query.append((name, str(value)))
    if criteria.filter_operation != 1:
        query.append(("fo", str(criteria.filter_operation)))
    query.extend(criteria.attributes)
    return query


def request_query(request: Request) -> list[tuple[str, str]]:
    """Query parameters of a request primitive sent over HTTP (rcn, drt, atrl, filters)."""
    query: list[tuple[str, str]] = []
    if request.result_content is not None:
        query.append(("rcn", str(int(request.result_content))))
    if request.response_type is not None:
        query.append(("rt", str(request.response_type)))
    if request.discovery_result_type is not None:
        query.append(("drt", str(request.discovery_result_type)))
    if request.attribute_list:
        query.append(("atrl", "+".join(request.attribute_list)))
    if request.filter_criteria is not None:
        query.extend(filter_to_query(request.filter_criteria))
    return query


def status_code(value: str | None) -> RSC | None:
    if value is None:
        return None
    try:
        return RSC(int(value))
    except ValueError:
        return None

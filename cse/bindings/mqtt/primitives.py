"""Whole primitives in one payload (TS-0010): bytes ↔ `Request` / `Response`.

Over MQTT every parameter travels inside the payload with its short name (`op`, `to`, `fr`,
`rqi`, `rvi`, `ty`, `pc`, `rcn`, `fc`, `drt`, `rqet`, `rt`…), JSON or CBOR as the topic
says. A `{"m2m:rqp": {...}}` / `{"m2m:rsp": {...}}` wrapper is accepted. Anything that cannot
become a request raises `Rejected`, which keeps what could be read (rqi, rvi, fr) so the error
response can still be matched by the originator.
"""

from __future__ import annotations

import re
from typing import Any

from cse.bindings.mqtt.filters import filter_from_primitive, filter_to_primitive, integer
from cse.core.clock import format_timestamp, parse_timestamp
from cse.core.errors import BadRequest, M2MError
from cse.core.primitives import Request, Response
from cse.core.types import ContentStatus, Operation, ResultContent
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import decode, encode

_WIRE_OPERATIONS = frozenset(range(1, 6))
_MILLISECONDS = re.compile(r"-?[0-9]{1,15}")
# Members read into Request fields; the rest of a primitive is kept in Request.extra.
_KNOWN = frozenset(
    {"op", "to", "fr", "rqi", "rvi", "ty", "pc", "rcn", "fc", "drt", "rqet", "ot", "ec", "gid",
     "vsi", "rt", "atrl"}
)  # fmt: skip


class Rejected(Exception):
    """A payload that is no usable request; answered with `status` where a topic allows."""

    def __init__(self, status: RSC, message: str, echo: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.echo = echo or {}  # rqi / rvi / fr as far as they could be read


def decode_primitive(payload: bytes, serialization: str, wrapper: str) -> dict[str, Any]:
    """The primitive object of a payload, unwrapped from `wrapper` (m2m:rqp / m2m:rsp)."""
    if not payload:
        raise BadRequest("the payload is empty: it must hold the whole primitive")
    primitive = decode(payload, serialization)
    if isinstance(primitive, dict) and len(primitive) == 1 and wrapper in primitive:
        primitive = primitive[wrapper]
    if not isinstance(primitive, dict):
        raise BadRequest("the payload must hold one primitive object")
    return primitive


def _echo(primitive: dict[str, Any]) -> dict[str, str]:
    """rqi, rvi and fr, where they are readable, for answering a broken request."""
    echo = {}
    for name in ("rqi", "rvi", "fr"):
        value = primitive.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str) and len(value) <= 1024:
            echo[name] = value
    return echo


def _string(primitive: dict[str, Any], name: str, *, numbers: bool = False) -> str | None:
    value = primitive.get(name)
    if value is None:
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _optional_integer(primitive: dict[str, Any], name: str) -> int | None:
    value = primitive.get(name)
    return None if value is None else integer(name, value)


def _response_type(value: Any) -> tuple[int | None, tuple[str, ...]]:
    """rt is {"rtv": n, "nu": [...]}; a bare number is tolerated. (rtv, nu)"""
    if value is None:
        return None, ()
    targets: tuple[str, ...] = ()
    if isinstance(value, dict):
        nu = value.get("nu")
        if nu is not None:
            if not isinstance(nu, list) or not all(isinstance(url, str) and url for url in nu):
                raise BadRequest("rt.nu must be a list of notification targets")
            targets = tuple(nu)
        value = value.get("rtv")
        if value is None:
            return None, targets
    response_type = integer("rt.rtv", value, lowest=1)
    if response_type > 5:
        raise BadRequest("rt.rtv must be a response type 1..5")
    return response_type, targets


def _expiration(primitive: dict[str, Any]) -> str | None:
    """rqet for the core. A relative one (milliseconds) counts from `ot` when the request
    has one, so a request that waited in the broker's queue past its deadline gets 4008."""
    value = primitive.get("rqet")
    if value is None:
        return None
    if isinstance(value, str):
        if not _MILLISECONDS.fullmatch(value):
            return value  # an absolute timestamp: the core checks it
        milliseconds = int(value)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**15:
        milliseconds = value
    else:
        raise BadRequest("rqet must be a timestamp or a number of milliseconds")
    origin = primitive.get("ot")
    if origin is None:
        return str(milliseconds)  # relative to arrival: the core lets it through
    try:
        start = parse_timestamp(origin)
    except ValueError:
        raise BadRequest("ot must be a timestamp YYYYMMDDThhmmss") from None
    return format_timestamp(max(0.0, start + milliseconds / 1000))


def _attribute_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    names = value if isinstance(value, list) else [value]
    if not all(isinstance(name, str) for name in names):
        raise BadRequest("atrl must be a list of attribute names")
    return tuple(names)


def request_from_primitive(primitive: dict[str, Any]) -> Request:
    """A Request from a decoded request primitive; raises Rejected if it is not one."""
    try:
        return _request(primitive)
    except M2MError as error:
        raise Rejected(error.status, error.message, _echo(primitive)) from None


def _request(primitive: dict[str, Any]) -> Request:
    operation = primitive.get("op")
    if operation is None:
        raise BadRequest("operation (op) missing")
    operation = integer("op", operation, lowest=1)
    if operation not in _WIRE_OPERATIONS:
        raise BadRequest(f"operation (op) {operation} is not 1 to 5")
    to = _string(primitive, "to")
    if not to:
        raise BadRequest("target (to) missing")
    resource_type = _optional_integer(primitive, "ty")
    if resource_type is not None and operation != Operation.CREATE:
        raise BadRequest("ty is only allowed in a CREATE")
    result_content = _optional_integer(primitive, "rcn")
    if result_content is not None and result_content not in ResultContent._value2member_map_:
        raise BadRequest(f"result content (rcn) {result_content} is not defined")
    discovery_result_type = _optional_integer(primitive, "drt")
    if discovery_result_type not in (None, 1, 2):
        raise BadRequest("drt must be 1 (structured) or 2 (unstructured)")
    response_type, response_targets = _response_type(primitive.get("rt"))
    return Request(
        operation=Operation(operation),
        to=to,
        originator=_string(primitive, "fr"),
        request_id=_string(primitive, "rqi", numbers=True) or "",
        release_version=_string(primitive, "rvi", numbers=True),
        resource_type=resource_type,
        content=primitive.get("pc"),
        result_content=None if result_content is None else ResultContent(result_content),
        filter_criteria=filter_from_primitive(primitive.get("fc")),
        discovery_result_type=discovery_result_type,
        request_expiration=_expiration(primitive),
        originating_timestamp=_string(primitive, "ot"),
        event_category=_optional_integer(primitive, "ec"),
        group_request_id=_string(primitive, "gid"),
        attribute_list=_attribute_list(primitive.get("atrl")),
        vendor_information=_string(primitive, "vsi"),
        response_type=response_type,
        response_targets=response_targets,
        deduplicate=True,  # QoS 1 is at-least-once: a redelivered CREATE must not create twice
        extra={name: value for name, value in primitive.items() if name not in _KNOWN},
    )


def request_to_primitive(request: Request) -> dict[str, Any]:
    """The request primitive that carries `request` (for MqttClient)."""
    primitive: dict[str, Any] = {
        "op": int(request.operation),
        "to": request.to,
        "rqi": request.request_id,
        "rvi": request.release_version or "3",
    }
    optional: dict[str, Any] = {
        "fr": request.originator,
        "ty": None if request.resource_type is None else int(request.resource_type),
        "pc": request.content,
        "rcn": None if request.result_content is None else int(request.result_content),
        "fc": None
        if request.filter_criteria is None
        else filter_to_primitive(request.filter_criteria),
        "drt": request.discovery_result_type,
        "rqet": request.request_expiration,
        "ot": request.originating_timestamp,
        "ec": request.event_category,
        "gid": request.group_request_id,
        "vsi": request.vendor_information,
        "rt": _response_type_member(request),
        "atrl": list(request.attribute_list) or None,
    }
    primitive.update({name: value for name, value in optional.items() if value is not None})
    return primitive


def _response_type_member(request: Request) -> dict[str, Any] | None:
    if request.response_type is None:
        return None
    member: dict[str, Any] = {"rtv": request.response_type}
    if request.response_targets:
        member["nu"] = list(request.response_targets)
    return member


def response_to_primitive(response: Response, to: str | None) -> dict[str, Any]:
    """The response primitive for `response`; `to` is the originator of the request."""
    primitive: dict[str, Any] = {"rsc": int(response.status), "rqi": response.request_id}
    optional = {
        "rvi": response.release_version,
        "pc": response.content,
        "to": to,
        "fr": response.originator,
        "cnst": None if response.content_status is None else int(response.content_status),
        "cnot": response.content_offset,
    }
    primitive.update({name: value for name, value in optional.items() if value is not None})
    return primitive


def response_from_primitive(primitive: dict[str, Any]) -> Response:
    """A Response from a decoded response primitive (for MqttClient)."""
    status = integer("rsc", primitive.get("rsc"), lowest=1000)
    try:
        code = RSC(status)
    except ValueError:
        raise BadRequest(f"response status code {status} is not known") from None
    status_of_content = primitive.get("cnst")
    return Response(
        code,
        _string(primitive, "rqi", numbers=True) or "",
        _string(primitive, "rvi", numbers=True),
        primitive.get("pc"),
        originator=_string(primitive, "fr"),
        to=_string(primitive, "to"),
        content_status=ContentStatus(status_of_content) if status_of_content in (1, 2) else None,
        content_offset=primitive["cnot"] if isinstance(primitive.get("cnot"), int) else None,
    )


def error_primitive(status: RSC, message: str, echo: dict[str, str], cse_id: str) -> dict[str, Any]:
    """The response to a request that never reached the core."""
    primitive: dict[str, Any] = {"rsc": int(status), "rqi": echo.get("rqi", "")}
    if "rvi" in echo:
        primitive["rvi"] = echo["rvi"]
    primitive["pc"] = {"m2m:dbg": message}
    if "fr" in echo:
        primitive["to"] = echo["fr"]
    primitive["fr"] = cse_id
    return primitive


def encode_primitive(primitive: dict[str, Any], serialization: str) -> bytes:
    return encode(primitive, serialization)

"""Transport-free TS-0008 codec: CoAP options and payloads ↔ oneM2M request/response primitives.

Incoming messages are seen as a code, a list of raw `(option number, bytes)` pairs in wire order
and a payload, so this module can be tested and fuzzed without aiocoap or a socket. Outgoing
messages are built as `CoapMessage`; `messages.py` converts between the two and aiocoap.

oneM2M options are read under their current numbers and under the pre-2022 ones (the current
number wins when both are present); TY is accepted as a uint or as ASCII digits.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cse.bindings.coap.mapping import (
    CONTENT_FORMATS,
    LEGACY_OPTIONS,
    OPTION_NUMBERS,
    PARAMETER_OPTIONS,
    REPEATABLE,
    REPLY_FORMATS,
    UINT_PARAMETERS,
    UNDERSTOOD_CRITICAL,
    Code,
    Option,
    coap_code,
    is_critical,
    path_from_target,
    rsc_from_coap,
    target_from_path,
)
from cse.bindings.query import integer, parameters_from_query, request_query, response_targets
from cse.core.errors import (
    BadRequest,
    M2MError,
    NotAcceptable,
    OperationNotAllowed,
    UnsupportedMediaType,
)
from cse.core.primitives import Request, Response, error_content
from cse.core.registry import SPECS
from cse.core.types import ContentStatus, Operation
from cse.core.types import ResponseStatusCode as RSC
from cse.serialization import JSON, decode, encode

logger = logging.getLogger(__name__)

RawOptions = Sequence[tuple[int, bytes]]

_METHODS = {Code.GET: Operation.RETRIEVE, Code.PUT: Operation.UPDATE, Code.DELETE: Operation.DELETE}
_METHOD_OF = {
    Operation.CREATE: Code.POST,
    Operation.NOTIFY: Code.POST,
    Operation.RETRIEVE: Code.GET,
    Operation.UPDATE: Code.PUT,
    Operation.DELETE: Code.DELETE,
}
# Parameters with no field of their own in Request; kept in Request.extra by short name.
_EXTRA_PARAMETERS = ("asri", "rset", "oet", "ati", "gtm", "aus", "omr", "prpi", "msu")


class OptionRejected(BadRequest):
    """A critical option that is unknown, or repeated where it may not be: 4.02 Bad Option."""

    coap = Code.BAD_OPTION


@dataclass(frozen=True, slots=True)
class CoapMessage:
    """An outgoing CoAP message in plain data: Uri-Path for requests, Location-Path for replies."""

    code: int
    path: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    content_format: int | None = None
    accept: int | None = None
    options: tuple[tuple[int, bytes], ...] = ()  # oneM2M options, already encoded
    payload: bytes = b""


@dataclass(slots=True)
class _Options:
    parameters: dict[str, bytes] = field(default_factory=dict)
    path: list[bytes] = field(default_factory=list)
    query: list[bytes] = field(default_factory=list)
    location: list[bytes] = field(default_factory=list)
    content_format: bytes | None = None
    accept: bytes | None = None


def _collect(options: RawOptions, *, strict: bool) -> _Options:
    """Sort options by meaning; `strict` enforces RFC 7252 §5.4.1 and §5.4.5 (→ 4.02)."""
    collected = _Options()
    legacy: dict[str, bytes] = {}
    seen: set[int] = set()
    for number, value in options:
        if number in seen and number not in REPEATABLE:
            if strict and is_critical(number):
                raise OptionRejected(f"option {number} must not be repeated")
            continue  # a surplus elective option is ignored like an unknown one
        seen.add(number)
        if number == Option.URI_PATH:
            collected.path.append(value)
        elif number == Option.URI_QUERY:
            collected.query.append(value)
        elif number == Option.LOCATION_PATH:
            collected.location.append(value)
        elif number == Option.CONTENT_FORMAT:
            collected.content_format = value
        elif number == Option.ACCEPT:
            collected.accept = value
        elif number in PARAMETER_OPTIONS:
            collected.parameters[PARAMETER_OPTIONS[number]] = value
        elif number in LEGACY_OPTIONS:
            legacy[LEGACY_OPTIONS[number]] = value
        elif strict and is_critical(number) and number not in UNDERSTOOD_CRITICAL:
            raise OptionRejected(f"critical option {number} is not supported")
    collected.parameters = {**legacy, **collected.parameters}
    return collected


def check_options(options: RawOptions) -> None:
    """Raise OptionRejected for what a CoAP server must refuse with 4.02 Bad Option."""
    _collect(options, strict=True)


def _uint(name: str, raw: bytes) -> int:
    if len(raw) > 4:
        raise BadRequest(f"option {name} is longer than 4 bytes")
    return int.from_bytes(raw, "big")


def _text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"option {name} is not UTF-8") from None


def _resource_type(raw: bytes) -> int:
    """TY as a uint, or as ASCII digits (b"4" = 0x34) as some clients send it.

    A single ASCII digit is also a uint (0x30-0x39 = 48-57); the uint reading wins when it
    names a resource type this CSE knows, so no supported type can be misread.
    """
    if raw.isdigit() and len(raw) <= 5 and int.from_bytes(raw, "big") not in SPECS:
        return int(raw)
    return _uint("ty", raw)


def _serialization(raw: bytes | None, *, accept: bool) -> str | None:
    if raw is None:
        return None
    number = int.from_bytes(raw[:4], "big")
    serialization = CONTENT_FORMATS.get(number) if len(raw) <= 2 else None
    if serialization is None:
        if accept:
            raise NotAcceptable(f"Accept {number} cannot be produced: only 50 (JSON), 60 (CBOR)")
        raise UnsupportedMediaType(f"Content-Format {number} is not supported: use 50 or 60")
    return serialization


def _query(raw: list[bytes]) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for item in raw:
        name, _, value = _text("Uri-Query", item).partition("=")
        query.setdefault(name, []).append(value)
    return query


def _operation(method: int, query: dict[str, list[str]], has_type: bool) -> Operation:
    if method == Code.POST:
        if "op" in query:  # non-blocking style: op travels in the query (TS-0008 §6.2.2.2)
            op = integer("op", query.pop("op")[-1])
            if not 1 <= op <= 5:
                raise BadRequest("op must be 1 to 5")
            return Operation(op)
        return Operation.CREATE if has_type else Operation.NOTIFY
    if "op" in query:
        raise BadRequest("op in Uri-Query is only allowed with POST")
    if method in (Code.GET, Code.PUT, Code.DELETE):
        return _METHODS[Code(method)]
    raise OperationNotAllowed(f"CoAP method {method} has no oneM2M operation")


def decode_request(method: int, options: RawOptions, payload: bytes) -> tuple[Request, str]:
    """The request primitive a CoAP request carries, and the serialization to answer in."""
    found = _collect(options, strict=True)
    parameters = found.parameters
    query = _query(found.query)
    operation = _operation(method, query, "ty" in parameters)
    resource_type = _resource_type(parameters["ty"]) if "ty" in parameters else None
    if resource_type is not None and operation != Operation.CREATE:
        raise BadRequest("oneM2M-TY is only allowed in a CREATE")
    serialization = _serialization(found.content_format, accept=False) or JSON
    reply_in = _serialization(found.accept, accept=True) or serialization
    text = {
        name: _text(name, value)
        for name, value in parameters.items()
        if name not in UINT_PARAMETERS
    }
    event_category = _uint("ec", parameters["ec"]) if "ec" in parameters else None
    from_query = parameters_from_query(query)
    primitive = Request(
        operation=operation,
        to=target_from_path([_text("Uri-Path", segment) for segment in found.path]),
        originator=text.get("fr"),
        request_id=text.get("rqi", ""),
        release_version=text.get("rvi"),
        resource_type=resource_type,
        content=decode(payload, serialization),
        result_content=from_query.result_content,
        filter_criteria=from_query.filter_criteria,
        discovery_result_type=from_query.discovery_result_type,
        request_expiration=text.get("rqet"),
        originating_timestamp=text.get("ot"),
        event_category=event_category,
        group_request_id=text.get("gid"),
        attribute_list=from_query.attribute_list,
        vendor_information=text.get("vsi"),
        response_type=from_query.response_type,
        response_targets=response_targets(text.get("rturi")),
        # A CON is at-least-once: aiocoap drops a retransmission with the same message ID, but
        # a client that gives up and sends the request again (new message ID, same RQI) must
        # not create twice either.
        deduplicate=True,
        extra={name: text[name] for name in _EXTRA_PARAMETERS if name in text},
    )
    return primitive, reply_in


def error_reply(
    options: RawOptions, status: RSC, message: str, code: int | None = None
) -> CoapMessage:
    """An error answer to a request that was not (fully) understood; never raises."""
    found = _collect(options, strict=False)
    serialization = JSON
    for raw, accept in ((found.content_format, False), (found.accept, True)):
        with contextlib.suppress(M2MError):
            serialization = _serialization(raw, accept=accept) or serialization
    echo = {
        name: found.parameters[name].decode("utf-8", "replace")
        for name in ("rqi", "rvi")
        if name in found.parameters
    }
    response = Response(status, echo.get("rqi", ""), echo.get("rvi"), error_content(message))
    reply = encode_response(response, None, serialization)
    return reply if code is None else replace(reply, code=code)


def _uint_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def parameter_options(values: Mapping[str, Any]) -> tuple[tuple[int, bytes], ...]:
    """oneM2M options for primitive parameters given by short name (None values are left out)."""
    encoded = []
    for name, value in values.items():
        if value is None:
            continue
        raw = _uint_bytes(int(value)) if name in UINT_PARAMETERS else str(value).encode()
        encoded.append((OPTION_NUMBERS[name], raw))
    return tuple(sorted(encoded, key=lambda item: item[0]))


def encode_response(
    response: Response, operation: Operation | None, serialization: str
) -> CoapMessage:
    status = int(response.status)
    try:
        payload = encode(response.content, serialization)
    except Exception:  # the core produced content that cannot be serialized: a bug
        logger.exception("cannot serialize the response to %s", response.request_id)
        status = int(RSC.INTERNAL_SERVER_ERROR)
        payload = encode(error_content("response could not be serialized"), serialization)
    code = coap_code(status, operation)
    if operation == Operation.NOTIFY and code == Code.CHANGED:
        payload = b""  # TS-0008: a NOTIFY's 2.04 carries no payload
    location: tuple[str, ...] = ()
    if response.location is not None and code == Code.CREATED:
        location = tuple(path_from_target(response.location))
    return CoapMessage(
        code=code,
        path=location,
        content_format=REPLY_FORMATS[serialization] if payload else None,
        options=parameter_options(
            {
                "rsc": status,
                "rqi": response.request_id,
                "rvi": response.release_version or None,
                "cts": response.content_status,
                "cto": response.content_offset,
            }
        ),
        payload=payload,
    )


def encode_request(request: Request, serialization: str) -> CoapMessage:
    """A request primitive as a CoAP request (content that cannot be encoded raises)."""
    payload = encode(request.content, serialization)
    values = {
        "fr": request.originator,
        "rqi": request.request_id,
        "rvi": request.release_version or "3",
        "ty": request.resource_type if request.operation == Operation.CREATE else None,
        "ot": request.originating_timestamp,
        "rqet": request.request_expiration,
        "ec": request.event_category,
        "gid": request.group_request_id,
        "vsi": request.vendor_information,
        "rturi": "&".join(request.response_targets) or None,
    }
    if request.operation == Operation.CREATE and values["ty"] is None:
        values["ty"] = 0  # TY is what makes a POST a CREATE
    return CoapMessage(
        code=_METHOD_OF[request.operation],
        path=tuple(path_from_target(request.to)),
        query=tuple(f"{name}={value}" for name, value in request_query(request)),
        content_format=REPLY_FORMATS[serialization] if payload else None,
        accept=REPLY_FORMATS[serialization],
        options=parameter_options(values),
        payload=payload,
    )


def encode_notification(
    primitive: Mapping[str, Any], path: Iterable[str], query: Iterable[str], serialization: str
) -> CoapMessage:
    """A NOTIFY primitive (as the notifier queues it) as a POST without TY to a URL's path."""
    payload = encode(primitive.get("pc"), serialization)
    values = {name: primitive.get(name) for name in ("fr", "rqi", "rvi", "ot", "ec")}
    return CoapMessage(
        code=Code.POST,
        path=tuple(path),
        query=tuple(query),
        content_format=REPLY_FORMATS[serialization] if payload else None,
        options=parameter_options(values),
        payload=payload,
    )


def has_rsc(options: RawOptions) -> bool:
    """Does a reply carry the oneM2M-RSC option (what every oneM2M entity answers with)?"""
    raw = _collect(options, strict=False).parameters.get("rsc")
    return raw is not None and 0 < len(raw) <= 2


def reply_status(code: int, options: RawOptions, operation: Operation) -> int:
    """The oneM2M-RSC of a reply, or a guess from its CoAP code."""
    raw = _collect(options, strict=False).parameters.get("rsc")
    if raw is not None and 0 < len(raw) <= 2:
        return int.from_bytes(raw, "big")
    return rsc_from_coap(code, operation)


def decode_response(code: int, options: RawOptions, payload: bytes, request: Request) -> Response:
    """The response primitive in a CoAP reply to `request` (BadRequest if unreadable)."""
    found = _collect(options, strict=False)
    rsc = reply_status(code, options, request.operation)
    try:
        status = RSC(rsc)
    except ValueError:
        status = RSC(rsc_from_coap(code, request.operation))
    serialization = _serialization(found.content_format, accept=False) or JSON
    parameters = {n: _text(n, v) for n, v in found.parameters.items() if n in ("rqi", "rvi")}
    location = [_text("Location-Path", segment) for segment in found.location]
    counts = {n: _uint(n, v) for n, v in found.parameters.items() if n in ("cts", "cto")}
    return Response(
        status,
        parameters.get("rqi", request.request_id),
        parameters.get("rvi"),
        decode(payload, serialization),
        to=request.originator,
        location=target_from_path(location) if location else None,
        content_status=ContentStatus(counts["cts"]) if counts.get("cts") in (1, 2) else None,
        content_offset=counts.get("cto"),
    )

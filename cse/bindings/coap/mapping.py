"""TS-0008 mapping tables: CoAP codes, option numbers, content formats and Uri-Path.

Pure data and small functions; nothing here touches aiocoap or a socket. CoAP codes are kept
as their one-byte wire value (class * 32 + detail: 2.01 = 65, 4.04 = 132).
"""

from __future__ import annotations

from enum import IntEnum

from cse.core.types import Operation
from cse.serialization import CBOR, JSON


class Code(IntEnum):
    """The CoAP method and response codes this binding sends or reads."""

    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    CREATED = 65  # 2.01
    DELETED = 66  # 2.02
    CHANGED = 68  # 2.04
    CONTENT = 69  # 2.05
    CONTINUE = 95  # 2.31
    BAD_REQUEST = 128  # 4.00
    UNAUTHORIZED = 129  # 4.01
    BAD_OPTION = 130  # 4.02
    FORBIDDEN = 131  # 4.03
    NOT_FOUND = 132  # 4.04
    METHOD_NOT_ALLOWED = 133  # 4.05
    NOT_ACCEPTABLE = 134  # 4.06
    REQUEST_ENTITY_INCOMPLETE = 136  # 4.08
    REQUEST_ENTITY_TOO_LARGE = 141  # 4.13
    UNSUPPORTED_CONTENT_FORMAT = 143  # 4.15
    INTERNAL_SERVER_ERROR = 160  # 5.00
    NOT_IMPLEMENTED = 161  # 5.01
    SERVICE_UNAVAILABLE = 163  # 5.03
    GATEWAY_TIMEOUT = 164  # 5.04


def dotted(code: int) -> str:
    """65 → '2.01', for messages."""
    return f"{code >> 5}.{code & 31:02d}"


class Option(IntEnum):
    """Standard CoAP options (RFC 7252, 7959, 7641, 7967) the binding reads or writes."""

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6
    URI_PORT = 7
    LOCATION_PATH = 8
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    ACCEPT = 17
    LOCATION_QUERY = 20
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    SIZE1 = 60
    NO_RESPONSE = 258  # also the pre-2022 oneM2M-NM: left to aiocoap


# oneM2M options of TS-0008 V3.9.0 (after the IANA renumbering), by primitive short name.
PARAMETER_OPTIONS: dict[int, str] = {
    259: "ot", 263: "rturi", 267: "ty", 271: "rvi", 275: "asri", 279: "fr", 283: "rqi",
    291: "rqet", 295: "rset", 299: "oet", 303: "ec", 307: "rsc", 311: "gid", 319: "cto",
    323: "cts", 327: "ati", 331: "vsi", 335: "gtm", 339: "aus",
    343: "omr", 347: "prpi", 351: "msu",  # R4+, read and ignored
}  # fmt: skip
# The numbers deployed clients used before the renumbering (259, 263 and 267 did not move).
LEGACY_OPTIONS: dict[int, str] = {
    256: "fr", 257: "rqi", 260: "rqet", 261: "rset", 262: "oet", 264: "ec", 265: "rsc",
    266: "gid",
}  # fmt: skip
OPTION_NUMBERS: dict[str, int] = {name: number for number, name in PARAMETER_OPTIONS.items()}
UINT_PARAMETERS = frozenset({"ty", "ec", "rsc", "cto", "cts"})

# Critical options a request may carry; any other critical option is answered with 4.02.
UNDERSTOOD_CRITICAL = frozenset(
    {
        Option.URI_HOST,
        Option.URI_PORT,
        Option.URI_PATH,
        Option.URI_QUERY,
        Option.ACCEPT,
        Option.BLOCK2,
        Option.BLOCK1,
        *(n for n in (*PARAMETER_OPTIONS, *LEGACY_OPTIONS) if n & 1),
    }
)
REPEATABLE = frozenset(
    {
        Option.IF_MATCH,
        Option.ETAG,
        Option.LOCATION_PATH,
        Option.URI_PATH,
        Option.URI_QUERY,
        Option.LOCATION_QUERY,
    }
)


def is_critical(number: int) -> bool:
    return bool(number & 1)


# Content-Format numbers → serialization; None marks XML, known but not supported.
CONTENT_FORMATS: dict[int, str | None] = {
    41: None,  # application/xml
    50: JSON,
    60: CBOR,
    10001: JSON,  # res+json
    10002: None,  # ntfy+xml
    10003: JSON,  # ntfy+json
    10006: None,  # preq+xml
    10007: JSON,  # preq+json
    10008: None,  # prsp+xml
    10009: JSON,  # prsp+json
    10010: CBOR,  # res+cbor
    10011: CBOR,  # ntfy+cbor
    10012: CBOR,  # preq+cbor
    10013: CBOR,  # prsp+cbor
    10014: None,  # res+xml
    10015: JSON,  # res+json as ACME and a Zephyr client send it
    10016: None,  # ntfy+xml as ACME reads it
}
REPLY_FORMATS: dict[str, int] = {JSON: 50, CBOR: 60}


# ---- status codes ------------------------------------------------------------------------

_EXACT: dict[int, Code] = {
    1000: Code.CREATED, 1001: Code.CREATED, 1002: Code.CREATED,  # a <request> was made
    2001: Code.CREATED, 2002: Code.DELETED, 2004: Code.CHANGED,
    4000: Code.BAD_REQUEST, 4001: Code.NOT_IMPLEMENTED, 4004: Code.NOT_FOUND,
    4005: Code.METHOD_NOT_ALLOWED, 4008: Code.GATEWAY_TIMEOUT,
    4015: Code.UNSUPPORTED_CONTENT_FORMAT, 4102: Code.BAD_REQUEST, 4104: Code.BAD_REQUEST,
    4110: Code.BAD_REQUEST, 4124: Code.BAD_REQUEST,
    5000: Code.INTERNAL_SERVER_ERROR, 5001: Code.NOT_IMPLEMENTED, 5103: Code.NOT_FOUND,
    5106: Code.BAD_REQUEST, 5107: Code.NOT_FOUND, 5204: Code.INTERNAL_SERVER_ERROR,
    5206: Code.NOT_IMPLEMENTED, 5207: Code.NOT_ACCEPTABLE, 5209: Code.INTERNAL_SERVER_ERROR,
    5219: Code.BAD_REQUEST, 5220: Code.BAD_REQUEST,
    6003: Code.NOT_FOUND, 6005: Code.NOT_FOUND, 6010: Code.BAD_REQUEST,
}  # fmt: skip


def coap_code(rsc: int, operation: Operation | None) -> Code:
    """The CoAP response code for a response status code (fact sheet §4, TS-0008 Table 6.3.3)."""
    if rsc == 2000:
        return Code.CONTENT if operation in (Operation.RETRIEVE, None) else Code.CHANGED
    if rsc in _EXACT:
        return _EXACT[rsc]
    if 4100 <= rsc < 4200 or 5100 <= rsc < 5300:
        return Code.FORBIDDEN  # most access and security codes
    if 2000 < rsc < 3000:
        return Code.CHANGED
    return Code.INTERNAL_SERVER_ERROR if rsc >= 5000 else Code.BAD_REQUEST


_RSC_GUESS: dict[int, int] = {
    Code.CREATED: 2001,
    Code.DELETED: 2002,
    Code.CHANGED: 2004,
    Code.CONTENT: 2000,
    Code.BAD_REQUEST: 4000,
    Code.BAD_OPTION: 4000,
    Code.FORBIDDEN: 4103,
    Code.NOT_FOUND: 4004,
    Code.METHOD_NOT_ALLOWED: 4005,
    Code.NOT_ACCEPTABLE: 5207,
    Code.REQUEST_ENTITY_INCOMPLETE: 4000,
    Code.REQUEST_ENTITY_TOO_LARGE: 4000,
    Code.UNSUPPORTED_CONTENT_FORMAT: 4015,
    Code.NOT_IMPLEMENTED: 5001,
    Code.GATEWAY_TIMEOUT: 4008,
}


def rsc_from_coap(code: int, operation: Operation) -> int:
    """Best guess when a peer answered without the oneM2M-RSC option."""
    if operation == Operation.NOTIFY and code >> 5 == 2:
        return 2000  # a NOTIFY answered 2.04 (or a tolerated 2.01) is an OK
    return _RSC_GUESS.get(code, 5000)


# ---- Uri-Path ------------------------------------------------------------------------------


def target_from_path(segments: list[str]) -> str:
    """cse-in/ae → 'cse-in/ae'; ~/id-in/cse-in → '/id-in/cse-in'; _/sp/id-in → '//sp/id-in'."""
    if segments and segments[0] == "~":
        return "/" + "/".join(segments[1:])
    if segments and segments[0] == "_":
        return "//" + "/".join(segments[1:])
    return "/".join(segments)


def path_from_target(to: str) -> list[str]:
    """The Uri-Path (or Location-Path) segments that address `to`."""
    if to.startswith("//"):
        return ["_", *to[2:].split("/")]
    if to.startswith("/"):
        return ["~", *to[1:].split("/")]
    return to.split("/") if to else []

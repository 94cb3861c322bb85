"""TS-0009 mapping tables: status codes, URL paths, headers and query parameters."""

from __future__ import annotations

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


def status_code(value: str | None) -> RSC | None:
    if value is None:
        return None
    try:
        return RSC(int(value))
    except ValueError:
        return None

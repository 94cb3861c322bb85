"""JSON and CBOR: the two serializations a primitive's content travels in."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson

from cse.core.errors import BadRequest, NotAcceptable, UnsupportedMediaType

JSON = "json"
CBOR = "cbor"

# Media types (without parameters) and the serialization each stands for.
MEDIA_TYPES: dict[str, str] = {
    "application/json": JSON,
    "application/vnd.onem2m-res+json": JSON,
    "application/vnd.onem2m-ntfy+json": JSON,
    "application/vnd.onem2m-preq+json": JSON,
    "application/vnd.onem2m-prsp+json": JSON,
    "application/cbor": CBOR,
    "application/vnd.onem2m-res+cbor": CBOR,
    "application/vnd.onem2m-ntfy+cbor": CBOR,
    "application/vnd.onem2m-preq+cbor": CBOR,
    "application/vnd.onem2m-prsp+cbor": CBOR,
}
CONTENT_TYPES = {JSON: "application/json", CBOR: "application/cbor"}


def serialization_of(media_type: str) -> str:
    try:
        return MEDIA_TYPES[media_type.strip().lower()]
    except KeyError:
        raise UnsupportedMediaType(f"media type {media_type!r} is not supported") from None


def accepted_serialization(accept: str | None, default: str) -> str:
    """Pick the response serialization from an Accept header (first supported one wins)."""
    if not accept:
        return default
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("*/*", "application/*", ""):
            return default
        if media in MEDIA_TYPES:
            return MEDIA_TYPES[media]
    raise NotAcceptable(f"none of the accepted media types ({accept}) can be produced")


def decode(body: bytes, serialization: str) -> Any:
    if not body:
        return None
    try:
        if serialization == CBOR:
            return cbor2.loads(body)
        return orjson.loads(body)
    except (ValueError, cbor2.CBORDecodeError, RecursionError, MemoryError, TypeError) as error:
        raise BadRequest(f"content is not valid {serialization.upper()}: {error}") from None


def encode(content: Any, serialization: str) -> bytes:
    if content is None:
        return b""
    if serialization == CBOR:
        return cbor2.dumps(content)
    return orjson.dumps(content)


def content_object(content: Any) -> dict[str, Any]:
    """A contentInstance's `con` as a dict: JSON text decoded, a CBOR map as it is; anything
    that is not an object gives {}."""
    if isinstance(content, str | bytes):
        try:
            content = orjson.loads(content)
        except orjson.JSONDecodeError:
            return {}
    return content if isinstance(content, dict) else {}

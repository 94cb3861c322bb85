"""The seam between aiocoap and the codec: aiocoap Messages to raw options and back.

oneM2M options are written as opaque bytes the codec has already encoded, and read back
through `option.encode()`, so this binding never registers formats in aiocoap's
process-wide option table (where a second registration would warn or clash).
"""

from __future__ import annotations

import aiocoap  # type: ignore[import-untyped]
from aiocoap.numbers.optionnumbers import OptionNumber  # type: ignore[import-untyped]
from aiocoap.optiontypes import OpaqueOption  # type: ignore[import-untyped]

from cse.bindings.coap.codec import CoapMessage


def raw_options(message: aiocoap.Message) -> list[tuple[int, bytes]]:
    """Every option of a message as (number, bytes), in wire order."""
    return [(int(option.number), option.encode()) for option in message.opt.option_list()]


def to_aiocoap(message: CoapMessage, *, uri: str | None = None) -> aiocoap.Message:
    """An aiocoap Message for `message`; `uri` (requests only) names the peer and a path prefix."""
    out = aiocoap.Message(code=aiocoap.Code(message.code), payload=message.payload, uri=uri)
    if message.code < 32:  # a request
        out.opt.uri_path = (*(out.opt.uri_path or ()), *message.path)
        out.opt.uri_query = (*(out.opt.uri_query or ()), *message.query)
    elif message.path:
        out.opt.location_path = message.path
    if message.content_format is not None:
        out.opt.content_format = message.content_format
    if message.accept is not None:
        out.opt.accept = message.accept
    for number, value in message.options:
        out.opt.add_option(OpaqueOption(OptionNumber(number), value))
    return out

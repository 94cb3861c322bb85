"""JSON on a small heap: `to_json(message)`, the text the store keeps, and `dump_parts(value)`,
content or a request primitive as a list of small parts for a link to send; `Pieces`.

The JSON counterpart of ucbor.py. A meter loads the one its serialization needs when first
asked for (compat.jsonparts(), compat.ucbor()): a CBOR meter does not carry this code in its
heap, nor a JSON meter the CBOR codec.
"""

import json

try:
    from . import compat
except ImportError:
    import compat

const = compat.const


class Pieces:
    """A string given as a list of pieces (a long stored message): dump_parts writes it as
    one JSON string, escaping piece by piece."""

    def __init__(self, parts):
        self.parts = parts


def dump_parts(value):
    """Compact JSON of `value` as a list of bytes-like parts (MicroPython's json has no
    sort_keys: key order is arbitrary).

    CPython: one bytes object. MicroPython: many small views of text, a long string in escaped
    slices of 512 characters: a small heap fragments, and a 2 KB reading would otherwise need
    a few contiguous blocks of that size at once (the escaped text, then its bytes)."""
    if not compat.IS_MICROPYTHON:
        return [json.dumps(value, separators=(",", ":"), default=_joined).encode()]
    out = []
    _json_into(value, out)
    return out


def _joined(value):
    if isinstance(value, Pieces):
        return "".join(value.parts)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _json_into(value, out):
    if isinstance(value, dict):
        sep = "{"
        for key in value:
            out.append(memoryview(sep + json.dumps(key) + ":"))
            _json_into(value[key], out)
            sep = ","
        out.append(memoryview("}" if sep == "," else "{}"))
    elif isinstance(value, (list, tuple)):
        sep = "["
        for item in value:
            out.append(memoryview(sep))
            _json_into(item, out)
            sep = ","
        out.append(memoryview("]" if sep == "," else "[]"))
    elif isinstance(value, Pieces):
        out.append(memoryview('"'))
        for piece in value.parts:
            out.append(memoryview(json.dumps(piece))[1:-1])
        out.append(memoryview('"'))
    elif isinstance(value, str) and len(value) > 512:
        out.append(memoryview('"'))
        for start in range(0, len(value), 512):
            out.append(memoryview(json.dumps(value[start : start + 512])[1:-1]))
        out.append(memoryview('"'))
    else:
        out.append(memoryview(json.dumps(value)))


def to_json(content):
    """The compact JSON text of a message, as the store keeps it (on a board a long one as a
    list of strings: `_coalesce`); takes the message apart.

    A list member (a gas report's 16-24 records, an interval read's channels) is written an
    item at a time, each item let go once written, and the text is put together by one join
    of its exact size: json.dumps of the whole would keep every record alive and regrow its
    buffer up to the message's size, which on a board needs the old and the new block at
    once - for a 2.4 KB read, more room in one piece than a small heap has."""
    lists = [key for key in content if isinstance(content[key], list)]
    if not lists:
        return json.dumps(content, separators=(",", ":"))
    items_of = [content.pop(key) for key in lists]
    text = json.dumps(content, separators=(",", ":"))
    pieces = [text[:-1]]  # without its closing brace
    separator = "," if content else ""
    for number in range(len(lists)):
        items = items_of[number]
        pieces.append(separator + json.dumps(lists[number]) + ":[")
        separator = ","
        for index in range(len(items)):
            if index:
                pieces.append(",")
            pieces.append(json.dumps(items[index], separators=(",", ":")))
            items[index] = None  # this item's dicts and lists go now
        pieces.append("]")
    pieces.append("}")
    if not compat.IS_MICROPYTHON:  # CPython: one string
        return "".join(pieces)
    return _coalesce(pieces)


_PIECE = const(256)  # the longest piece of a long message that a board keeps


def _coalesce(pieces):
    """One string when the text is short; else strings of about _PIECE characters (the store
    keeps a 2 KB read that way: a board's heap may have no 2.5 KB in one piece)."""
    total = 0
    for piece in pieces:
        total += len(piece)
    if total <= 2 * _PIECE:
        return "".join(pieces)
    out = []
    group = []
    size = 0
    for piece in pieces:
        group.append(piece)
        size += len(piece)
        if size >= _PIECE:
            out.append("".join(group))
            group = []
            size = 0
    if group:
        out.append("".join(group))
    return out

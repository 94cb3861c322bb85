"""Minimal CBOR (RFC 8949) for oneM2M primitives on a meter: `dumps(value)`, `loads(data)`.

Encodes dict, list/tuple, str, bytes/bytearray, int (negative too, up to 64 bits), bool,
None and float (as a double); decodes the same plus half/single floats, tags (the tag is
dropped, the value kept), `undefined` (as None) and indefinite-length items. Input that is
cut short or malformed raises ValueError. `True` is tested before int: on MicroPython
`isinstance(True, int)` is False, on CPython True. Dicts encode in their own order, which
on MicroPython is not insertion order: compare decoded values, never bytes.
"""

import struct

try:
    from . import compat
except ImportError:
    import compat

const = compat.const

_UNSIGNED = const(0)
_NEGATIVE = const(1)
_BYTES = const(2)
_TEXT = const(3)
_ARRAY = const(4)
_MAP = const(5)
_TAG = const(6)
_SIMPLE = const(7)
_INDEFINITE = const(31)
_BREAK = const(0xFF)
_PIECE = const(256)  # dump_parts starts a new piece at an item's head past this size


class Raw:
    """A value encoded already (its `dump_parts`), which `_encode` copies as it is."""

    def __init__(self, parts):
        self.parts = parts


def dumps(value):
    return b"".join(dump_parts(value))


def dump_parts(value):
    """`value` as CBOR in a list of pieces of about 256 bytes: a 2 KB reading then needs no
    block of that size (and no regrown one) on a board's small heap."""
    parts = [bytearray()]
    _encode(parts, value)
    return parts


def _head(parts, major, number):
    out = parts[-1]
    if len(out) >= _PIECE:
        out = bytearray()
        parts.append(out)
    kind = major << 5
    if number < 24:
        out.append(kind | number)
    elif number < 0x100:
        out.append(kind | 24)
        out.append(number)
    elif number < 0x10000:
        out.append(kind | 25)
        out.extend(number.to_bytes(2, "big"))
    elif number < 0x100000000:
        out.append(kind | 26)
        out.extend(number.to_bytes(4, "big"))
    elif number < 0x10000000000000000:
        out.append(kind | 27)
        out.extend(number.to_bytes(8, "big"))
    else:
        raise ValueError("integer does not fit in 64 bits")


def _encode(parts, value):
    if value is None:
        _put_byte(parts, 0xF6)
    elif value is True:
        _put_byte(parts, 0xF5)
    elif value is False:
        _put_byte(parts, 0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _head(parts, _UNSIGNED, value)
        else:
            _head(parts, _NEGATIVE, -1 - value)
    elif isinstance(value, str):
        data = value.encode()
        _head(parts, _TEXT, len(data))
        parts[-1].extend(data)
    elif isinstance(value, (bytes, bytearray)):
        _head(parts, _BYTES, len(value))
        parts[-1].extend(value)
    elif isinstance(value, dict):
        _head(parts, _MAP, len(value))
        for key in value:
            _encode(parts, key)
            _encode(parts, value[key])
    elif isinstance(value, (list, tuple)):
        _head(parts, _ARRAY, len(value))
        for item in value:
            _encode(parts, item)
    elif isinstance(value, float):
        _put_byte(parts, 0xFB)
        parts[-1].extend(struct.pack(">d", value))
    elif isinstance(value, Raw):
        parts.extend(value.parts)
        parts.append(bytearray())  # what follows goes into a piece of its own
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


def _put_byte(parts, byte):
    # A major-type-7 head: as _head, a new piece past _PIECE bytes.
    out = parts[-1]
    if len(out) >= _PIECE:
        out = bytearray()
        parts.append(out)
    out.append(byte)


def loads(data):
    try:
        value, end = _decode(data, 0)
    except (IndexError, UnicodeError) as error:
        raise ValueError(f"malformed CBOR: {error}") from None
    if end != len(data):
        raise ValueError("trailing bytes after the CBOR item")
    return value


def _number(data, start, info):
    """The argument of a head whose additional info is `info`; returns (number, next index)."""
    if info < 24:
        return info, start
    if info > 27:
        raise ValueError(f"reserved additional information {info}")
    size = 1 << (info - 24)
    end = start + size
    if end > len(data):
        raise ValueError("truncated CBOR")
    return int.from_bytes(data[start:end], "big"), end


def _half(bits):
    exponent = (bits >> 10) & 0x1F
    fraction = bits & 0x3FF
    if exponent == 0:
        value = fraction * 2.0**-24
    elif exponent == 0x1F:
        value = float("nan") if fraction else float("inf")
    else:
        value = (1024 + fraction) * 2.0 ** (exponent - 25)
    return -value if bits & 0x8000 else value


def _chunks(data, index, major):
    """An indefinite-length string: definite chunks of the same major type up to a break."""
    parts = bytearray()
    while data[index] != _BREAK:
        head = data[index]
        if head >> 5 != major or head & 0x1F == _INDEFINITE:
            raise ValueError("bad chunk in an indefinite-length string")
        size, index = _number(data, index + 1, head & 0x1F)
        if index + size > len(data):
            raise ValueError("truncated CBOR")
        parts.extend(data[index : index + size])
        index += size
    return parts, index + 1


def _decode(data, index):
    head = data[index]
    major = head >> 5
    info = head & 0x1F
    index += 1
    if major == _SIMPLE:
        return _simple(data, index, info)
    if info == _INDEFINITE:
        return _indefinite(data, index, major)
    number, index = _number(data, index, info)
    if major == _UNSIGNED:
        return number, index
    if major == _NEGATIVE:
        return -1 - number, index
    if major in (_BYTES, _TEXT):
        end = index + number
        if end > len(data):
            raise ValueError("truncated CBOR")
        chunk = bytes(data[index:end])
        return (chunk if major == _BYTES else chunk.decode()), end
    if major == _ARRAY:
        items = []
        for _ in range(number):
            item, index = _decode(data, index)
            items.append(item)
        return items, index
    if major == _MAP:
        mapping = {}
        for _ in range(number):
            key, index = _decode(data, index)
            mapping[key], index = _decode(data, index)
        return mapping, index
    return _decode(data, index)  # a tag: keep the tagged value


def _indefinite(data, index, major):
    if major in (_BYTES, _TEXT):
        parts, index = _chunks(data, index, major)
        return (bytes(parts) if major == _BYTES else bytes(parts).decode()), index
    if major == _ARRAY:
        items = []
        while data[index] != _BREAK:
            item, index = _decode(data, index)
            items.append(item)
        return items, index + 1
    if major == _MAP:
        mapping = {}
        while data[index] != _BREAK:
            key, index = _decode(data, index)
            mapping[key], index = _decode(data, index)
        return mapping, index + 1
    raise ValueError(f"indefinite length is not allowed for major type {major}")


def _simple(data, index, info):
    if info == 20:
        return False, index
    if info == 21:
        return True, index
    if info == 22 or info == 23:
        return None, index
    if info == 25:
        bits, index = _number(data, index, 25)
        return _half(bits), index
    if info == 26 or info == 27:
        size = 4 if info == 26 else 8
        if index + size > len(data):
            raise ValueError("truncated CBOR")
        value = struct.unpack(">f" if info == 26 else ">d", data[index : index + size])[0]
        return value, index + size
    if info == 24:
        return None, index + 1  # a simple value we do not know: treated as null
    if info < 20:
        return None, index
    raise ValueError("unexpected break or reserved simple value")

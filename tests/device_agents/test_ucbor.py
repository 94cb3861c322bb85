"""ucbor against CPython's cbor2, on CPython and under the real MicroPython.

Values are compared after decoding, never as bytes: MicroPython dicts are not ordered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agents.agent import ucbor
from tests.device_agents.mp import needs_micropython, run

PRIMITIVE = {
    "op": 1,
    "to": "cse-in/mtr-000123/reading",
    "fr": "Cmtr-000123",
    "rqi": "mtr-000123-a1b2c3-17",
    "rvi": "3",
    "ty": 4,
    "pc": {"m2m:cin": {"cnf": "application/json:0", "con": {"flow": "mr-interval", "seq": 17}}},
}
SAMPLES: list[Any] = [
    0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63, 2**64 - 1,
    -1, -24, -25, -256, -257, -(2**32), -(2**63), -(2**64),
    "", "a", "ü€😀", "x" * 300, b"", b"\x00\xff", bytes(range(256)) * 3,
    True, False, None, [], [1, [2, [3]]], {}, {"a": {"b": [None, True]}}, PRIMITIVE,
    [0] * 30, {str(n): n for n in range(30)},
]  # fmt: skip


@pytest.mark.parametrize("value", SAMPLES)
def test_cbor2_reads_what_ucbor_writes(value: Any) -> None:
    assert cbor2.loads(ucbor.dumps(value)) == value


@pytest.mark.parametrize("value", SAMPLES)
def test_ucbor_reads_what_cbor2_writes(value: Any) -> None:
    assert ucbor.loads(cbor2.dumps(value)) == value


def test_booleans_stay_booleans() -> None:
    decoded = ucbor.loads(ucbor.dumps([True, 1, False, 0]))
    assert [type(item) for item in decoded] == [bool, int, bool, int]


def test_floats_of_every_width_decode() -> None:
    for value in (0.0, 1.5, -2.25, 65504.0, 1e-7, 3.4e38, 1e300, math.inf, -math.inf):
        assert ucbor.loads(cbor2.dumps(value, canonical=True)) == value  # half/single/double
    assert math.isnan(ucbor.loads(bytes.fromhex("f97e00")))
    assert ucbor.loads(bytes.fromhex("f90001")) == 2.0**-24  # a subnormal half
    assert cbor2.loads(ucbor.dumps(1.1)) == 1.1


def test_tags_indefinite_lengths_and_undefined() -> None:
    assert ucbor.loads(cbor2.dumps(cbor2.CBORTag(1, 1363896240))) == 1363896240
    assert ucbor.loads(bytes.fromhex("9f01820203ff")) == [1, [2, 3]]
    assert ucbor.loads(bytes.fromhex("bf6161f5ff")) == {"a": True}
    assert ucbor.loads(bytes.fromhex("7f6261626161ff")) == "aba"
    assert ucbor.loads(bytes.fromhex("5f4101420203ff")) == b"\x01\x02\x03"
    assert ucbor.loads(bytes.fromhex("f7")) is None


def test_what_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ValueError):
        ucbor.dumps(2**64)
    with pytest.raises(TypeError):
        ucbor.dumps({1, 2})


@pytest.mark.parametrize(
    "data",
    ["", "18", "19ff", "1b00000000", "62", "6261", "44010203", "82", "8201", "a1", "a16161",
     "9f01", "7f6161", "5f6161ff", "fb3ff8", "fa3fc0", "f9", "1c", "ff", "8201ff", "0000"],
)  # fmt: skip
def test_malformed_input_raises_value_error(data: str) -> None:
    with pytest.raises(ValueError):
        ucbor.loads(bytes.fromhex(data))


def test_every_truncation_of_a_primitive_raises_value_error() -> None:
    encoded = cbor2.dumps(PRIMITIVE)
    for end in range(len(encoded)):
        with pytest.raises(ValueError):
            ucbor.loads(encoded[:end])


_json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@given(_json_like)
def test_round_trips_through_cbor2_both_ways(value: Any) -> None:
    assert cbor2.loads(ucbor.dumps(value)) == value
    assert ucbor.loads(cbor2.dumps(value)) == value


# ---- the same module under MicroPython ------------------------------------------------------

ROUND_TRIP = """
import sys, json, binascii, ucbor
for line in open(sys.argv[1]):
    data = binascii.unhexlify(line.strip())
    value = ucbor.loads(data)
    print(binascii.hexlify(ucbor.dumps(value)).decode())
"""


def _encodable(value: Any) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -(2**64) <= value < 2**64


@needs_micropython
def test_micropython_decodes_and_reencodes_what_cbor2_writes(tmp_path: Path) -> None:
    cases = [*SAMPLES, 1.5, -0.5, 1e300, [1.25, {"f": 2.5}]]
    lines = tmp_path / "cases.hex"
    lines.write_text("".join(cbor2.dumps(value).hex() + "\n" for value in cases))
    result = run(ROUND_TRIP, str(lines))
    assert result.rc == 0, result.output
    assert len(result.lines) == len(cases), result.output
    for value, line in zip(cases, result.lines, strict=True):
        assert cbor2.loads(bytes.fromhex(line)) == value


@needs_micropython
def test_micropython_refuses_malformed_input() -> None:
    snippet = """
import ucbor, binascii
for data in ("", "19ff", "6261", "8201", "a16161", "9f01", "1c", "ff"):
    try:
        ucbor.loads(binascii.unhexlify(data))
        print("accepted", data)
    except ValueError:
        print("refused")
try:
    ucbor.dumps(2 ** 64)
except ValueError:
    print("refused")
print(ucbor.loads(ucbor.dumps([True, 1, False, 0, None])))
"""
    result = run(snippet)
    assert result.rc == 0, result.output
    assert result.lines[:-1] == ["refused"] * 9
    assert result.lines[-1] == "[True, 1, False, 0, None]"


@needs_micropython
def test_micropython_encodes_a_primitive_cbor2_reads() -> None:
    snippet = "import ucbor, json, sys, binascii\n"
    snippet += f"value = json.loads({json.dumps(json.dumps(PRIMITIVE))})\n"
    snippet += "print(binascii.hexlify(ucbor.dumps(value)).decode())\n"
    result = run(snippet)
    assert result.rc == 0, result.output
    assert cbor2.loads(bytes.fromhex(result.lines[0])) == PRIMITIVE

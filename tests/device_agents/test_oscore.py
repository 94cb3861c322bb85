"""The meter's OSCORE module against the test vectors of RFC 8613 Appendix C.

The same snippet runs on CPython (the fleet's cipher, `cryptography`'s AESCCM) and on the
MicroPython unix port (AES-CCM written on `cryptolib`'s AES-ECB); the module's own AES-CCM is
also checked on CPython over an AES-ECB from `cryptography`. Also: the sequence number file,
the replay window and the Echo challenge of the meter's listener side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cse.bindings.coap.oscore import OscoreKeys, OscoreState, SecurityContext
from cse.core.identity import Principal
from device_agents.agent import coap, oscore
from tests.device_agents import mp

SECRET = "0102030405060708090a0b0c0d0e0f10"
SALT = "9e7ca92223786340"

# RFC 8613 Appendix C: C.1.1 (keys with a Master Salt), C.2.1 (without), C.4 and C.5 (requests),
# C.7 (an answer reusing the request's nonce), C.8 (an answer with a Partial IV of its own).
EXPECTED = {
    "C.1.1": "f0910ed7295e6ad4b54fc793154302ff ffb14e093c94c9cac9471648b4f98710 "
    "4622d4dd6d944168eefb54987c",
    "C.2.1": "321b26943253c7ffb6003b0b64d74041 e57b5635815177cd679ab4bcec9d7dda "
    "be35ae297d2dace910c52e99f9",
    "C.4": "01 0b:747631",  # the request of C.4, opened: GET, Uri-Path "tv1"
    "C.5": "440271c30000b932396c6f63616c686f737463091400ff4ed339a5a379b0b8bc731fffb0",
    "C.7": "64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106",
    "C.8": "64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e",
}

VECTORS = """
import coap, oscore

h = bytes.fromhex
SECRET = h("%s")
SALT = h("%s")


class Store:
    def __init__(self, value):
        self.value = value

    def load(self):
        return self.value

    def save(self, value):
        self.value = value


def keys(salt, ident):
    prk = oscore._hmac(salt, SECRET)
    sender = oscore._derive(prk, b"", b"Key", 16)
    recipient = oscore._derive(prk, ident, b"Key", 16)
    return " ".join((sender.hex(), recipient.hex(), oscore._derive(prk, b"", b"IV", 13).hex()))


print("C.1.1", keys(SALT, b"\\x01"))
prk = oscore._hmac(b"", SECRET)
print("C.2.1", " ".join((oscore._derive(prk, b"\\x00", b"Key", 16).hex(),
      oscore._derive(prk, b"\\x01", b"Key", 16).hex(), oscore._derive(prk, b"", b"IV", 13).hex())))

# C.5: the client of C.2.1 (Sender ID 0x00, no salt) protects a request with number 20.
plain = coap.decode(h("440171c30000b932396c6f63616c686f737483747631"))
client = oscore.Context(b"\\x00", SECRET, b"", Store(20))
options = [(number, index, value) for index, (number, value) in enumerate(plain.options)]
piv, datagram = client.request_datagram(
    bytearray(200), plain.mid, plain.code, options, plain.token, [], 0, 0
)
print("C.5", bytes(datagram).hex())

# C.4 opened by the server of C.1.2 (Sender ID 0x01), which answers it (C.7, C.8).
server = oscore.Context(b"\\x01", SECRET, SALT, Store(0))
request = coap.decode(h("44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e"))
inner, piv, challenge = server.open_request(request)
print("C.4", "%%02x" %% inner.code, " ".join("%%02x:%%s" %% (n, v.hex()) for n, v in inner.options))
token = h("00003974")
for name, fresh in (("C.7", False), ("C.8", True)):
    code, options, payload = server.seal_reply(piv, 69, [], b"Hello World!", fresh)
    print(name, bytes(coap.encode(coap.ACK, code, 0x5D1F, token, options, payload)).hex())
""" % (SECRET, SALT)  # noqa: UP031 (the snippet is formatted once, braces stay literal)


def results(output: str) -> dict[str, str]:
    return {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in output.splitlines()}


def test_the_rfc_8613_vectors_on_cpython() -> None:
    result = mp.run(VECTORS, cpython=True)
    assert result.rc == 0, result.output
    assert results(result.stdout) == EXPECTED


@mp.needs_micropython
def test_the_rfc_8613_vectors_on_micropython() -> None:
    result = mp.run(VECTORS)
    assert result.rc == 0, result.output
    assert results(result.stdout) == EXPECTED


class Ecb:
    """AES-ECB from `cryptography` with cryptolib's encrypt(in, out)."""

    def __init__(self, key: bytes) -> None:
        self._encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()

    def encrypt(self, data: Any, out: Any) -> None:
        out[:] = self._encryptor.update(bytes(data))


def test_the_boards_aes_ccm_matches_the_fleets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The module's AES-CCM (what a board runs) on CPython, for lengths around block edges."""
    key = bytes(range(16))
    board, fleet = oscore.AesCcm(key, Ecb(key)), oscore.compat.aes_ccm(key)
    nonce = bytes(range(13))
    for size in (0, 1, 15, 16, 17, 1024, 1100):
        message = bytes((index * 7) & 0xFF for index in range(size))
        sealed_board, sealed_fleet = bytearray(message), bytearray(message)
        tag = board.seal(nonce, b"aad", sealed_board)
        assert tag == fleet.seal(nonce, b"aad", sealed_fleet)
        assert sealed_board == sealed_fleet
        assert board.open(nonce, b"aad", sealed_board, tag) and sealed_board == message
        tampered = bytearray(sealed_fleet)
        if size:
            tampered[-1] ^= 1
            assert not board.open(nonce, b"aad", tampered, tag)
        assert not board.open(nonce, b"other", bytearray(sealed_fleet), tag)


class Store:
    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.saves: list[int] = []

    def load(self) -> int:
        return self.value

    def save(self, value: int) -> None:
        self.value = value
        self.saves.append(value)


def context(store: Any = None) -> oscore.Context:
    return oscore.Context(b"\x07", bytes.fromhex(SECRET), bytes.fromhex(SALT), store)


def test_sequence_numbers_are_reserved_in_chunks_before_use() -> None:
    store = Store()
    meter = context(store)
    used = [int.from_bytes(meter.next_piv(), "big") for _ in range(130)]
    assert used == list(range(130))
    assert store.saves == [64, 128, 192]  # written before 0, 64 and 128 went out
    rebooted = context(store)
    assert int.from_bytes(rebooted.next_piv(), "big") == 192  # never one already used


def test_the_sequence_file_survives_a_reboot_and_refuses_garbage(tmp_path: Path) -> None:
    path = str(tmp_path / "oscore.seq")
    assert oscore.SequenceFile(path).load() == 0  # a new meter
    meter = context(oscore.SequenceFile(path))
    for _ in range(70):
        meter.next_piv()
    assert oscore.SequenceFile(path).load() == 128
    (tmp_path / "oscore.seq").write_text("garbage")
    with pytest.raises(ValueError):
        context(oscore.SequenceFile(path))  # guessing could reuse a nonce


def gateway_request(number: int, echo: bytes | None = None) -> coap.Message:
    """A NOTIFY as the gateway's CoAP binding protects it (Sender ID empty, number `number`)."""
    keys = OscoreKeys(b"\x07", bytes.fromhex(SECRET), bytes.fromhex(SALT), Principal.unproven())
    gateway = SecurityContext(keys, OscoreState(number), lambda state: None)
    request = aiocoap.Message(code=aiocoap.POST, uri_path=("ntf",), echo=echo)
    protected, _ = gateway.protect(request)
    options = [(int(option.number), 0, option.encode()) for option in protected.opt.option_list()]
    datagram = coap.encode(coap.CON, int(protected.code), 1, b"t", options, protected.payload)
    return coap.decode(datagram)


def test_the_listener_window_takes_each_request_once_and_asks_for_echo_after_a_boot() -> None:
    meter = context(Store())
    _, _, challenge = meter.open_request(gateway_request(5))
    assert challenge  # just booted: the window is unknown
    echo = meter.echo_challenge()[0][2]
    inner, _, challenge = meter.open_request(gateway_request(6, echo))
    assert not challenge and inner.strings(11) == ["ntf"]
    assert meter.open_request(gateway_request(6, echo))[0] == 129  # a replay: 4.01
    assert meter.open_request(gateway_request(5))[0] == 129  # older than the Echo
    assert not meter.open_request(gateway_request(9))[2]
    assert not meter.open_request(gateway_request(8))[2]  # late but unseen: taken
    assert meter.open_request(gateway_request(8))[0] == 129
    forged = gateway_request(10)
    forged.payload = forged.payload[:-1] + bytes((forged.payload[-1] ^ 1,))
    assert meter.open_request(forged)[0] == 128  # does not verify: 4.00
    assert not meter.open_request(gateway_request(10))[2]  # the forgery took nothing

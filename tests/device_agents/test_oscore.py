"""The meter's OSCORE module against the test vectors of RFC 8613 Appendix C.

The same snippet runs on CPython (the fleet's cipher, `cryptography`'s AESCCM) and on the
MicroPython unix port (AES-CCM written on `cryptolib`'s AES-ECB); the module's own AES-CCM is
also checked on CPython over an AES-ECB from `cryptography`. Also: the sequence number file,
the replay window and the Echo challenge of the meter's listener side.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cse.bindings.coap import CoapClient, CoapSender, CoapServer
from cse.bindings.coap.oscore import (
    MemoryKeyring,
    OscoreContexts,
    OscoreKeys,
    OscoreState,
    SecurityContext,
    generate_keys,
)
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Principal, Role, Trust
from cse.storage.memory import MemoryStorage
from device_agents.agent import coap, oscore
from tests.device_agents import mp
from tests.device_agents.test_agent import END_TO_END, EVERY_COMMAND, T0
from tests.helpers import ON_THIS_MACHINE, create, retrieve

# An OSCORE meter's heap on the 64-bit unix port (docs/agents.md, "Heap"): the end-to-end run
# below passes at 116k and fails at 112k (a plain CoAP meter: 96k); the module costs 9.3 KB,
# and its names push the meter past the qstr pool line (a 7.1 KB pool at its first command).
OSCORE_HEAP = "116k"
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


# ---- end to end: the agent on MicroPython against an OSCORE-only CoAP server -------------------


@asynccontextmanager
async def oscore_dap(keyring: MemoryKeyring, port: int = 0) -> AsyncIterator[CoapServer]:
    """A CSE whose CoAP server takes OSCORE only and whose notifications to meters with keys
    go out protected (the server and the notifying client share the contexts)."""
    contexts = OscoreContexts(keyring)
    async with CoapClient(timeout=5, oscore=contexts) as client:
        cse = CommonServicesEntity(
            MemoryStorage(),
            CSESettings(expiry_check_interval=3600, notification_timeout=5, egress=ON_THIS_MACHINE),
            senders={"coap": CoapSender(client, keyring.keys_for_originator)},
        )
        async with (
            cse,
            CoapServer(
                cse,
                "127.0.0.1",
                port,
                oscore=contexts,
                trust=Trust.CREDENTIAL,
                liveness_interval=None,
            ) as server,
        ):
            yield server


def oscore_config(server: CoapServer, keys: OscoreKeys, state: Path) -> dict[str, Any]:
    return {
        "meter_id": keys.principal.name,
        "kind": "electric",
        "transport": "coap",
        "dap_host": "127.0.0.1",
        "dap_port": server.port,
        "cse_id": "/id-in",
        "cse_name": "cse-in",
        "serialization": "json",
        "listen_port": 0,
        "poa_host": "127.0.0.1",
        "oscore": {
            "kid": keys.sender_id.hex(),
            "secret": keys.master_secret.hex(),
            "salt": keys.master_salt.hex(),
        },
        "oscore_state": str(state),
    }


def meter_keys(name: str, kid: bytes) -> OscoreKeys:
    return generate_keys(kid, Principal(Role.DEVICE, name, "C" + name, "oscore"))


@mp.needs_micropython
async def test_an_oscore_meter_end_to_end_on_micropython(tmp_path: Path) -> None:
    """Registration, the schedule with a 2 KB read (inner Block1) and every command (protected
    NOTIFYs from the CSE to the meter's listener), all under OSCORE, in OSCORE_HEAP."""
    keys = meter_keys("mtr-oscore", b"\x2a")
    async with oscore_dap(MemoryKeyring(keys)) as server:
        cse = server._cse
        settings = oscore_config(server, keys, tmp_path / "oscore.seq")
        settings.update(seed=3, prepay=False, clock_speed=3600, start_ts=T0 + 8 * 3600)
        settings.update(rate_scale=1000, dr_opt_out_rate=0)
        settings["expect"] = [flow for _, flow, _ in EVERY_COMMAND] + ["mr-multi-interval"]
        async with mp.MicroPython(END_TO_END, config=settings, heap=OSCORE_HEAP) as agent:
            await agent.expect("started")
            for number, (command, _, _) in enumerate(EVERY_COMMAND):
                instance = {"rn": f"k{number}", "con": json.dumps(command)}
                created = await cse.handle(
                    create("cse-in/mtr-oscore/command", 4, {"m2m:cin": instance})
                )
                assert created.status == 2001
            stats = json.loads((await agent.expect("stats"))[len("stats ") :])
            result = await agent.wait()
        assert result.rc == 0, result.output
        assert stats["commands"] == len(EVERY_COMMAND) and stats["refused"] == 0
        assert stats["memory_errors"] == 0, stats
        found = await cse.handle(retrieve("cse-in/mtr-oscore/reading", rcn=4))
        assert found.status == 2000
        reads = [
            json.loads(instance["con"])
            for instance in found.content["m2m:cnt"].get("m2m:cin", [])
            if "mr-multi-interval" in instance["con"]
        ]
        assert reads and len(reads[0]["ch"][0]["v"]) == reads[0]["n"] >= 32
    assert int((tmp_path / "oscore.seq").read_text()) > 0  # the sequence number was persisted


REBOOTS = """
import asyncio, json
from onem2m import Dap

config = json.load(open("config.json"))


async def main():
    dap = Dap(config)
    await dap.connect()
    await dap.register()
    rsc = await dap.ensure_container("reading")
    print("done", rsc, dap._link.client.context.echo_rounds, dap._link.client.context.sequence)
    await dap.close()


asyncio.run(main())
"""


@mp.needs_micropython
async def test_a_meter_reboot_and_a_gateway_crash_on_micropython(tmp_path: Path) -> None:
    """Three boots of one meter: the second against the same gateway (its replay window holds
    every number used: a reused one would be refused), the third against a gateway restarted
    after a crash on the same keyring (no replay state: one Echo round)."""
    keys = meter_keys("mtr-reboot", b"\x2b")
    keyring = MemoryKeyring(keys)
    state = tmp_path / "oscore.seq"
    async with oscore_dap(keyring) as server:
        settings = oscore_config(server, keys, state)
        first = (await mp.arun(REBOOTS, config=settings)).lines[-1].split()
        second = (await mp.arun(REBOOTS, config=settings)).lines[-1].split()
        async with oscore_dap(keyring) as restarted:  # the first never saved its window
            third = await mp.arun(REBOOTS, config=oscore_config(restarted, keys, state))
    assert first[:3] == ["done", "2001", "0"] and second[:3] == ["done", "4105", "0"]
    assert int(second[3]) > int(first[3])
    # (The restarted gateway's CSE is a new one in memory: the container is new there too.)
    assert third.lines[-1].split()[:3] == ["done", "2001", "1"], third.output

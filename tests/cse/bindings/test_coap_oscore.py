"""OSCORE on the CoAP binding, against the meter agent's own CoAP and OSCORE code (on CPython).

A real CoapServer with an in-memory keyring and `trust=Trust.CREDENTIAL`, a real CSE (a subclass
that records what reached the core), the agent's Dap, CoapClient and CoapListener as the meter,
exact datagrams from a bare UDP socket where a test replays one. Each attack has its test:
plain, wrong key, unknown kid, revoked kid, replay, an unprotected NOTIFY to a meter; then the
Echo recovery after a gateway crash, and a meter reboot that must not reuse a nonce.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import pytest

from cse.bindings.coap import CoapClient, CoapSender, CoapServer
from cse.bindings.coap.codec import encode_notification
from cse.bindings.coap.oscore import (
    MemoryKeyring,
    OscoreContexts,
    OscoreKeys,
    generate_keys,
)
from cse.core.clock import ManualClock
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Principal, Role, Trust
from cse.core.primitives import Request, Response
from cse.serialization import JSON
from cse.storage.memory import MemoryStorage
from device_agents.agent import coap, oscore
from device_agents.agent.compat import LinkError
from device_agents.agent.onem2m import Dap
from tests.cse.bindings.test_coap import RawPeer
from tests.helpers import ON_THIS_MACHINE, create, retrieve


def meter_principal(name: str) -> Principal:
    return Principal(Role.DEVICE, name, "C" + name, "oscore")


class RecordingCSE(CommonServicesEntity):
    """A real CSE that remembers every request that reached its core."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Request] = []

    async def handle(self, request: Request) -> Response:
        self.seen.append(request)
        return await super().handle(request)

    def seen_from(self, originator: str) -> list[Request]:
        return [request for request in self.seen if request.originator == originator]


class Sequence:
    """The meter's sequence number store, in memory (as the fleet keeps it)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value

    def load(self) -> int:
        return self.value

    def save(self, value: int) -> None:
        self.value = value


@pytest.fixture
def keyring() -> MemoryKeyring:
    return MemoryKeyring(
        generate_keys(b"\x01", meter_principal("mtr-1")),
        generate_keys(b"\x02\x02", meter_principal("mtr-2")),
    )


@pytest.fixture
def contexts(keyring: MemoryKeyring) -> OscoreContexts:
    return OscoreContexts(keyring)


@pytest.fixture
async def client(contexts: OscoreContexts) -> AsyncIterator[CoapClient]:
    async with CoapClient(timeout=5, oscore=contexts) as coap_client:
        yield coap_client


@pytest.fixture
async def cse(
    clock: ManualClock, client: CoapClient, keyring: MemoryKeyring
) -> AsyncIterator[RecordingCSE]:
    sender = CoapSender(client, keyring.keys_for_originator)
    entity = RecordingCSE(
        MemoryStorage(),
        CSESettings(expiry_check_interval=3600, notification_timeout=5, egress=ON_THIS_MACHINE),
        clock=clock,
        senders={"coap": sender},
    )
    async with entity:
        yield entity


async def serve(cse: RecordingCSE, contexts: OscoreContexts, port: int = 0) -> CoapServer:
    server = CoapServer(
        cse, "127.0.0.1", port, oscore=contexts, trust=Trust.CREDENTIAL, liveness_interval=None
    )
    await server.start()
    return server


@pytest.fixture
async def server(cse: RecordingCSE, contexts: OscoreContexts) -> AsyncIterator[CoapServer]:
    running = await serve(cse, contexts)
    yield running
    await running.stop()


def meter_config(port: int, keys: OscoreKeys, store: Any = None, **extra: Any) -> dict[str, Any]:
    name = keys.principal.name
    config = {
        "meter_id": name,
        "transport": "coap",
        "dap_host": "127.0.0.1",
        "dap_port": port,
        "cse_id": "/id-in",
        "cse_name": "cse-in",
        "poa_host": "127.0.0.1",
        "listen_host": "127.0.0.1",
        "coap_ack_timeout_ms": 500,
        "coap_max_retransmit": 2,
        "timeout_ms": 3000,
        "oscore": {
            "kid": keys.sender_id.hex(),
            "secret": keys.master_secret.hex(),
            "salt": keys.master_salt.hex(),
        },
        "oscore_state": store if store is not None else Sequence(),
    }
    config.update(extra)
    return config


async def connected(config: dict[str, Any]) -> Dap:
    dap = Dap(config)
    await dap.connect()
    return dap


def keys_of(keyring: MemoryKeyring, kid: bytes) -> OscoreKeys:
    keys = keyring.keys_for(kid)
    assert keys is not None
    return keys


# ---- a meter's requests ------------------------------------------------------------------


async def test_a_meter_registers_and_posts_a_reading_and_a_2_kb_block1_read_protected(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    keys = keys_of(keyring, b"\x01")
    assert server.port is not None
    dap = await connected(meter_config(server.port, keys))
    try:
        assert await dap.register() == "Cmtr-1"
        assert await dap.ensure_container("reading") == 2001
        assert await dap.post("reading", {"flow": "mr-interval", "seq": 1}) == 2001
        big = {"flow": "mr-multi-interval", "seq": 2, "v": "7" * 2048}
        assert await dap.post("reading", big) == 2001  # inner Block1: three protected blocks
    finally:
        await dap.close()
    stored = await cse.handle(retrieve("cse-in/mtr-1/reading/la"))
    assert stored.status == 2000, stored
    assert json.loads(stored.content["m2m:cin"]["con"]) == big
    from_meter = cse.seen_from("Cmtr-1")
    assert len(from_meter) == 4  # the blocks reached the core once, reassembled
    # The core learns who proved itself: the keyring's principal, on every request.
    assert {request.principal for request in from_meter} == {keys.principal}


async def test_a_plain_request_is_refused_with_4_01_and_never_reaches_the_core(
    server: CoapServer, cse: RecordingCSE, caplog: pytest.LogCaptureFixture
) -> None:
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        request = aiocoap.Message(
            code=aiocoap.POST, uri=f"coap://127.0.0.1:{server.port}/cse-in", payload=b"{}"
        )
        request.opt.content_format = 50
        for number, value in ((267, b"\x02"), (279, b"Cmtr-1"), (283, b"r1"), (271, b"3")):
            request.opt.add_option(aiocoap.optiontypes.OpaqueOption(number, value))
        reply = await context.request(request).response
    finally:
        await context.shutdown()
    assert reply.code == aiocoap.UNAUTHORIZED
    assert cse.seen == []
    assert "refused a plain CoAP request" in caplog.text  # logged, at WARNING


async def test_a_wrong_key_is_refused_and_the_server_keeps_serving_another_meter(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring, caplog: pytest.LogCaptureFixture
) -> None:
    real = keys_of(keyring, b"\x01")
    forged = OscoreKeys(real.sender_id, bytes(16), real.master_salt, real.principal)
    assert server.port is not None
    intruder = await connected(meter_config(server.port, forged))
    with pytest.raises(LinkError, match=r"4\.00"):  # does not verify: 4.00, unprotected
        await intruder.register()
    await intruder.close()
    other = await connected(meter_config(server.port, keys_of(keyring, b"\x02\x02")))
    assert await other.register() == "Cmtr-2"
    await other.close()
    assert cse.seen_from("Cmtr-1") == [] and len(cse.seen_from("Cmtr-2")) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("does not verify" in m and forged.master_secret.hex() not in m for m in warned)


async def test_an_unknown_kid_is_refused_with_4_01(
    server: CoapServer, cse: RecordingCSE, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = generate_keys(b"\x09", meter_principal("mtr-9"))
    assert server.port is not None
    dap = await connected(meter_config(server.port, stranger))
    with pytest.raises(LinkError, match=r"4\.01"):
        await dap.register()
    await dap.close()
    assert cse.seen == []
    assert "refused kid 09" in caplog.text and "unknown or revoked" in caplog.text


async def test_a_revoked_meter_is_cut_off_at_its_next_request(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    assert server.port is not None
    dap = await connected(meter_config(server.port, keys_of(keyring, b"\x01")))
    try:
        await dap.register()
        assert await dap.ensure_container("reading") == 2001
        keyring.revoke(b"\x01")
        with pytest.raises(LinkError, match=r"4\.01"):
            await dap.post("reading", {"flow": "mr-interval", "seq": 1})
    finally:
        await dap.close()
    assert len(cse.seen_from("Cmtr-1")) == 2  # the registration and the container only


def protected_create(meter: oscore.Context, mid: int, rqi: str) -> bytes:
    primitive = {"op": 1, "to": "cse-in", "fr": "Cmtr-1", "rqi": rqi, "ty": 2, "rvi": "3"}
    code, options = coap.m2m_request(primitive, 50, True)
    numbered = [(number, index, value) for index, (number, value) in enumerate(options)]
    body = json.dumps({"m2m:ae": {"rn": "mtr-1", "api": "Nx", "rr": False, "srv": ["3"]}})
    data = body.encode()
    _, datagram = meter.request_datagram(
        bytearray(1300), mid, code, numbered, b"tk", [data], 0, len(data)
    )
    return bytes(datagram)


async def answer_to(peer: RawPeer, datagram: bytes) -> coap.Message:
    peer.send(datagram)
    async with asyncio.timeout(10):
        while True:
            reply = coap.decode(await peer.replies.get())
            if reply.mid == int.from_bytes(datagram[2:4], "big"):
                return reply


async def test_a_replayed_datagram_is_refused_and_stored_once(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    keys = keys_of(keyring, b"\x01")
    meter = oscore.Context(keys.sender_id, keys.master_secret, keys.master_salt, Sequence())
    datagram = protected_create(meter, 0x1000, "r-replay")
    assert server.port is not None
    peer = await RawPeer.open(server.port)
    try:
        first = await answer_to(peer, datagram)
        assert first.code == 68 and first.option(oscore.OSCORE) is not None  # 2.04, sealed
        # The same bytes under a new message ID: past the message layer's duplicate
        # detection, only the replay window stands in the way.
        replayed = bytearray(datagram)
        replayed[2:4] = (0x1001).to_bytes(2, "big")
        again = await answer_to(peer, bytes(replayed))
    finally:
        peer.close()
    assert again.code == 129 and again.option(oscore.OSCORE) is None  # 4.01, unprotected
    assert len(cse.seen_from("Cmtr-1")) == 1


async def test_after_a_gateway_crash_the_next_request_succeeds_after_one_echo_round(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    """The first server is never stopped (a crash: its replay windows were never saved); a
    second one on the same keyring has no replay state and asks the meter for an Echo."""
    keys = keys_of(keyring, b"\x01")
    assert server.port is not None
    store = Sequence()
    dap = await connected(meter_config(server.port, keys, store))
    await dap.register()
    before = await dap.ensure_container("reading")
    replay = protected_create(dap._link.client.context, 0x2000, "r-old")
    peer = await RawPeer.open(server.port)
    assert (await answer_to(peer, replay)).code == 68  # an attacker records this one
    peer.close()
    await dap.close()
    restarted = await serve(cse, OscoreContexts(keyring))
    try:
        assert restarted.port is not None
        dap = await connected(meter_config(restarted.port, keys, store))
        assert await dap.post("reading", {"flow": "mr-interval", "seq": 1}) == 2001
        assert dap._link.client.context.echo_rounds == 1
        assert await dap.post("reading", {"flow": "mr-interval", "seq": 2}) == 2001
        assert dap._link.client.context.echo_rounds == 1  # one round, then the window is known
        await dap.close()
        peer = await RawPeer.open(restarted.port)
        try:
            stale = await answer_to(peer, replay)  # recorded before the crash
        finally:
            peer.close()
    finally:
        await restarted.stop()
    assert before == 2001
    assert stale.code == 129 and stale.option(oscore.OSCORE) is None  # older than the Echo
    assert sum(1 for request in cse.seen if request.request_id == "r-old") == 1


async def test_after_a_clean_stop_the_replay_window_is_kept_and_no_echo_is_needed(
    cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    keys = keys_of(keyring, b"\x01")
    first = await serve(cse, OscoreContexts(keyring))
    assert first.port is not None
    store = Sequence()
    dap = await connected(meter_config(first.port, keys, store))
    await dap.register()
    replay = protected_create(dap._link.client.context, 0x3000, "r-before-stop")
    peer = await RawPeer.open(first.port)
    assert (await answer_to(peer, replay)).code == 68
    peer.close()
    await dap.close()
    await first.stop()
    second = await serve(cse, OscoreContexts(keyring))
    try:
        assert second.port is not None
        dap = await connected(meter_config(second.port, keys, store))
        assert await dap.ensure_container("reading") == 2001
        assert dap._link.client.context.echo_rounds == 0
        await dap.close()
        peer = await RawPeer.open(second.port)
        replayed = bytearray(replay)
        replayed[2:4] = (0x3001).to_bytes(2, "big")
        stale = await answer_to(peer, bytes(replayed))
        peer.close()
    finally:
        await second.stop()
    assert stale.code == 129 and stale.option(oscore.OSCORE) is None  # the saved window
    assert sum(1 for request in cse.seen if request.request_id == "r-before-stop") == 1


async def test_a_rebooted_meter_never_reuses_a_sequence_number(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    keys = keys_of(keyring, b"\x01")
    assert server.port is not None
    store = Sequence()
    dap = await connected(meter_config(server.port, keys, store))
    await dap.register()
    await dap.ensure_container("reading")
    await dap.close()
    rebooted = await connected(meter_config(server.port, keys, Sequence(store.value)))
    try:  # numbers below the stored mark were (maybe) used: the server's window still has them
        assert await rebooted.post("reading", {"flow": "mr-interval", "seq": 1}) == 2001
    finally:
        await rebooted.close()
    amnesiac = await connected(meter_config(server.port, keys, Sequence(0)))
    try:  # what a meter without its state file would do: refused as replays
        with pytest.raises(LinkError, match=r"4\.01"):
            await amnesiac.post("reading", {"flow": "mr-interval", "seq": 2})
    finally:
        await amnesiac.close()


# ---- notifications to a meter ------------------------------------------------------------------


class Listener:
    """The meter's CoapListener, serving on loopback, counting what reached its handler."""

    def __init__(self, context: oscore.Context | None) -> None:
        self.notified: list[dict[str, Any]] = []
        decode = lambda data, cbor: json.loads(data)  # noqa: E731
        self.listener = (
            coap.CoapListener(self._handle, decode, "127.0.0.1", 0)
            if context is None
            else oscore.Listener(context, self._handle, decode, "127.0.0.1", 0)
        )

    def _handle(self, primitive: dict[str, Any]) -> int:
        self.notified.append(primitive)
        return 2000

    async def __aenter__(self) -> Listener:
        self.listener.open()
        self._task = asyncio.create_task(self.listener.serve())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.listener.close()
        await self._task

    @property
    def url(self) -> str:
        return f"coap://127.0.0.1:{self.listener.port}"


def command(rqi: str) -> Any:
    primitive = {"op": 5, "to": "Cmtr-1", "fr": "/id-in", "rqi": rqi, "rvi": "3"}
    primitive["pc"] = {"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": '{"cmd": "switch"}'}}}}}
    return encode_notification(primitive, path=(), query=(), serialization=JSON)


def meter_context(keys: OscoreKeys) -> oscore.Context:
    return oscore.Context(keys.sender_id, keys.master_secret, keys.master_salt, Sequence())


async def test_a_protected_notify_reaches_the_meter_and_its_answer_verifies(
    client: CoapClient, keyring: MemoryKeyring
) -> None:
    keys = keys_of(keyring, b"\x01")
    async with Listener(meter_context(keys)) as meter:
        first = await client.exchange(meter.url, command("n1"), keys=keys)  # after an Echo
        second = await client.exchange(meter.url, command("n2"), keys=keys)
    assert first.code == second.code == aiocoap.CHANGED
    assert [primitive["rqi"] for primitive in meter.notified] == ["n1", "n2"]
    assert meter.notified[0]["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"]


async def test_an_unprotected_notify_to_an_oscore_meter_is_refused_with_4_01(
    client: CoapClient, keyring: MemoryKeyring
) -> None:
    async with Listener(meter_context(keys_of(keyring, b"\x01"))) as meter:
        reply = await client.exchange(meter.url, command("forged"))
    assert reply.code == aiocoap.UNAUTHORIZED
    assert meter.notified == []  # the handler never saw a disconnect from the LAN


async def test_a_replayed_notify_is_refused_and_handled_once(
    client: CoapClient, contexts: OscoreContexts, keyring: MemoryKeyring
) -> None:
    keys = keys_of(keyring, b"\x01")
    async with Listener(meter_context(keys)) as meter:
        await client.exchange(meter.url, command("n1"), keys=keys)  # the window is known now
        gateway = contexts.for_keys(keys)
        inner = aiocoap.Message(code=aiocoap.POST, payload=b"{}")
        inner.opt.add_option(aiocoap.optiontypes.OpaqueOption(283, b"n-replayed"))
        outer, _ = gateway.protect(inner)
        options = [(int(option.number), 0, option.encode()) for option in outer.opt.option_list()]
        peer = await RawPeer.open(meter.listener.port)
        try:
            datagram = coap.encode(coap.CON, 2, 0x4000, b"t", options, outer.payload)
            assert (await answer_to(peer, bytes(datagram))).code == 68
            datagram[2:4] = (0x4001).to_bytes(2, "big")
            again = await answer_to(peer, bytes(datagram))
        finally:
            peer.close()
    assert again.code == 129
    assert [primitive["rqi"] for primitive in meter.notified] == ["n1", "n-replayed"]


async def test_the_cse_notifies_an_oscore_meter_protected_through_its_subscription(
    server: CoapServer, cse: RecordingCSE, keyring: MemoryKeyring
) -> None:
    """The whole path: the meter registers with its listener's poa and subscribes; a command
    created by the admin reaches its handler protected (CoapSender finds its keys)."""
    keys = keys_of(keyring, b"\x01")
    assert server.port is not None
    config = meter_config(server.port, keys)
    dap = await connected(config)
    notified: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    def on_notify(primitive: dict[str, Any]) -> None:
        notified.append(primitive)
        arrived.set()

    dap.on_notify = on_notify
    serving = asyncio.create_task(dap.serve())
    try:
        await dap.register()
        assert await dap.ensure_container("command") == 2001
        assert await dap.subscribe("command") == 2001
        instance = {"m2m:cin": {"con": '{"cmd": "read", "id": "c1"}'}}
        created = await cse.handle(create("cse-in/mtr-1/command", 4, instance))
        assert created.status == 2001
        async with asyncio.timeout(10):
            await arrived.wait()
    finally:
        await dap.close()
        await serving
    assert notified[0]["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] == (
        '{"cmd": "read", "id": "c1"}'
    )

"""The egress policy: the CSE sends only where it may, and no request can turn it against
others (cse/core/egress.py). Real listeners on loopback record what reaches them."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cse.bindings.coap.client import CoapClient, CoapSender
from cse.bindings.http import HttpClient, HttpSender
from cse.core.config import CSESettings
from cse.core.egress import AllowEntry, EgressPolicy, EgressRefused, EgressSettings
from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Request
from cse.core.types import ResponseStatusCode as RSC
from cse.security.credentials import CredentialStore
from cse.storage.memory import MemoryStorage
from tests.cse.bindings.test_coap import CoapReceiver
from tests.helpers import (
    NotificationReceiver,
    TcpListener,
    UdpListener,
    ae_body,
    create,
    retrieve,
    update,
)

ATTACKER = "192.0.2.66"  # where the requests of the attacks come from (TEST-NET-1)
METER = "192.0.2.10"


def sent_from(source: str, request: Request) -> Request:
    return dataclasses.replace(request, source=source)


@contextlib.asynccontextmanager
async def running(
    settings: EgressSettings,
    *,
    broker_url: str | None = None,
    remote_cses: tuple[str, ...] = (),
    provisioned: Any = None,
) -> AsyncIterator[CommonServicesEntity]:
    """A CSE whose HTTP and CoAP senders check every send against its egress policy."""
    policy = EgressPolicy(
        settings, broker_url=broker_url, remote_cses=remote_cses, provisioned_cse=provisioned
    )
    async with (
        HttpClient(timeout=5, egress=policy) as http,
        CoapClient(timeout=5, egress=policy) as coap,
    ):
        cse = CommonServicesEntity(
            MemoryStorage(),
            CSESettings(expiry_check_interval=3600, notification_timeout=5),
            senders={"http": HttpSender(http), "coap": CoapSender(coap)},
            egress=policy,
        )
        async with cse:
            yield cse


async def register(
    cse: CommonServicesEntity, name: str, source: str, poa: list[str] | None = None
) -> RSC:
    extra = {"poa": poa} if poa is not None else {}
    request = sent_from(source, create("cse-in", 2, ae_body(name, **extra), "C" + name))
    return (await cse.handle(request)).status


async def subscribe(cse: CommonServicesEntity, originator: str, nu: list[str]) -> RSC:
    body = {"m2m:sub": {"nu": nu, "enc": {"net": [3]}}}
    request = sent_from(ATTACKER, create(f"cse-in/{originator[1:]}", 23, body, originator))
    return (await cse.handle(request)).status


# ---- the attacks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [EgressSettings(), EgressSettings(loopback_peers=True)],
    ids=["default", "loopback-peers"],
)
async def test_a_verification_request_is_no_port_scanner(settings: EgressSettings) -> None:
    """A bare URL no registered entity announced is refused before any packet leaves."""
    async with running(settings) as cse, TcpListener() as tcp, UdpListener() as udp:
        assert await register(cse, "scan", ATTACKER) == RSC.CREATED
        for nu in (f"http://127.0.0.1:{tcp.port}/", f"coap://127.0.0.1:{udp.port}/"):
            assert await subscribe(cse, "Cscan", [nu]) == (
                RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
            )
        assert (tcp.connections, udp.datagrams) == (0, 0)
        assert cse.egress.refused["not-announced"] == 2


async def test_a_point_of_access_on_loopback_is_not_reached_by_default() -> None:
    """An entity on this machine may announce a loopback poa; the CSE still does not go
    there unless loopback_peers says every part runs here."""
    async with running(EgressSettings()) as cse, TcpListener() as tcp:
        poa = [f"http://127.0.0.1:{tcp.port}"]
        assert await register(cse, "local", "127.0.0.1", poa) == RSC.CREATED
        assert await register(cse, "scan", ATTACKER) == RSC.CREATED
        status = await subscribe(cse, "Cscan", ["Clocal"])
        assert status == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
        assert tcp.connections == 0
        assert cse.egress.refused["loopback"] == 1


async def test_a_second_target_refused_means_nothing_sent_to_the_first() -> None:
    async with (
        running(EgressSettings(allow=("127.0.0.1",))) as cse,
        NotificationReceiver() as fine,
    ):
        assert await register(cse, "scan", ATTACKER) == RSC.CREATED
        status = await subscribe(cse, "Cscan", [fine.url, "http://169.254.169.254/latest"])
        assert status == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
        assert fine.received == []  # checked, not verified: the second one failed the CREATE


async def test_a_subscriber_address_may_be_a_registered_point_of_access() -> None:
    """A bare URL at the scheme, host and port of a registered poa is the entity's own."""
    async with running(EgressSettings(loopback_peers=True)) as cse, NotificationReceiver() as rx:
        poa = [f"http://127.0.0.1:{rx.port}"]
        assert await register(cse, "app", "127.0.0.1", poa) == RSC.CREATED
        assert await subscribe(cse, "Capp", [rx.url]) == RSC.CREATED
        assert await register(cse, "other", "127.0.0.1") == RSC.CREATED
        assert await subscribe(cse, "Cother", [rx.url]) == RSC.CREATED
        verified = await rx.wait_for(2)  # both verified by rx: neither nu is its subscriber
        assert [item["body"]["m2m:sgn"]["vrq"] for item in verified] == [True, True]


async def test_a_subscriber_uri_is_checked_like_a_target() -> None:
    """`su` gets the deletion notice: it may not name what a nu may not."""
    async with running(EgressSettings()) as cse, TcpListener() as tcp:
        assert await register(cse, "scan", ATTACKER, [f"http://{ATTACKER}:9000"]) == RSC.CREATED
        body = {"m2m:sub": {"nu": ["Cscan"], "su": f"http://127.0.0.1:{tcp.port}/"}}
        reply = await cse.handle(sent_from(ATTACKER, create("cse-in/scan", 23, body, "Cscan")))
        assert reply.status == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
        assert tcp.connections == 0


# ---- points of access: the address the registration came from ----------------------------


async def test_a_point_of_access_must_be_at_the_address_the_request_came_from() -> None:
    async with running(EgressSettings()) as cse:
        assert await register(cse, "m1", METER, [f"coap://{METER}:5683"]) == RSC.CREATED
        for elsewhere in ("http://10.0.0.9:80", "http://127.0.0.1:22", "coap://[::1]:5683"):
            assert await register(cse, "m2", METER, [elsewhere]) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        assert await register(cse, "m3", METER, ["not a url"]) == RSC.BAD_REQUEST
        # Through a broker nobody's address is seen: only the broker itself can be a poa.
        assert await register(cse, "m4", None, [f"http://{METER}:80"]) == (  # type: ignore[arg-type]
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        )
        assert (await cse.handle(retrieve("cse-in/m2"))).status == RSC.NOT_FOUND
        assert cse.egress.refused["point-of-access"] == 4


async def test_a_meter_with_a_new_address_updates_its_point_of_access_from_there() -> None:
    """DHCP gave the meter a new address: its UPDATE comes from that address, and only a poa
    there is taken; the old address (now maybe another device's) cannot be named again."""
    async with running(EgressSettings()) as cse:
        assert await register(cse, "m1", METER, [f"coap://{METER}:5683"]) == RSC.CREATED
        moved = "192.0.2.11"
        change = update("cse-in/m1", {"m2m:ae": {"poa": [f"coap://{moved}:5683"]}}, "Cm1")
        assert (await cse.handle(sent_from(moved, change))).status == RSC.UPDATED
        back = update("cse-in/m1", {"m2m:ae": {"poa": [f"coap://{METER}:5683"]}}, "Cm1")
        assert (await cse.handle(sent_from(moved, back))).status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        ae = (await cse.handle(retrieve("cse-in/m1"))).content["m2m:ae"]
        assert ae["poa"] == [f"coap://{moved}:5683"]


async def test_a_point_of_access_may_be_our_broker_or_an_allowed_target() -> None:
    settings = EgressSettings(allow=("https://mdms.example.net/onem2m",))
    async with running(settings, broker_url="mqtt://127.0.0.1:1883") as cse:
        assert await register(cse, "m1", METER, ["mqtt://127.0.0.1:1883"]) == RSC.CREATED
        assert await register(cse, "m2", METER, ["mqtt://localhost:1883"]) == RSC.CREATED
        assert await register(cse, "m3", METER, ["mqtt://10.0.0.9:1883"]) == (
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        )
        allowed = ["https://mdms.example.net/onem2m/notify"]
        assert await register(cse, "mdms", ATTACKER, allowed) == RSC.CREATED
        other_path = ["https://mdms.example.net/admin"]
        assert await register(cse, "m4", ATTACKER, other_path) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_a_point_of_access_is_never_a_port_of_this_process() -> None:
    async with running(EgressSettings(loopback_peers=True)) as cse, TcpListener() as ops:
        cse.egress.add_own_port(ops.port)
        poa = [f"http://127.0.0.1:{ops.port}/health"]
        assert await register(cse, "evil", "127.0.0.1", poa) == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        assert await register(cse, "scan", "127.0.0.1") == RSC.CREATED
        assert await subscribe(cse, "Cscan", poa) == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
        assert ops.connections == 0


# ---- remoteCSEs: only the configured or provisioned -----------------------------------------


def _csr(csi: str) -> dict[str, Any]:
    return {"m2m:csr": {"csi": csi, "cb": f"{csi}/cse-x", "rr": True, "srv": ["3"]}}


async def test_only_a_configured_or_provisioned_cse_registers(tmp_path: Path) -> None:
    with CredentialStore(tmp_path / "credentials.db") as store:
        store.add_cse("/id-prov", token=True)
        store.add_cse("/id-gone", token=True)
        store.revoke("id-gone")
        known = store.by_originator

        def provisioned(cse_id: str) -> bool:
            credential = known(cse_id)
            return credential is not None and credential.kind.value == "cse"

        async with running(
            EgressSettings(), remote_cses=("/id-conf",), provisioned=provisioned
        ) as cse:
            for csi, expected in (
                ("/id-evil", RSC.ORIGINATOR_HAS_NO_PRIVILEGE),
                ("/id-gone", RSC.ORIGINATOR_HAS_NO_PRIVILEGE),
                ("/id-conf", RSC.CREATED),
                ("/id-prov", RSC.CREATED),
            ):
                reply = await cse.handle(sent_from(ATTACKER, create("cse-in", 16, _csr(csi), csi)))
                assert reply.status == expected, (csi, reply.content)
            assert (await cse.handle(retrieve("cse-in/id-evil"))).status == RSC.NOT_FOUND
            assert (await cse.handle(retrieve("/id-evil/cse-x/a"))).status == RSC.NOT_FOUND
            assert cse.egress.refused["unknown-cse"] == 2


# ---- the address rules of every send -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost:8080/x", "loopback"),  # a name is resolved, then checked
        ("http://127.1:8080/x", "loopback"),
        ("http://2130706433:8080/x", "loopback"),
        ("http://[::ffff:127.0.0.1]:8080/x", "loopback"),
        ("http://[::1]:8080/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("coap://[fe80::1]:5683", "link-local"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://0.1.2.3:8080/", "unspecified"),
        ("coap://224.0.1.187:5683/", "multicast"),
        ("http://255.255.255.255/", "multicast"),
        ("mqtt://10.0.0.9:1883", "other-broker"),
        ("ftp://10.0.0.9/", "unusable-url"),
        ("http://no-such-host.invalid/", "unresolvable"),
    ],
)
async def test_what_no_send_reaches(url: str, reason: str) -> None:
    policy = EgressPolicy(EgressSettings())
    with pytest.raises(EgressRefused) as refusal:
        await policy.destination(url)
    assert refusal.value.reason == reason
    assert policy.refused[reason] == 1


async def test_what_a_send_reaches_and_where_it_connects() -> None:
    policy = EgressPolicy(EgressSettings(allow=("169.254.10.0/24",)))
    assert (await policy.destination("coap://10.1.2.3/x")).netloc == "10.1.2.3:5683"
    assert (await policy.destination("http://169.254.10.7:80/")).address == "169.254.10.7"
    assert (await policy.destination("http://[2001:db8::5]:8080/")).netloc == "[2001:db8::5]:8080"


async def test_own_ports_are_refused_unless_one_exact_url_is_allowed() -> None:
    policy = EgressPolicy(EgressSettings(loopback_peers=True, allow=("127.0.0.1",)))
    policy.add_own_port(9110)
    policy.add_own_port(8090)
    policy.allow_exactly("http://127.0.0.1:8090/notify/mdms")
    policy.add_own_port(5683, "udp")
    for url in (
        "http://127.0.0.1:9110/health",
        "http://localhost:9110/",
        "https://127.0.0.2:9110",
        "coap://127.0.0.2:5683",
    ):
        with pytest.raises(EgressRefused) as refusal:
            await policy.destination(url)
        assert refusal.value.reason == "own-port"
    # A port number is the transport's: a meter's CoAP listener may have the number of one of
    # our TCP ports, and nothing of ours listens on the other transport.
    assert (await policy.destination("coap://127.0.0.2:9110")).port == 9110
    assert (await policy.destination("http://127.0.0.1:5683/")).port == 5683
    for url in ("http://127.0.0.1:8090/api/commands", "http://127.0.0.1:8090/notify/mdmsX"):
        with pytest.raises(EgressRefused):
            await policy.destination(url)
    assert (await policy.destination("http://127.0.0.1:8090/notify/mdms")).port == 8090
    assert (await policy.destination("http://127.0.0.1:9111/")).port == 9111


async def test_a_name_is_resolved_once_and_the_connection_goes_to_that_address() -> None:
    """The policy's lookup is the only one: the HTTP client connects to the address it
    checked (meter.example is unknown to the system resolver), and a name that answers with
    any refused address is refused as a whole."""
    answers = {"meter.example": ["127.0.0.1"], "rebind.example": ["192.0.2.5", "127.0.0.1"]}
    lookups: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return answers[host]

    policy = EgressPolicy(EgressSettings(allow=("127.0.0.1/32",)), resolver=resolver)
    notify = {"op": 5, "fr": "/id-in", "to": "Cm", "rqi": "1", "rvi": "3", "pc": {"m2m:sgn": {}}}
    async with (
        HttpClient(timeout=5, egress=policy) as client,
        CoapClient(timeout=5, egress=policy) as coap,
        NotificationReceiver() as rx,
        CoapReceiver() as coap_rx,
    ):
        url = f"http://meter.example:{rx.port}/notify"
        assert await HttpSender(client).send(url, notify) == 2000
        assert rx.received[0]["headers"]["Host"] == f"meter.example:{rx.port}"
        coap_url = coap_rx.url.replace("127.0.0.1", "meter.example")
        assert await CoapSender(coap).send(coap_url, notify) == 2000
        assert len(coap_rx.received) == 1
        assert lookups == ["meter.example", "meter.example"]
        strict = EgressPolicy(EgressSettings(), resolver=resolver)
        with pytest.raises(EgressRefused):
            await strict.destination(f"http://rebind.example:{rx.port}/")
        assert len(rx.received) == 1


def test_allow_entries_are_checked_when_read() -> None:
    assert AllowEntry.parse("10.20.0.0/16").network is not None
    assert AllowEntry.parse("mdms.example.net").host == "mdms.example.net"
    assert AllowEntry.parse("https://mdms.example.net/x").prefix is not None
    for bad in ("gopher://x/", "a b", "10.0.0.0/33", "http://", "host:80"):
        with pytest.raises(ValueError):
            AllowEntry.parse(bad)


async def test_an_in_process_point_of_access_is_for_this_process_only() -> None:
    """`local://` (the head-end's MDMS) is delivered inside the process: only a request made
    there may name it, never one from the network."""
    policy = EgressPolicy(EgressSettings(), local_schemes=("local",))
    cse = CommonServicesEntity(
        MemoryStorage(), CSESettings(expiry_check_interval=3600), egress=policy
    )
    async with cse:
        from_network = create("cse-in", 2, ae_body("evil", poa=["local://mdms"]), "Cevil")
        assert (await cse.handle(sent_from(ATTACKER, from_network))).status == (
            RSC.ORIGINATOR_HAS_NO_PRIVILEGE
        )
        in_process = create("cse-in", 2, ae_body("mdms", poa=["local://mdms"]), "Cmdms")
        assert (await cse.handle(in_process)).status == RSC.CREATED
        body = {"m2m:sub": {"nu": ["Cmdms"], "enc": {"net": [3]}}}
        assert (await cse.handle(create("cse-in/mdms", 23, body, "Cmdms"))).status == 2001
        bare = {"m2m:sub": {"nu": ["local://mdms"]}}
        assert (await cse.handle(sent_from(ATTACKER, create("cse-in/mdms", 23, bare)))).status == (
            RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
        )

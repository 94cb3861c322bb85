"""The HTTP binding proves who calls it: client certificates and bearer tokens from the
credential store, HTTPS, and a listener's trust for requests that prove nothing.

Everything here runs against a real loopback listener (plain or TLS) and a real SQLite
credential store; a revocation is made through a second connection to the store, as the
`gridm2m credentials` command does from another process.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cse.bindings.http import HttpClient, HttpServer
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.core.notifications import DeliveryError
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.core.types import ResponseStatusCode as RSC
from cse.security.credentials import CredentialStore
from cse.security.pki import CertificateFiles, LabCA, client_context, server_context
from cse.storage.memory import MemoryStorage
from tests.helpers import ae_body, create

# A gateway's CSE: the head-end (/id-in) is trusted, as a gateway config makes it.
BASE = "dap1"
METER = "mtr-000001"
READINGS = f"/{BASE}/{METER}/reading"


@dataclass
class Lab:
    """A CA, a server certificate for 127.0.0.1, and client certificates for two credentials."""

    folder: Path
    ca: LabCA
    server: CertificateFiles
    headend: CertificateFiles  # pinned to the CSE credential /id-in
    operator: CertificateFiles  # pinned to an admin credential

    def client(self, files: CertificateFiles | None) -> ssl.SSLContext:
        if files is None:
            return client_context(self.ca.cert_path)
        return client_context(self.ca.cert_path, files.cert, files.key)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    folder = tmp_path_factory.mktemp("pki")
    ca = LabCA.create(folder / "ca")
    return Lab(
        folder,
        ca,
        ca.issue_server(folder / "server", "dap1", ["127.0.0.1"]),
        ca.issue_client(folder / "clients", "id-in"),
        ca.issue_client(folder / "clients", "alice"),
    )


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    with CredentialStore(tmp_path / "credentials.db") as opened:
        yield opened  # type: ignore[misc]


@pytest.fixture
def cli_store(tmp_path: Path, store: CredentialStore) -> CredentialStore:
    """The same store through another connection: what `gridm2m credentials` changes."""
    with CredentialStore(store.path) as other:
        yield other  # type: ignore[misc]


@pytest.fixture
async def gateway_cse() -> AsyncIterator[CommonServicesEntity]:
    settings = CSESettings(
        cse_id="/id-dap1",
        cse_name=BASE,
        role="mn",
        trusted_originators=("/id-in",),
        expiry_check_interval=3600,
    )
    async with CommonServicesEntity(MemoryStorage(), settings) as entity:
        # A meter with its readings container, made in process (as if over its own link).
        for made in (
            await entity.handle(create(BASE, 2, ae_body(METER), "C" + METER)),
            await entity.handle(
                create(f"{BASE}/{METER}", 3, {"m2m:cnt": {"rn": "reading"}}, "C" + METER)
            ),
        ):
            assert made.status == RSC.CREATED, made.content
        yield entity


async def count_readings(cse: CommonServicesEntity) -> int:
    reply = await cse.handle(Request(Operation.RETRIEVE, READINGS[1:], "CAdmin", "count", "3"))
    return int(reply.content["m2m:cnt"]["cni"])


async def call(
    session: aiohttp.ClientSession,
    url: str,
    method: str,
    path: str,
    origin: str,
    *,
    ty: int | None = None,
    body: Any = None,
    token: str | None = None,
) -> tuple[int, int, aiohttp.typedefs.LooseHeaders]:
    """(HTTP status, X-M2M-RSC, headers) of one oneM2M request."""
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": "rq", "X-M2M-RVI": "3"}
    if ty is not None:
        headers["Content-Type"] = f"application/json;ty={ty}"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = orjson.dumps(body) if body is not None else None
    async with session.request(method, url + path, headers=headers, data=data) as reply:
        await reply.read()
        return reply.status, int(reply.headers["X-M2M-RSC"]), reply.headers


def reading(value: str = "42") -> dict[str, Any]:
    return {"m2m:cin": {"con": value}}


# ---- a credential listener refuses claims ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "origin", "ty", "body"),
    [
        ("POST", READINGS, "C" + METER, 4, reading()),  # a fake meter read
        ("POST", READINGS, "CAdmin", 4, reading()),  # the admin originator
        ("POST", READINGS, "/id-in/Cheadend", 4, reading()),  # the head-end's application
        ("POST", READINGS, "/id-in", 4, reading()),  # the head-end itself
        ("POST", READINGS, "/id-dap1", 4, reading()),  # the gateway's own CSE-ID
        ("GET", READINGS, "CAdmin", None, None),  # reading every meter
        ("DELETE", f"/{BASE}/{METER}", "CAdmin", None, None),  # deleting an AE
        ("POST", f"/{BASE}", "CAdmin", 1, {"m2m:acp": {"rn": "open", "pv": {}, "pvs": {}}}),
    ],
)
async def test_a_credential_listener_refuses_what_a_request_only_claims(
    gateway_cse: CommonServicesEntity,
    store: CredentialStore,
    method: str,
    path: str,
    origin: str,
    ty: int | None,
    body: Any,
) -> None:
    async with (
        HttpServer(gateway_cse, "127.0.0.1", 0, credentials=store) as server,
        aiohttp.ClientSession() as session,
    ):
        status, rsc, headers = await call(
            session, server.url, method, path, origin, ty=ty, body=body
        )
    assert (status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
    assert headers["WWW-Authenticate"] == 'Bearer realm="oneM2M"'
    assert await count_readings(gateway_cse) == 0
    assert await gateway_cse.find("C" + METER) is not None  # not deleted
    assert await gateway_cse.storage.get_by_path(f"{BASE}/open") is None  # no ACP


async def test_a_claimed_listener_believes_a_meter_but_never_a_privileged_identity(
    gateway_cse: CommonServicesEntity, store: CredentialStore
) -> None:
    """The meter-side lab listener: the head-end's identity is not taken from there."""
    async with (
        HttpServer(gateway_cse, "127.0.0.1", 0, trust=Trust.CLAIMED, credentials=store) as server,
        aiohttp.ClientSession() as session,
    ):
        for origin in ("/id-in/Cheadend", "/id-in", "/id-dap1", "CAdmin"):
            _, rsc, _ = await call(session, server.url, "POST", READINGS, origin, ty=4,
                                   body=reading())  # fmt: skip
            assert rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, origin
        _, rsc, _ = await call(
            session, server.url, "POST", READINGS, "C" + METER, ty=4, body=reading()
        )
        assert rsc == RSC.CREATED
    assert await count_readings(gateway_cse) == 1


# ---- bearer tokens ------------------------------------------------------------------------


async def test_a_token_proves_its_credential_until_it_is_revoked(
    gateway_cse: CommonServicesEntity, store: CredentialStore, cli_store: CredentialStore
) -> None:
    token = cli_store.add_admin("alice", "CAdmin").token
    assert token is not None
    async with (
        HttpServer(gateway_cse, "127.0.0.1", 0, credentials=store) as server,
        aiohttp.ClientSession() as session,  # one keep-alive connection throughout
    ):
        status, rsc, _ = await call(session, server.url, "GET", READINGS, "CAdmin", token=token)
        assert (status, rsc) == (200, RSC.OK)
        # The token is the admin's: it does not make its bearer the head-end.
        _, rsc, _ = await call(session, server.url, "GET", READINGS, "/id-in", token=token)
        assert rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE

        cli_store.revoke("alice")
        status, rsc, headers = await call(
            session, server.url, "GET", READINGS, "CAdmin", token=token
        )
    assert (status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
    assert headers["WWW-Authenticate"] == 'Bearer realm="oneM2M", error="invalid_token"'


async def test_an_expired_token_is_refused(
    gateway_cse: CommonServicesEntity, store: CredentialStore
) -> None:
    token = store.add_admin("bob", "CAdmin", expires=time.time() - 1).token
    async with (
        HttpServer(gateway_cse, "127.0.0.1", 0, credentials=store) as server,
        aiohttp.ClientSession() as session,
    ):
        status, rsc, headers = await call(session, server.url, "GET", READINGS, "CAdmin",
                                          token=token)  # fmt: skip
    assert (status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_a_cse_token_speaks_for_that_cse_and_what_is_behind_it(
    gateway_cse: CommonServicesEntity, store: CredentialStore
) -> None:
    token = store.add_cse("/id-in", token=True).token
    async with (
        HttpServer(gateway_cse, "127.0.0.1", 0, credentials=store) as server,
        aiohttp.ClientSession() as session,
    ):
        _, rsc, _ = await call(session, server.url, "POST", READINGS, "/id-in/Cheadend", ty=4,
                               body=reading(), token=token)  # fmt: skip
        assert rsc == RSC.CREATED
        _, rsc, _ = await call(session, server.url, "POST", READINGS, "C" + METER, ty=4,
                               body=reading(), token=token)  # fmt: skip
        assert rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE
    assert await count_readings(gateway_cse) == 1


class Lines(logging.Handler):
    """Every line the binding's loggers write, as written (no filter of the run's own)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += self.format(record) + "\n"


@pytest.mark.parametrize("header", ["Bearer not-a-token", "Basic YWRtaW46YWRtaW4=", "Bearer "])
async def test_a_bad_authorization_is_refused_and_never_logged(
    gateway_cse: CommonServicesEntity, store: CredentialStore, header: str
) -> None:
    """Even on a listener that would believe a claim without any credential."""
    lines = Lines()
    binding = logging.getLogger("cse.bindings.http")
    binding.addHandler(lines)
    level = binding.level
    binding.setLevel(logging.DEBUG)
    try:
        async with (
            HttpServer(
                gateway_cse, "127.0.0.1", 0, trust=Trust.INSECURE, credentials=store
            ) as server,
            aiohttp.ClientSession() as session,
        ):
            headers = {"X-M2M-Origin": "CAdmin", "X-M2M-RI": "rq", "Authorization": header}
            async with session.get(server.url + READINGS, headers=headers) as reply:
                rsc = int(reply.headers["X-M2M-RSC"])
                challenge = reply.headers["WWW-Authenticate"]
    finally:
        binding.removeHandler(lines)
        binding.setLevel(level)
    assert (reply.status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
    assert 'error="invalid_token"' in challenge
    assert "refused an HTTP request" in lines.text
    secret = header.split(" ", 1)[1]
    assert not secret or secret not in lines.text


# ---- HTTPS and client certificates ----------------------------------------------------------


@pytest.fixture
async def https(
    lab: Lab, gateway_cse: CommonServicesEntity, store: CredentialStore
) -> AsyncIterator[HttpServer]:
    store.add_cse("/id-in", certificate=lab.headend.der())
    store.add_admin("alice", "CAdmin", certificate=lab.operator.der(), token=False)
    tls = server_context(lab.server.cert, lab.server.key, lab.ca.cert_path, require_client=False)
    async with HttpServer(gateway_cse, "127.0.0.1", 0, credentials=store, tls=tls) as server:
        yield server


async def test_a_pinned_client_certificate_proves_the_head_end(
    lab: Lab, https: HttpServer, gateway_cse: CommonServicesEntity
) -> None:
    assert https.url.startswith("https://")
    connector = aiohttp.TCPConnector(ssl=lab.client(lab.headend))
    async with aiohttp.ClientSession(connector=connector) as session:
        _, rsc, _ = await call(session, https.url, "POST", READINGS, "/id-in/Cheadend", ty=4,
                               body=reading())  # fmt: skip
        assert rsc == RSC.CREATED
        # The head-end's certificate is not the admin's, nor the gateway's own identity.
        for origin in ("CAdmin", "/id-dap1", "C" + METER):
            _, rsc, _ = await call(session, https.url, "GET", READINGS, origin)
            assert rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, origin
    assert await count_readings(gateway_cse) == 1


async def test_without_a_certificate_or_token_https_refuses_too(
    lab: Lab, https: HttpServer, gateway_cse: CommonServicesEntity
) -> None:
    connector = aiohttp.TCPConnector(ssl=lab.client(None))
    async with aiohttp.ClientSession(connector=connector) as session:
        status, rsc, _ = await call(session, https.url, "POST", READINGS, "/id-in", ty=4,
                                    body=reading())  # fmt: skip
    assert (status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)
    assert await count_readings(gateway_cse) == 0


async def test_the_own_probe_is_refused_quietly_and_a_stranger_is_logged(
    lab: Lab, https: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The liveness probe (no credential) proves the listener alive without a WARNING each
    time; a request without a credential from anyone else is still logged."""
    with caplog.at_level(logging.WARNING, logger="cse.bindings.http.auth"):
        assert await https.probe()
        assert not caplog.records
        connector = aiohttp.TCPConnector(ssl=lab.client(None))
        async with aiohttp.ClientSession(connector=connector) as session:
            await call(session, https.url, "GET", READINGS, "/id-dap1")
    assert ["no client certificate or token" in r.getMessage() for r in caplog.records] == [True]


async def test_a_certificate_from_another_ca_fails_the_handshake(
    lab: Lab, https: HttpServer, tmp_path: Path, gateway_cse: CommonServicesEntity
) -> None:
    rogue_ca = LabCA.create(tmp_path / "rogue")
    # Same name as the head-end's, signed by a CA the listener does not know.
    rogue = rogue_ca.issue_client(tmp_path / "rogue", "id-in")
    connector = aiohttp.TCPConnector(ssl=lab.client(rogue))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises(aiohttp.ClientError):
            await call(session, https.url, "POST", READINGS, "/id-in", ty=4, body=reading())
    assert await count_readings(gateway_cse) == 0


async def test_a_certificate_of_a_revoked_credential_is_refused(
    lab: Lab, https: HttpServer, cli_store: CredentialStore
) -> None:
    connector = aiohttp.TCPConnector(ssl=lab.client(lab.operator))
    async with aiohttp.ClientSession(connector=connector) as session:
        _, rsc, _ = await call(session, https.url, "GET", READINGS, "CAdmin")
        assert rsc == RSC.OK
        cli_store.revoke("alice")
        status, rsc, _ = await call(session, https.url, "GET", READINGS, "CAdmin")
    assert (status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)


async def test_a_certificate_of_our_ca_that_is_not_pinned_is_refused(
    lab: Lab, https: HttpServer
) -> None:
    stranger = lab.ca.issue_client(lab.folder / "clients", "stranger")
    connector = aiohttp.TCPConnector(ssl=lab.client(stranger))
    async with aiohttp.ClientSession(connector=connector) as session:
        status, rsc, _ = await call(session, https.url, "GET", READINGS, "CAdmin")
    assert (status, rsc) == (403, RSC.ORIGINATOR_HAS_NO_PRIVILEGE)


async def test_plain_http_to_the_https_port_fails_and_the_listener_keeps_serving(
    lab: Lab, https: HttpServer
) -> None:
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", https.port)
        writer.write(b"GET /dap1 HTTP/1.1\r\nHost: x\r\nX-M2M-Origin: CAdmin\r\n\r\n")
        await writer.drain()
        # The TLS layer answers with an alert (or nothing) and closes; HTTP would answer.
        answer = await reader.read(64)
        writer.close()
        assert not answer.startswith(b"HTTP/"), answer[:80]
    connector = aiohttp.TCPConnector(ssl=lab.client(lab.operator))
    async with aiohttp.ClientSession(connector=connector) as session:
        _, rsc, _ = await call(session, https.url, "GET", READINGS, "CAdmin")
    assert rsc == RSC.OK


# ---- the client side ------------------------------------------------------------------------


async def test_the_http_client_presents_its_certificate_and_checks_the_server(
    lab: Lab, https: HttpServer, tmp_path: Path
) -> None:
    request = Request(Operation.RETRIEVE, READINGS[1:], "/id-in/Cheadend", "rq-1", "3")
    async with HttpClient(tls=lab.client(lab.headend)) as client:
        assert (await client.send(https.url, request)).status == RSC.OK
    other_ca = LabCA.create(tmp_path / "other")
    async with HttpClient(tls=client_context(other_ca.cert_path)) as client:
        with pytest.raises(DeliveryError):  # the server's certificate is not from that CA
            await client.send(https.url, request)


async def test_the_http_client_sends_its_token_to_the_cse_it_talks_to(
    gateway_cse: CommonServicesEntity, store: CredentialStore
) -> None:
    token = store.add_cse("/id-in", token=True).token
    request = Request(Operation.RETRIEVE, READINGS[1:], "/id-in/Cheadend", "rq-1", "3")
    async with HttpServer(gateway_cse, "127.0.0.1", 0, credentials=store) as server:
        async with HttpClient(token=token) as client:
            assert (await client.send(server.url, request)).status == RSC.OK
        async with HttpClient() as client:
            reply = await client.send(server.url, request)
    assert reply.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE

"""The lab CA: certificates a TLS peer accepts, and ones from another CA it refuses."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest

from cse.security.pki import LabCA, client_context, server_context


async def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """Connect once; the common name of the client certificate the server saw ('' if none)."""
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peercert") or {}
        names = [
            value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"
        ]
        seen.set_result(names[0] if names else "")
        writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.close()
        return await asyncio.wait_for(seen, 10)
    finally:
        listener.close()


async def test_mutual_tls_with_lab_certificates(tmp_path: Path) -> None:
    ca = LabCA.create(tmp_path / "ca")
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    server = ca.issue_server(tmp_path, "gateway", ["127.0.0.1", "dap1.lab"])
    client = ca.issue_client(tmp_path, "id-in")
    assert stat.S_IMODE(client.key.stat().st_mode) == 0o600
    name = await _handshake(
        server_context(server.cert, server.key, ca.cert_path, require_client=True),
        client_context(ca.cert_path, client.cert, client.key),
    )
    assert name == "id-in"


async def test_a_client_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca = LabCA.create(tmp_path / "ca")
    other = LabCA.create(tmp_path / "other")
    server = ca.issue_server(tmp_path, "gateway", ["127.0.0.1"])
    stranger = other.issue_client(tmp_path / "stranger", "id-in")
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, TimeoutError)):
        await _handshake(
            server_context(server.cert, server.key, ca.cert_path, require_client=True),
            client_context(ca.cert_path, stranger.cert, stranger.key),
        )


def test_a_ca_is_never_overwritten(tmp_path: Path) -> None:
    LabCA.create(tmp_path)
    with pytest.raises(FileExistsError):
        LabCA.create(tmp_path)
    assert LabCA.open_or_create(tmp_path).cert_path.exists()

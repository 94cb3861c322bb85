"""Several CSE processes' HTTP(S) listeners on one port (SO_REUSEPORT, [cse.http] reuse_port).

Two CSEs are composed as `gridm2m cse` composes one (`running_cse`), each on storage of its own
holding an AE `tag` labelled with the CSE's name, so each answer tells which one served it. Every
request goes over a new TCP connection; the kernel spreads connections between the sockets
of the port by their addresses, so within a few connections both CSEs serve (200 connections
all going to the same one would happen with probability 2**-199).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cse.app import CSEConfig, RunningCSE, running_cse
from cse.core.types import ResponseStatusCode as RSC
from tests.brokers import free_port, make_certificates
from tests.helpers import ae_body, create

CONNECTIONS = 200


def config(port: int, tls: Any = None, **http: Any) -> CSEConfig:
    return CSEConfig.model_validate(
        {"db": ":memory:", "http": {"port": port, "trust": "insecure", **http, "tls": tls}}
    )


@contextlib.asynccontextmanager
async def two_cses(port: int, tls: Any = None) -> AsyncIterator[tuple[RunningCSE, RunningCSE]]:
    async with (
        running_cse(config(port, tls, reuse_port=True)) as a,
        running_cse(config(port, tls, reuse_port=True)) as b,
    ):
        for running, name in ((a, "a"), (b, "b")):
            made = await running.cse.handle(create("cse-in", 2, ae_body("tag", lbl=[name]), "Ctag"))
            assert made.status == RSC.CREATED
        yield a, b


async def who_serves(url: str, tls: ssl.SSLContext | None = None) -> set[str]:
    """The CSEs that answered, over up to CONNECTIONS connections (until both have)."""
    seen: set[str] = set()
    headers = {"X-M2M-Origin": "CAdmin", "X-M2M-RI": "r1", "X-M2M-RVI": "3"}
    connector = aiohttp.TCPConnector(
        force_close=True, ssl=tls or True
    )  # a new connection each time
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(CONNECTIONS):
            async with session.get(f"{url}/cse-in/tag", headers=headers) as reply:
                assert reply.status == 200
                seen.update((await reply.json())["m2m:ae"]["lbl"])
            if len(seen) == 2:
                break
    return seen


async def test_two_http_listeners_share_a_port_and_both_serve() -> None:
    port = free_port()
    async with two_cses(port) as (a, b):
        assert a.http.port == b.http.port == port
        served = await who_serves(f"http://127.0.0.1:{port}")
    assert served == {"a", "b"}


async def test_two_https_listeners_share_a_port_and_both_serve(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "tls")
    tls = {"cert": str(files.certificate), "key": str(files.key)}
    port = free_port()
    client = ssl.create_default_context(cafile=str(files.ca))
    async with two_cses(port, tls):
        served = await who_serves(f"https://127.0.0.1:{port}", client)
    assert served == {"a", "b"}


async def test_without_reuse_port_a_second_listener_is_refused() -> None:
    port = free_port()
    async with running_cse(config(port, reuse_port=True)):
        with pytest.raises(OSError, match="in use"):
            async with running_cse(config(port)):
                pass

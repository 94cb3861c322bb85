"""CoAP notifications from a real `gridm2m cse` process (its production event loop, uvloop).

One unreachable CoAP target (its port answers with ICMP) must not disturb deliveries to the
live ones: each notification arrives once.
"""

from __future__ import annotations

import itertools
import socket
from typing import Any

import aiohttp
import pytest

from tests.cse.bindings.test_coap import CoapReceiver
from tests.processes import CSEProcess

pytestmark = pytest.mark.slow
_ids = itertools.count()
RQI_OPTION = 283


def _headers(origin: str, ty: int | None = None) -> dict[str, str]:
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": f"n{next(_ids)}", "X-M2M-RVI": "3"}
    headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    return headers


def _dead_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again: datagrams to it draw ICMP errors


async def _post(session: aiohttp.ClientSession, url: str, body: Any, origin: str, ty: int) -> None:
    async with session.post(url, json=body, headers=_headers(origin, ty)) as reply:
        assert reply.status == 201, await reply.text()


async def _meter(
    session: aiohttp.ClientSession, base: str, name: str, poa: str, pending: int | None
) -> None:
    origin = f"C{name}"
    ae = {"m2m:ae": {"rn": name, "api": "Nmeter", "rr": True, "srv": ["3"], "poa": [poa]}}
    await _post(session, f"{base}/cse-in", ae, origin, 2)
    await _post(session, f"{base}/cse-in/{name}", {"m2m:cnt": {"rn": "command"}}, origin, 3)
    sub: dict[str, Any] = {"rn": "s", "nu": [origin], "enc": {"net": [3]}}
    if pending:
        sub["pn"] = pending
    await _post(session, f"{base}/cse-in/{name}/command", {"m2m:sub": sub}, origin, 23)


async def test_an_unreachable_target_does_not_disturb_live_ones(tmp_path: Any) -> None:
    # Lab mode: the meters' claimed AE-IDs are believed (this is about notifications).
    cse = CSEProcess(
        "--coap-port",
        "0",
        "--db",
        str(tmp_path / "cse.db"),
        "--trust",
        "claimed",
        "--loopback-peers",
    )
    base = await cse.start()
    try:
        async with CoapReceiver() as live, aiohttp.ClientSession() as session:
            await _meter(session, base, "gone", f"coap://127.0.0.1:{_dead_udp_port()}", 2)
            await _meter(session, base, "here", live.url, None)
            await _post(
                session, f"{base}/cse-in/gone/command", {"m2m:cin": {"con": "x"}}, "Cgone", 4
            )
            for number in range(10):
                command = {"m2m:cin": {"con": f"read-{number}"}}
                await _post(session, f"{base}/cse-in/here/command", command, "Chere", 4)
                await live.wait_for(number + 1)
            received = await live.wait_for(10)
    finally:
        assert await cse.stop() == 0
    contents = [r.content["m2m:sgn"]["nev"]["rep"]["m2m:cin"]["con"] for r in received]
    assert contents == [f"read-{n}" for n in range(10)]
    request_ids = [r.option(RQI_OPTION) for r in received]
    assert len(set(request_ids)) == len(request_ids)

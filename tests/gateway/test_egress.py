"""The gateway and the head-end as a user starts them (gridm2m/processes.py): no request can
point either at its own operations endpoint or web server, and the gateway counts what its
egress policy refused in its metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cse.core.types import ResponseStatusCode as RSC
from cse.security.pki import client_context
from gridm2m.processes import Stack

# Lab listeners that believe claimed AE-IDs: the attacker is an ordinary (claimed) meter.
CLAIMED = {"cse": {"http": {"trust": "claimed"}}}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    running = Stack(tmp_path, headend_extra=CLAIMED, gateway_extra=CLAIMED)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        try:
            await running.start(session)
            yield running
        finally:
            await running.stop()


async def _create(
    stack: Stack, base: str, path: str, ty: int, body: Any, origin: str
) -> tuple[int, Any]:
    """A CREATE over HTTPS that proves nothing (the lab's CA verifies the server only)."""
    headers = {
        "X-M2M-Origin": origin,
        "X-M2M-RI": f"{origin}-{ty}",
        "X-M2M-RVI": "3",
        "Content-Type": f"application/json;ty={ty}",
    }
    tls = client_context(stack.pki_dir / "ca.pem")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session,
        session.post(f"{base}/{path}", json=body, headers=headers) as reply,
    ):
        return int(reply.headers["X-M2M-RSC"]), await reply.json(content_type=None)


def _ae(name: str, **extra: Any) -> dict[str, Any]:
    return {"m2m:ae": {"rn": name, "api": "Nlab", "rr": True, "srv": ["3"], **extra}}


async def test_no_request_points_the_gateway_at_its_own_ops_endpoint(stack: Stack) -> None:
    gateway, health = stack.gateway_url, stack.health_url
    rsc, body = await _create(stack, gateway, "dap1", 2, _ae("evil", poa=[health]), "Cevil")
    assert rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, body
    assert "own process" in body["m2m:dbg"]
    # A meter's CoAP listener (UDP) may have the number of one of our TCP ports: not ours.
    udp_poa = f"coap://127.0.0.1:{stack.ops_port}"
    rsc, body = await _create(stack, gateway, "dap1", 2, _ae("udp", poa=[udp_poa]), "Cudp")
    assert rsc == RSC.CREATED, body
    rsc, _ = await _create(stack, gateway, "dap1", 2, _ae("scan"), "Cscan")
    assert rsc == RSC.CREATED
    rsc, body = await _create(
        stack, gateway, "dap1/scan", 23, {"m2m:sub": {"nu": [health]}}, "Cscan"
    )
    assert rsc == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
    assert "does not send" in body["m2m:dbg"]
    metrics_url = stack.health_url.replace("/health", "/metrics")
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as reply:
        metrics = await reply.text()
    assert 'gridm2m_egress_refused_total{reason="point-of-access"} 1.0' in metrics
    assert 'gridm2m_egress_refused_total{reason="not-announced"} 1.0' in metrics


async def test_no_request_points_the_head_end_at_its_own_web_server(stack: Stack) -> None:
    """Its MDMS endpoint is the one path of the web server the IN-CSE sends to; the command
    API beside it takes POSTs too, and is never a target."""
    headend = stack.headend_url
    rsc, _ = await _create(stack, headend, "cse-in", 2, _ae("scan"), "Cscan")
    assert rsc == RSC.CREATED
    commands = f"{stack.dashboard}/api/commands"
    rsc, body = await _create(
        stack, headend, "cse-in/scan", 23, {"m2m:sub": {"nu": [commands]}}, "Cscan"
    )
    assert rsc == RSC.SUBSCRIPTION_VERIFICATION_INITIATION_FAILED
    assert "does not send" in body["m2m:dbg"]
    rsc, body = await _create(stack, headend, "cse-in", 2, _ae("evil", poa=[commands]), "Cevil")
    assert rsc == RSC.ORIGINATOR_HAS_NO_PRIVILEGE, body

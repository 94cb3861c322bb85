"""A real head-end and gateway (`gridm2m/processes.py`, as `gridm2m demo` starts them) talking
HTTPS with mutual TLS: registration, mirroring and a command cross the authenticated link, and
nobody else can use the identities or the web API that link and the login protect."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gridm2m.processes import Stack, pinned_client

METER = "mtr-000001"
TIMEOUT_S = 60.0
# One stack for the module (starting two processes is the slow part): one event loop too.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        try:
            await running.start(session)
            yield running
        finally:
            await running.stop()


def meter_tls(stack: Stack, name: str = METER) -> ssl.SSLContext:
    """The meter's client certificate, pinned in the gateway's credential store."""
    return pinned_client(stack.pki_dir, str(stack.directory / "id-dap1-credentials.db"), name)


async def onem2m(
    session: aiohttp.ClientSession,
    url: str,
    origin: str,
    *,
    tls: ssl.SSLContext | bool,
    ty: int | None = None,
    body: Any = None,
) -> tuple[int, Any]:
    """(X-M2M-RSC, content) of a CREATE (with ty) or RETRIEVE."""
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": f"rq-{time.monotonic_ns()}", "X-M2M-RVI": "3"}
    method = "GET"
    if ty is not None:
        method = "POST"
        headers["Content-Type"] = f"application/json;ty={ty}"
    async with session.request(method, url, json=body, headers=headers, ssl=tls) as reply:
        content = await reply.json(content_type=None) if reply.content_length else None
        return int(reply.headers["X-M2M-RSC"]), content


async def api(
    session: aiohttp.ClientSession, stack: Stack, path: str, body: Any = None
) -> tuple[int, Any]:
    url = f"{stack.dashboard}/api/{path}"
    method = "GET" if body is None else "POST"
    async with session.request(method, url, json=body, headers=stack.api_headers) as reply:
        return reply.status, await reply.json(content_type=None)


async def eventually(what: str, check: Any) -> Any:
    """Poll another process's state until `check()` returns something true."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.2)  # polling another process's HTTP API
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_meter_reading_and_a_command_cross_the_mutual_tls_link(stack: Stack) -> None:
    assert stack.headend.banner.count("https://") == 1  # the IN-CSE listens on HTTPS only
    tls = meter_tls(stack)
    dap = f"{stack.gateway_url}/dap1"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        ae = {"m2m:ae": {"rn": METER, "api": "Nmeter", "rr": False, "srv": ["3"]}}
        assert (await onem2m(session, dap, "C" + METER, tls=tls, ty=2, body=ae))[0] == 2001
        for container in ("reading", "command"):
            cnt = {"m2m:cnt": {"rn": container}}
            made = await onem2m(session, f"{dap}/{METER}", "C" + METER, tls=tls, ty=3, body=cnt)
            assert made[0] == 2001
        reading = {"flow": "mr-interval", "type": "resp-data", "seq": 1, "ts": 1767225600}
        cin = {"m2m:cin": {"con": json.dumps(reading)}}
        posted = await onem2m(session, f"{dap}/{METER}/reading", "C" + METER, tls=tls, ty=4,
                              body=cin)  # fmt: skip
        assert posted[0] == 2001

        async def mirrored() -> list[Any]:
            _, found = await api(session, stack, f"messages?meter={METER}")
            return list(found.get("messages", []))

        messages = await eventually("the reading at the MDMS", mirrored)
        assert messages[0]["meter"] == METER

        status, issued = await api(session, stack, "commands", {"meter": METER, "cmd": "read"})
        assert status == 202 and issued["sent"], issued
        # The head-end's CREATE arrived at the gateway over its authenticated link.
        latest = await onem2m(session, f"{dap}/{METER}/command/la", "C" + METER, tls=tls)
        assert latest[0] == 2000
        assert json.loads(latest[1]["m2m:cin"]["con"])["cmd"] == "read"


@pytest.mark.parametrize("origin", ["/id-in", "/id-in/Cheadend", "/id-dap1", "CAdmin"])
async def test_the_head_ends_identity_is_not_taken_from_anyone_else(
    stack: Stack, origin: str
) -> None:
    dap = f"{stack.gateway_url}/dap1"
    stranger = ssl.create_default_context(cafile=str(stack.pki_dir / "ca.pem"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        # Without a certificate, then with a meter's own (valid) certificate.
        for tls in (stranger, meter_tls(stack, "mtr-000002")):
            rsc, _ = await onem2m(session, dap, origin, tls=tls)
            assert rsc == 4103, (origin, tls)
        # And the head-end's IN-CSE takes the gateway's identity from nobody else either.
        rsc, _ = await onem2m(session, f"{stack.headend_url}/cse-in", "/id-dap1", tls=stranger)
        assert rsc == 4103


async def test_the_web_api_wants_a_token_or_a_login(stack: Stack) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        body = {"meter": METER, "cmd": "switch", "op": "disconnect"}
        for path in ("api/commands", "api/apps/prepay"):
            async with session.post(f"{stack.dashboard}/{path}", json=body) as reply:
                assert reply.status == 401
        async with session.get(f"{stack.dashboard}/api/meters") as reply:
            assert reply.status == 401
        # The MDMS has no web endpoint any more: its notifications stay in the process.
        async with session.post(
            f"{stack.dashboard}/notify/mdms", json={"m2m:sgn": {}}, headers=stack.api_headers
        ) as reply:
            assert reply.status == 404
        async with session.get(f"{stack.dashboard}/health") as reply:
            assert (reply.status, await reply.json()) == (200, {"healthy": True})


async def test_nobody_else_can_make_the_mdms_a_notification_target(stack: Stack) -> None:
    """An application of the IN-CSE that subscribes the MDMS's in-process point of access (or
    its AE-ID) to data of its choice is refused: the MDMS answers no verification request."""
    tls = stack.app_tls("intruder")
    base = f"{stack.headend_url}/cse-in"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        ae = {"m2m:ae": {"rn": "intruder", "api": "Nintruder", "rr": False, "srv": ["3"]}}
        assert (await onem2m(session, base, "Cintruder", tls=tls, ty=2, body=ae))[0] == 2001
        cnt = {"m2m:cnt": {"rn": "fake"}}
        made = await onem2m(session, f"{base}/intruder", "Cintruder", tls=tls, ty=3, body=cnt)
        assert made[0] == 2001
        for target in ("local://mdms", "Cmdms"):
            sub = {"m2m:sub": {"nu": [target], "enc": {"net": [3]}}}
            refused = await onem2m(session, f"{base}/intruder/fake", "Cintruder", tls=tls,
                                   ty=23, body=sub)  # fmt: skip
            assert refused[0] == 5204, (target, refused)  # verification refused


async def test_the_stack_keeps_its_keys_private(stack: Stack) -> None:
    for key in Path(stack.pki_dir).rglob("*.key"):
        assert key.stat().st_mode & 0o077 == 0, key


async def test_the_dashboard_adds_up_what_the_gateway_itself_reports(stack: Stack) -> None:
    """The gateway's own status report (queued and shed per priority, by name) reaches the
    dashboard's overview as numbers the page can show, not the report's dicts."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def reported() -> dict[str, Any] | None:
            _, overview = await api(session, stack, "overview")
            return overview if overview.get("gateways", {}).get("id-dap1") else None

        overview = await eventually("the gateway's status at the head-end", reported)
        status = overview["gateways"]["id-dap1"]["status"]
        assert isinstance(status["shed"], dict)  # the gateway's shape: per priority
        totals = overview["outbox"]
        assert totals["shed"] == sum(status["shed"].values())
        assert totals["queued"] == sum(status["outbox"].values())
        assert totals["shed_by_priority"] == status["shed"]
        assert overview["meters"]["registered"] == status["meters"]

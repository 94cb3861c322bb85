"""Floods against a real `gridm2m cse` process over HTTP and CoAP, as a client on the meter LAN
would send them: each is cut at its limit with the oneM2M status code, and what got in stays
within bounds."""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cse.bindings.coap.client import CoapClient
from cse.core.primitives import FilterCriteria
from cse.core.types import ContentStatus
from cse.core.types import ResponseStatusCode as RSC
from cse.security.credentials import CredentialStore
from tests.helpers import ae_body, create, retrieve
from tests.processes import CSEProcess

pytestmark = pytest.mark.slow
_ids = itertools.count()

LIMITS = """
[cse.limits]
default_max_instances = 5
default_max_byte_size = 2000
max_subscriptions_per_resource = 4
registration_burst = 10
registrations_per_minute = 1
requests_per_second = 0.5
request_burst = 40
discovery_result_cap = 10

[cse.http]
trust = "claimed"   # a meter LAN in lab mode: the meters' claimed AE-IDs are believed
"""


ADMIN_TOKEN: dict[str, str] = {}  # the admin's bearer token of the running CSE


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """A `gridm2m cse` with tight limits on SQLite, serving HTTP and CoAP: (URL, CoAP port).
    The checks that read as the admin prove it with a token (ADMIN_TOKEN)."""
    with CredentialStore(tmp_path / "id-in-credentials.db") as store:
        ADMIN_TOKEN["CAdmin"] = store.add_admin("tests", "CAdmin").token or ""
    config = tmp_path / "cse.toml"
    config.write_text(LIMITS)
    cse = CSEProcess(
        "--config",
        str(config),
        "--coap-port",
        "0",
        # The admin speaks over plain CoAP here: a lab that believes every claim.
        "--coap-trust",
        "insecure",
        "--db",
        str(tmp_path / "c.db"),
    )
    url = await cse.start()
    match = re.search(r"coap://127\.0\.0\.1:(\d+)", cse.listening)
    assert match is not None, cse.listening
    try:
        yield url, int(match.group(1))
    finally:
        assert await cse.stop() == 0


def _headers(origin: str, ty: int | None = None) -> dict[str, str]:
    headers = {"X-M2M-Origin": origin, "X-M2M-RI": f"f{next(_ids)}", "X-M2M-RVI": "3"}
    if origin in ADMIN_TOKEN:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN[origin]}"
    headers["Content-Type"] = "application/json" + (f";ty={ty}" if ty else "")
    return headers


async def _post(
    session: aiohttp.ClientSession, url: str, body: Any, origin: str, ty: int
) -> tuple[int, int, Any]:
    async with session.post(url, json=body, headers=_headers(origin, ty)) as reply:
        return reply.status, int(reply.headers["X-M2M-RSC"]), await reply.json()


async def _get(
    session: aiohttp.ClientSession, url: str, origin: str
) -> tuple[int, dict[str, str], Any]:
    async with session.get(url, headers=_headers(origin)) as reply:
        return int(reply.headers["X-M2M-RSC"]), dict(reply.headers), await reply.json()


async def test_a_registration_flood_over_http_is_cut_at_the_burst(
    running: tuple[str, int],
) -> None:
    url, _ = running
    async with aiohttp.ClientSession() as session:
        answers = [
            await _post(session, f"{url}/cse-in", ae_body(f"flood{n}"), f"Cflood{n}", 2)
            for n in range(30)
        ]
        statuses = [rsc for _, rsc, _ in answers]
        assert statuses == [RSC.CREATED] * 10 + [RSC.NOT_ACCEPTABLE] * 20
        assert {http for http, rsc, _ in answers if rsc == RSC.NOT_ACCEPTABLE} == {406}
        rsc, _, found = await _get(session, f"{url}/cse-in?fu=1&ty=2", "CAdmin")
    assert rsc == RSC.OK and len(found["m2m:uril"]) == 10


async def test_an_instance_flood_over_http_stays_within_the_default_limits(
    running: tuple[str, int],
) -> None:
    url, _ = running
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, f"{url}/cse-in", ae_body("meter"), "Cmeter", 2))[1] == 2001
        cnt = {"m2m:cnt": {"rn": "reads"}}
        assert (await _post(session, f"{url}/cse-in/meter", cnt, "Cmeter", 3))[1] == 2001
        for _ in range(30):
            body = {"m2m:cin": {"con": "x" * 500}}
            _, rsc, _ = await _post(session, f"{url}/cse-in/meter/reads", body, "Cmeter", 4)
            assert rsc == RSC.CREATED
        too_big = {"m2m:cin": {"con": "x" * 2001}}
        http, rsc, _ = await _post(session, f"{url}/cse-in/meter/reads", too_big, "Cmeter", 4)
        assert (http, rsc) == (406, RSC.NOT_ACCEPTABLE)
        rsc, _, reads = await _get(session, f"{url}/cse-in/meter/reads", "Cmeter")
    assert (reads["m2m:cnt"]["cni"], reads["m2m:cnt"]["cbs"]) == (4, 2000)


async def test_a_subscription_flood_over_http_is_capped(running: tuple[str, int]) -> None:
    url, _ = running
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, f"{url}/cse-in", ae_body("subs"), "Csubs", 2))[1] == 2001
        cnt = {"m2m:cnt": {"rn": "c"}}
        assert (await _post(session, f"{url}/cse-in/subs", cnt, "Csubs", 3))[1] == 2001
        statuses = []
        for number in range(8):
            sub = {"m2m:sub": {"rn": f"s{number}", "nu": ["Csubs"], "enc": {"net": [3]}}}
            statuses.append((await _post(session, f"{url}/cse-in/subs/c", sub, "Csubs", 23))[1])
    assert statuses == [RSC.CREATED] * 4 + [RSC.NOT_ACCEPTABLE] * 4


async def test_bad_names_over_http_are_refused(running: tuple[str, int]) -> None:
    url, _ = running
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, f"{url}/cse-in", ae_body("names"), "Cnames", 2))[1] == 2001
        for name in ("..", ".", "-", "x" * 200_000):
            body = {"m2m:cnt": {"rn": name}}
            http, rsc, answer = await _post(session, f"{url}/cse-in/names", body, "Cnames", 3)
            assert (http, rsc) == (400, RSC.BAD_REQUEST), answer
        long_id = "C" + "y" * 5000
        http, rsc, _ = await _post(session, f"{url}/cse-in", ae_body("long"), long_id, 2)
        assert rsc == RSC.BAD_REQUEST


async def test_a_large_discovery_over_http_is_paged_with_cts_and_cto(
    running: tuple[str, int],
) -> None:
    url, _ = running
    async with aiohttp.ClientSession() as session:
        assert (await _post(session, f"{url}/cse-in", ae_body("many"), "Cmany", 2))[1] == 2001
        for number in range(12):
            cnt = {"m2m:cnt": {"rn": f"c{number:02d}"}}
            assert (await _post(session, f"{url}/cse-in/many", cnt, "Cmany", 3))[1] == 2001
        rsc, headers, first = await _get(session, f"{url}/cse-in/many?fu=1&ty=3", "Cmany")
        assert rsc == RSC.OK and len(first["m2m:uril"]) == 10
        assert (headers["X-M2M-CTS"], headers["X-M2M-CTO"]) == ("1", "11")
        rsc, headers, rest = await _get(session, f"{url}/cse-in/many?fu=1&ty=3&ofst=11", "Cmany")
    assert rsc == RSC.OK and len(rest["m2m:uril"]) == 2 and "X-M2M-CTS" not in headers


async def test_a_request_flood_over_coap_is_rate_limited(running: tuple[str, int]) -> None:
    _, coap_port = running
    base = f"coap://127.0.0.1:{coap_port}"
    async with CoapClient(timeout=10) as client:
        registered = await client.send(base, create("cse-in", 2, ae_body("coap"), "Ccoap"))
        assert registered.status == RSC.CREATED
        for _ in range(12):  # by the admin, whom no limit holds up
            made = await client.send(base, create("cse-in/coap", 3, {"m2m:cnt": {}}))
            assert made.status == RSC.CREATED
        statuses = [
            (await client.send(base, retrieve("cse-in/coap", "Ccoap"))).status for _ in range(45)
        ]
        # 40 tokens, one taken by the registration; then 0.5 a second.
        assert statuses[:39] == [RSC.OK] * 39
        assert statuses.count(RSC.NOT_ACCEPTABLE) >= 5
        # The admin (and every other client) is still served meanwhile.
        assert (await client.send(base, retrieve("cse-in/coap"))).status == RSC.OK
        # cnst/cnot come over CoAP too (oneM2M-CTS 323, oneM2M-CTO 319).
        everything = FilterCriteria(filter_usage=1, resource_types=(3,))
        found = await client.send(base, retrieve("cse-in/coap", fc=everything))
    assert found.status == RSC.OK and len(found.content["m2m:uril"]) == 10
    assert (found.content_status, found.content_offset) == (ContentStatus.PARTIAL_CONTENT, 11)

"""The head-end's own routes beside the dashboard's (`headend/api.py`), on a running head-end:
its IN-CSE, its MDMS store and its web server, with no gateway behind it.

What is pinned here is what the dashboard, the demo and the interop runner read: the URLs, the
JSON shapes and the status codes of refusals (400 for a bad body, 404 for an unknown
application), and that these routes sit behind the dashboard's login like the rest.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cse.app import CSEConfig, HttpConfig
from headend.app import RunningHeadend, running_headend
from headend.config import DashboardConfig, HeadendConfig, MdmsConfig
from headend.store import MeterMessage

PASSWORD = "a password for the tests"


@pytest.fixture
async def headend(tmp_path: Path) -> AsyncIterator[RunningHeadend]:
    config = HeadendConfig(
        cse=CSEConfig(db=str(tmp_path / "in.db"), http=HttpConfig(port=0)),
        mdms=MdmsConfig(db=str(tmp_path / "mdms.db")),
        dashboard=DashboardConfig(port=0, password=PASSWORD),
    )
    async with running_headend(config) as running:
        yield running


@pytest.fixture
async def operator(headend: RunningHeadend) -> AsyncIterator[aiohttp.ClientSession]:
    """A session logged in through the form, posting from the dashboard's own origin."""
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Origin": headend.web_url}
    ) as session:
        login = f"{headend.web_url}/login"
        async with session.post(login, data={"password": PASSWORD}, allow_redirects=False) as r:
            assert r.status == 303
        yield session


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, url, json=body) as reply:
        return reply.status, await reply.json()


def message(key: str, family: str, flow: str, ptype: str) -> MeterMessage:
    now = time.time()
    return MeterMessage(
        key=key, dap="dap1", meter="m1", family=family, flow=flow, ptype=ptype, seq=1,
        meter_ts=None, created_at=now - 1, received_at=now, size=10, budget_s=5.0, priority=1,
        content={"flow": flow, "type": ptype},
    )  # fmt: skip


async def test_health_needs_no_login_and_says_the_in_cse_answers(
    headend: RunningHeadend,
) -> None:
    async with aiohttp.ClientSession() as anonymous:
        assert await call(anonymous, "GET", f"{headend.web_url}/health") == (
            200,
            {"healthy": True},
        )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/commands"),
        ("GET", "/api/counts"),
        ("POST", "/api/apps/billing"),
        ("GET", "/api/apps/dms"),
        ("GET", "/api/apps/firmware/m1"),
        ("GET", "/api/apps/cis/schedule"),
        ("POST", "/api/apps/cis/schedule"),
        ("GET", "/api/apps/cis/requests"),
        ("POST", "/api/apps/cis/requests"),
        ("GET", "/api/apps/cis/requests/b1"),
    ],
)
async def test_the_head_end_routes_want_a_login(
    headend: RunningHeadend, method: str, path: str
) -> None:
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.request(method, headend.web_url + path, json={}) as reply,
    ):
        assert reply.status == 401


async def test_counts_are_per_flow_and_per_family(
    headend: RunningHeadend, operator: aiohttp.ClientSession
) -> None:
    await headend.store.record_messages(
        [
            message("a", "ondemand", "mr-ondemand", "resp-data"),
            message("b", "ondemand", "mr-ondemand", "resp-data"),
            message("c", "event", "not-a-flow", "alarm"),
        ]
    )
    status, counts = await call(operator, "GET", f"{headend.web_url}/api/counts")
    assert status == 200
    assert counts == {
        "by_family": {"ondemand": 2, "other": 1},
        "by_flow": {"mr-ondemand": 2, "not-a-flow": 1},
        "total": 3,
    }


async def test_dms_reports_list_the_outage_alarms(
    headend: RunningHeadend, operator: aiohttp.ClientSession
) -> None:
    await headend.store.record_messages([message("c", "event", "ev-outage", "alarm")])
    status, body = await call(operator, "GET", f"{headend.web_url}/api/apps/dms")
    assert status == 200
    assert [report["key"] for report in body["reports"]] == ["c"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([1, 2], "the body must be a JSON object"),
        ({"cmd": "read"}, "give meter (a meter id) or meters (a list)"),
        ({"cmd": "read", "meters": "m1"}, "meters must be a list of meter ids"),
        ({"cmd": "read", "meters": []}, "a group command needs meters and their DAP"),
    ],
)
async def test_a_bad_command_request_is_refused_with_the_reason(
    headend: RunningHeadend, operator: aiohttp.ClientSession, body: Any, error: str
) -> None:
    url = f"{headend.web_url}/api/commands"
    assert await call(operator, "POST", url, body) == (400, {"error": error})


@pytest.mark.parametrize(
    ("name", "body", "status", "error"),
    [
        ("nope", {}, 404, "no application 'nope'"),
        ("billing", [1], 400, "the body must be a JSON object"),
        ("billing", {"meters": "m1"}, 400, "meters must be a list of meter ids"),
        ("billing", {"meters": ["m1"], "intervals": "many"}, 400, None),
        ("prepay", {"meter": "m1", "op": "explode"}, 400, None),
    ],
)
async def test_a_bad_application_request_is_refused(
    headend: RunningHeadend,
    operator: aiohttp.ClientSession,
    name: str,
    body: Any,
    status: int,
    error: str | None,
) -> None:
    got_status, got = await call(operator, "POST", f"{headend.web_url}/api/apps/{name}", body)
    assert got_status == status
    assert set(got) == {"error"}
    if error is not None:
        assert got["error"] == error


# ---- CIS/Billing --------------------------------------------------------------------------

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC


async def test_cis_takes_its_schedule_and_sends_on_request_within_its_window(
    headend: RunningHeadend, operator: aiohttp.ClientSession
) -> None:
    url = f"{headend.web_url}/api/apps/cis"
    status, schedule = await call(operator, "GET", f"{url}/schedule")
    assert status == 200 and schedule["batches_per_day"] == 4 and schedule["roster"] is None
    # Noon on the utility clock: CIS keeps to 18:00-06:00.
    noon = {"meters": ["m1", "m2", "m3"], "batch_size": 2, "batches_per_day": 0,
            "clock": {"speed": 1, "start_ts": T0 + 12 * 3600}}  # fmt: skip
    status, schedule = await call(operator, "POST", f"{url}/schedule", noon)
    assert status == 200 and schedule["roster"] == 3 and schedule["batch_size"] == 2
    status, refused = await call(operator, "POST", f"{url}/requests", {})
    assert status == 409 and "only between 18:00 and 06:00 (it is 12:00)" in refused["error"]
    status, _ = await call(operator, "POST", f"{url}/schedule", {"clock": {
        "speed": 1, "start_ts": T0 + 20 * 3600}})  # fmt: skip
    assert status == 200
    status, sent = await call(operator, "POST", f"{url}/requests", {"cycle": "c2"})
    assert status == 202 and (sent["cycle"], sent["meters"], sent["rsc"]) == ("c2", 1, 2001)
    status, found = await call(operator, "GET", f"{url}/requests")
    assert status == 200 and [r["id"] for r in found["requests"]] == [sent["id"]]
    status, one = await call(operator, "GET", f"{url}/requests/{sent['id']}")
    assert status == 200 and one["request"]["utility_ts"] == sent["utility_ts"]
    missing = await call(operator, "GET", f"{url}/requests/nope")
    assert missing == (404, {"error": "no such request"})


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("schedule", [1], "the body must be a JSON object"),
        ("schedule", {"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ("schedule", {"colour": 1}, "colour: Extra inputs are not permitted"),
        ("schedule", {"clock": {"speed": 0, "start_ts": 1}}, "clock.speed: Input should be"),
        ("schedule", {"meters": "m1"}, "meters: Input should be a valid list"),
        ("requests", {"cycle": 3}, 'the body must be a JSON object with an optional "cycle"'),
    ],
)
async def test_a_bad_cis_request_is_refused_with_the_reason(
    headend: RunningHeadend, operator: aiohttp.ClientSession, path: str, body: Any, error: str
) -> None:
    status, got = await call(operator, "POST", f"{headend.web_url}/api/apps/cis/{path}", body)
    assert status == 400 and got["error"].startswith(error)


async def test_cis_requests_refuse_a_bad_page(
    headend: RunningHeadend, operator: aiohttp.ClientSession
) -> None:
    url = f"{headend.web_url}/api/apps/cis/requests"
    for query in ("?after=x", "?limit=0"):
        status, got = await call(operator, "GET", url + query)
        assert status == 400 and set(got) == {"error"}

"""The dashboard: its JSON API and event stream over HTTP on loopback, and the page itself in
a real headless Chromium (Debian's, driven by Playwright), all over a real SQLite store.

Every route needs a login (the browser cases log in through the form) or an admin token
(the API cases send one). The browser cases are skipped, with the reason, when no Chromium is
installed. With
GRIDM2M_DASHBOARD_SCREENSHOT=<png path> set, `test_screenshot` fills the store with a small
simulated fleet and saves a picture of the page (docs/dashboard.png is made this way).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, async_playwright, expect

from device_agents.agent import flows
from device_agents.agent.meter import Meter
from gateway.health import outbox_status
from gateway.outbox import NewItem, Outbox
from headend.dashboard import WebLogin, dashboard_app
from headend.dashboard.login import hash_password
from headend.store import CommandRecord, MdmsStore, MeterMessage, SQLiteMdmsStore

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
NOW = T0 + 3600.0
WAIT_MS = 15_000  # the longest any browser expectation waits
PASSWORD = "a password for the tests"
PASSWORD_HASH = hash_password(PASSWORD)
TOKEN = "an admin token of the tests"


def login() -> WebLogin:
    return WebLogin(PASSWORD_HASH, lambda token: "script" if token == TOKEN else None)


CHROMIUM_FLAGS = [
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def reading(
    key: str, meter: str, wh: int, received_at: float = NOW - 5, **changes: Any
) -> MeterMessage:
    content = {"flow": "mr-ondemand", "type": "resp-data", "seq": 1, "ts": int(received_at),
               "rt": "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.0.72.0",
               "obis": {"1.8.0": wh, "2.8.0": 0, "32.7.0": 2304}}  # fmt: skip
    fields: dict[str, Any] = {
        "key": key, "dap": "dap1", "meter": meter, "family": "ondemand", "flow": "mr-ondemand",
        "ptype": "resp-data", "seq": 1, "meter_ts": received_at, "created_at": received_at - 0.5,
        "received_at": received_at, "size": 95, "budget_s": 5.0, "priority": 2, "content": content,
    }  # fmt: skip
    fields.update(changes)
    return MeterMessage(**fields)


def alarm(key: str, meter: str, received_at: float = NOW - 3) -> MeterMessage:
    content = {"flow": "ev-fault", "type": "alarm", "ev": "3.18.85.79", "et": int(NOW), "sev": 2}
    return reading(key, meter, 0, received_at, family="event", flow="ev-fault", ptype="alarm",
                   budget_s=30.0, priority=0, content=content)  # fmt: skip


def real_gateway_status(
    path: Path, alarms: int, ondemand: int, bulk: int, shed: int
) -> dict[str, Any]:
    """A gateway's status as it reports it (gateway/health.py), from a real outbox at `path`
    that took the messages given per priority and had to shed `shed` bulk reads of them
    (its budget holds all but those)."""
    attributes = {"cnf": "application/json:0", "con": '{"flow": "mr-15min"}'}
    size = len(orjson.dumps(attributes))
    counts = {0: alarms, 2: ondemand, 3: bulk}
    items = [
        NewItem(priority, seq, "/id-in/cse-in/id-dap1/x", f"m{seq}", attributes, T0)
        for seq, priority in enumerate((p for p, n in counts.items() for _ in range(n)), start=1)
    ]
    outbox = Outbox(path, budget_bytes=(len(items) - shed) * size)
    outbox.open()
    try:
        outbox.follow("the gateway's database", 0)
        outbox.add(items, len(items))
        return {"meters": 3, **outbox_status(outbox)}
    finally:
        outbox.close()


async def small_state(store: MdmsStore, tmp_path: Path) -> None:
    """Three meters (one not heard from for a day), an alarm, two commands, one gateway
    (with 30 messages queued and 2 shed), which says 4 meters registered with it."""
    await store.record_messages(
        [
            reading("m1-1", "m1", 1_234_567),
            reading("m2-1", "m2", 7_654_321),
            reading("m3-1", "m3", 1_000, received_at=NOW - 86400),
            alarm("m2-2", "m2"),
        ]
    )
    for command_id, meter in (("c1", "m1"), ("c2", "m2")):
        body = {"cmd": "read", "id": command_id}
        await store.record_command(
            CommandRecord(command_id, "dap1", meter, "read", body, NOW - 10, "ops")
        )
    answer = {"flow": "mr-ondemand", "type": "resp-data", "ref": "c1", "obis": {"1.8.0": 1_234_600}}
    await store.record_messages([reading("m1-2", "m1", 1_234_600, content=answer)])
    status = real_gateway_status(tmp_path / "outbox.db", alarms=1, ondemand=4, bulk=27, shed=2)
    await store.record_gateway_status("dap1", NOW - 2, {**status, "meters": 4})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MdmsStore]:
    async with SQLiteMdmsStore(tmp_path / "mdms.db") as opened:
        yield opened


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def dashboard(store: MdmsStore, tmp_path: Path) -> AsyncIterator[str]:
    """The dashboard's base URL, over the small state, with a clock fixed at NOW."""
    await small_state(store, tmp_path)
    app = dashboard_app(store, login=login(), title="Test <head-end> & co", poll_interval_s=0.5,
                        stream_interval_s=0.05, clock=lambda: NOW)  # fmt: skip
    runner, url = await serve(app)
    yield url
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A script's session: it sends the admin token."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), headers=headers
    ) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, status: int = 200) -> Any:
    async with http.get(url) as response:
        assert response.status == status, await response.text()
        assert response.content_type == "application/json"
        return await response.json()


# ---- the JSON API ----------------------------------------------------------------------------


async def test_overview(dashboard: str, http: aiohttp.ClientSession) -> None:
    overview = await get_json(http, f"{dashboard}/api/overview")
    # Heard from: the MDMS's meters; registered: what the gateways report.
    assert overview["meters"] == {"total": 3, "online": 2, "registered": 4}
    assert overview["messages"] == {"event": 1, "ondemand": 4}
    assert (overview["alarms"], overview["alerts"]) == (1, 0)
    assert overview["commands"] == {"pending": 1, "answered": 1, "failed": 0, "timed-out": 0}
    queued = {"alarm": 1, "ack": 0, "ondemand": 4, "bulk": 25}
    assert overview["gateways"]["dap1"]["status"]["outbox"] == queued
    assert (overview["now"], overview["online_window_s"]) == (NOW, 900)


async def test_the_overview_adds_up_the_gateways_outboxes_as_they_report_them(
    dashboard: str, http: aiohttp.ClientSession, store: MdmsStore, tmp_path: Path
) -> None:
    # The gateway reports queued and shed messages per priority by name (a dict, not a
    # number): the overview gives the page totals and the counts per priority.
    other = real_gateway_status(tmp_path / "other.db", alarms=0, ondemand=1, bulk=5, shed=3)
    await store.record_gateway_status("dap2", NOW - 1, {**other, "meters": 6})
    overview = await get_json(http, f"{dashboard}/api/overview")
    assert overview["outbox"] == {
        "queued": 30 + 3,
        "shed": 2 + 3,
        "queued_by_priority": {"alarm": 1, "ack": 0, "ondemand": 5, "bulk": 27},
        "shed_by_priority": {"alarm": 0, "ack": 0, "ondemand": 0, "bulk": 5},
    }
    assert overview["gateways"]["dap2"]["shed"] == {"alarm": 0, "ack": 0, "ondemand": 0, "bulk": 3}
    assert overview["meters"]["registered"] == 4 + 6


def test_the_dashboard_knows_the_gateways_priority_names() -> None:
    from gateway.metrics import PRIORITY_NAMES
    from headend.dashboard.app import PRIORITIES

    assert tuple(PRIORITY_NAMES[p] for p in sorted(PRIORITY_NAMES)) == PRIORITIES


async def test_meters(dashboard: str, http: aiohttp.ClientSession) -> None:
    meters = (await get_json(http, f"{dashboard}/api/meters"))["meters"]
    assert [(m["meter"], m["online"]) for m in meters] == [
        ("m1", True),
        ("m2", True),
        ("m3", False),
    ]
    assert meters[0]["registers"]["1.8.0"] == 1_234_600
    assert meters[1]["alarms"] == 1
    page = (await get_json(http, f"{dashboard}/api/meters?limit=1&offset=1"))["meters"]
    assert [m["meter"] for m in page] == ["m2"]

    m1 = (await get_json(http, f"{dashboard}/api/meters/m1"))["meter"]
    assert [m["key"] for m in m1["recent"]] == ["m1-2", "m1-1"]
    assert [(c["id"], c["status"]) for c in m1["commands"]] == [("c1", "answered")]
    missing = await get_json(http, f"{dashboard}/api/meters/nobody", status=404)
    assert missing == {"error": "no meter 'nobody'"}


async def test_messages_and_commands(dashboard: str, http: aiohttp.ClientSession) -> None:
    messages = (await get_json(http, f"{dashboard}/api/messages"))["messages"]
    assert [m["key"] for m in messages] == ["m1-2", "m2-2", "m3-1", "m2-1", "m1-1"]
    after = messages[2]["id"]
    newer = (await get_json(http, f"{dashboard}/api/messages?after_id={after}"))["messages"]
    assert [m["key"] for m in newer] == ["m1-2", "m2-2"]
    events = (await get_json(http, f"{dashboard}/api/messages?family=event"))["messages"]
    assert [m["key"] for m in events] == ["m2-2"]
    # Every message, oldest first, a page at a time (how an interop run reads them all).
    pages, last = [], 0
    while page := (
        await get_json(http, f"{dashboard}/api/messages?order=oldest&limit=2&after_id={last}")
    )["messages"]:
        pages.append([m["key"] for m in page])
        last = page[-1]["id"]
    assert pages == [["m1-1", "m2-1"], ["m3-1", "m2-2"], ["m1-2"]]

    commands = (await get_json(http, f"{dashboard}/api/commands"))["commands"]
    assert {c["id"]: c["status"] for c in commands} == {"c1": "answered", "c2": "pending"}
    c1 = (await get_json(http, f"{dashboard}/api/commands/c1"))["command"]
    assert [m["key"] for m in c1["answers"]] == ["m1-2"]
    await get_json(http, f"{dashboard}/api/commands/nope", status=404)

    latency = (await get_json(http, f"{dashboard}/api/latency"))["families"]
    assert latency["ondemand"]["count"] == 4
    assert latency["ondemand"]["within_budget"] == 4
    assert latency["event"]["budget_s"] == 30.0


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("messages?after_id=x", "after_id must be an integer"),
        ("messages?limit=0", "limit must be an integer from 1"),
        ("meters?offset=-3", "offset must be a non-negative integer"),
        ("commands?limit=100000", "limit must be an integer from 1"),
    ],
)
async def test_bad_parameters_get_a_clear_error(
    dashboard: str, http: aiohttp.ClientSession, query: str, complaint: str
) -> None:
    answer = await get_json(http, f"{dashboard}/api/{query}", status=400)
    assert complaint in answer["error"]


async def test_page_and_files_are_served_here(dashboard: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{dashboard}/") as response:
        page = await response.text()
    assert "<title>Test &lt;head-end&gt; &amp; co</title>" in page
    assert "$" not in page  # every placeholder was filled
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        async with http.get(f"{dashboard}/static/{name}") as response:
            assert (response.status, response.content_type) == (200, kind)
    async with http.get(f"{dashboard}/static/plotly.min.js") as response:
        assert response.status == 200
        assert b"plotly" in (await response.content.read(2000)).lower()
    async with http.get(f"{dashboard}/static/../app.py") as response:
        assert response.status == 404
    async with http.get(f"{dashboard}/static/missing.js") as response:
        assert response.status == 404


async def read_event(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next server-sent event (pings are skipped)."""
    fields: dict[str, str] = {}
    async with asyncio.timeout(10):
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                if "data" in fields:
                    return {"event": fields.get("event"), "data": orjson.loads(fields["data"])}
                continue
            name, _, value = line.partition(":")
            if name:
                fields[name] = value.lstrip(" ")
    raise AssertionError("the stream ended")


async def test_the_stream_announces_each_change(
    dashboard: str, http: aiohttp.ClientSession, store: MdmsStore
) -> None:
    async with http.get(f"{dashboard}/api/stream") as response:
        assert response.content_type == "text/event-stream"
        first = await read_event(response)
        assert first == {"event": "change", "data": {"version": store.version}}
        await store.record_messages([reading("new", "m4", 42)])
        second = await read_event(response)
        assert second["event"] == "change"
        assert second["data"]["version"] > first["data"]["version"]


async def test_shutdown_ends_open_streams(store: MdmsStore, http: aiohttp.ClientSession) -> None:
    runner, url = await serve(dashboard_app(store, login=login()))
    async with http.get(f"{url}/api/stream") as response:
        await read_event(response)
        # A stream waits for changes; shutting down must not wait for it to time out.
        async with asyncio.timeout(10):
            await runner.cleanup()


# ---- who may use it ---------------------------------------------------------------------------


@pytest.fixture
async def anonymous() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser-like session: no token, keeps cookies, does not follow redirects by itself."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as session:
        yield session


@pytest.mark.parametrize("path", ["/api/overview", "/api/meters", "/api/stream", "/api/latency"])
async def test_the_api_wants_a_login_or_a_token(
    dashboard: str, anonymous: aiohttp.ClientSession, path: str
) -> None:
    async with anonymous.get(dashboard + path) as reply:
        assert reply.status == 401
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="gridm2m"'
    bad = {"Authorization": "Bearer not-the-token"}
    async with anonymous.get(dashboard + path, headers=bad) as reply:
        assert reply.status == 401
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


async def test_the_page_sends_a_stranger_to_the_login_form(
    dashboard: str, anonymous: aiohttp.ClientSession
) -> None:
    async with anonymous.get(f"{dashboard}/", allow_redirects=False) as reply:
        assert (reply.status, reply.headers["Location"]) == (303, "/login")
    async with anonymous.get(f"{dashboard}/login") as reply:
        assert reply.status == 200 and 'name="password"' in await reply.text()


async def log_in(session: aiohttp.ClientSession, url: str, password: str) -> int:
    async with session.post(
        f"{url}/login", data={"password": password}, allow_redirects=False
    ) as reply:
        return reply.status


async def test_a_login_opens_a_session_until_logout(
    dashboard: str, anonymous: aiohttp.ClientSession
) -> None:
    assert await log_in(anonymous, dashboard, "wrong") == 401
    async with anonymous.get(f"{dashboard}/api/overview") as reply:
        assert reply.status == 401
    async with anonymous.post(
        f"{dashboard}/login", data={"password": PASSWORD}, allow_redirects=False
    ) as reply:
        assert reply.status == 303
        cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    async with anonymous.get(f"{dashboard}/api/overview") as reply:
        assert reply.status == 200
    async with anonymous.post(f"{dashboard}/logout", allow_redirects=False) as reply:
        assert reply.status == 303
    async with anonymous.get(f"{dashboard}/api/overview") as reply:
        assert reply.status == 401


async def test_a_forged_session_cookie_is_not_a_login(dashboard: str) -> None:
    cookies = {"gridm2m_session": "guessed"}
    async with (
        aiohttp.ClientSession(cookies=cookies) as session,
        session.get(f"{dashboard}/api/overview") as reply,
    ):
        assert reply.status == 401


async def test_a_post_on_a_session_from_another_origin_is_refused(
    store: MdmsStore, anonymous: aiohttp.ClientSession
) -> None:
    app = dashboard_app(store, login=login())

    async def accept(request: web.Request) -> web.Response:
        return web.json_response({"done": True})

    app.router.add_post("/api/commands", accept)
    runner, url = await serve(app)
    try:
        assert await log_in(anonymous, url, PASSWORD) == 303
        elsewhere = {"Origin": "https://elsewhere.example"}
        async with anonymous.post(f"{url}/api/commands", json={}, headers=elsewhere) as reply:
            assert reply.status == 403
        own = {"Origin": url}
        async with anonymous.post(f"{url}/api/commands", json={}, headers=own) as reply:
            assert reply.status == 200
    finally:
        await runner.cleanup()


async def test_guessing_the_password_is_slowed_down(
    dashboard: str, anonymous: aiohttp.ClientSession
) -> None:
    statuses = [await log_in(anonymous, dashboard, f"guess {n}") for n in range(6)]
    assert statuses == [401] * 5 + [429]
    # Even the right password waits until the window has passed.
    assert await log_in(anonymous, dashboard, PASSWORD) == 429


# ---- the page in a browser -------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no Chromium installed (Debian package chromium: apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield launched
        await launched.close()


async def open_page(browser: Browser, url: str) -> tuple[Page, list[str], list[str]]:
    """The page at url after logging in, with the errors it raises and every URL it asks for."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    requested: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(f"{url}/")
    await expect(page).to_have_url(f"{url}/login")  # no session yet: the login form
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(f"{url}/", timeout=WAIT_MS)
    return page, errors, requested


async def test_the_page_shows_the_meters_and_follows_the_store(
    browser: Browser, dashboard: str, store: MdmsStore
) -> None:
    page, errors, requested = await open_page(browser, dashboard)
    m1 = page.locator('#meters tr[data-meter="m1"]')
    await expect(m1).to_contain_text("1,234.600 kWh in", timeout=WAIT_MS)
    await expect(m1).to_contain_text("online")
    await expect(page.locator('#meters tr[data-meter="m3"]')).to_contain_text("offline")
    await expect(page.locator("#meters-online")).to_have_text("2")
    await expect(page.locator("#alarms")).to_have_text("1")
    await expect(page.locator("#outbox-total")).to_have_text("30")
    await expect(page.locator("#outbox-shed")).to_have_text("2")
    await expect(page.locator("#outbox-shed-by")).to_have_text("bulk 2")
    await expect(page.locator("#meters-registered")).to_have_text("4 registered at the gateways")
    await expect(page.locator("#page")).to_have_text("1\u20133 of 3 heard from")
    await expect(page.locator("#events")).to_contain_text("ev-fault")
    await expect(page.locator('#commands tr[data-command="c1"]')).to_contain_text("answered")
    await expect(page.locator('#commands tr[data-command="c2"]')).to_contain_text("pending")
    # plotly.js, served by the app itself, drew the charts.
    await expect(page.locator("#latency-chart .main-svg").first).to_be_visible()
    await expect(page.locator("#outbox-chart .main-svg").first).to_be_visible()
    await expect(page.locator("#live")).to_have_attribute("data-mode", "live", timeout=WAIT_MS)

    # New data appears without a reload: the marker set on this document must survive.
    await page.evaluate("window.sameDocument = true")
    await store.record_messages([reading("m1-3", "m1", 2_000_000), alarm("m9-1", "m9")])
    await expect(m1).to_contain_text("2,000.000 kWh in", timeout=WAIT_MS)
    await expect(page.locator('#meters tr[data-meter="m9"]')).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#alarms")).to_have_text("2", timeout=WAIT_MS)
    assert await page.evaluate("window.sameDocument") is True

    # A click on a meter opens its details.
    await m1.click()
    await expect(page.locator("#meter-detail")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#detail-messages")).to_contain_text("mr-ondemand")

    assert errors == []
    assert all(url.startswith(dashboard) for url in requested), requested  # nothing from outside


async def test_the_page_polls_when_the_stream_fails(
    browser: Browser, dashboard: str, store: MdmsStore
) -> None:
    page, errors, _ = await open_page(browser, dashboard)
    await page.route("**/api/stream", lambda route: route.abort())
    await page.goto(f"{dashboard}/")
    await expect(page.locator("#live")).to_have_attribute("data-mode", "polling", timeout=WAIT_MS)
    m2 = page.locator('#meters tr[data-meter="m2"]')
    await expect(m2).to_contain_text("7,654.321 kWh in", timeout=WAIT_MS)
    await page.evaluate("window.sameDocument = true")
    await store.record_messages([reading("m2-3", "m2", 8_000_000)])
    await expect(m2).to_contain_text("8,000.000 kWh in", timeout=WAIT_MS)
    assert await page.evaluate("window.sameDocument") is True
    assert errors == []


# ---- the screenshot in docs/ -----------------------------------------------------------------


async def simulated_fleet(store: MdmsStore, now: float, outbox_dir: Path) -> None:
    """A few hours of a small fleet: the meter model's own messages and answers to commands,
    delivered with realistic delays, a backlog on the gateway and a failed command."""
    start = int(now) - 6 * 3600
    meters = [
        Meter("electric", f"mtr-{i:04d}", seed=i, now=start, rate_scale=300) for i in range(16)
    ]
    meters += [Meter("gas", f"gas-{i:04d}", seed=100 + i, now=start) for i in range(2)]
    messages: list[MeterMessage] = []

    def deliver(meter: Meter, family: str, content: dict[str, Any], at: float, n: int) -> None:
        flow = flows.get(content["flow"])
        # Delivery delays grow with priority; bulk reads wait behind the rest.
        delay = (0.4, 0.9, 1.6, 9.0)[flow[flows.PRIORITY]] * (1 + (n * 7919 % 100) / 40)
        if flow[flows.PRIORITY] == 3 and n % 5 == 0:
            delay *= 1.6
        dap = "dap-north" if meter.meter_id < "mtr-0009" else "dap-south"
        messages.append(
            MeterMessage(
                key=f"{meter.meter_id}/{content['seq']}", dap=dap, meter=meter.meter_id,
                family=family, flow=content["flow"], ptype=content["type"], seq=content["seq"],
                meter_ts=float(content["ts"]), created_at=at, received_at=at + delay,
                size=flows.payload_size(content), budget_s=float(flow[flows.LATENCY]),
                priority=flow[flows.PRIORITY], content=content,
            )
        )  # fmt: skip

    n = 0
    for step in range(start + 600, int(now) - 400, 600):
        for meter in meters:
            for family, content in meter.due_flows(step):
                n += 1
                deliver(meter, family, content, step, n)
    # Alarms are rare (a few per thousand meters a month): raise some.
    for meter, flow_id, ago in (
        (meters[3], "ev-pq-alarm", 4000), (meters[9], "ev-fault", 2500),
        (meters[12], "ev-security-alarm", 1300), (meters[3], "ev-pq-alarm", 700),
        (meters[16], "ev-config", 200),
    ):  # fmt: skip
        meter.seq += 1
        content = flows.build(flows.get(flow_id), meter, meter.seq, int(now) - ago)
        n += 1
        deliver(meter, "event", content, now - ago, n)
    # Commands: each one recorded, then the meter's answers.
    orders: list[tuple[Meter, dict[str, Any]]] = [
        (meters[0], {"cmd": "read"}), (meters[1], {"cmd": "switch", "op": "disconnect"}),
        (meters[2], {"cmd": "fw", "target": "nic", "ver": "5.3.0"}),
        (meters[4], {"cmd": "han-join", "dev": "000D6F0000ABCDEF"}),
        (meters[5], {"cmd": "read", "src": "bogus"}), (meters[6], {"cmd": "price", "price": 145}),
        (meters[7], {"cmd": "switch", "op": "status"}),
    ]  # fmt: skip
    issued = int(now) - 300
    for i, (meter, body) in enumerate(orders):
        command_id = f"c{1000 + i}"
        command = {**body, "id": command_id}
        dap = "dap-north" if meter.meter_id < "mtr-0009" else "dap-south"
        await store.record_command(
            CommandRecord(command_id, dap, meter.meter_id, body["cmd"], command, issued + i, "ops")
        )
        for family, content in meter.handle_command(command, now=issued + i):
            n += 1
            deliver(meter, family, content, issued + i + 1, n)
    pending = {"cmd": "read", "n": 96, "id": "c2000"}
    await store.record_command(
        CommandRecord("c2000", "dap-south", "mtr-0008", "read", pending, now - 20, "billing")
    )
    messages.sort(key=lambda m: m.received_at)
    for i in range(0, len(messages), 50):
        await store.record_messages(messages[i : i + 50])
    statuses = {
        "dap-north": real_gateway_status(outbox_dir / "north.db", 0, 9, 144, shed=4),
        "dap-south": real_gateway_status(outbox_dir / "south.db", 1, 3, 62, shed=0),
    }
    for dap, status in statuses.items():
        await store.record_gateway_status(dap, now - 5, {**status, "meters": 9})


@pytest.mark.skipif(
    not os.environ.get("GRIDM2M_DASHBOARD_SCREENSHOT"),
    reason="set GRIDM2M_DASHBOARD_SCREENSHOT=<png path> to make the dashboard's screenshot",
)
async def test_screenshot(browser: Browser, store: MdmsStore, tmp_path: Path) -> None:
    now = T0 + 12 * 3600
    await simulated_fleet(store, now, tmp_path)
    app = dashboard_app(store, login=login(), online_window_s=3600, clock=lambda: now)
    runner, url = await serve(app)
    try:
        page, errors, _ = await open_page(browser, url)
        await expect(page.locator("#live")).to_have_attribute("data-mode", "live", timeout=WAIT_MS)
        await expect(page.locator("#latency-chart .main-svg").first).to_be_visible()
        await page.locator('#meters tr[data-meter="mtr-0001"]').click()
        await expect(page.locator("#meter-detail")).to_be_visible(timeout=WAIT_MS)
        await expect(page.locator("#detail-commands")).to_contain_text("answered")
        path = Path(os.environ["GRIDM2M_DASHBOARD_SCREENSHOT"])
        await page.screenshot(path=str(path), full_page=True)
        assert errors == []
    finally:
        await runner.cleanup()

"""The dashboard as an aiohttp application.

Everything the page needs is served by this app (it works without internet access): the
page, its script and style sheet from `static/`, and plotly.js from the installed `plotly`
Python package, which bundles it. The page reads the JSON API below and follows changes
through Server-Sent Events on /api/stream, each event driven by `store.wait_for_change`;
where the stream fails it polls instead.

  GET /                    the page
  GET /api/overview        totals: meters heard from and online (and registered at the
                           gateways, as they report it), messages per family, alarms,
                           commands, the gateways' outboxes (queued and shed, in all and
                           per priority) and each gateway's latest status as it sent it
  GET /api/meters          ?limit=&offset= meters with their latest registers and state
  GET /api/meters/{meter}  one meter with its latest messages and commands
  GET /api/messages        ?after_id=&meter=&family=&limit= latest messages, newest first
  GET /api/commands        ?limit=&meter= latest commands; /api/commands/{id} one of them
  GET /api/latency         delivery latency per family against its budget
  GET /api/stream          text/event-stream: a "change" event whenever the store changes

URLs in the page are relative, so the app can also be mounted as a sub-application.
Every route but the login page and the static files needs a login or an admin token
(`headend/dashboard/login.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import math
import string
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from headend.dashboard.login import WebLogin
from headend.store import MdmsStore, StoreError

_STATIC = resources.files("headend.dashboard") / "static"
_OWN_FILES = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The outbox priorities a gateway reports by name, most urgent first (as PRIORITY_NAMES in
# gateway/metrics.py names them).
PRIORITIES = ("alarm", "ack", "ondemand", "bulk")


def _per_priority(value: Any) -> dict[str, int]:
    """A gateway's {priority name: count} (its status's `outbox` or `shed`), every priority
    present; a value of another shape counts as nothing rather than as a number it is not."""
    counts = dict.fromkeys(PRIORITIES, 0)
    if isinstance(value, dict):
        for name, count in value.items():
            if isinstance(count, int) and not isinstance(count, bool):
                counts[str(name)] = count
    return counts


def outbox_totals(gateways: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the gateways' latest reports say of their outboxes and meters, added up:
    {queued, shed: totals; queued_by_priority, shed_by_priority; registered: meters registered
    at the gateways (None if none reported it)}. Each gateway's own entry gains `queued` and
    `shed` per priority."""
    queued, shed = dict.fromkeys(PRIORITIES, 0), dict.fromkeys(PRIORITIES, 0)
    registered: int | None = None
    for entry in gateways.values():
        status = entry.get("status") or {}
        entry["queued"] = _per_priority(status.get("outbox"))
        entry["shed"] = _per_priority(status.get("shed"))
        for name, count in entry["queued"].items():
            queued[name] = queued.get(name, 0) + count
        for name, count in entry["shed"].items():
            shed[name] = shed.get(name, 0) + count
        meters = status.get("meters")
        if isinstance(meters, int) and not isinstance(meters, bool):
            registered = (registered or 0) + meters
    return {
        "queued": sum(queued.values()),
        "shed": sum(shed.values()),
        "queued_by_priority": queued,
        "shed_by_priority": shed,
        "registered": registered,
    }


def _plotly_js() -> Path:
    """plotly.min.js as the plotly Python package ships it."""
    bundled = resources.files("plotly") / "package_data" / "plotly.min.js"
    if not isinstance(bundled, Path) or not bundled.is_file():
        raise RuntimeError(
            "plotly.min.js was not found in the installed plotly package "
            "(the dashboard needs plotly installed as plain files)"
        )
    return bundled


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValueError as exc:  # a bad query parameter
        return _json({"error": str(exc)}, status=400)
    except StoreError as exc:  # the database is not there
        return _json({"error": str(exc)}, status=503)


def _int_param(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _cursor(text: str) -> tuple[float, str] | None:
    """A page cursor "<issued_at>,<id>" (empty: from the first)."""
    if not text:
        return None
    at, comma, command_id = text.partition(",")
    try:
        issued_at = float(at)
    except ValueError:
        issued_at = math.nan
    if not comma or not math.isfinite(issued_at):
        raise ValueError(f"after must be empty or <issued_at>,<id>, got {text!r}")
    return issued_at, command_id


class _Dashboard:
    def __init__(
        self,
        store: MdmsStore,
        title: str,
        online_window_s: float,
        poll_interval_s: float,
        stream_interval_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.online_window_s = online_window_s
        self.stream_interval_s = stream_interval_s
        self.clock = clock
        page = string.Template((_STATIC / "index.html").read_text(encoding="utf-8"))
        self.page = page.substitute(
            title=html.escape(title), poll_ms=str(max(100, round(poll_interval_s * 1000)))
        ).encode()
        self.files = {name: (_STATIC / name).read_bytes() for name in _OWN_FILES}
        self.plotly = _plotly_js()
        self.streams: set[asyncio.Task[Any]] = set()

    # ---- page and files ---------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.page, content_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "plotly.min.js":
            # A large file that changes only with the plotly package: let the browser keep it.
            return web.FileResponse(self.plotly, headers={"Cache-Control": "max-age=86400"})
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(
            body=self.files[name],
            content_type=_OWN_FILES[name],
            headers={"Cache-Control": "no-cache"},
        )

    # ---- JSON API ----------------------------------------------------------------------------

    def _mark_online(self, meter: dict[str, Any], now: float) -> dict[str, Any]:
        meter["online"] = meter["last_seen"] >= now - self.online_window_s
        return meter

    async def overview(self, request: web.Request) -> web.Response:
        now = self.clock()
        version = self.store.version
        summary = await self.store.overview(online_since=now - self.online_window_s)
        gateways = await self.store.gateway_status()
        totals = outbox_totals(gateways)
        # Meters heard from are the MDMS's; registered ones are the gateways' (a meter that
        # registered but whose first message has not arrived yet is only there).
        summary["meters"]["registered"] = totals.pop("registered")
        return _json(
            {
                **summary,
                "gateways": gateways,
                "outbox": totals,
                "now": now,
                "version": version,
                "online_window_s": self.online_window_s,
            }
        )

    async def meters(self, request: web.Request) -> web.Response:
        now = self.clock()
        limit = _int_param(request, "limit", 100)
        offset = _int_param(request, "offset", 0)
        assert limit is not None and offset is not None
        meters = await self.store.meters(limit=limit, offset=offset)
        return _json(
            {
                "meters": [self._mark_online(m, now) for m in meters],
                "limit": limit,
                "offset": offset,
                "now": now,
            }
        )

    async def meter(self, request: web.Request) -> web.Response:
        name = request.match_info["meter"]
        found = await self.store.meter(name, recent=_int_param(request, "recent", 30) or 30)
        if found is None:
            return _json({"error": f"no meter {name!r}"}, status=404)
        return _json({"meter": self._mark_online(found, self.clock()), "now": self.clock()})

    async def messages(self, request: web.Request) -> web.Response:
        """The latest messages, newest first; with `order=oldest`, every message after
        `after_id` in the order stored, a page at a time."""
        limit = _int_param(request, "limit", 50)
        assert limit is not None
        if request.query.get("order") == "oldest":
            after = _int_param(request, "after_id", 0)
            assert after is not None
            return _json({"messages": await self.store.messages_in_order(after, limit)})
        messages = await self.store.recent_messages(
            meter=request.query.get("meter") or None,
            family=request.query.get("family") or None,
            after_id=_int_param(request, "after_id", None),
            limit=limit,
        )
        return _json({"messages": messages})

    async def commands(self, request: web.Request) -> web.Response:
        """The latest commands, newest first; with `after` (empty, or the `next` of the
        previous page), every command in the order issued, a page at a time."""
        limit = _int_param(request, "limit", 50)
        assert limit is not None
        if "after" in request.query:
            page = await self.store.commands_in_order(_cursor(request.query["after"]), limit)
            last = page[-1] if len(page) == limit else None
            cursor = None if last is None else f"{last['issued_at']!r},{last['id']}"
            return _json({"commands": page, "next": cursor})
        meter = request.query.get("meter") or None
        return _json({"commands": await self.store.commands(limit=limit, meter=meter)})

    async def command(self, request: web.Request) -> web.Response:
        command_id = request.match_info["id"]
        found = await self.store.command(command_id)
        if found is None:
            return _json({"error": f"no command {command_id!r}"}, status=404)
        return _json({"command": found})

    async def latency(self, request: web.Request) -> web.Response:
        return _json({"families": await self.store.latency_by_family()})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """One "change" event at once, then one whenever the store's version moves on.

        Events are spaced by `stream_interval_s` so a burst of writes costs the page one
        refresh, not one per message; the event carries the version, the page re-reads.
        """
        task = asyncio.current_task()
        assert task is not None
        self.streams.add(task)
        try:
            async with sse_response(request) as events:
                with contextlib.suppress(ConnectionResetError):  # the page went away
                    await self._follow(events)
            return events
        finally:
            self.streams.discard(task)

    async def _follow(self, events: EventSourceResponse) -> None:
        sent = -1
        while events.is_connected():
            version = self.store.version
            if version == sent:
                version = await self.store.wait_for_change(sent, timeout=15)
            if version != sent:
                await events.send(orjson.dumps({"version": version}).decode(), event="change")
                sent = version
                await asyncio.sleep(self.stream_interval_s)

    async def stop_streams(self, app: web.Application) -> None:
        # Open event streams would hold the server's shutdown until they time out.
        for task in list(self.streams):
            task.cancel()


def dashboard_app(
    store: MdmsStore,
    *,
    login: WebLogin,
    title: str = "GridM2M head-end",
    online_window_s: float = 900,
    poll_interval_s: float = 5.0,
    stream_interval_s: float = 0.25,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The dashboard over an opened store.

    A meter is online when it was heard from within `online_window_s`. The page polls every
    `poll_interval_s` while the event stream is down; the stream sends at most one event per
    `stream_interval_s`. `login` guards every route.
    """
    dashboard = _Dashboard(store, title, online_window_s, poll_interval_s, stream_interval_s, clock)
    app = web.Application(middlewares=[_errors_as_json])
    login.install(app)
    app.router.add_get("/", dashboard.index)
    app.router.add_get("/static/{name}", dashboard.static_file)
    app.router.add_get("/api/overview", dashboard.overview)
    app.router.add_get("/api/meters", dashboard.meters)
    app.router.add_get("/api/meters/{meter}", dashboard.meter)
    app.router.add_get("/api/messages", dashboard.messages)
    app.router.add_get("/api/commands", dashboard.commands)
    app.router.add_get("/api/commands/{id}", dashboard.command)
    app.router.add_get("/api/latency", dashboard.latency)
    app.router.add_get("/api/stream", dashboard.stream)
    app.on_shutdown.append(dashboard.stop_streams)
    return app

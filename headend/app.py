"""Composition of the head-end: the IN-CSE, the MDMS store, the MDMS and command applications,
and one web server (login required) for the dashboard, its API and commands.

The MDMS hears from the IN-CSE in process (`local://mdms`, `headend/local_ae.py`): there is no
HTTP endpoint where anyone else could hand it meter data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from cse.app import RunningCSE, running_cse
from cse.bindings.http.server import start_site
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.core.types import ResponseStatusCode as RSC
from cse.security.credentials import CredentialStore, Kind
from headend.apps import HeadendApps
from headend.commands import CommandError, CommandService
from headend.config import HeadendConfig
from headend.dashboard import WebLogin, dashboard_app
from headend.dashboard.login import USER, TokenCheck, hash_password, new_password
from headend.flows import flow_info
from headend.local_ae import LOCAL_SCHEME, InProcessNotifications
from headend.mdms import Mdms
from headend.store import MdmsStore, open_store

logger = logging.getLogger(__name__)


@dataclass
class RunningHeadend:
    config: HeadendConfig
    cse: RunningCSE
    store: MdmsStore
    mdms: Mdms
    commands: CommandService
    web_url: str


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _object_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None if the body is not one."""
    try:
        body = await request.json(loads=orjson.loads)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _add_routes(app: web.Application, holder: dict[str, Any]) -> None:
    """Routes beside the dashboard's: issuing commands, running applications, health."""

    async def health(_: web.Request) -> web.Response:
        # The IN-CSE answers from its core and storage; nothing else is told.
        running: RunningCSE = holder["cse"]
        settings = running.cse.settings
        reply = await running.cse.handle(
            Request(Operation.RETRIEVE, settings.cse_name, settings.cse_id, "health", "3")
        )
        healthy = reply.status == RSC.OK
        return _json({"healthy": healthy}, 200 if healthy else 503)

    async def issue(request: web.Request) -> web.Response:
        body = await _object_body(request)
        if body is None:
            return _json({"error": "the body must be a JSON object"}, 400)
        commands: CommandService = holder["commands"]
        meters = body.pop("meters", None)
        meter = body.pop("meter", None)
        dap = body.pop("dap", None)
        issued_by = str(body.pop("issued_by", request.get(USER, "api")))
        try:
            if meters is not None:
                if not isinstance(meters, list) or not all(isinstance(m, str) for m in meters):
                    raise CommandError("meters must be a list of meter ids")
                if dap is None:
                    dap = await commands.dap_of(meters[0]) if meters else None
                if not isinstance(dap, str):
                    raise CommandError("a group command needs meters and their DAP")
                issued = await commands.issue_to_group(meters, body, dap=dap, issued_by=issued_by)
            elif isinstance(meter, str):
                issued = await commands.issue(meter, body, dap=dap, issued_by=issued_by)
            else:
                raise CommandError("give meter (a meter id) or meters (a list)")
        except CommandError as error:
            return _json({"error": str(error)}, 400)
        return _json(issued.as_dict(), 202 if issued.as_dict()["sent"] else 502)

    async def counts(_: web.Request) -> web.Response:
        store: MdmsStore = holder["store"]
        by_flow = await store.counts_by_flow()
        by_family: dict[str, int] = {}
        for flow, count in by_flow.items():
            info = flow_info(flow)
            family = info.family if info else "other"
            by_family[family] = by_family.get(family, 0) + count
        return _json({"by_family": by_family, "by_flow": by_flow, "total": sum(by_flow.values())})

    async def run_app(request: web.Request) -> web.Response:
        apps: HeadendApps = holder["apps"]
        body = await _object_body(request)
        if body is None:
            return _json({"error": "the body must be a JSON object"}, 400)
        name = request.match_info["name"]
        meters = body.get("meters") or ([body["meter"]] if "meter" in body else [])
        try:
            if not isinstance(meters, list) or not all(isinstance(m, str) for m in meters):
                raise CommandError("meters must be a list of meter ids")
            if name == "billing":
                issued = await apps.bulk_read(
                    meters, int(body.get("intervals", 96)), int(body.get("batch", 50))
                )
            elif name == "dr":
                issued = await apps.dr_event(
                    meters,
                    body.get("ev", 1),
                    minutes=int(body.get("dur", 60)),
                    shed=int(body.get("shed", 30)),
                    program=str(body.get("prog", "utl")),
                    source=str(body.get("src", "lms")),
                )
            elif name == "prepay":
                issued = [await apps.switch(meters[0] if meters else "", str(body.get("op")))]
            elif name == "firmware":
                issued = await apps.firmware(
                    meters,
                    str(body.get("target")),
                    str(body.get("ver")),
                    str(body.get("image", "firmware")),
                )
            elif name == "price":
                issued = await apps.price(
                    meters, int(body.get("price", 0)), int(body.get("tier", 0))
                )
            else:
                return _json({"error": f"no application {name!r}"}, 404)
        except (CommandError, ValueError, TypeError) as error:
            return _json({"error": str(error)}, 400)
        return _json({"issued": [i.as_dict() for i in issued]}, 202)

    async def dms_reports(request: web.Request) -> web.Response:
        apps: HeadendApps = holder["apps"]
        return _json({"reports": await apps.dms_reports()})

    app.router.add_get("/health", health)
    app.router.add_post("/api/apps/{name}", run_app)
    app.router.add_get("/api/apps/dms", dms_reports)
    app.router.add_get("/api/counts", counts)
    app.router.add_post("/api/commands", issue)


def operator_password(config: HeadendConfig) -> tuple[str, str | None]:
    """The operator's password hash, and the password itself when it was just made (to be
    shown once). A password in the config replaces the stored hash."""
    path = config.password_path()
    chosen = config.dashboard.password
    if chosen is None and path.is_file():
        return path.read_text().strip(), None
    made = new_password() if chosen is None else None
    hashed = hash_password(chosen or made or "")
    _write_private(path, hashed + "\n")
    return hashed, made


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _admin_tokens(credentials: CredentialStore | None) -> TokenCheck:
    def admin_name(token: str) -> str | None:
        found = credentials.by_token(token) if credentials is not None and token else None
        return found.name if found is not None and found.kind is Kind.ADMIN else None

    return admin_name


@contextlib.asynccontextmanager
async def running_headend(config: HeadendConfig) -> AsyncIterator[RunningHeadend]:
    password_hash, new_operator_password = operator_password(config)
    notifications = InProcessNotifications()
    async with contextlib.AsyncExitStack() as stack:
        running = await stack.enter_async_context(
            running_cse(config.cse, local_senders={LOCAL_SCHEME: notifications})
        )
        store = open_store(config.mdms.sqlite_path(), config.mdms.postgres_url)
        await store.open()
        stack.push_async_callback(store.close)
        holder: dict[str, Any] = {"store": store, "cse": running}
        dashboard = config.dashboard
        login = WebLogin(
            password_hash,
            _admin_tokens(running.credentials),
            session_s=dashboard.session_hours * 3600,
        )
        app = dashboard_app(store, login=login)
        _add_routes(app, holder)
        runner, port = await start_site(app, dashboard.host, dashboard.port)
        stack.push_async_callback(runner.cleanup)
        web_url = f"http://{dashboard.host}:{port}"
        if new_operator_password is not None:
            print(
                f"gridm2m headend: the dashboard's operator password is {new_operator_password} "
                f"(shown once; only its hash is kept, in {config.password_path()})",
                flush=True,
            )
        # The web server is this process's own: the IN-CSE never sends there (the MDMS hears
        # in process), whatever a subscription names (docs/security.md, "Egress policy").
        running.cse.egress.add_own_port(port)
        mdms = Mdms(running.cse, store, notifications.point_of_access("mdms"))
        notifications.register("mdms", mdms.on_notify)
        commands = CommandService(running.cse, store)
        holder.update(mdms=mdms, commands=commands, apps=HeadendApps(commands, store))
        await mdms.start()
        await commands.start()
        yield RunningHeadend(config, running, store, mdms, commands, web_url)


async def serve_headend_until_stopped(config: HeadendConfig, stop: asyncio.Event) -> None:
    async with running_headend(config) as headend:
        print(
            f"gridm2m headend {config.cse.cse_id} ({config.cse.cse_name}) listening on "
            f"{' '.join(headend.cse.urls)}; dashboard {headend.web_url}/",
            flush=True,
        )
        await stop.wait()
    logger.info("head-end stopped")

"""The head-end's own routes, beside the dashboard's: health, commands and applications.

  GET  /health                    {"healthy": bool}: the IN-CSE answers a RETRIEVE (503 if not)
  POST /api/commands              a command to "meter", or to "meters" as a group on their DAP
  GET  /api/counts                messages stored per flow and per family
  POST /api/apps/{name}           run an application: billing, dr, prepay, firmware, price
  GET  /api/apps/dms              communication failures and outage alarms
  GET  /api/apps/firmware/{meter} the meter's firmware as its DAP holds it
  GET  /api/apps/cis/schedule     CIS/Billing's schedule (POST: change it, see CisScheduleBody)
  POST /api/apps/cis/requests     CIS sends a bulk read request now (409 outside 18:00-06:00)
  GET  /api/apps/cis/requests     CIS's requests in the order sent (?after=SEQ&limit=N), each
                                  with how the MDMS handled it: the evidence of rows 1Aa
  GET  /api/apps/cis/requests/{id} one of them, with the meters' reads CIS received

They are added to the dashboard's web application, so its login rules apply to them
(`headend/dashboard/login.py`: everything but /health needs a login or an admin token).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import Request
from cse.core.types import Operation
from cse.core.types import ResponseStatusCode as RSC
from headend.apps import HeadendApps
from headend.cis import Cis, CisError, UtilityClock
from headend.commands import CommandError, CommandService, Issued
from headend.dashboard.login import USER
from headend.flows import flow_info
from headend.store import MdmsStore

# An application run by POST /api/apps/{name}: the meters and the request's JSON object.
Application = Callable[[list[str], dict[str, Any]], Awaitable[list[Issued]]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _object_body(request: web.Request) -> dict[str, Any] | None:
    """The request's JSON object, or None if the body is not one."""
    try:
        body = await request.json(loads=orjson.loads)
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _first_problem(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"])
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])


def _meter_list(meters: Any) -> list[str]:
    if not isinstance(meters, list) or not all(isinstance(m, str) for m in meters):
        raise CommandError("meters must be a list of meter ids")
    return meters


class CisClockBody(BaseModel):
    """The utility clock: `start_ts` at wall time `t0_wall` (default: now), `speed` x wall."""

    model_config = ConfigDict(extra="forbid")
    speed: float = Field(gt=0, le=1e6)
    start_ts: float
    t0_wall: float | None = None


class CisScheduleBody(BaseModel):
    """POST /api/apps/cis/schedule: what to change; `"meters": null` reads every meter the
    MDMS knows again."""

    model_config = ConfigDict(extra="forbid")
    batches_per_day: int | None = Field(None, ge=0, le=10_000)
    batch_size: int | None = Field(None, ge=1, le=1000)
    meters: list[str] | None = Field(None, max_length=100_000)
    clock: CisClockBody | None = None
    until: float | None = None  # wall time: send nothing after it


@dataclass(frozen=True, slots=True)
class HeadendApi:
    """The parts of the head-end the routes use; one method per route."""

    cse: CommonServicesEntity  # /health
    store: MdmsStore  # /api/counts
    commands: CommandService  # /api/commands
    apps: HeadendApps  # /api/apps/...
    cis: Cis  # /api/apps/cis/...

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/api/apps/cis/schedule", self.cis_schedule)
        app.router.add_post("/api/apps/cis/schedule", self.change_cis_schedule)
        app.router.add_get("/api/apps/cis/requests", self.cis_requests)
        app.router.add_post("/api/apps/cis/requests", self.send_cis_request)
        app.router.add_get("/api/apps/cis/requests/{id}", self.cis_request)
        app.router.add_get("/health", self.health)
        app.router.add_post("/api/apps/{name}", self.run_application)
        app.router.add_get("/api/apps/dms", self.dms_reports)
        app.router.add_get("/api/apps/firmware/{meter}", self.firmware_status)
        app.router.add_get("/api/counts", self.counts)
        app.router.add_post("/api/commands", self.issue_command)

    async def health(self, _: web.Request) -> web.Response:
        # The IN-CSE answers from its core and storage; nothing else is told.
        settings = self.cse.settings
        reply = await self.cse.handle(
            Request(Operation.RETRIEVE, settings.cse_name, settings.cse_id, "health", "3")
        )
        healthy = reply.status == RSC.OK
        return _json({"healthy": healthy}, 200 if healthy else 503)

    async def issue_command(self, request: web.Request) -> web.Response:
        body = await _object_body(request)
        if body is None:
            return _json({"error": "the body must be a JSON object"}, 400)
        meters = body.pop("meters", None)
        meter = body.pop("meter", None)
        dap = body.pop("dap", None)
        issued_by = str(body.pop("issued_by", request.get(USER, "api")))
        try:
            if meters is not None:
                meters = _meter_list(meters)
                if dap is None:
                    dap = await self.commands.dap_of(meters[0]) if meters else None
                if not isinstance(dap, str):
                    raise CommandError("a group command needs meters and their DAP")
                issued = await self.commands.issue_to_group(
                    meters, body, dap=dap, issued_by=issued_by
                )
            elif isinstance(meter, str):
                issued = await self.commands.issue(meter, body, dap=dap, issued_by=issued_by)
            else:
                raise CommandError("give meter (a meter id) or meters (a list)")
        except CommandError as error:
            return _json({"error": str(error)}, 400)
        return _json(issued.as_dict(), 202 if issued.as_dict()["sent"] else 502)

    async def counts(self, _: web.Request) -> web.Response:
        by_flow = await self.store.counts_by_flow()
        by_family: dict[str, int] = {}
        for flow, count in by_flow.items():
            info = flow_info(flow)
            family = info.family if info else "other"
            by_family[family] = by_family.get(family, 0) + count
        return _json({"by_family": by_family, "by_flow": by_flow, "total": sum(by_flow.values())})

    async def run_application(self, request: web.Request) -> web.Response:
        body = await _object_body(request)
        if body is None:
            return _json({"error": "the body must be a JSON object"}, 400)
        name = request.match_info["name"]
        meters = body.get("meters") or ([body["meter"]] if "meter" in body else [])
        try:
            meters = _meter_list(meters)
            application = self._applications().get(name)
            if application is None:
                return _json({"error": f"no application {name!r}"}, 404)
            issued = await application(meters, body)
        except (CommandError, ValueError, TypeError) as error:
            return _json({"error": str(error)}, 400)
        return _json({"issued": [i.as_dict() for i in issued]}, 202)

    async def dms_reports(self, _: web.Request) -> web.Response:
        return _json({"reports": await self.apps.dms_reports()})

    async def firmware_status(self, request: web.Request) -> web.Response:
        try:
            found = await self.apps.firmware_updates.status(request.match_info["meter"])
        except CommandError as error:
            return _json({"error": str(error)}, 400)
        return _json({"firmware": found})

    # ---- CIS/Billing ------------------------------------------------------------------------

    async def cis_schedule(self, _: web.Request) -> web.Response:
        return _json({"enabled": self.cis.enabled, **self.cis.schedule.as_dict()})

    async def change_cis_schedule(self, request: web.Request) -> web.Response:
        body = await _object_body(request)
        if body is None:
            return _json({"error": "the body must be a JSON object"}, 400)
        try:
            change = CisScheduleBody.model_validate(body)
        except ValidationError as error:
            return _json({"error": _first_problem(error)}, 400)
        changes: dict[str, Any] = {
            name: getattr(change, name)
            for name in ("batches_per_day", "batch_size", "until")
            if name in change.model_fields_set
        }
        if "meters" in change.model_fields_set:
            changes["roster"] = None if change.meters is None else tuple(change.meters)
        if change.clock is not None:
            given = change.clock
            t0 = self.cis.clock() if given.t0_wall is None else given.t0_wall
            changes["clock"] = UtilityClock(given.speed, given.start_ts, t0)
        schedule = self.cis.configure(**changes)
        return _json({"enabled": self.cis.enabled, **schedule.as_dict()})

    async def send_cis_request(self, request: web.Request) -> web.Response:
        body = await _object_body(request) if request.can_read_body else {}
        cycle = (body or {}).get("cycle")
        if body is None or not (cycle is None or isinstance(cycle, str)):
            return _json({"error": 'the body must be a JSON object with an optional "cycle"'}, 400)
        try:
            sent = await self.cis.send_request(cycle)
        except CisError as error:
            return _json({"error": str(error)}, 409)
        return _json(sent.as_dict(), 202 if sent.status == RSC.CREATED else 502)

    async def cis_requests(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0"))
            limit = int(request.query.get("limit", "1000"))
            found = await self.store.cis_requests(after, limit)
        except ValueError as error:
            return _json({"error": str(error)}, 400)
        return _json({"requests": found})

    async def cis_request(self, request: web.Request) -> web.Response:
        found = await self.store.cis_request(request.match_info["id"])
        if found is None:
            return _json({"error": "no such request"}, 404)
        return _json({"request": found})

    # ---- the applications of POST /api/apps/{name}: the body's fields, with their defaults

    def _applications(self) -> dict[str, Application]:
        return {
            "billing": self._billing,
            "dr": self._demand_response,
            "prepay": self._prepay,
            "firmware": self._firmware,
            "price": self._price,
        }

    async def _billing(self, meters: list[str], body: dict[str, Any]) -> list[Issued]:
        intervals, batch = int(body.get("intervals", 96)), int(body.get("batch", 50))
        return await self.apps.bulk_read(meters, intervals, batch)

    async def _demand_response(self, meters: list[str], body: dict[str, Any]) -> list[Issued]:
        return await self.apps.dr_event(
            meters,
            body.get("ev", 1),
            minutes=int(body.get("dur", 60)),
            shed=int(body.get("shed", 30)),
            program=str(body.get("prog", "utl")),
            source=str(body.get("src", "lms")),
        )

    async def _prepay(self, meters: list[str], body: dict[str, Any]) -> list[Issued]:
        return [await self.apps.switch(meters[0] if meters else "", str(body.get("op")))]

    async def _firmware(self, meters: list[str], body: dict[str, Any]) -> list[Issued]:
        return await self.apps.firmware(
            meters,
            str(body.get("target")),
            str(body.get("ver")),
            str(body.get("image", "firmware")),
            str(body["url"]) if body.get("url") else None,
        )

    async def _price(self, meters: list[str], body: dict[str, Any]) -> list[Issued]:
        rates = body.get("hh")
        if rates is not None and not (
            isinstance(rates, list) and all(isinstance(r, int) for r in rates)
        ):
            raise CommandError("hh must be a list of integer rates")
        return await self.apps.price(
            meters, int(body.get("price", 0)), int(body.get("tier", 0)), rates
        )

"""Composition of the DAP gateway: its MN-CSE, registration upstream, the uplink, operations.

```
 meters ──CoAP/MQTT/HTTP──▶ MN-CSE (cse.app.running_cse) ──durable batches──▶ Uplink feeder
                                 ▲                                              │ outbox (SQLite)
 head-end ──retargeted requests──┘                                              ▼
                               Registrar ◀── "target gone" ── Uplink sender ──CREATE──▶ IN-CSE
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from cse.app import RunningCSE, running_cse
from cse.bindings.http.server import start_site
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResourceType
from cse.storage.base import StorageError
from gateway import health
from gateway.config import GatewayConfig
from gateway.interval_series import IntervalSeries
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox
from gateway.registers import MeterRegisters
from gateway.registration import STATUS_CONTAINER, Registrar
from gateway.uplink import Uplink, align_with_database
from gateway.upstream import UpstreamLink, UpstreamUnavailable

logger = logging.getLogger(__name__)


@dataclass
class RunningGateway:
    config: GatewayConfig
    cse: RunningCSE
    link: UpstreamLink
    registrar: Registrar
    outbox: Outbox
    uplink: Uplink
    metrics: GatewayMetrics
    ops_url: str | None
    registers: MeterRegisters | None = None
    series: IntervalSeries | None = None  # interval reads as time series, when enabled

    async def meters_registered(self) -> int:
        core = self.cse.cse
        return await core.storage.count_children(core.settings.cse_ri, ResourceType.AE)

    async def health(self) -> health.HealthReport:
        core = self.cse.cse
        stores = {"cse": core.storage.health, "outbox": self.outbox.health}
        report = await health.check(self.cse, stores, core.supervisor)
        health.observe(self.metrics, report, core.supervisor)
        return report

    async def refresh_metrics(self) -> None:
        metrics = self.metrics
        await self.health()
        with contextlib.suppress(StorageError):  # reported by the health gauges
            metrics.meters_registered.set(await self.meters_registered())
        metrics.meters_online.set(self.uplink.meters_online())
        metrics.upstream_registered.set(1 if self.registrar.registered.is_set() else 0)
        metrics.upstream_link_up.set(1 if self.uplink.link_up else 0)
        metrics.observe_outbox(self.outbox)
        if self.registers is not None:
            registers = self.registers
            metrics.observe_registers(registers.written, registers.failures, registers.pending)

    async def status(self) -> dict[str, Any]:
        """The gateway's state as reported upstream and on /health."""
        return {
            "cse_id": self.cse.cse.settings.cse_id,
            "registered": self.registrar.registered.is_set(),
            "link_up": self.uplink.link_up,
            "meters": await self.meters_registered(),
            "online": self.uplink.meters_online(),
            **health.outbox_status(self.outbox),
            "at": time.time(),
        }


def _ops_app(gateway: RunningGateway) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        await gateway.refresh_metrics()
        return web.Response(
            body=gateway.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def health_check(_: web.Request) -> web.Response:
        # Healthy means serving meters (gateway/health.py); a missing head-end is what the
        # outbox is for, so it is reported but does not make the gateway unhealthy.
        report = await gateway.health()
        try:
            status = await gateway.status()
        except StorageError:  # the report says why
            status = {"cse_id": gateway.cse.cse.settings.cse_id}
        body = {**status, **report.as_dict()}
        return web.Response(
            status=200 if report.healthy else 503,
            body=orjson.dumps(body),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health_check)
    return app


async def _report_status(gateway: RunningGateway, interval: float) -> None:
    """Post the gateway's state to `status` under our remoteCSE upstream, for the head-end."""
    link, registrar = gateway.link, gateway.registrar
    while True:
        await asyncio.sleep(interval)
        if not registrar.registered.is_set():
            continue
        try:
            status = await gateway.status()
        except StorageError:
            continue  # the storage reports its failures; /health shows them
        request = link.create(
            registrar.container_address(STATUS_CONTAINER),
            ResourceType.CONTENT_INSTANCE,
            {"m2m:cin": {"cnf": "application/json:0", "con": orjson.dumps(status).decode()}},
        )
        try:
            reply = await link.send(request)
        except UpstreamUnavailable:
            continue
        if int(reply.status) >= 4000:
            logger.info("status report refused (%d)", int(reply.status))


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[RunningGateway]:
    async with contextlib.AsyncExitStack() as stack:
        outbox = Outbox(config.outbox_path(), budget_bytes=config.outbox.budget_bytes)
        stack.callback(outbox.close)

        async def align_outbox(core: CommonServicesEntity) -> None:
            # Before any meter is served: the outbox must agree with this database.
            outbox.open()
            await align_with_database(outbox, core.storage)

        running = await stack.enter_async_context(running_cse(config.cse, align_outbox))
        core = running.cse
        # The configured head-end is a target by config; the ops endpoint is ours, never one.
        core.egress.allow_exactly(config.upstream.url)
        if config.ops.port:
            core.egress.add_own_port(config.ops.port)
        upstream = config.upstream
        if upstream.uses_mqtt and upstream.username is None and running.mqtt is not None:
            # Through the DAP's own broker: the uplink logs in as the gateway's binding does
            # (its credential from its store, see cse.app.own_mqtt_login).
            login = running.mqtt.settings
            upstream = upstream.model_copy(
                update={"username": login.username, "password": login.password}
            )
        link = await stack.enter_async_context(UpstreamLink(upstream, config.cse.cse_id))
        metrics = GatewayMetrics()
        metrics.observe_outbox(outbox)
        metrics.watch_limits(core.counters)
        metrics.watch_egress(core.egress.refused)
        registrar = Registrar(
            core,
            link,
            config.mirror.families,
            check_interval=config.upstream.check_interval,
            announce_broker_only=config.upstream.uses_mqtt and not config.cse.poa,
        )
        uplink = Uplink(
            core,
            link,
            registrar,
            outbox,
            metrics,
            mirror=config.mirror,
            settings=config.outbox,
        )
        await registrar.start()
        stack.push_async_callback(registrar.stop)
        await uplink.start()
        stack.push_async_callback(uplink.stop)
        registers = None
        if config.registers.enabled:
            registers = MeterRegisters(core, exclude_containers=config.mirror.exclude_containers)
            await registers.start()
            stack.push_async_callback(registers.stop)

        gateway = RunningGateway(
            config, running, link, registrar, outbox, uplink, metrics, None, registers
        )
        if config.series.enabled:
            gateway.series = IntervalSeries(core, config.series)
            await gateway.series.start()
            stack.push_async_callback(gateway.series.stop)
        if config.ops.port is not None:
            runner, port = await start_site(_ops_app(gateway), config.ops.host, config.ops.port)
            stack.push_async_callback(runner.cleanup)
            core.egress.add_own_port(port)
            gateway.ops_url = f"http://{config.ops.host}:{port}"
        reporter = core.supervisor.start(
            "status report", lambda: _report_status(gateway, config.mirror.status_interval)
        )
        stack.callback(reporter.cancel)
        yield gateway


async def serve_gateway_until_stopped(config: GatewayConfig, stop: asyncio.Event) -> None:
    async with running_gateway(config) as gateway:
        print(
            f"gridm2m gateway {config.cse.cse_id} ({config.cse.cse_name}) listening on "
            f"{' '.join(gateway.cse.urls)}; upstream {config.upstream.url}"
            + (f"; ops {gateway.ops_url}" if gateway.ops_url else ""),
            flush=True,
        )
        await stop.wait()
    logger.info("gateway stopped")

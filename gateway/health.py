"""Whether the gateway works: what `/health` answers, and the gauges `/metrics` shows of it.

The gateway is unhealthy (HTTP 503, with the reasons in `problems`) when

- writes to its CSE database are failing: the storage's own record of its last commits (a
  full disk, a file damaged while running), so meters are being refused with 5000;
- writes to the uplink outbox are failing;
- a supervised task is down (it failed and waits to be restarted, `cse/supervision.py`);
- a binding does not answer a real round trip: HTTP a request to its own listener, CoAP a
  CoAP ping to its socket, MQTT a request published on the CSE's own request topic and
  answered back through the broker. The probes run when `/health` or `/metrics` is asked.

A head-end that cannot be reached is not a fault of the gateway (the outbox is there for
it): `registered` and `link_up` report it, and the status stays ok.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from cse.app import RunningCSE
from cse.storage.base import StorageHealth
from cse.supervision import Supervisor
from gateway.metrics import PRIORITY_NAMES, GatewayMetrics
from gateway.outbox import Outbox

PROBE_TIMEOUT_S = 2.0


@dataclass
class HealthReport:
    problems: list[str] = field(default_factory=list)
    bindings: dict[str, dict[str, Any]] = field(default_factory=dict)
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks_down: list[dict[str, str]] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.healthy else "unhealthy",
            "problems": self.problems,
            "bindings": self.bindings,
            "storage": self.storage,
            "tasks_down": self.tasks_down,
        }


def outbox_status(outbox: Outbox) -> dict[str, Any]:
    """The outbox's part of the gateway's status (on /health and reported upstream): items
    queued and items shed since the outbox was made, each per priority by name (alarm, ack,
    ondemand, bulk), the bytes used of the budget, and the items the head-end refused."""
    return {
        "outbox": {PRIORITY_NAMES[p]: n for p, n in outbox.depth.items()},
        "outbox_bytes": outbox.bytes_used,
        "budget_bytes": outbox.budget_bytes,
        "shed": {PRIORITY_NAMES[p]: n for p, n in outbox.shed.items()},
        "rejected": outbox.rejected,
    }


async def probe_bindings(running: RunningCSE) -> dict[str, dict[str, Any]]:
    """One round trip through every listener, at the same time; what each found."""
    probes = [running.http.probe(PROBE_TIMEOUT_S)]
    if running.coap is not None:
        probes.append(running.coap.probe(PROBE_TIMEOUT_S))
    if running.mqtt is not None:
        probes.append(running.mqtt.probe(PROBE_TIMEOUT_S))
    await asyncio.gather(*probes)
    found = {"http": running.http.liveness().as_dict()}
    if running.coap is not None:
        found["coap"] = running.coap.liveness().as_dict()
    if running.mqtt is not None:
        found["mqtt"] = running.mqtt.liveness().as_dict()
    return found


async def check(
    running: RunningCSE, stores: dict[str, StorageHealth], supervisor: Supervisor
) -> HealthReport:
    report = HealthReport(bindings=await probe_bindings(running))
    for name, liveness in report.bindings.items():
        if not liveness["alive"]:
            report.problems.append(f"the {name} binding does not answer a request sent to it")
    for name, health in stores.items():
        report.storage[name] = health.as_dict()
        if health.failing:
            report.problems.append(f"{health.what}: writes are failing ({health.last_error})")
    for outage in supervisor.down():
        report.tasks_down.append({"task": outage.name, "reason": outage.reason})
        report.problems.append(f"task {outage.name!r} is down: {outage.reason}")
    return report


def observe(metrics: GatewayMetrics, report: HealthReport, supervisor: Supervisor) -> None:
    metrics.healthy.set(1 if report.healthy else 0)
    for name, liveness in report.bindings.items():
        metrics.binding_up.labels(name).set(1 if liveness["alive"] else 0)
    for name, health in report.storage.items():
        metrics.storage_writes_ok.labels(name).set(1 if health["writes_ok"] else 0)
        metrics.storage_failures.labels(name).set(health["failures"])
    down = {outage.name for outage in supervisor.down()}
    for name in {*metrics.TASKS, *supervisor.failures}:
        metrics.task_up.labels(name).set(0 if name in down else 1)
        metrics.task_failures.labels(name).set(supervisor.failures.get(name, 0))

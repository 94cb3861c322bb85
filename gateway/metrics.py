"""The gateway's Prometheus metrics, on a registry of its own (several gateways can share a
process in tests)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from cse.core.limits import LimitCounters

PRIORITY_NAMES = {0: "alarm", 1: "ack", 2: "ondemand", 3: "bulk"}

# Delivery latency buckets around the spec's budgets (5 s, 30 s, 4 h).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


class OutboxState(Protocol):
    depth: dict[int, int]
    bytes_used: int
    shed: dict[int, int]


class _LimitsCollector(Collector):
    """The CSE's limit counters (cse/core/limits.py), read at each scrape."""

    def __init__(self, counters: LimitCounters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        counters = self._counters
        refused = CounterMetricFamily(
            "gridm2m_cse_limit_refusals",
            "Requests refused by a quota or rate limit (docs/gateway.md, Limits)",
            labels=["limit"],
        )
        for limit, count in counters.refused.items():
            refused.add_metric([limit.value], count)
        yield refused
        for name, value, text in (
            ("truncated", counters.discovery_truncated, "answers cut at the cap or lim (cnst 1)"),
            ("rows_read", counters.discovery_rows_read, "resources read from storage"),
            ("yields", counters.discovery_yields, "turns given to other requests between pages"),
            ("queued", counters.discovery_queued, "discoveries that waited for a walk to end"),
        ):
            yield CounterMetricFamily(f"gridm2m_cse_discovery_{name}", f"Discovery: {text}", value)


class _EgressCollector(Collector):
    """The egress policy's refusals (cse/core/egress.py), read at each scrape."""

    def __init__(self, refused: Mapping[str, int]) -> None:
        self._refused = refused

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "gridm2m_egress_refused",
            "Sends and registrations the CSE's egress policy refused (docs/security.md)",
            labels=["reason"],
        )
        for reason, count in sorted(self._refused.items()):
            refused.add_metric([reason], count)
        yield refused


class GatewayMetrics:
    # The supervised tasks (cse/supervision.py), so their series exist from the start.
    TASKS = (
        "sqlite committer",
        "expiry sweeper",
        "notification delivery",
        "uplink feeder",
        "uplink sender",
        "registration check",
        "status report",
        "meter registers",
    )

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.meters_registered = Gauge(
            "gridm2m_meters_registered", "Meter AEs registered with the gateway", registry=r
        )
        self.meters_online = Gauge(
            "gridm2m_meters_online", "Meters that posted within the online window", registry=r
        )
        self.upstream_registered = Gauge(
            "gridm2m_upstream_registered", "1 while registered with the upstream CSE", registry=r
        )
        self.upstream_link_up = Gauge(
            "gridm2m_upstream_link_up", "1 while the last upstream request got through", registry=r
        )
        self.outbox_depth = Gauge(
            "gridm2m_outbox_depth", "Messages waiting in the outbox", ["priority"], registry=r
        )
        self.outbox_bytes = Gauge("gridm2m_outbox_bytes", "Payload bytes in the outbox", registry=r)
        self.shed = Gauge(
            "gridm2m_outbox_shed_total",
            "Messages shed because the disk budget was full (persistent)",
            ["priority"],
            registry=r,
        )
        self.delivered_total = Counter(
            "gridm2m_uplink_delivered", "Messages delivered upstream", ["priority"], registry=r
        )
        self.retries_total = Counter(
            "gridm2m_uplink_retries", "Failed delivery attempts", ["priority"], registry=r
        )
        self.upstream_errors = Counter(
            "gridm2m_uplink_upstream_errors",
            "Delivery attempts the upstream CSE answered with an error, by oneM2M status code "
            "(5xxx: it could not store the message now; retried)",
            ["status"],
            registry=r,
        )
        self.rejected_total = Counter(
            "gridm2m_uplink_rejected",
            "Messages the upstream refused for good (dropped)",
            ["priority"],
            registry=r,
        )
        self.latency = Histogram(
            "gridm2m_uplink_delivery_seconds",
            "From storage on the gateway to acknowledgement by the upstream CSE",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.healthy = Gauge(
            "gridm2m_healthy", "1 while /health says ok (see gateway/health.py)", registry=r
        )
        self.binding_up = Gauge(
            "gridm2m_binding_up",
            "1 while a request sent through the binding's listener is answered",
            ["binding"],
            registry=r,
        )
        self.storage_writes_ok = Gauge(
            "gridm2m_storage_writes_ok",
            "1 while the last writes to the store succeeded (cse: the CSE database)",
            ["store"],
            registry=r,
        )
        self.storage_failures = Gauge(
            "gridm2m_storage_failures_total",
            "Failed writes (and reads) of the store since start",
            ["store"],
            registry=r,
        )
        self.task_up = Gauge(
            "gridm2m_task_up",
            "0 while a supervised task is down (failed, waiting to restart)",
            ["task"],
            registry=r,
        )
        self.task_failures = Gauge(
            "gridm2m_task_failures_total",
            "Failures of a supervised task since start (each one restarted it)",
            ["task"],
            registry=r,
        )
        self.registers = Gauge(
            "gridm2m_registers_written_total",
            "Meter register flexContainers created or updated (docs/gateway.md, Registers)",
            registry=r,
        )
        self.registers_failed = Gauge(
            "gridm2m_registers_failures_total",
            "Register writes the gateway's CSE refused or that failed",
            registry=r,
        )
        self.registers_pending = Gauge(
            "gridm2m_registers_pending",
            "Meters whose newest readings are not yet in their registers",
            registry=r,
        )
        for task in self.TASKS:
            self.task_up.labels(task).set(1)
            self.task_failures.labels(task).set(0)
        for priority in PRIORITY_NAMES.values():
            # Every series exists from the start, so dashboards see zeros, not gaps.
            self.outbox_depth.labels(priority).set(0)
            self.shed.labels(priority).set(0)
            self.delivered_total.labels(priority)
            self.retries_total.labels(priority)
            self.rejected_total.labels(priority)
            self.latency.labels(priority)

    def watch_limits(self, counters: LimitCounters) -> None:
        """Export the CSE's refusals per limit and how discovery reads the tree."""
        self.registry.register(_LimitsCollector(counters))

    def observe_outbox(self, outbox: OutboxState) -> None:
        for priority, name in PRIORITY_NAMES.items():
            self.outbox_depth.labels(name).set(outbox.depth.get(priority, 0))
            self.shed.labels(name).set(outbox.shed.get(priority, 0))
        self.outbox_bytes.set(outbox.bytes_used)

    def watch_egress(self, refused: Mapping[str, int]) -> None:
        """Export what the CSE's egress policy refused, by reason (docs/security.md)."""
        self.registry.register(_EgressCollector(refused))

    def observe_registers(self, written: int, failed: int, pending: int) -> None:
        self.registers.set(written)
        self.registers_failed.set(failed)
        self.registers_pending.set(pending)

    def delivered(self, priority: int, latency: float, attempts: int) -> None:
        name = PRIORITY_NAMES.get(priority, "bulk")
        self.delivered_total.labels(name).inc()
        self.latency.labels(name).observe(max(latency, 0.0))

    def retried(self, priority: int) -> None:
        self.retries_total.labels(PRIORITY_NAMES.get(priority, "bulk")).inc()

    def upstream_error(self, status: int) -> None:
        self.upstream_errors.labels(str(status)).inc()

    def rejected(self, priority: int) -> None:
        self.rejected_total.labels(PRIORITY_NAMES.get(priority, "bulk")).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

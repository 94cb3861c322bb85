"""What a fleet run did: meters registered, messages per flow family, failures, latencies.

`FleetSummary.collect()` adds up the agents' own counters (`Agent.stats()`) and what the fleet
measured around them; `table()` is the text `gridm2m fleet` prints, `as_dict()` the JSON.
`behind()` lists the reasons, if any, to say the fleet did not keep up with its schedule.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Thresholds of behind(): the loop may wake this late (p99) before meters' ticks slip.
MAX_LOOP_LAG_P99_MS = 200.0
# A meter waits this long (p99, after the ramp) for the DAP to accept a message at most.
MAX_CREATE_P99_MS = 1000.0
# Messages still in the stores at the end, as a share of those generated.
MAX_BACKLOG_SHARE = 0.05
# The last registration may come this much (or half the ramp) after the planned ramp.
RAMP_SLACK_S = 5.0


class Samples:
    """Numbers kept for percentiles: all of them up to `cap`, then a uniform reservoir."""

    def __init__(self, cap: int = 200_000, seed: int = 0) -> None:
        self.cap = cap
        self.count = 0
        self.total = 0.0
        self.maximum = 0.0
        self._values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.maximum = max(self.maximum, value)
        if len(self._values) < self.cap:
            self._values.append(value)
            return
        slot = self._rng.randrange(self.count)
        if slot < self.cap:
            self._values[slot] = value

    def percentile(self, share: float) -> float:
        if not self._values:
            return 0.0
        ordered = sorted(self._values)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    def as_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean": self.total / self.count if self.count else 0.0,
            "p50": self.percentile(0.5),
            "p90": self.percentile(0.9),
            "p99": self.percentile(0.99),
            "max": self.maximum,
        }


class _Plan(Protocol):
    kind: str
    transport: str
    start_at: float


class _Watch(Protocol):
    plan: Any
    registered_at: float | None
    start_errors: int


class _Measurements(Protocol):
    steady_since: float | None
    registration: Samples
    latency: Samples
    steady_latency: Samples
    steady_latency_by_transport: dict[str, Samples]
    loop_lag: Samples
    steady_loop_lag: Samples


@dataclass
class FleetSummary:
    meters: int
    started: int
    registered: int
    registered_by: dict[str, int]  # "coap", "mqtt", "electric", "gas" -> registered meters
    sent_by_family: dict[str, int]
    sent: int
    generated: int
    failed: int  # send attempts that raised LinkError or got 5xxx, and failed start()s
    refused: int  # messages the DAP answered 4xxx (dropped)
    dropped: int  # messages the stores dropped when full
    buffered: int  # messages still in the stores at the end
    wall_s: float
    meter_days: float
    clock_speed: float
    ramp_s: float
    last_registration_s: float | None
    steady_s: float  # wall seconds from the last registration to the end
    latency_ms: dict[str, float]  # CREATE contentInstance, the whole run
    steady_latency_ms: dict[str, float]  # the same, begun after the last registration
    steady_latency_by_transport_ms: dict[str, dict[str, float]]
    registration_ms: dict[str, float]
    loop_lag_ms: dict[str, float]
    steady_loop_lag_ms: dict[str, float]
    cpu_s: float = 0.0  # CPU time of this process (every meter, the loop, the probes)
    peak_rss_mb: float = 0.0
    unregistered: list[str] = field(default_factory=list)
    sent_by_flow: dict[str, int] = field(default_factory=dict)
    generated_by_flow: dict[str, int] = field(default_factory=dict)
    buffered_by_flow: dict[str, int] = field(default_factory=dict)  # still in the stores
    clock: dict[str, float] = field(default_factory=dict)  # FleetClock.anchor()

    @classmethod
    def collect(
        cls,
        config: Any,
        plans: list[Any],
        watches: Iterable[_Watch],
        stats: list[dict[str, Any]],
        *,
        wall: float,
        meter_seconds: int,
        measurements: _Measurements,
        family_of: Callable[[str], str],
        clock: dict[str, float] | None = None,
    ) -> FleetSummary:
        watches = list(watches)
        registered = [w for w in watches if w.registered_at is not None]
        registered_by: dict[str, int] = {}
        for watch in registered:
            for label in (watch.plan.transport, watch.plan.kind):
                registered_by[label] = registered_by.get(label, 0) + 1
        by_family: dict[str, int] = {}
        for stat in stats:
            for flow_id, count in stat["sent"].items():
                family = family_of(flow_id)
                by_family[family] = by_family.get(family, 0) + count
        by_flow: dict[str, int] = {}
        generated_by_flow: dict[str, int] = {}
        buffered_by_flow: dict[str, int] = {}
        for stat in stats:
            for flow_id, count in stat.get("buffered_by_flow", {}).items():
                buffered_by_flow[flow_id] = buffered_by_flow.get(flow_id, 0) + count
            for flow_id, count in stat["sent"].items():
                by_flow[flow_id] = by_flow.get(flow_id, 0) + count
            for flow_id, count in stat.get("generated_by_flow", {}).items():
                generated_by_flow[flow_id] = generated_by_flow.get(flow_id, 0) + count
        registered_ids = {w.plan.meter_id for w in registered}
        steady_since = measurements.steady_since
        return cls(
            meters=len(plans),
            started=len(watches),
            registered=len(registered),
            registered_by=registered_by,
            sent_by_family=dict(sorted(by_family.items())),
            sent=sum(stat["sent_total"] for stat in stats),
            generated=sum(stat["generated"] for stat in stats),
            failed=sum(stat["failed"] for stat in stats),
            refused=sum(stat["refused"] for stat in stats),
            dropped=sum(stat["dropped"] for stat in stats),
            buffered=sum(stat["buffered"] for stat in stats),
            wall_s=wall,
            meter_days=meter_seconds / 86400,
            clock_speed=config.clock_speed,
            ramp_s=config.ramp,
            last_registration_s=max((w.registered_at or 0.0 for w in registered), default=None),
            steady_s=0.0 if steady_since is None else max(0.0, wall - steady_since),
            latency_ms=measurements.latency.as_dict(),
            steady_latency_ms=measurements.steady_latency.as_dict(),
            steady_latency_by_transport_ms={
                name: samples.as_dict()
                for name, samples in measurements.steady_latency_by_transport.items()
            },
            registration_ms=measurements.registration.as_dict(),
            loop_lag_ms=measurements.loop_lag.as_dict(),
            steady_loop_lag_ms=measurements.steady_loop_lag.as_dict(),
            cpu_s=time.process_time(),
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            unregistered=[p.meter_id for p in plans if p.meter_id not in registered_ids],
            sent_by_flow=dict(sorted(by_flow.items())),
            generated_by_flow=dict(sorted(generated_by_flow.items())),
            buffered_by_flow=dict(sorted(buffered_by_flow.items())),
            clock=dict(clock or {}),
        )

    def behind(self) -> list[str]:
        """Why the fleet did not keep its schedule (empty: it did)."""
        reasons = []
        if self.registered < self.meters:
            reasons.append(f"{self.meters - self.registered} of {self.meters} not registered")
        last = self.last_registration_s
        if last is not None and last > self.ramp_s + max(RAMP_SLACK_S, self.ramp_s / 2):
            reasons.append(
                f"ramp overran: last meter registered at {last:.0f} s of {self.ramp_s:g}"
            )
        lag = self.steady_loop_lag_ms if self.steady_loop_lag_ms["count"] else self.loop_lag_ms
        if lag["p99"] > MAX_LOOP_LAG_P99_MS:
            reasons.append(f"event loop late by {lag['p99']:.0f} ms (p99)")
        create = self.steady_latency_ms if self.steady_latency_ms["count"] else self.latency_ms
        if create["p99"] > MAX_CREATE_P99_MS:
            reasons.append(f"CREATE p99 {create['p99']:.0f} ms")
        if self.generated and self.buffered > MAX_BACKLOG_SHARE * self.generated:
            reasons.append(f"{self.buffered} of {self.generated} messages still buffered")
        return reasons

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["unregistered"] = self.unregistered[:50]
        data["behind"] = self.behind()
        return data

    def table(self) -> str:
        rate = self.sent / self.wall_s if self.wall_s else 0.0
        lat, reg, lag = self.latency_ms, self.registration_ms, self.loop_lag_ms
        by = self.registered_by
        last = self.last_registration_s
        lines = [
            f"meters       {self.registered}/{self.meters} registered "
            f"(coap {by.get('coap', 0)}, mqtt {by.get('mqtt', 0)}; electric "
            f"{by.get('electric', 0)}, gas {by.get('gas', 0)}); {self.started} started",
            f"run          {self.wall_s:.1f} s wall = {self.meter_days:.2f} meter days "
            f"(clock x{self.clock_speed:g}); ramp {self.ramp_s:g} s, last registered at "
            + (f"{last:.1f} s" if last is not None else "-"),
            f"messages     {self.sent} sent ({rate:.1f}/s) of {self.generated} generated; "
            f"failed {self.failed}, refused {self.refused}, dropped {self.dropped}, "
            f"buffered {self.buffered}",
        ]
        for family, count in self.sent_by_family.items():
            lines.append(f"  {family:<11}{count}")
        steady = self.steady_latency_ms
        lines += [
            f"latency      CREATE cin p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"max {lat['max']:.1f} ms; after the ramp ({self.steady_s:.0f} s) p50 "
            f"{steady['p50']:.1f} ms, p99 {steady['p99']:.1f} ms",
            "             after the ramp, p50 / p99 by transport: "
            + ", ".join(
                f"{name} {figures['p50']:.1f} / {figures['p99']:.1f} ms"
                for name, figures in self.steady_latency_by_transport_ms.items()
                if figures["count"]
            ),
            f"registration p50 {reg['p50']:.0f} ms, p99 {reg['p99']:.0f} ms "
            f"(connect, AE, containers, subscription)",
            f"loop lag     p50 {lag['p50']:.1f} ms, p99 {lag['p99']:.1f} ms, "
            f"max {lag['max']:.1f} ms",
            f"process      {self.cpu_s:.1f} s CPU ({self.cpu_s / max(self.wall_s, 1e-9):.0%} of "
            f"one core), peak RSS {self.peak_rss_mb:.0f} MB",
        ]
        reasons = self.behind()
        lines.append("schedule     " + ("kept" if not reasons else "BEHIND: " + "; ".join(reasons)))
        return "\n".join(lines)

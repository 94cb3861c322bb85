"""What the head-end knows about a flow id: its latency budget and priority.

The meter agents' flow table (`device_agents/agent/flows.py`) is the one source of flow ids,
families, latency requirements and priorities; the head-end reads it rather than keeping a
copy that could drift.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from device_agents.agent import flows as agent_flows


@dataclass(frozen=True, slots=True)
class FlowInfo:
    flow: str
    family: str
    payload_type: str
    latency_s: float
    priority: int


@functools.lru_cache(maxsize=512)
def flow_info(flow_id: str) -> FlowInfo | None:
    try:
        row = agent_flows.get(flow_id)
    except (KeyError, ValueError):
        return None
    if row is None:
        return None
    return FlowInfo(
        flow=flow_id,
        family=str(row[agent_flows.FAMILY]),
        payload_type=str(row[agent_flows.TYPE]),
        latency_s=float(row[agent_flows.LATENCY]),
        priority=int(row[agent_flows.PRIORITY]),
    )

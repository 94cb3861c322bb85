"""The meter agent's flow table and the catalogue name the same rows with the same numbers."""

from __future__ import annotations

import pytest

from device_agents.agent import flows
from interop.catalogue import FlowRow, load_catalogue

CATALOGUE = load_catalogue()
AGENT_IDS = [flow[flows.ID] for flow in flows.all_flows()]


def test_every_agent_flow_has_one_catalogue_row() -> None:
    named = CATALOGUE.agent_flow_ids()
    assert len(named) == len(set(named))
    assert sorted(named) == sorted(AGENT_IDS)


def test_every_catalogue_agent_flow_is_in_the_agent() -> None:
    for row in CATALOGUE:
        for flow_id in row.agent_flows:
            assert flows.get(flow_id) is not None, f"{row.id} names {flow_id}"


def test_the_gas_row_is_split_by_reporting_period() -> None:
    assert CATALOGUE.get("gas-interval").agent_flows == ("gas-interval-4h", "gas-interval-6h")


def within(value: float, low: float, high: float) -> bool:
    return low * (1 - 1e-9) <= value <= high * (1 + 1e-9)


@pytest.mark.parametrize("flow_id", AGENT_IDS)
def test_agent_numbers_match_the_row(flow_id: str) -> None:
    flow = flows.get(flow_id)
    row: FlowRow = CATALOGUE.for_agent_flow(flow_id)
    assert row.targets == ("DAPjm",)
    gas_only = flow[flows.KINDS] == "g"
    assert row.source == ("2-Way Meter - Gas C/I" if gas_only else "2-Way Meter - Electr")
    assert flow[flows.TYPE] == row.payload_type
    assert flow[flows.WINDOW] == (row.clock_from_hour, row.clock_to_hour)
    assert flow[flows.LATENCY] == row.latency_seconds
    assert row.size_min_bytes is not None and row.size_max_bytes is not None
    assert row.size_min_bytes <= flow[flows.SMIN] <= flow[flows.SMAX] <= row.size_max_bytes

    per_day = flow[flows.PER_DAY]
    if per_day is not None:
        daily = row.rate.per_member_per_day()
        assert daily is not None, f"{flow_id} has a daily rate, its row does not"
        assert within(per_day, *daily)
    per_command = flow[flows.PER_CMD]
    if per_command is not None:
        rate = row.rate
        assert rate.count_min is not None and rate.count_min == rate.count_max
        assert per_command == pytest.approx(rate.count_min / rate.per_population)

"""Interval reads kept in a per-meter <timeSeries> on the gateway (gateway/interval_series.py).

The reads are built by the meter agent's own flow builders (mr-multi-interval, gas interval
data), posted to the gateway's CSE as a meter would, and written as one timeSeriesInstance
per interval; the timeSeries detects the intervals that never came (TS-0001 9.6.36).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cse.core.clock import ManualClock, format_timestamp
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from device_agents.agent import flows
from device_agents.agent.meter import Meter
from gateway.app import running_gateway
from gateway.config import SeriesConfig
from gateway.interval_series import IntervalSeries, intervals
from tests.gateway.test_uplink import Arrivals, gateway_config, post, register_meter
from tests.helpers import retrieve

T_NOON = 1767268800  # 2026-01-01 12:00 UTC
SERIES = "cse-in/mtr-1/intervals"


def electric_read(at: int, n: int) -> dict[str, Any]:
    """A multiple-interval read of the last `n` intervals up to `at`. The meter pads a short
    read up to the row's 200 B minimum with earlier intervals; the tests want a given few,
    so the read is cut back to them (t0 and each channel's starting register moved on)."""
    meter = Meter("electric", "mtr-1", 5, now=at)
    read = flows.build(flows.get("mr-multi-interval"), meter, 1, at, {"n": n})
    dropped = read["n"] - n
    if dropped > 0:
        read["n"], read["t0"] = n, read["t0"] + dropped * read["ip"]
        for channel in read["ch"]:
            if "r0" in channel:
                channel["r0"] += sum(channel["v"][:dropped])
            channel["v"] = channel["v"][dropped:]
    return read


def test_an_electric_and_a_gas_read_give_their_intervals() -> None:
    read = electric_read(T_NOON, 4)
    length, found = intervals(read) or (0, [])
    assert length == 900
    assert [end for end, _ in found] == [T_NOON - 900 * k for k in (3, 2, 1, 0)]
    assert found[-1][1][flows.RT_IV_DEL] == read["ch"][0]["v"][-1]
    gas = Meter("gas", "g", 5, now=T_NOON, gas_period_h=4)
    records = flows.build(flows.get("gas-interval-4h"), gas, 3, T_NOON)
    length, found = intervals(records) or (0, [])
    assert (length, len(found), found[-1][0]) == (900, 16, T_NOON)
    assert found[-1][1]["vm"] == gas.gas_vm and "t" not in found[-1][1]
    assert intervals(flows.build(flows.get("mr-ondemand"), gas, 4, T_NOON)) is None


@pytest.fixture
async def dap(cse: CommonServicesEntity, clock: ManualClock) -> AsyncIterator[IntervalSeries]:
    clock.advance(T_NOON - clock.now())
    await register_meter(cse, "mtr-1")
    series = IntervalSeries(cse, SeriesConfig(enabled=True, detect_after=1800))
    await series.start()
    yield series
    await series.stop()


async def _series(cse: CommonServicesEntity) -> dict[str, Any]:
    reply = await cse.handle(retrieve(SERIES))
    assert reply.status == RSC.OK, reply
    return dict(reply.content["m2m:ts"])


async def _dgt(cse: CommonServicesEntity, which: str) -> str:
    return str((await cse.handle(retrieve(f"{SERIES}/{which}"))).content["m2m:tsi"]["dgt"])


async def test_each_interval_of_a_read_becomes_an_instance_of_the_meters_series(
    cse: CommonServicesEntity, dap: IntervalSeries
) -> None:
    read = electric_read(T_NOON, 8)
    assert await post(cse, "mtr-1", "reading", read) == RSC.CREATED
    await dap.catch_up()  # what the gateway's task does after each group commit
    assert dap.written == 8
    ts = await _series(cse)
    assert (ts["cni"], ts["pei"], ts["mdd"], ts["mdt"]) == (8, 900_000, True, 1_800_000)
    assert await _dgt(cse, "ol") == format_timestamp(T_NOON - 7 * 900)
    latest = (await cse.handle(retrieve(f"{SERIES}/la"))).content["m2m:tsi"]
    assert latest["dgt"] == format_timestamp(T_NOON)
    assert latest["con"][flows.RT_IV_DEL] == read["ch"][0]["v"][-1]
    assert latest["snr"] == T_NOON // 900


async def test_a_read_that_repeats_intervals_adds_only_the_newer_ones(
    cse: CommonServicesEntity, clock: ManualClock, dap: IntervalSeries
) -> None:
    await post(cse, "mtr-1", "reading", electric_read(T_NOON, 8))
    clock.advance(1800)
    await post(cse, "mtr-1", "reading", electric_read(T_NOON + 1800, 8))
    await dap.catch_up()
    assert dap.written == 10
    assert (await _series(cse))["cni"] == 10
    assert await _dgt(cse, "la") == format_timestamp(T_NOON + 1800)


async def test_an_interval_that_never_arrives_is_listed_missing(
    cse: CommonServicesEntity, clock: ManualClock, dap: IntervalSeries
) -> None:
    await post(cse, "mtr-1", "reading", electric_read(T_NOON, 4))
    await dap.catch_up()
    clock.advance(900 + 1800)  # the interval ending at +900 was due by now
    assert await cse.missing_data.check() == 1
    ts = await _series(cse)
    assert (ts["mdlt"], ts["mdc"]) == ([format_timestamp(T_NOON + 900)], 1)
    # A read brings the gap (too late now) and what followed it (in time): the gap stays.
    clock.advance(800)
    await post(cse, "mtr-1", "reading", electric_read(T_NOON + 2700, 3))
    await dap.catch_up()
    assert dap.written == 4 + 3
    clock.advance(3600)
    await cse.missing_data.check()
    assert (await _series(cse))["mdlt"][0] == format_timestamp(T_NOON + 900)


async def test_other_data_makes_no_time_series(
    cse: CommonServicesEntity, dap: IntervalSeries
) -> None:
    meter = Meter("electric", "mtr-1", 5, now=T_NOON)
    await post(cse, "mtr-1", "reading", flows.build(flows.get("mr-ondemand"), meter, 1, T_NOON))
    await post(cse, "mtr-1", "event", electric_read(T_NOON, 4))  # not an interval family
    await dap.catch_up()
    assert dap.written == 0
    assert (await cse.handle(retrieve(SERIES))).status == RSC.NOT_FOUND


async def test_the_gateway_writes_interval_series_only_when_asked(tmp_path: Path) -> None:
    from cse.app import running_cse
    from tests.gateway.test_uplink import upstream_config

    async with running_cse(upstream_config(tmp_path)) as upstream:
        config = gateway_config(tmp_path, upstream.http.url)
        assert config.series.enabled is False  # off by default
        config.series.enabled = True
        async with running_gateway(config) as gateway:
            core = gateway.cse.cse
            written = Arrivals(core, ResourceType.TIME_SERIES_INSTANCE)
            await register_meter(core, "mtr-1")
            now = int(core.clock.now()) // 900 * 900
            await post(core, "mtr-1", "reading", electric_read(now, 4))
            await written.wait_for(lambda paths: len(paths) == 4)
            assert all(path.startswith("dap1/mtr-1/intervals/") for path in written.paths)

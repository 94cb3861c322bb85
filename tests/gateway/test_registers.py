"""The meters' registers as TS-0023 flexContainers on the gateway (gateway/registers.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from cse.app import running_cse
from cse.core.clock import format_timestamp
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from gateway.app import running_gateway
from gateway.config import GatewayConfig
from gateway.registers import MeterRegisters, Reading, reading_of
from tests.gateway.test_uplink import Arrivals, gateway_config, register_meter, upstream_config
from tests.helpers import NotificationReceiver, ae_body, create, delete, retrieve

TIMEOUT = 10.0
TS = 1_750_000_000  # a meter's clock, seconds
CONSUMPTION = "org.onem2m.common.moduleclass.energyConsumption"


def ondemand(wh_in: int, wh_out: int = 0, dv: int = 2304, ts: int = TS) -> dict[str, Any]:
    """What device_agents/agent/flows.py sends for mr-ondemand."""
    obis = {"1.8.0": wh_in, "2.8.0": wh_out, "32.7.0": dv}
    return {"rt": "x", "obis": obis, "flow": "mr-ondemand", "type": "resp-data", "ts": ts}


# ---- what a message says ----------------------------------------------------------------


def test_an_ondemand_read_gives_import_export_and_voltage_in_the_model_units() -> None:
    reading = reading_of(ondemand(1_234_567, 89_012, 2304))
    assert reading is not None
    assert reading.at == format_timestamp(TS)
    assert reading.modules == {
        "consumption": {"abECn": 1234.567, "volte": 230.4},  # kWh, V
        "generation": {"roEGn": 89_012},  # Wh
    }


def test_an_interval_read_gives_the_import_register_at_its_last_interval() -> None:
    message = {"t0": TS, "ip": 900, "n": 3, "ch": [{"rt": "x", "r0": 10_000, "v": [5, 6, 7]}],
               "flow": "mr-multi-interval", "type": "resp-data", "ts": TS + 9999}  # fmt: skip
    reading = reading_of(message)
    assert reading is not None
    assert reading.modules == {"consumption": {"abECn": 10.018}}
    assert reading.at == format_timestamp(TS + 3 * 900)


def test_the_switch_state_and_power_of_a_prepayment_read() -> None:
    message = {"sw": 0, "obis": {"1.8.0": 5000, "1.7.0": 1200}, "ts": TS}
    reading = reading_of(message)
    assert reading is not None
    assert reading.modules["switch"] == {"state": False}
    assert reading.modules["consumption"] == {"abECn": 5.0, "power": 1200}


@pytest.mark.parametrize(
    "message",
    [
        {"flow": "ev-power-outage", "type": "alarm", "ts": TS},
        {"obis": {"1.8.0": "12", "32.7.0": True, "2.8.0": float("nan")}, "ts": TS},
        {"obis": {"1.8.0": 12}},  # no time
        {"obis": {"1.8.0": 12}, "ts": -5},
        {"sw": True, "ts": TS},
        {"ch": [{"r0": 1, "v": [1, "x"]}], "ts": TS},
        {"obis": [1, 2], "ch": "x", "ts": TS},
    ],
)
def test_messages_without_usable_registers_give_nothing(message: dict[str, Any]) -> None:
    assert reading_of(message) is None


def test_merged_readings_keep_the_newest_value_of_each_data_point() -> None:
    older = Reading("20250101T000000", {"consumption": {"abECn": 1.0, "volte": 230.0}})
    newer = Reading("20250102T000000", {"consumption": {"abECn": 2.0}, "switch": {"state": True}})
    for merged in (older.merge(newer), newer.merge(older)):
        assert merged.at == "20250102T000000"
        assert merged.modules == {
            "consumption": {"abECn": 2.0, "volte": 230.0},
            "switch": {"state": True},
        }


# ---- kept on a CSE ----------------------------------------------------------------------


@pytest.fixture
async def registers(cse: CommonServicesEntity) -> AsyncIterator[MeterRegisters]:
    keeper = MeterRegisters(cse, exclude_containers=["command"])
    await keeper.start()
    for meter in ("m1", "m2"):
        await cse.handle(create("cse-in", 2, ae_body(meter), f"C{meter}"))
        for family in ("ondemand", "command"):
            body = {"m2m:cnt": {"rn": family}}
            await cse.handle(create(f"cse-in/{meter}", 3, body, f"C{meter}"))
    yield keeper
    await keeper.stop()


async def _post(
    cse: CommonServicesEntity, registers: MeterRegisters, message: Any, to: str = "m1/ondemand"
) -> None:
    meter = to.split("/")[0]
    body = {"m2m:cin": {"cnf": "application/json:0", "con": orjson.dumps(message).decode()}}
    reply = await cse.handle(create(f"cse-in/{to}", 4, body, f"C{meter}"))
    assert reply.status == RSC.CREATED, reply.content
    async with asyncio.timeout(TIMEOUT):
        await registers.settled()


async def _get(cse: CommonServicesEntity, path: str) -> dict[str, Any]:
    reply = await cse.handle(retrieve(f"cse-in/m1/registers{path}", "Cm1"))
    assert reply.status == RSC.OK, reply.content
    ((key, attributes),) = reply.content.items()
    return {"key": key, **attributes}


async def test_a_meters_read_makes_its_smart_meter_with_its_registers(
    cse: CommonServicesEntity, registers: MeterRegisters
) -> None:
    await _post(cse, registers, ondemand(1_234_567, 89_012))
    device = await _get(cse, "")
    assert device["key"] == "cid:dSEMr"
    assert device["cnd"] == "org.onem2m.city.device.deviceSmartElectricMeter"
    consumption = await _get(cse, "/consumption")
    assert consumption["key"] == "cod:eneCn" and consumption["cnd"] == CONSUMPTION
    assert (consumption["abECn"], consumption["volte"]) == (1234.567, 230.4)
    assert consumption["dgt"] == format_timestamp(TS)
    generation = await _get(cse, "/generation")
    assert (generation["key"], generation["roEGn"]) == ("cod:eneGn", 89_012)
    # The meter's own AE may read them: they sit under it (the default access rule).
    assert registers.written == 3 and registers.failures == 0


async def test_later_reads_update_what_changed_and_older_ones_change_nothing(
    cse: CommonServicesEntity, registers: MeterRegisters
) -> None:
    await _post(cse, registers, ondemand(1000, 50))
    await _post(cse, registers, ondemand(2000, 50, ts=TS + 60))
    consumption = await _get(cse, "/consumption")
    generation = await _get(cse, "/generation")
    assert (consumption["abECn"], consumption["st"], consumption["dgt"]) == (
        2.0,
        1,
        format_timestamp(TS + 60),
    )
    # Export did not move: not written again (it shows the reading its value came from).
    assert (generation["roEGn"], generation["st"], generation["dgt"]) == (
        50,
        0,
        format_timestamp(TS),
    )
    await _post(cse, registers, ondemand(1500, 50, dv=2400, ts=TS + 30))  # arrives late
    consumption = await _get(cse, "/consumption")
    assert (consumption["abECn"], consumption["volte"], consumption["st"]) == (2.0, 230.4, 1)
    await _post(cse, registers, ondemand(2500, 60, ts=TS + 120))
    generation = await _get(cse, "/generation")
    assert (generation["roEGn"], generation["st"]) == (60, 1)


async def test_subscribers_to_a_register_hear_of_each_new_value(
    cse: CommonServicesEntity, registers: MeterRegisters
) -> None:
    await _post(cse, registers, ondemand(1000))
    async with NotificationReceiver() as receiver:
        body = {"m2m:sub": {"rn": "watch", "nu": [receiver.url], "nct": 2}}
        made = await cse.handle(create("cse-in/m1/registers/consumption", 23, body, "Cm1"))
        assert made.status == RSC.CREATED, made.content
        await _post(cse, registers, ondemand(3000, ts=TS + 900))
        received = await receiver.wait_for(2)
    changed = received[1]["body"]["m2m:sgn"]["nev"]["rep"]["cod:eneCn"]
    assert changed["abECn"] == 3.0 and changed["dgt"] == format_timestamp(TS + 900)


async def test_commands_and_other_meters_data_stay_where_they_are(
    cse: CommonServicesEntity, registers: MeterRegisters
) -> None:
    await _post(cse, registers, ondemand(1000), to="m1/command")
    await _post(cse, registers, ondemand(4000), to="m2/ondemand")
    gone = await cse.handle(retrieve("cse-in/m1/registers", "Cm1"))
    assert gone.status == RSC.NOT_FOUND
    other = await cse.handle(retrieve("cse-in/m2/registers/consumption", "Cm2"))
    assert other.content["cod:eneCn"]["abECn"] == 4.0


async def test_a_meter_gone_before_its_registers_are_written_is_no_failure(
    cse: CommonServicesEntity, registers: MeterRegisters
) -> None:
    body = {"m2m:cin": {"con": orjson.dumps(ondemand(1000)).decode()}}
    assert (await cse.handle(create("cse-in/m1/ondemand", 4, body, "Cm1"))).status == RSC.CREATED
    assert (await cse.handle(delete("cse-in/m1", "Cm1"))).status == RSC.DELETED
    async with asyncio.timeout(TIMEOUT):
        await registers.settled()
    # The delete ran before the writer had a turn (in-memory storage does not wait), so the
    # writer found the meter gone: nothing written, and not counted as a failure.
    assert (registers.written, registers.failures) == (0, 0)
    assert (await cse.handle(retrieve("cse-in/m1/registers"))).status == RSC.NOT_FOUND


async def test_a_name_the_meter_took_first_is_left_alone(
    cse: CommonServicesEntity, registers: MeterRegisters
) -> None:
    # The meter's AE may create under itself; its own `registers` is not written over.
    made = await cse.handle(create("cse-in/m1", 3, {"m2m:cnt": {"rn": "registers"}}, "Cm1"))
    assert made.status == RSC.CREATED
    await _post(cse, registers, ondemand(1000))
    children = await cse.handle(retrieve("cse-in/m1/registers", "Cm1", rcn=6))
    assert children.content["m2m:rrl"]["rrf"] == []
    assert (registers.written, registers.failures) == (0, 1)


# ---- in the gateway -----------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_gateway_keeps_registers_unless_switched_off(
    tmp_path: Path, enabled: bool
) -> None:
    assert GatewayConfig().registers.enabled  # on by default (docs/gateway.md says why)
    async with running_cse(upstream_config(tmp_path)) as upstream:
        arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
        config = gateway_config(tmp_path, upstream.http.url)
        config.registers.enabled = enabled
        async with running_gateway(config) as gateway:
            core = gateway.cse.cse
            await register_meter(core, "mtr1")
            body = {"m2m:cin": {"con": orjson.dumps(ondemand(7000)).decode()}}
            made = await core.handle(create("dap1/mtr1/reading", 4, body, "Cmtr1"))
            assert made.status == RSC.CREATED
            await arrivals.wait_for(lambda paths: len(paths) == 1)  # mirrored as before
            if gateway.registers is not None:
                async with asyncio.timeout(TIMEOUT):
                    await gateway.registers.settled()
            kept = await core.handle(retrieve("dap1/mtr1/registers/consumption", "Cmtr1"))
            await gateway.refresh_metrics()
            metrics = gateway.metrics.render()
    if enabled:
        assert kept.content["cod:eneCn"]["abECn"] == 7.0
        assert b"gridm2m_registers_written_total 3.0" in metrics
    else:
        assert gateway.registers is None and kept.status == RSC.NOT_FOUND
        assert b"gridm2m_registers_written_total 0.0" in metrics

"""The fleet emulator: who the meters are, its config, and a few hundred meters on CPython
against a real `gridm2m cse` over CoAP and MQTT (a private Mosquitto), counted on the CSE; its
CoAP meters over OSCORE with keys from a credential store, against an OSCORE-only CSE."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cse.bindings.coap import CoapServer
from cse.core.primitives import FilterCriteria
from cse.security.credentials import CredentialStore
from cse.security.oscore_keyring import CredentialKeyring
from device_agents.fleet.config import FleetConfig, FleetConfigError, load_fleet_config
from device_agents.fleet.emulator import (
    Fleet,
    FleetClock,
    agent_config,
    esi_mapping,
    plan_meters,
)
from device_agents.fleet.summary import FleetSummary
from tests.brokers import private_broker
from tests.device_agents.mp import DapCse
from tests.device_agents.test_oscore import oscore_dap
from tests.helpers import retrieve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "fleet.toml"
MIDNIGHT = 1_767_225_600  # 2026-01-01T00:00:00Z: meter days start at 0:00


# ---- identities, shares, config ----------------------------------------------------------------


def test_plan_is_reproducible_with_exact_shares_and_an_even_ramp() -> None:
    config = FleetConfig(
        meters=1000, mix={"electric": 0.7, "gas": 0.3}, transports={"mqtt": 1, "coap": 3}, ramp=5
    )
    plans = plan_meters(config)
    assert plans == plan_meters(config)
    assert [p.meter_id for p in plans[:2]] == ["mtr-000001", "mtr-000002"]
    assert len({p.meter_id for p in plans}) == 1000 and len({p.seed for p in plans}) > 990
    assert sum(p.kind == "gas" for p in plans) == 300
    assert sum(p.transport == "coap" for p in plans) == 750
    assert plans[0].start_at == 0 and plans[-1].start_at == pytest.approx(5 * 999 / 1000)
    shuffled = plan_meters(config.model_copy(update={"seed": 2}))
    assert [p.kind for p in shuffled] != [p.kind for p in plans]


def test_rounding_keeps_the_total() -> None:
    config = FleetConfig(meters=7, mix={"electric": 1, "gas": 1}, transports={"coap": 1})
    kinds = [p.kind for p in plan_meters(config)]
    assert len(kinds) == 7 and abs(kinds.count("gas") - kinds.count("electric")) == 1


def test_agent_config_per_meter() -> None:
    config = FleetConfig(meters=3, transports={"coap": 1}, rate_scale=5)
    config.dap.coap_port = 6000
    config.dap.listen_port = 7000
    plan = plan_meters(config)[2]
    made = agent_config(config, plan, 1234)
    assert made["meter_id"] == "mtr-000003" and made["transport"] == "coap"
    assert (made["dap_port"], made["listen_port"], made["poa_host"]) == (6000, 7002, "127.0.0.1")
    assert (made["start_ts"], made["rate_scale"], made["seed"]) == (1234, 5, plan.seed)


def test_a_coap_meter_gets_its_keys_and_a_sequence_of_its_own() -> None:
    config = FleetConfig(meters=2, transports={"coap": 1})
    keys = {"oscore": {"kid": "2a", "secret": "00" * 16, "salt": "11" * 8}}
    first, second = (agent_config(config, plan, 0, keys) for plan in plan_meters(config))
    assert first["oscore"] == keys["oscore"]
    state = first["oscore_state"]
    assert state is not second["oscore_state"]  # each meter its own numbers
    # Ahead of whatever an earlier run (an earlier second) used with the same keys.
    assert state.load() >= int(time.time() * 100) - 100
    assert "oscore" not in agent_config(config, plan_meters(config)[0], 0)  # no store: plain


def test_the_clock_is_shared() -> None:
    clock = FleetClock(speed=3600, start_ts=MIDNIGHT)
    assert MIDNIGHT <= clock.meter_time() < MIDNIGHT + 3600


def test_the_example_config_loads_and_flags_override_the_environment() -> None:
    loaded = load_fleet_config(
        EXAMPLE,
        {"meters": 5, "duration": None},
        environ={"GRIDM2M_FLEET__METERS": "9", "GRIDM2M_FLEET__DAP__COAP_PORT": "6001"},
    )
    assert (loaded.meters, loaded.dap.coap_port, loaded.duration) == (5, 6001, 60.0)
    assert loaded.mix == {"electric": 0.9, "gas": 0.1}


def test_every_key_of_the_model_is_documented_in_the_example() -> None:
    text = EXAMPLE.read_text()
    lines = [line.removeprefix("# ") for line in text.splitlines()]
    documented = {line.split("=")[0].strip() for line in lines if "=" in line}
    keys = set(FleetConfig.model_fields) - {"mix", "transports", "dap", "agent"}
    keys |= set(FleetConfig.model_fields["dap"].annotation.model_fields)  # type: ignore[union-attr]
    assert keys <= documented, keys - documented


def test_agent_options_reach_every_agent_with_its_own_names() -> None:
    from device_agents.fleet.emulator import agent_config, plan_meters

    config = FleetConfig(meters=2, agent={"mqtt_username": "{ae_id}", "coap_ack_timeout_ms": 500})
    configs = [agent_config(config, plan, 0) for plan in plan_meters(config)]
    assert [c["mqtt_username"] for c in configs] == ["Cmtr-000001", "Cmtr-000002"]
    assert all(c["coap_ack_timeout_ms"] == 500 for c in configs)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[fleet]\nmeters = 0\n", "meters"),
        ("[fleet]\nbogus = 1\n", "bogus"),
        ("[fleet.mix]\nwater = 1\n", "water"),
        ("[fleet.transports]\ncoap = 0\nmqtt = 0\n", "share above 0"),
        ("[fleet]\nmeters = 2000000\n", "meters"),
        ("[fleet]\nmeters = 100\nid_digits = 1\n", "id_digits"),
        ("[fleet\n", "TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    with pytest.raises(FleetConfigError, match=words):
        load_fleet_config(path, environ={})


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--meters", "0"], "above 0"),
        (["--duration", "-1"], "above 0"),
        (["--config", "/nonexistent/fleet.toml"], "cannot read config"),
    ],
)
def test_fleet_command_exits_2_on_bad_arguments(args: list[str], words: str) -> None:
    command = [sys.executable, "-m", "gridm2m", "fleet", "--config", str(EXAMPLE), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert words in done.stderr and "Traceback" not in done.stderr


# ---- a few hundred meters against a real gridm2m cse -------------------------------------------


@pytest.fixture
async def dap(tmp_path: Path) -> AsyncIterator[DapCse]:
    async with private_broker(tmp_path / "broker") as broker, DapCse(mqtt_url=broker.url) as cse:
        yield cse


def fleet_config(dap: DapCse, meters: int, **extra: Any) -> FleetConfig:
    assert dap.mqtt_url is not None
    data: dict[str, Any] = {
        "meters": meters,
        "mix": {"electric": 0.8, "gas": 0.2},
        "transports": {"coap": 0.5, "mqtt": 0.5},
        # A meter day (0:00 to 24:00, every daily window) in 15 s; rare flows 200x as often:
        # ~15 messages an electric meter, 4 or 6 reports a gas meter, ~220 a second in all
        # (well below what a CSE on a shared 2-core machine takes, so none waits long).
        "clock_speed": 5760,
        "start_ts": MIDNIGHT,
        "rate_scale": 200,
        "duration": 15,
        "ramp": 4,
        "event_loop": "asyncio",
        "dap": {"coap_port": dap.coap_port, "mqtt_port": int(dap.mqtt_url.rsplit(":", 1)[1])},
    }
    data.update(extra)
    return FleetConfig.model_validate(data)


async def instances_on_the_cse(dap: DapCse, meter_id: str) -> list[str]:
    rsc, body = await dap.http("GET", f"{dap.cse_name}/{meter_id}?fu=1&ty=4&lim=10000")
    assert rsc == 2000, body
    return list(body.get("m2m:uril", []))


@pytest.mark.slow
async def test_a_few_hundred_meters_register_and_their_readings_arrive(dap: DapCse) -> None:
    fleet = Fleet(fleet_config(dap, 300))
    summary = await fleet.run()
    report = summary.table()
    print(report)
    assert summary.registered == 300, report
    assert summary.registered_by["coap"] == 150 and summary.registered_by["mqtt"] == 150, report
    assert summary.registered_by["gas"] == 60, report
    assert summary.refused == 0 and summary.dropped == 0, report
    assert summary.sent_by_family.get("reading", 0) >= 300, report
    # Whether the fleet kept its schedule (summary.behind()) depends on how loaded the machine
    # is: a figure for bench/, printed above, not asserted.

    rsc, found = await dap.http("GET", f"{dap.cse_name}?fu=1&ty=2&lim=10000")
    assert rsc == 2000
    assert len(found["m2m:uril"]) == 300
    # Each meter's contentInstances on the CSE are exactly those its agent saw accepted.
    counts = await asyncio.gather(
        *(instances_on_the_cse(dap, agent.meter_id) for agent in fleet.agents)
    )
    for agent, uris in zip(fleet.agents, counts, strict=True):
        assert uris, f"{agent.meter_id} has nothing on the CSE"
        assert len(uris) == agent.sent_total, (agent.meter_id, agent.stats())
        if agent.kind == "gas":  # periodic: 4 or 6 a day, whatever the rates
            assert any("/reading/" in uri for uri in uris), agent.meter_id
    assert sum(len(uris) for uris in counts) == sum(agent.sent_total for agent in fleet.agents)


@pytest.mark.slow
async def test_gridm2m_fleet_prints_its_summary(dap: DapCse, tmp_path: Path) -> None:
    assert dap.mqtt_url is not None
    mqtt_port = dap.mqtt_url.rsplit(":", 1)[1]
    config = tmp_path / "fleet.toml"
    config.write_text(
        EXAMPLE.read_text()
        .replace("coap_port = 5683", f"coap_port = {dap.coap_port}")
        .replace("mqtt_port = 1883", f"mqtt_port = {mqtt_port}")
        .replace("ramp = 10.0", "ramp = 1.0")
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridm2m", "fleet", "--config", str(config),
        "--meters", "40", "--duration", "5", "--json", str(tmp_path / "summary.json"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    text = stdout.decode()
    assert "40/40 registered" in text and "schedule" in text, text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["registered"] == 40 and summary["behind"] == []
    rsc, found = await dap.http("GET", f"{dap.cse_name}?fu=1&ty=2&lim=10000")
    assert rsc == 2000 and len(found["m2m:uril"]) == 40


# ---- CoAP meters over OSCORE, keys from the gateway's credential store ------------------------


INSTANCES = FilterCriteria(filter_usage=1, resource_types=(4,), limit=10000)


def oscore_fleet(server: CoapServer, store: Path | None, meters: int, **extra: Any) -> FleetConfig:
    data: dict[str, Any] = {
        "meters": meters,
        "transports": {"coap": 1},
        "clock_speed": 5760,  # a meter day in 15 s, rare flows 200x as often
        "start_ts": MIDNIGHT,
        "rate_scale": 200,
        "duration": 6,
        "ramp": 1,
        "event_loop": "asyncio",
        "credentials": None if store is None else str(store),
        "dap": {"coap_port": server.port},
    }
    data.update(extra)
    return FleetConfig.model_validate(data)


async def stop_when_all_sent(fleet: Fleet, meters: int) -> None:
    """Ends `fleet`'s run once each of its `meters` has had a send acknowledged."""
    while not (len(fleet.agents) == meters and all(agent.sent_total > 0 for agent in fleet.agents)):
        await asyncio.sleep(0.05)  # polls a condition; the fleet's run is what it ends
    fleet.stopping.set()


@pytest.mark.slow
async def test_fleet_coap_meters_speak_oscore_with_keys_from_the_store(tmp_path: Path) -> None:
    """A CSE whose CoAP server takes OSCORE only, with keys from a credential store (as the
    gateway's): the fleet's meters register and post with their own keys, the ones the store
    lacked made by `provision`; a meter the store does not know gets nothing in."""
    path = tmp_path / "credentials.db"
    with CredentialStore(path) as store:
        store.add_devices(["mtr-000001", "mtr-000002"])
        async with oscore_dap(CredentialKeyring(store)) as server:
            cse = server._cse
            with pytest.raises(FleetConfigError, match="mtr-000003"):
                await Fleet(oscore_fleet(server, path, 4)).run()  # not provisioned: named
            # Ends once every meter has posted, not after a fixed span: a loaded machine may
            # take seconds over the OSCORE registrations. `duration` is only the ceiling.
            fleet = Fleet(oscore_fleet(server, path, 4, provision=True, duration=120))
            watcher = asyncio.create_task(stop_when_all_sent(fleet, 4))
            summary = await fleet.run()
            watcher.cancel()
            report = summary.table()
            assert summary.registered == 4 and summary.refused == 0, report
            for agent in fleet.agents:
                assert agent.sent_total > 0, (agent.meter_id, agent.stats())
                found = await cse.handle(retrieve(f"cse-in/{agent.meter_id}", fc=INSTANCES))
                assert len(found.content["m2m:uril"]) == agent.sent_total, agent.meter_id
            assert store.by_name("mtr-000004") is not None  # made by provision

            # Plain CoAP meters (no keys: the store does not know them) are taken by no one.
            strangers = Fleet(oscore_fleet(server, None, 2, id_prefix="odd-", duration=3))
            refused = await strangers.run()
            assert refused.registered == 0, refused.table()
            absent = await cse.handle(retrieve("cse-in/odd-000001"))
            assert absent.status == 4004


# ---- gas paths: gas meters behind an ESI ----------------------------------------------------


GAS_FLOWS = ("gas-interval-4h", "gas-interval-6h")


def esi_fleet(**extra: Any) -> FleetConfig:
    data: dict[str, Any] = {
        "meters": 40,
        "mix": {"electric": 0.5, "gas": 0.5},
        "gas_paths": {"direct": 1, "esi_meter": 1, "esi_utility": 2},
        "esi_group": 4,
        "ramp": 4,
    }
    data.update(extra)
    return FleetConfig.model_validate(data)


def test_gas_meters_get_their_paths_and_the_esis_start_first() -> None:
    config = esi_fleet()
    plans = plan_meters(config)
    assert plans == plan_meters(config)
    gas = [p for p in plans if p.kind == "gas"]
    assert [sum(p.via == via for p in gas) for via in (None, "esi-meter", "esi-utility")] == [
        5, 5, 10,
    ]  # fmt: skip
    by_id = {p.meter_id: p for p in plans}
    utility = [p for p in plans if p.kind == "esi"]
    assert [p.meter_id for p in utility] == ["mtr-esi-000001", "mtr-esi-000002", "mtr-esi-000003"]
    assert [len(p.relays) for p in utility] == [4, 4, 2]
    for plan in gas:
        if plan.esi is not None:
            host = by_id[plan.esi]
            assert plan.meter_id in host.relays
            assert host.kind == ("esi" if plan.via == "esi-utility" else "electric")
    hosts = [p for p in plans if p.relays]
    assert len(hosts) == 8 and plans[: len(hosts)] == hosts  # the ESIs start first
    assert [p.start_at for p in plans] == sorted(p.start_at for p in plans)
    assert len({p.index for p in plans}) == len(plans) == 43
    assert esi_mapping(plans) == {p.meter_id: list(p.relays) for p in hosts}
    made = agent_config(config, utility[0], 0)
    assert made["kind"] == "esi" and made["esi"] == "utility"
    assert made["esi_members"] == list(utility[0].relays)
    # All direct (the default): the plan of before, no ESI anywhere.
    direct = plan_meters(esi_fleet(gas_paths={"direct": 1}))
    assert len(direct) == 40 and not esi_mapping(direct)
    assert all(p.esi is None and p.start_at == p.index * 0.1 for p in direct)


def test_an_esi_in_a_meter_needs_an_electric_meter_per_gas_meter() -> None:
    config = esi_fleet(mix={"electric": 1, "gas": 3}, gas_paths={"esi_meter": 1})
    with pytest.raises(FleetConfigError, match="esi_meter"):
        plan_meters(config)
    with pytest.raises(ValueError, match="gas path"):
        esi_fleet(gas_paths={"pigeon": 1})


@pytest.mark.slow
async def test_gas_records_relayed_by_esis_arrive_in_the_esis_own_containers(dap: DapCse) -> None:
    config = fleet_config(
        dap,
        24,
        mix={"electric": 0.5, "gas": 0.5},
        gas_paths={"direct": 1, "esi_meter": 1, "esi_utility": 1},
        esi_group=2,
        duration=8,
        ramp=1,
    )
    fleet = Fleet(config)
    summary = await fleet.run()
    assert summary.registered == len(fleet.agents) == 26, summary.table()
    by_id = {agent.meter_id: agent for agent in fleet.agents}
    relayed = 0
    for agent in fleet.agents:
        plan = agent.watch.plan
        uris = await instances_on_the_cse(dap, agent.meter_id)
        if plan.via is not None:  # behind an ESI: no interval record of its own at the DAP
            assert not any("/reading/" in uri for uri in uris), agent.meter_id
            assert agent.han is not None and agent.han.handed and agent.han.failed == 0
        if not plan.relays:
            continue
        via = "esi-utility" if plan.kind == "esi" else "esi-meter"
        sent = agent.stats()["sent"]
        esi_uris = [uri for uri in uris if "/esi/" in uri]
        assert len(esi_uris) == sum(sent.get(f"{via}:{flow}", 0) for flow in GAS_FLOWS)
        for uri in esi_uris:
            rsc, body = await dap.http("GET", uri.lstrip("/"))
            assert rsc == 2000, body
            record = json.loads(body["m2m:cin"]["con"])
            assert record["gm"] in plan.relays and record["via"] == via
            assert record["ts"] <= record["rx"]
            relayed += 1
        handed = sum(sum(by_id[m].han.handed.values()) for m in plan.relays)
        assert agent.esi is not None and agent.esi.received == handed
    assert relayed > 0


def test_the_summary_says_why_a_fleet_fell_behind_its_schedule() -> None:
    quiet = {"count": 100, "p50": 1.0, "p99": 5.0}
    summary = FleetSummary(
        meters=10, started=10, registered=9, registered_by={}, sent_by_family={}, sent=50,
        generated=100, failed=0, refused=0, dropped=0, buffered=50, wall_s=30.0,
        meter_days=1.0, clock_speed=1.0, ramp_s=4.0, last_registration_s=20.0, steady_s=10.0,
        latency_ms={"count": 100, "p50": 10.0, "p99": 2000.0}, steady_latency_ms={"count": 0},
        steady_latency_by_transport_ms={}, registration_ms=quiet,
        loop_lag_ms={"count": 100, "p50": 1.0, "p99": 900.0}, steady_loop_lag_ms={"count": 0},
    )  # fmt: skip
    assert summary.behind() == [
        "1 of 10 not registered",
        "ramp overran: last meter registered at 20 s of 4",
        "event loop late by 900 ms (p99)",
        "CREATE p99 2000 ms",
        "50 of 100 messages still buffered",
    ]
    kept = dataclasses.replace(
        summary, registered=10, last_registration_s=4.0, buffered=0,
        latency_ms=quiet, loop_lag_ms=quiet,
    )  # fmt: skip
    assert kept.behind() == []


def test_fleet_command_prints_the_esi_mapping_the_head_end_needs(tmp_path: Path) -> None:
    config = tmp_path / "fleet.toml"
    config.write_text(
        EXAMPLE.read_text()
        .replace("# gas_paths = {", "gas_paths = {")
        .replace("esi_group = 8 ", "esi_group = 2 ")
    )
    done = subprocess.run(
        [sys.executable, "-m", "gridm2m", "fleet", "--config", str(config), "--esi-mapping"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = tomllib.loads(done.stdout)["headend"]["mdms"]["esi"]
    plans = plan_meters(load_fleet_config(config, environ={}))
    assert printed == esi_mapping(plans) and printed  # what the fleet will do, not empty
    relayed = [gas for gas_meters in printed.values() for gas in gas_meters]
    assert len(relayed) == len(set(relayed))  # a gas meter has one ESI
    assert any(len(gas_meters) <= 2 for esi, gas_meters in printed.items() if "esi-" in esi)

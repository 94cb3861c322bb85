"""Meters over MQTT/TLS through the shipped broker to a gateway CSE that believes the broker.

The broker is docker/mosquitto as shipped (tests/deploy/dap_broker.py), its files made from
the gateway's credential store; the CSE is a real `gridm2m cse` on that store (trust
"credential", the default) connected to the loopback listener with its own credential; the
meters are the real agent: bundles from `gridm2m agent build --credentials --ca`, run by the
MicroPython unix port in a 96 KB heap, or the same code on CPython.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cse.security.credentials import CredentialStore
from gridm2m.broker import HOST, mosquitto_binary
from tests.deploy.dap_broker import GATEWAY, GATEWAY_CSE, DapBroker, dap_broker, gridm2m_credentials
from tests.device_agents import mp
from tests.processes import CSEProcess

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs the mosquitto binary (apt install mosquitto)"
)

GUARD = 15.0  # seconds before a missing message fails the test (a hang guard, not a wait)
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: meter time, so the flows' clock windows are known


def agent_module(name: str) -> Any:
    return importlib.import_module(f"device_agents.agent.{name}")


# The head-end side's requests prove the admin with a token from the gateway's store.
ADMIN_TOKEN: dict[str, str] = {}


async def gateway_cse(broker: DapBroker) -> CSEProcess:
    """The gateway's CSE on the broker's store, logged in with its own credential; it trusts
    the broker's CA for the meters' mqtts:// points of access (their commands). An admin
    token for the head-end side's HTTP requests is made in the same store, as a user would."""
    made = gridm2m_credentials(broker.store, "add-admin", "head-end-side")
    ADMIN_TOKEN["CAdmin"] = made.rsplit("token (shown once): ", 1)[1].strip()
    config = broker.directory / "gateway-cse.toml"
    config.write_text(f'[cse.mqtt]\nca_file = "{broker.ca}"\n')
    cse = CSEProcess(
        *("--config", str(config), "--role", "mn", "--cse-id", GATEWAY_CSE, "--cse-name", "dap1"),
        *("--db", str(broker.directory / f"{GATEWAY}.db"), "--mqtt-url", broker.url),
    )
    await cse.start()
    return cse


def build_bundle(broker: DapBroker, out: Path, meter_id: str) -> dict[str, Any]:
    """`gridm2m agent build` for an MQTT/TLS meter, as a user runs it; its config.json."""
    command = [sys.executable, "-m", "gridm2m", "agent", "build", "--out", str(out)]
    command += ["--meter-id", meter_id, "--transport", "mqtt"]
    command += ["--dap", f"{HOST}:{broker.tls_port}", "--cse-id", GATEWAY_CSE, "--cse-name", "dap1"]
    command += ["--credentials", str(broker.store), "--ca", str(broker.ca)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads((out / "config.json").read_text())
    assert config["mqtt_password"] not in done.stdout + done.stderr
    return config


async def command(cse: CSEProcess, meter_id: str, content: dict[str, Any]) -> None:
    """A command for the meter, written by the head-end side (over HTTP)."""
    headers = {
        "X-M2M-Origin": "CAdmin",
        "X-M2M-RI": f"command-{content.get('id')}",
        "X-M2M-RVI": "3",
        "Content-Type": "application/json;ty=4",
        "Authorization": f"Bearer {ADMIN_TOKEN['CAdmin']}",
    }
    body = {"m2m:cin": {"cnf": "application/json:0", "con": json.dumps(content)}}
    url = f"{cse.url}/dap1/{meter_id}/command"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=json.dumps(body), headers=headers) as response,
    ):
        assert response.headers["X-M2M-RSC"] == "2001", await response.text()


async def latest(cse: CSEProcess, path: str) -> dict[str, Any]:
    headers = {"X-M2M-Origin": "CAdmin", "X-M2M-RI": "check", "X-M2M-RVI": "3"}
    headers["Authorization"] = f"Bearer {ADMIN_TOKEN['CAdmin']}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{cse.url}/{path}", headers=headers) as response,
    ):
        assert response.headers["X-M2M-RSC"] == "2000", await response.text()
        found: dict[str, Any] = await response.json(content_type=None)
        return found


METER_RUN = """
import asyncio, gc, json
from agent import Agent

config = json.load(open("config.json"))
expected = config.pop("expect")
agent = Agent(config)


async def main():
    running = asyncio.create_task(agent.run())
    while not agent.started:
        await asyncio.sleep_ms(10)
    gc.collect()
    print("started", gc.mem_free())
    while not all(agent.sent.get(flow) for flow in expected):
        await asyncio.sleep_ms(10)
    agent.stop()
    await running
    print("stats", json.dumps(agent.stats()))


asyncio.run(main())
"""


@mp.needs_micropython
async def test_a_meter_on_micropython_registers_reads_and_takes_a_command_over_tls(
    tmp_path: Path,
) -> None:
    meter = "mtr-tls-1"
    async with dap_broker(tmp_path / "dap") as broker:
        config = build_bundle(broker, tmp_path / "bundle", meter)  # makes its credential
        await broker.reload(newcomer="C" + meter)
        cse = await gateway_cse(broker)
        try:
            config["mqtt_ca"] = str(tmp_path / "bundle" / config["mqtt_ca"])
            # Real-time meter rates: the command's answer is the reading this test waits for.
            # (The stress mix of test_agent.py, a day of readings at 1000x the rates, does not
            # fit 96 KB with TLS: docs/boards.md has the figures, bench/bench_mqtts.py
            # measures them.)
            config.update(seed=3, prepay=False, clock_speed=1, start_ts=T0 + 8 * 3600)
            config.update(expect=["mr-ondemand-ipd"])
            async with mp.MicroPython(METER_RUN, config=config, heap="96k") as agent:
                await agent.expect("started")  # registered over TLS, with its password
                await command(cse, meter, {"cmd": "read", "id": "c1", "src": "ipd"})
                stats = json.loads((await agent.expect("stats"))[len("stats ") :])
                result = await agent.wait()
            assert result.rc == 0, result.output
            assert stats["commands"] == 1 and stats["refused"] == 0, stats
            # Nothing lost: TLS keeps ~4.5 KB more of the 96 KB heap (module, context, socket),
            # so the command code, loaded at the first command, may not fit at the first try
            # (a memory error: the command is kept and answered at the next step).
            assert stats["dropped"] == stats["buffered"] == stats["failed"] == 0, result.output
            assert stats["memory_errors"] <= stats["commands"], result.output
            ae = await latest(cse, f"dap1/{meter}")
            assert ae["m2m:ae"]["aei"] == "C" + meter
            assert ae["m2m:ae"]["poa"] == [f"mqtts://{HOST}:{broker.tls_port}"]
            reading = await latest(cse, f"dap1/{meter}/ondemand/la")  # the meter's answer
            content = json.loads(reading["m2m:cin"]["con"])
            assert content["ref"] == "c1" and content["obis"]["1.8.0"] > 0
        finally:
            await cse.stop()


async def test_a_revoked_meter_is_refused_by_the_cse_while_the_broker_still_holds_it(
    tmp_path: Path,
) -> None:
    meter = "mtr-000001"
    async with dap_broker(tmp_path, (meter,)) as broker:
        cse = await gateway_cse(broker)
        dap = agent_module("onem2m").Dap(broker.meter_config(meter))
        try:
            await dap.connect()
            serving = asyncio.create_task(dap.serve())
            assert await dap.register() == "C" + meter
            assert await dap.ensure_container("reading") == 2001
            assert await dap.post("reading", {"kWh": 1}) == 2001
            gridm2m_credentials(broker.store, "revoke", meter)  # the broker is not reloaded
            assert await dap.post("reading", {"kWh": 2}) == 4103
            assert dap._link.client.connected  # the same connection: the CSE refused it
        finally:
            await dap.close()
            await serving
            await cse.stop()


async def test_a_meter_with_a_wrong_password_never_gets_in(tmp_path: Path) -> None:
    meter = "mtr-000001"
    async with dap_broker(tmp_path, (meter,)) as broker:
        dap = agent_module("onem2m").Dap(broker.meter_config(meter, mqtt_password="guess"))
        with pytest.raises(agent_module("compat").LinkError, match="refused"):
            await dap.connect()
        await dap.close()


async def test_a_meter_naming_another_meter_as_originator_is_refused(tmp_path: Path) -> None:
    a, b = "mtr-000001", "mtr-000002"
    async with dap_broker(tmp_path, (a, b)) as broker:
        cse = await gateway_cse(broker)
        meter_b = agent_module("onem2m").Dap(broker.meter_config(b))
        try:
            await meter_b.connect()
            await meter_b.register()
            assert await meter_b.ensure_container("reading") == 2001
            forged = {
                "op": 1,
                "to": f"dap1/{b}/reading",
                "fr": "C" + b,  # on meter A's own topic, logged in as meter A
                "rqi": "forged-1",
                "rvi": "3",
                "ty": 4,
                "pc": {"m2m:cin": {"cnf": "application/json:0", "con": "{}"}},
            }
            async with broker.client("C" + a) as meter_a:
                await meter_a.subscribe(f"/oneM2M/resp/C{a}/+/+", qos=1)
                request_topic = f"/oneM2M/req/C{a}/{GATEWAY}/json"
                await meter_a.publish(request_topic, json.dumps(forged).encode(), qos=1)
                async with asyncio.timeout(GUARD):
                    message = await anext(aiter(meter_a.messages))
            assert isinstance(message.payload, bytes)
            response = json.loads(message.payload)
            assert (response["rqi"], response["rsc"]) == ("forged-1", 4103)
        finally:
            await meter_b.close()
            await cse.stop()


async def test_an_unknown_broker_certificate_is_refused_by_the_meter(tmp_path: Path) -> None:
    """The meter verifies the broker: against another CA, its password is never sent."""
    from cse.security.pki import LabCA

    meter = "mtr-000001"
    async with dap_broker(tmp_path / "dap", (meter,)) as broker:
        stranger = LabCA.create(tmp_path / "other-ca")
        dap = agent_module("onem2m").Dap(
            broker.meter_config(meter, mqtt_ca=str(stranger.cert_path))
        )
        with pytest.raises(agent_module("compat").LinkError):
            await dap.connect()
        await dap.close()
        assert "u'Cmtr-000001'" not in broker.log()  # no CONNECT reached the broker


# ---- the fleet emulator: many secured meters ------------------------------------------------


def tls_fleet(broker: DapBroker, meters: int, **extra: Any) -> Any:
    from device_agents.fleet.config import FleetConfig

    data: dict[str, Any] = {
        "meters": meters,
        "transports": {"mqtt": 1},
        "clock_speed": 5760,  # a meter day in 15 s, rare flows 200x as often
        "start_ts": T0,
        "rate_scale": 200,
        "duration": 8,
        "ramp": 2,
        "event_loop": "asyncio",
        "cse_id": GATEWAY_CSE,
        "cse_name": "dap1",
        "credentials": str(broker.store),
        "dap": {"mqtt_port": broker.tls_port, "mqtt_ca": str(broker.ca)},
    }
    data.update(extra)
    return FleetConfig.model_validate(data)


async def test_a_fleet_of_secured_meters_logs_in_each_with_its_own_credential(
    tmp_path: Path,
) -> None:
    from device_agents.fleet.emulator import Fleet

    meters = tuple(f"mtr-{number:06d}" for number in range(1, 21))
    async with dap_broker(tmp_path, meters) as broker:
        cse = await gateway_cse(broker)
        try:
            summary = await Fleet(tls_fleet(broker, len(meters))).run()
            report = summary.table()
            assert summary.registered == len(meters), report
            assert summary.refused == 0 and summary.sent_by_family.get("reading", 0) > 0, report
            logins = broker.log().count("New client connected from")
            assert logins >= len(meters)  # each its own TLS connection and login
            for meter in meters:
                assert f"u'C{meter}'" in broker.log()
        finally:
            await cse.stop()


async def test_a_fleet_meter_without_a_credential_is_named_before_the_run(tmp_path: Path) -> None:
    from device_agents.fleet.config import FleetConfigError
    from device_agents.fleet.emulator import Fleet

    async with dap_broker(tmp_path, ("mtr-000001",)) as broker:
        with pytest.raises(FleetConfigError, match="mtr-000002"):
            await Fleet(tls_fleet(broker, 2)).run()
        provisioned = await Fleet(tls_fleet(broker, 2, provision=True, duration=0.5)).run()
        assert provisioned is not None
        with CredentialStore(broker.store) as store:
            assert store.by_name("mtr-000002") is not None  # made for the broker's next files

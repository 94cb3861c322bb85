"""Firmware updates through <node>/<firmware> device management, end to end in one process:
the head-end (IN-CSE, MDMS, applications), a gateway registered with it over HTTPS with
mutual TLS, and meter agents talking CoAP to the gateway.

The head-end's firmware application triggers the update on the meter's <firmware> on the
DAP (TS-0001 D.2: `ud` true, `uds` in process), sends the meter the seed's fw command, and
when the answer reaches the MDMS reports the outcome there (`uds.sus` successful or failure,
`ud` false). What is checked is what any oneM2M tool reads on the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cse.app import (
    CoapConfig,
    CSEConfig,
    EgressConfig,
    HttpClientConfig,
    HttpConfig,
    TlsConfig,
)
from cse.core.clock import timestamp_or
from cse.core.identity import Trust
from cse.core.primitives import FilterCriteria
from cse.core.resources.firmware import UpdateStatus
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import Change, Put
from device_agents.agent.agent import Agent
from gateway.app import RunningGateway, running_gateway
from gateway.config import GatewayConfig, OutboxConfig, UpstreamConfig
from gridm2m.pki import make_lab
from gridm2m.processes import tls_tables, upstream_tls
from headend.app import RunningHeadend, running_headend
from headend.apps import HeadendApps
from headend.commands import GROUP_LIFETIME_S
from headend.config import DashboardConfig, HeadendConfig, MdmsConfig
from headend.store import MeterMessage
from tests.helpers import ADMIN, retrieve

TIMEOUT = 30.0
T0 = 1767225600  # meter clocks start at 2026-01-01 00:00 UTC


def firmware_path(meter: str, name: str = "metrology-firmware") -> str:
    """Where a meter's <firmware> of one image is on the gateway."""
    return f"dap1/node-{meter}/{name}"


class FirmwareStates:
    """Every <firmware> state the gateway made durable, in order (no polling)."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.seen: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        gateway.cse.cse.durable_listeners.append(self._on_durable)

    def _on_durable(self, changes: Sequence[Change]) -> None:
        found = [
            {**c.resource.attributes, "path": c.resource.path}
            for c in changes
            if isinstance(c, Put) and c.resource.ty == ResourceType.MGMT_OBJ
        ]
        if found:
            self.seen.extend(found)
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def of(self, path: str) -> list[dict[str, Any]]:
        return [state for state in self.seen if state["path"] == path]

    async def wait_until_done(self, paths: Sequence[str], after: int = 0) -> None:
        """Until each <firmware>'s latest state ends an update (ud false, sus 1 or 2) among
        the states seen since `after`."""

        def done() -> bool:
            for path in paths:
                states = [s for s in self.seen[after:] if s["path"] == path]
                last = states[-1] if states else {}
                if last.get("ud") is not False or last.get("uds", {}).get("sus") in (0, 3):
                    return False
            return True

        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(done)


@dataclass
class System:
    headend: RunningHeadend
    gateway: RunningGateway
    apps: HeadendApps
    states: FirmwareStates
    agents: dict[str, tuple[Agent, asyncio.Task[None]]]  # meter id -> its agent and run

    async def on_gateway(self, path: str, **extra: Any) -> Any:
        reply = await self.gateway.cse.cse.handle(retrieve(path, ADMIN, **extra))
        assert reply.status == RSC.OK, reply
        return reply.content


def _configs(tmp_path: Path) -> tuple[HeadendConfig, GatewayConfig]:
    pki = tmp_path / "pki"
    in_db, dap_db = str(tmp_path / "in.db"), str(tmp_path / "dap.db")
    make_lab(pki, CSEConfig(role="mn", cse_id="/id-dap1", cse_name="dap1", db=dap_db),
             CSEConfig(db=in_db))  # fmt: skip
    listener, sender = tls_tables(pki, "headend", "id-in")
    headend = HeadendConfig(
        cse=CSEConfig(
            db=in_db,
            http=HttpConfig(
                port=0,
                tls=TlsConfig.model_validate(listener),
                client=HttpClientConfig.model_validate(sender),
            ),
            remote_cses=["/id-dap1"],
            egress=EgressConfig(loopback_peers=True),
        ),
        mdms=MdmsConfig(db=str(tmp_path / "mdms.db")),
        dashboard=DashboardConfig(port=0, password="a password for the tests"),
    )
    listener, sender = tls_tables(pki, "gateway", "id-dap1")
    gateway = GatewayConfig(
        upstream=UpstreamConfig(url="https://127.0.0.1:1", check_interval=3600,
                                **upstream_tls(sender)),
        outbox=OutboxConfig(retry_min=0.05, retry_max=0.5),
    )  # fmt: skip
    gateway.cse.db = dap_db
    gateway.cse.http.port = 0
    gateway.cse.http.tls = TlsConfig.model_validate(listener)
    gateway.cse.http.client = HttpClientConfig.model_validate(sender)
    # Meters on this machine, believed as they claim (the OSCORE path has tests of its own).
    gateway.cse.coap = CoapConfig(port=0, trust=Trust.CLAIMED)
    gateway.cse.egress = EgressConfig(loopback_peers=True)
    gateway.ops.port = 0
    gateway.mirror.status_interval = 3600
    return headend, gateway


@contextlib.asynccontextmanager
async def system(tmp_path: Path, meters: dict[str, str]) -> AsyncIterator[System]:
    """The head-end, a gateway registered with it, and the meters (id -> kind) started."""
    headend_config, gateway_config = _configs(tmp_path)
    async with running_headend(headend_config) as headend:
        gateway_config.upstream.url = headend.cse.http.url
        async with running_gateway(gateway_config) as gateway:
            async with asyncio.timeout(TIMEOUT):
                await gateway.registrar.registered.wait()
            assert gateway.cse.coap is not None and gateway.cse.coap.port is not None
            agents = [
                await _meter(name, kind, gateway.cse.coap.port) for name, kind in meters.items()
            ]
            runs = [asyncio.create_task(agent.run()) for agent in agents]
            try:
                running = dict(zip(meters, zip(agents, runs, strict=True), strict=True))
                yield System(headend, gateway, headend.apps, FirmwareStates(gateway), running)
            finally:
                for agent in agents:
                    agent.stop()
                async with asyncio.timeout(TIMEOUT):
                    await asyncio.gather(*runs, return_exceptions=True)


async def _meter(name: str, kind: str, port: int) -> Agent:
    agent = Agent(
        {
            "meter_id": name,
            "kind": kind,
            "transport": "coap",
            "dap_host": "127.0.0.1",
            "dap_port": port,
            "cse_id": "/id-dap1",
            "cse_name": "dap1",
            "serialization": "json",
            "listen_port": 0,
            "poa_host": "127.0.0.1",
            "clock_speed": 60,
            "start_ts": T0 + 10 * 3600,
            "rate_scale": 0.0001,  # nearly quiet: the test drives the flows it checks
            "seed": 7,
        }
    )
    async with asyncio.timeout(TIMEOUT):
        await agent.start()
    return agent


def _listen_to_answers(system: System) -> list[MeterMessage]:
    """The meter messages the MDMS stores from now on, as its listeners get them."""
    heard: list[MeterMessage] = []

    async def keep(messages: Sequence[MeterMessage]) -> None:
        heard.extend(messages)

    # First in line: heard before the firmware application reports the answer.
    system.headend.mdms.message_listeners.insert(0, keep)
    return heard


async def test_an_update_of_several_meters_ends_in_success_or_failure_on_their_firmware(
    tmp_path: Path,
) -> None:
    meters = {"mtr-1": "electric", "mtr-2": "electric", "mtr-gas": "gas"}
    async with system(tmp_path, meters) as running:
        issued = await running.apps.firmware(list(meters), "metrology", "3.2.0")
        (command,) = issued  # one DAP: one group command
        assert command.status == RSC.CREATED and set(command.meters) == set(meters)
        # The group on the DAP expires: a gateway does not keep every group command's.
        group = (await running.on_gateway(f"dap1/g-{command.id}"))["m2m:grp"]
        expires_in = timestamp_or(group["et"], 0.0) - time.time()
        assert 0 < expires_in <= GROUP_LIFETIME_S, group["et"]
        await running.states.wait_until_done([firmware_path(m) for m in meters])

        for meter, outcome in (("mtr-1", 1), ("mtr-2", 1), ("mtr-gas", 2)):
            path = firmware_path(meter)
            shown = (await running.on_gateway(path))["m2m:fwr"]
            acn = f"fw {command.id}@{meter}"
            # TS-0001 D.2: the trigger is reset and the status says how the update went.
            assert shown["ud"] is False and shown["uds"] == {"acn": acn, "sus": outcome}
            assert shown["mgd"] == 1001 and shown["fwn"] == "metrology-firmware"
            # The trigger was seen in process before the outcome.
            statuses = [state["uds"]["sus"] for state in running.states.of(path)]
            assert statuses[-2:] == [UpdateStatus.IN_PROCESS, outcome], statuses
            record = await running.headend.store.command(f"{command.id}@{meter}")
            assert record is not None and record["status"] == "answered"
        # A meter that took it reports the version it now runs; the gas meter refused it
        # (an alert: fw is not a gas meter's command).
        electric = (await running.on_gateway(firmware_path("mtr-1")))["m2m:fwr"]
        assert electric["vr"] == "3.2.0"
        node = (await running.on_gateway("dap1/node-mtr-1"))["m2m:nod"]
        assert node["ni"] == "mtr-1" and node["lbl"] == ["meter:mtr-1"]


async def test_a_oneM2M_tool_finds_the_firmware_by_type_and_management_definition(
    tmp_path: Path,
) -> None:
    async with system(tmp_path, {"mtr-1": "electric"}) as running:
        await running.apps.firmware(["mtr-1"], "nic", "5.3.0", image="program")
        path = firmware_path("mtr-1", "nic-program")
        await running.states.wait_until_done([path])
        criteria = FilterCriteria(
            filter_usage=1, resource_types=(13,), attributes=(("mgd", "1001"),)
        )
        found = await running.on_gateway("dap1", fc=criteria)
        assert found["m2m:uril"] == [path]
        # The head-end reads it the same way, through its IN-CSE.
        (firmware,) = await running.apps.firmware_updates.status("mtr-1")
        assert (firmware["rn"], firmware["vr"], firmware["uds"]["sus"]) == (
            "nic-program",
            "5.3.0",
            1,
        )


async def test_a_late_or_repeated_answer_changes_no_later_update(tmp_path: Path) -> None:
    async with system(tmp_path, {"mtr-1": "electric"}) as running:
        heard = _listen_to_answers(running)
        first = (await running.apps.firmware(["mtr-1"], "metrology", "3.2.0"))[0]
        await running.states.wait_until_done([firmware_path("mtr-1")])
        first_answers = [m for m in heard if m.content.get("ref") == first.id]
        assert [m.flow for m in first_answers] == ["fw-metrology-fw"]

        mark = len(running.states.seen)
        second = (await running.apps.firmware(["mtr-1"], "metrology", "3.3.0"))[0]
        await running.states.wait_until_done([firmware_path("mtr-1")], after=mark)
        path = firmware_path("mtr-1")
        done = (await running.on_gateway(path))["m2m:fwr"]
        assert done["uds"] == {"acn": f"fw {second.id}", "sus": 1} and done["vr"] == "3.3.0"
        # The same node and firmware served both updates: made once.
        made = [s for s in running.states.of(path) if s["uds"]["sus"] == 0]
        assert len(made) == 1

        second_answers = [m for m in heard if m.content.get("ref") == second.id]
        await running.apps.firmware_updates.on_messages(first_answers + second_answers)
        again = (await running.on_gateway(path))["m2m:fwr"]
        assert again == done


async def test_an_update_a_meter_never_answers_ends_as_a_failure_at_the_timeout(
    tmp_path: Path,
) -> None:
    async with system(tmp_path, {"mtr-1": "electric"}) as running:
        agent, run = running.agents["mtr-1"]
        agent.stop()  # registered, then silent: the command reaches its container, no answer
        async with asyncio.timeout(TIMEOUT):
            await run
        (issued,) = await running.apps.firmware(["mtr-1"], "metrology", "3.2.0")
        path = firmware_path("mtr-1")
        assert (await running.on_gateway(path))["m2m:fwr"]["uds"]["sus"] == 3  # in process

        commands = running.headend.commands
        assert await commands.time_out(timeout_s=3600.0) == []  # not yet
        (timed_out,) = await commands.time_out(timeout_s=0.0)
        assert timed_out["id"] == issued.id and timed_out["status"] == "timed-out"
        await running.states.wait_until_done([path])
        shown = (await running.on_gateway(path))["m2m:fwr"]
        assert shown["ud"] is False and shown["uds"] == {"acn": f"fw {issued.id}", "sus": 2}
        assert shown["vr"] == "3.2.0"  # what was asked for; the meter never said otherwise


async def test_the_web_api_starts_an_update_and_shows_the_firmware(tmp_path: Path) -> None:
    async with system(tmp_path, {"mtr-1": "electric"}) as running:
        credentials = running.headend.cse.credentials
        assert credentials is not None
        token = credentials.add_admin("ops", ADMIN).token
        headers = {"Authorization": f"Bearer {token}"}
        api = running.headend.web_url
        body = {"meter": "mtr-1", "target": "metrology", "ver": "3.4.0", "url": "https://fw/3.4"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{api}/api/apps/firmware", json=body, headers=headers) as r:
                assert r.status == 202, await r.text()
            await running.states.wait_until_done([firmware_path("mtr-1")])
            async with session.get(f"{api}/api/apps/firmware/mtr-1", headers=headers) as r:
                shown = await r.json()
            bad = {"meter": "mtr-1", "target": "radio", "ver": "1"}
            async with session.post(f"{api}/api/apps/firmware", json=bad, headers=headers) as r:
                assert r.status == 400
        (firmware,) = shown["firmware"]
        assert (firmware["url"], firmware["vr"], firmware["ud"]) == (
            "https://fw/3.4",
            "3.4.0",
            False,
        )

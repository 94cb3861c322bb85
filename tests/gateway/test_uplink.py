"""The gateway in one process against a real upstream CSE on loopback HTTPS.

The upstream is a bare GridM2M CSE (any oneM2M IN-CSE would do): the gateway registers with
it, mirrors meter data into containers under its remoteCSE there, re-registers when the
upstream forgets it, and lets the upstream's applications reach meters by retargeting. The
two prove themselves to each other with client certificates (a lab PKI, each side pinned in
the other's credential store), as the shipped configs have them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from cse.app import (
    CSEConfig,
    EgressConfig,
    HttpClientConfig,
    HttpConfig,
    RunningCSE,
    TlsConfig,
    running_cse,
)
from cse.core.handler import CommonServicesEntity
from cse.core.types import ResourceType
from cse.core.types import ResponseStatusCode as RSC
from cse.storage.base import Change, Put, StorageError
from gateway.app import RunningGateway, running_gateway
from gateway.config import GatewayConfig, OutboxConfig, UpstreamConfig
from gateway.registration import RegistrationError
from gridm2m.pki import make_lab
from gridm2m.processes import tls_tables, upstream_tls
from tests.brokers import free_port
from tests.helpers import ae_body, create, delete, retrieve

TIMEOUT = 20.0


class Arrivals:
    """Resources made durable on a CSE, recorded as they happen (no polling)."""

    def __init__(self, cse: CommonServicesEntity, resource_type: int) -> None:
        self.paths: list[str] = []
        self.resources: list[Any] = []
        self._type = resource_type
        self._changed = asyncio.Condition()
        cse.durable_listeners.append(self._on_durable)

    def _on_durable(self, changes: Sequence[Change]) -> None:
        found = [c.resource for c in changes if isinstance(c, Put) and c.resource.ty == self._type]
        if found:
            self.paths.extend(r.path for r in found)
            self.resources.extend(found)
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[list[str]], bool]) -> None:
        async with asyncio.timeout(TIMEOUT), self._changed:
            await self._changed.wait_for(lambda: predicate(self.paths))


def make_pki(tmp_path: Path) -> Path:
    """The lab PKI, and each side's client certificate pinned in the other's store."""
    pki = tmp_path / "pki"
    gateway = CSEConfig(role="mn", cse_id="/id-dap1", cse_name="dap1", db=str(tmp_path / "dap.db"))
    make_lab(pki, gateway, CSEConfig(db=str(tmp_path / "in.db")))
    return pki


def upstream_config(tmp_path: Path, port: int = 0) -> CSEConfig:
    pki = make_pki(tmp_path)
    listener, sender = tls_tables(pki, "headend", "id-in")
    # The head-end's IN-CSE: it accepts the gateway's registration and reaches its points of
    # access on loopback.
    return CSEConfig(
        db=str(tmp_path / "in.db"),
        http=HttpConfig(
            port=port,
            tls=TlsConfig.model_validate(listener),
            client=HttpClientConfig.model_validate(sender),
        ),
        remote_cses=["/id-dap1"],
        egress=EgressConfig(loopback_peers=True),
    )


def gateway_config(tmp_path: Path, upstream_url: str, **outbox: Any) -> GatewayConfig:
    pki = make_pki(tmp_path)
    listener, sender = tls_tables(pki, "gateway", "id-dap1")
    config = GatewayConfig(
        upstream=UpstreamConfig(url=upstream_url, check_interval=3600, **upstream_tls(sender)),
        outbox=OutboxConfig(retry_min=0.05, retry_max=0.5, **outbox),
    )
    config.cse.db = str(tmp_path / "dap.db")
    config.cse.http.port = 0
    config.cse.http.tls = TlsConfig.model_validate(listener)
    config.cse.http.client = HttpClientConfig.model_validate(sender)
    config.ops.port = 0
    config.mirror.status_interval = 3600
    return config


@contextlib.asynccontextmanager
async def system(tmp_path: Path) -> AsyncIterator[tuple[RunningCSE, RunningGateway, Arrivals]]:
    async with running_cse(upstream_config(tmp_path)) as upstream:
        arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
        async with running_gateway(gateway_config(tmp_path, upstream.http.url)) as gateway:
            async with asyncio.timeout(TIMEOUT):
                await gateway.registrar.registered.wait()
            yield upstream, gateway, arrivals


async def register_meter(cse: CommonServicesEntity, meter: str) -> str:
    originator = f"C{meter}"
    base = cse.settings.cse_name
    reply = await cse.handle(create(base, 2, ae_body(meter), originator))
    assert reply.status == RSC.CREATED, reply
    for family in ("reading", "event", "command"):
        reply = await cse.handle(
            create(f"{base}/{meter}", 3, {"m2m:cnt": {"rn": family}}, originator)
        )
        assert reply.status == RSC.CREATED, reply
    return originator


async def post(cse: CommonServicesEntity, meter: str, family: str, message: dict[str, Any]) -> RSC:
    body = {"m2m:cin": {"cnf": "application/json:0", "con": orjson.dumps(message).decode()}}
    reply = await cse.handle(
        create(f"{cse.settings.cse_name}/{meter}/{family}", 4, body, f"C{meter}")
    )
    return reply.status


async def test_registration_is_mutual_and_families_exist_upstream(tmp_path: Path) -> None:
    async with system(tmp_path) as (upstream, gateway, _):
        csr = await upstream.cse.handle(retrieve("cse-in/id-dap1"))
        assert csr.status == RSC.OK
        assert csr.content["m2m:csr"]["csi"] == "/id-dap1"
        assert gateway.cse.http.url in csr.content["m2m:csr"]["poa"]
        local = await gateway.cse.cse.handle(retrieve("dap1/id-in"))
        assert local.content["m2m:csr"]["csi"] == "/id-in"
        for family in ("reading", "event", "status"):
            found = await upstream.cse.handle(retrieve(f"cse-in/id-dap1/{family}"))
            assert found.status == RSC.OK, family


async def test_a_meter_reading_is_mirrored_once_with_its_origin(tmp_path: Path) -> None:
    async with system(tmp_path) as (_upstream, gateway, arrivals):
        dap = gateway.cse.cse
        await register_meter(dap, "mtr-1")
        message = {"flow": "mr-interval", "type": "resp-data", "seq": 1, "ts": 1, "v": [1, 2]}
        assert await post(dap, "mtr-1", "reading", message) == RSC.CREATED
        await arrivals.wait_for(lambda paths: any("/reading/" in p for p in paths))
        mirrored = [r for r in arrivals.resources if "/reading/" in r.path]
        assert len(mirrored) == 1
        attributes = mirrored[0].attributes
        assert attributes["rn"].startswith("mtr-1_")
        assert "meter:mtr-1" in attributes["lbl"] and "flow:mr-interval" in attributes["lbl"]
        assert orjson.loads(attributes["con"]) == message
        # The downlink container is not mirrored.
        await post(dap, "mtr-1", "command", {"cmd": "read"})
        assert gateway.outbox.total == 0 or all(
            "command" not in i.container for i in gateway.outbox.due(1e12, 100)
        )


async def test_outage_queues_in_priority_order_and_drains_alarms_first(tmp_path: Path) -> None:
    # A fixed port, so the upstream can come back where the gateway expects it.
    port = free_port()
    async with (
        running_cse(upstream_config(tmp_path, port)) as upstream,
        running_gateway(gateway_config(tmp_path, f"https://127.0.0.1:{port}")) as gateway,
    ):
        async with asyncio.timeout(TIMEOUT):
            await gateway.registrar.registered.wait()
        dap = gateway.cse.cse
        await register_meter(dap, "mtr-1")
        # The head-end goes away; meters keep posting and the gateway keeps acknowledging.
        await upstream.http.stop()
        for seq in range(5):
            bulk = {"flow": "mr-interval", "type": "resp-data", "seq": seq, "ts": seq}
            assert await post(dap, "mtr-1", "reading", bulk) == RSC.CREATED
        alarm = {"flow": "ev-outage", "type": "alarm", "seq": 99, "ts": 99}
        assert await post(dap, "mtr-1", "event", alarm) == RSC.CREATED
        await gateway.uplink.wait_until(lambda outbox: outbox.total >= 6, TIMEOUT)
        assert gateway.outbox.depth[0] == 1 and gateway.outbox.depth[3] == 5
        # It comes back on the same port: the alarm arrives first, then the rest.
        arrivals = Arrivals(upstream.cse, ResourceType.CONTENT_INSTANCE)
        await upstream.http.start()
        await arrivals.wait_for(lambda paths: sum("/mtr-1_" in p for p in paths) >= 6)
        mirrored = [p for p in arrivals.paths if "/mtr-1_" in p]
        assert "/event/" in mirrored[0]
        await gateway.uplink.wait_until(lambda outbox: outbox.total == 0, TIMEOUT)


async def test_the_gateway_registers_again_when_the_upstream_forgets_it(tmp_path: Path) -> None:
    async with system(tmp_path) as (upstream, gateway, arrivals):
        assert gateway.registrar.registrations == 1
        # The head-end loses the registration (an operator deleted it, a lifetime ran out).
        reply = await upstream.cse.handle(delete("cse-in/id-dap1"))
        assert reply.status == RSC.DELETED
        dap = gateway.cse.cse
        await register_meter(dap, "mtr-2")
        alarm = {"flow": "ev-outage", "type": "alarm", "seq": 1, "ts": 1}
        assert await post(dap, "mtr-2", "event", alarm) == RSC.CREATED
        await arrivals.wait_for(lambda paths: any("/mtr-2_" in p for p in paths))
        assert gateway.registrar.registrations == 2


async def test_upstream_applications_reach_meters_by_retargeting(tmp_path: Path) -> None:
    async with system(tmp_path) as (upstream, gateway, _):
        dap = gateway.cse.cse
        await register_meter(dap, "mtr-3")
        app = await upstream.cse.handle(create("cse-in", 2, ae_body("hes"), "Chesapp"))
        assert app.status == RSC.CREATED
        command = {"m2m:cin": {"con": '{"cmd":"read","id":"c1"}'}}
        reply = await upstream.cse.handle(
            create("/id-dap1/dap1/mtr-3/command", 4, command, "Chesapp")
        )
        assert reply.status == RSC.CREATED, reply
        stored = await dap.handle(retrieve("dap1/mtr-3/command/la"))
        assert stored.content["m2m:cin"]["con"] == '{"cmd":"read","id":"c1"}'
        # A meter's data is not open to other meters, and not to unknown upstream CSEs.
        await register_meter(dap, "mtr-4")
        sneaky = await dap.handle(
            create("dap1/mtr-3/reading", 4, {"m2m:cin": {"con": "x"}}, "Cmtr-4")
        )
        assert sneaky.status == RSC.ORIGINATOR_HAS_NO_PRIVILEGE


async def test_metrics_and_health(tmp_path: Path) -> None:
    import aiohttp

    async with system(tmp_path) as (_, gateway, arrivals):
        dap = gateway.cse.cse
        await register_meter(dap, "mtr-5")
        await post(dap, "mtr-5", "event", {"flow": "ev-outage", "type": "alarm", "seq": 1})
        await arrivals.wait_for(lambda paths: any("/mtr-5_" in p for p in paths))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gateway.ops_url}/metrics") as reply:
                text = await reply.text()
            async with session.get(f"{gateway.ops_url}/health") as reply:
                health = await reply.json()
        assert "gridm2m_meters_registered 1.0" in text
        assert 'gridm2m_uplink_delivered_total{priority="alarm"} 1.0' in text
        assert 'gridm2m_outbox_depth{priority="bulk"} 0.0' in text
        assert health["status"] == "ok" and health["registered"] is True


@pytest.mark.parametrize("budget", [4096])
async def test_full_budget_sheds_bulk_never_alarms(tmp_path: Path, budget: int) -> None:
    from gateway.outbox import NewItem, Outbox

    outbox = Outbox(tmp_path / "o.db", budget_bytes=budget)
    outbox.open()
    big = {"con": "x" * 1000}
    items = [NewItem(3, seq, "/c/reading", f"b{seq}", big, 0.0) for seq in range(1, 5)]
    assert outbox.add(items, 4) == []
    alarms = [NewItem(0, seq, "/c/event", f"a{seq}", big, 0.0) for seq in range(5, 11)]
    assert outbox.add(alarms, 10) == []
    assert outbox.depth[0] == 6 and outbox.depth[3] == 0
    assert outbox.shed[3] == 4
    late_bulk = NewItem(3, 11, "/c/reading", "b11", big, 0.0)
    assert outbox.add([late_bulk], 11) == [late_bulk]
    outbox.close()
    reopened = Outbox(tmp_path / "o.db", budget_bytes=budget)
    reopened.open()
    assert reopened.shed[3] == 5 and reopened.depth[0] == 6 and reopened.high_water_seq == 11
    reopened.close()


async def test_upstream_policies_are_linked_to_what_the_gateway_creates(tmp_path: Path) -> None:
    async with running_cse(upstream_config(tmp_path)) as upstream:
        policy = {
            "m2m:acp": {
                "rn": "headendApps",
                # The gateway keeps full rights on what it creates; the application may read.
                "pv": {
                    "acr": [{"acor": ["/id-dap1"], "acop": 63}, {"acor": ["Chesapp"], "acop": 2}]
                },
                "pvs": {"acr": [{"acor": ["CAdmin"], "acop": 63}]},
            }
        }
        made = await upstream.cse.handle(create("cse-in", 1, policy))
        assert made.status == RSC.CREATED, made
        acp_id = made.content["m2m:acp"]["ri"]
        config = gateway_config(tmp_path, upstream.http.url)
        config.upstream.acpi = [acp_id]
        async with running_gateway(config) as gateway:
            async with asyncio.timeout(TIMEOUT):
                await gateway.registrar.registered.wait()
            for path in ("cse-in/id-dap1", "cse-in/id-dap1/reading"):
                found = await upstream.cse.handle(retrieve(path))
                assert next(iter(found.content.values()))["acpi"] == [acp_id], path
            # An application the policy names may now read the mirrored data.
            app = await upstream.cse.handle(create("cse-in", 2, ae_body("hes"), "Chesapp"))
            assert app.status == RSC.CREATED
            read = await upstream.cse.handle(retrieve("cse-in/id-dap1/reading", "Chesapp"))
            assert read.status == RSC.OK


async def test_a_registration_check_answered_5000_keeps_the_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with system(tmp_path) as (upstream, gateway, _):
        storage = upstream.cse.storage

        async def unreadable(*args: Any) -> None:
            raise StorageError("the database is restarting")

        # The head-end's database is down for a moment: it answers the check 5000.
        with monkeypatch.context() as down:
            down.setattr(storage, "get", unreadable)
            down.setattr(storage, "get_by_path", unreadable)
            with pytest.raises(RegistrationError, match="answered 5000"):
                await gateway.registrar.ensure_registered()
            # That says nothing of the registration: the uplink keeps sending, and the
            # gateway does not register again.
            assert gateway.registrar.registered.is_set()
        await gateway.registrar.ensure_registered()
        assert gateway.registrar.registrations == 1

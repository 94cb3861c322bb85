"""The gateway against another oneM2M implementation: the ACME CSE as its IN-CSE.

A real `gridm2m gateway` registers with a real ACME process (HTTP, or MQTT through a private
broker), a meter running the agent's `Dap` over CoAP posts to the gateway, and a head-end AE
registered on ACME reads what the gateway mirrored and writes a command that ACME retargets
to the gateway. Where ACME's answers differ from our head-end's, the tests pin ACME's answer
(ACME's version is pinned too); docs/interop.md says which side the specification supports.

Skipped only when acmecse cannot be installed here (no way to reach the package index).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from device_agents.agent import onem2m
from gridm2m.broker import free_port, free_udp_port
from gridm2m.processes import toml_text
from tests.brokers import Broker, private_broker, raw_client
from tests.interop.acme_cse import (
    ACME_VERSION,
    ADMIN,
    AcmeClient,
    AcmeCSE,
    AcmeUnavailable,
    acme_python,
    poll,
)
from tests.system.harness import Part

pytestmark = pytest.mark.slow

GATEWAY = "/id-dap1"
HOME = "/cse-in/id-dap1"  # the gateway's remoteCSE on ACME, as an HTTP path
FAMILIES = ["reading", "ondemand", "event", "prepay", "drdlc", "han", "firmware", "status"]
HEADEND = "Cheadend"
METER = "mtr-1"
TY_ACP, TY_AE, TY_CNT, TY_CIN, TY_CSR = 1, 2, 3, 4, 16
PLACEHOLDER_POA = "http://127.0.0.1:9"


@pytest.fixture(scope="module", autouse=True)
def acme_installed() -> None:
    try:
        acme_python()
    except AcmeUnavailable as error:
        pytest.skip(f"acmecse {ACME_VERSION} cannot be installed here: {error}")


@dataclass
class Stack:
    """ACME, a gateway registered with it, ACME's admin and a head-end AE on ACME."""

    acme: AcmeCSE
    gateway: Part
    ops: str
    gateway_url: str
    coap_port: int
    poa: list[str]
    admin: AcmeClient
    headend: AcmeClient
    clients: list[AcmeClient] = field(default_factory=list)

    def client(self, base_url: str, originator: str) -> AcmeClient:
        made = AcmeClient(base_url, originator)
        self.clients.append(made)
        return made

    async def health(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(f"{self.ops}/health") as r:
            return dict(await r.json())

    async def metric(self, name: str, priority: str) -> float:
        async with aiohttp.ClientSession() as session, session.get(f"{self.ops}/metrics") as r:
            text = await r.text()
        prefix = f'{name}{{priority="{priority}"}} '
        found = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(found[0][len(prefix) :]) if found else -1.0

    async def wait_registered(self) -> None:
        await poll("the gateway's registration", self.health, lambda h: h["registered"] is True)

    async def provision(self) -> None:
        """Make the gateway's registration on ACME before the gateway starts, with a policy
        that lets the head-end AE read it (see `test_..._mirrors_...` for why it cannot be
        added later). ACME's admin makes the policy; the remoteCSE and the family containers
        are created in the gateway's name, linked to it, as the gateway would if it could be
        told which policy to link. The point of access is a placeholder the gateway replaces."""
        rules = [
            {"acor": [HEADEND], "acop": 2 | 32},  # RETRIEVE, DISCOVER
            {"acor": [GATEWAY], "acop": 63},
        ]
        own = [{"acor": [ADMIN, GATEWAY], "acop": 63}]
        policy = {"rn": "acp-dap1", "pv": {"acr": rules}, "pvs": {"acr": own}}
        rsc, body = await self.admin.create("/cse-in", TY_ACP, {"m2m:acp": policy})
        assert rsc == 2001, body
        acpi = ["cse-in/acp-dap1"]
        as_gateway = self.client(self.acme.url, GATEWAY)
        csr = {"rn": "id-dap1", "csi": GATEWAY, "cb": "/id-dap1/dap1", "cst": 2, "rr": True,
               "poa": [PLACEHOLDER_POA], "srv": ["3", "4"], "acpi": acpi}  # fmt: skip
        rsc, body = await as_gateway.create("/~/id-in/cse-in", TY_CSR, {"m2m:csr": csr})
        assert rsc == 2001, body
        for family in FAMILIES:
            container = {"rn": family, "acpi": acpi}
            rsc, body = await as_gateway.create(f"/~/id-in{HOME}", TY_CNT, {"m2m:cnt": container})
            assert rsc == 2001, body


@contextlib.asynccontextmanager
async def stack(
    directory: Path,
    broker: Broker | None,
    *,
    poa: str = "one",
    liveliness_interval: int = 3600,
    provision: bool = False,
) -> AsyncIterator[Stack]:
    """ACME (MQTT on when there is a broker) and a gateway whose upstream is ACME over MQTT
    when there is a broker, else over HTTP. `poa`: "one" gives the gateway a single point of
    access (its MQTT URL with a broker, else its HTTP URL); "http+mqtt" gives it both.
    `provision`: see `Stack.provision`. The head-end AE is registered on ACME either way."""
    mqtt_port = broker.port if broker is not None else None
    async with AcmeCSE(
        directory / "acme", mqtt_port=mqtt_port, liveliness_interval=liveliness_interval
    ) as acme:
        gateway_port, ops_port, coap_port = free_port(), free_port(), free_udp_port()
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        cse: dict[str, Any] = {
            "db": str(directory / "dap.db"),
            # ACME, as the IN-CSE, sends plain HTTP with no credential our gateway can check,
            # and this lab's tests act as ACME's admin on the gateway too: an insecure HTTP
            # listener, for an isolated lab only (docs/interop.md).
            "http": {"port": gateway_port, "trust": "insecure"},
            "coap": {"port": coap_port, "trust": "claimed"},
            "egress": {"loopback_peers": True},  # the meter listens on loopback
        }
        upstream: dict[str, Any] = {"url": acme.url, "cse_id": "/id-in", "cse_name": "cse-in"}
        points = [gateway_url]
        if broker is not None:
            # The test broker holds nobody to their topics, and ACME talks as its CSE-ID.
            cse["mqtt"] = {"url": broker.url, "username": "gateway", "trust": "insecure"}
            upstream.update(url=broker.url, username="gateway-uplink")
            points = [broker.url] if poa == "one" else [gateway_url, broker.url]
        cse["poa"] = points
        upstream["check_interval"] = 2.0
        config = {
            "cse": cse,
            "upstream": upstream,
            "outbox": {"retry_min": 0.1, "retry_max": 1.0},
            "mirror": {"status_interval": 1.0},
            "ops": {"port": ops_port},
        }
        (directory / "gateway.toml").write_text(toml_text("gateway", config))
        gateway = Part("gateway", directory / "gateway.toml", directory / "gateway.log")
        admin = AcmeClient(acme.url, ADMIN)
        headend = AcmeClient(acme.url, HEADEND)
        running = Stack(
            acme,
            gateway,
            f"http://127.0.0.1:{ops_port}",
            gateway_url,
            coap_port,
            points,
            admin,
            headend,
            [admin, headend],
        )
        try:
            ae = {"rn": "headend", "api": "Nheadend", "rr": False, "srv": ["3"]}
            rsc, body = await headend.create("/cse-in", TY_AE, {"m2m:ae": ae})
            assert rsc == 2001, body
            if provision:
                await running.provision()
            await gateway.start()
            await running.wait_registered()
            yield running
        finally:
            await gateway.stop()
            for client in running.clients:
                await client.close()


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


async def meter(running: Stack, *families: str) -> onem2m.Dap:
    """The meter's own oneM2M link (the agent's Dap) over CoAP to the gateway, registered."""
    config = {
        "meter_id": METER,
        "transport": "coap",
        "dap_host": "127.0.0.1",
        "dap_port": running.coap_port,
        "cse_id": GATEWAY,
        "cse_name": "dap1",
        "serialization": "json",
        "listen_port": 0,
        "poa_host": "127.0.0.1",
    }
    dap = onem2m.Dap(config)
    await dap.connect()
    await dap.register()
    for family in families:
        assert await dap.ensure_container(family) == 2001
    return dap


async def instances(client: AcmeClient, path: str) -> list[dict[str, Any]]:
    """The contentInstances of a container (rcn 4), oldest first; [] if it cannot be read."""
    rsc, body = await client.retrieve(path, {"rcn": "4"})
    if rsc != 2000:
        return []
    return list(body["m2m:cnt"].get("m2m:cin", []))


@contextlib.asynccontextmanager
async def sniffer(broker: Broker | None) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """Every oneM2M message published at the broker while inside: (topic, primitive)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    if broker is None:
        yield seen
        return

    async def read(client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if isinstance(message.payload, bytes | bytearray):
                seen.append((message.topic.value, json.loads(message.payload)))

    async with raw_client(broker) as client:
        await client.subscribe("/oneM2M/#", qos=1)
        reader = asyncio.create_task(read(client))
        try:
            yield seen
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@pytest.mark.parametrize("transport", ["http", "mqtt"])
async def test_the_gateway_registers_and_mirrors_meter_data_into_acme(
    tmp_path: Path, broker: Broker, transport: str
) -> None:
    async with stack(tmp_path, broker if transport == "mqtt" else None) as running:
        admin = running.admin
        # Registration: our remoteCSE on ACME, with its points of access, and the families.
        rsc, body = await admin.retrieve(HOME)
        assert rsc == 2000, body
        csr = body["m2m:csr"]
        assert (csr["csi"], csr["cb"], csr["cst"], csr["rr"]) == (GATEWAY, "/id-dap1/dap1", 2, True)
        assert csr["poa"] == running.poa
        rsc, body = await admin.retrieve(HOME, {"rcn": "6"})
        children = {ref["nm"]: ref["typ"] for ref in body["m2m:rrl"]["rrf"]}
        assert children == dict.fromkeys(FAMILIES, 3)
        # Registering again: ACME answers 4105 where TS-0004 7.4.4.2.1 says 4117; the gateway
        # takes either as "registered before" (it restarts, below, and is registered again).
        as_gateway = running.client(running.acme.url, GATEWAY)
        again = {k: csr[k] for k in ("rn", "csi", "cb", "cst", "rr", "poa", "srv")}
        rsc, body = await as_gateway.create("/~/id-in/cse-in", TY_CSR, {"m2m:csr": again})
        assert rsc == 4105, body
        # What the gateway made belongs to the gateway (no acpi: the creator's alone), so
        # ACME's head-end AE is refused. No policy can be linked afterwards: ACME refuses
        # its admin, and it refuses the creator too, since it compares the creator
        # "/id-dap1" with the originator stripped to "id-dap1".
        rsc, _ = await running.headend.retrieve(f"{HOME}/reading")
        assert rsc == 4103
        policy = {"rn": "acp-late", "pv": {"acr": [{"acor": [HEADEND], "acop": 34}]},
                  "pvs": {"acr": [{"acor": [ADMIN, GATEWAY], "acop": 63}]}}  # fmt: skip
        rsc, body = await admin.create("/cse-in", TY_ACP, {"m2m:acp": policy})
        assert rsc == 2001, body
        link = {"m2m:cnt": {"acpi": ["cse-in/acp-late"]}}
        for who in (admin, as_gateway):
            rsc, body = await who.update(f"{HOME}/reading", link)
            assert rsc == 4103, body

        dap = await meter(running, "reading", "event")
        # "³" is one character of two UTF-8 bytes.
        reading = json.dumps(
            {"flow": "mr-interval", "type": "resp-data", "unit": "m³"}, ensure_ascii=False
        )
        assert await dap.post("reading", reading) == 2001
        alarm = {"flow": "ev-power-outage", "type": "alarm", "seq": 2}
        assert await dap.post("event", alarm) == 2001
        await dap.close()

        as_admin = running.client(running.gateway_url, ADMIN)
        for family, flow in (("reading", "mr-interval"), ("event", "ev-power-outage")):
            [original] = await instances(as_admin, f"/dap1/{METER}/{family}")
            [mirrored] = await poll(
                f"the {family} message on ACME",
                functools.partial(instances, admin, f"{HOME}/{family}"),
                lambda found: len(found) == 1,
            )
            assert mirrored["rn"] == f"{METER}_{original['ri']}"
            labels = [f"meter:{METER}", f"created:{original['ct']}", f"flow:{flow}"]
            assert mirrored["lbl"] == labels
            assert (mirrored["con"], mirrored["cnf"]) == (original["con"], original["cnf"])
            # ACME adds what a hosting CSE must: its own ri, pi, ct, lt, et and cs (st too,
            # though not in every answer we saw, so it is not checked).
            assert mirrored["ri"] != original["ri"]
            assert set(mirrored) >= {"ri", "pi", "ty", "ct", "lt", "et", "cs"}
        [original] = await instances(as_admin, f"/dap1/{METER}/reading")
        [mirrored] = await instances(admin, f"{HOME}/reading")
        content = original["con"]
        assert "³" in content
        # contentSize is "size in bytes" (TS-0001 9.6.7): we count bytes, ACME characters.
        assert original["cs"] == len(content.encode())
        assert mirrored["cs"] == len(content) == original["cs"] - 1

        # A mirror sent again meets "already exists" (4105) on ACME...
        again = {k: mirrored[k] for k in ("rn", "cnf", "con", "lbl")}
        rsc, body = await as_gateway.create(f"/~/id-in{HOME}/reading", TY_CIN, {"m2m:cin": again})
        assert rsc == 4105, body
        # ...and the gateway counts that as delivered: with its outbox lost (as after a power
        # cut rolled it back) it sends both again, and nothing is stored twice or refused.
        await running.gateway.stop()
        for path in tmp_path.glob("dap-outbox.db*"):
            path.unlink()
        await running.gateway.start()
        await running.wait_registered()
        for priority in ("alarm", "bulk"):
            await poll(
                f"the {priority} message delivered again",
                functools.partial(running.metric, "gridm2m_uplink_delivered_total", priority),
                lambda count: count == 1.0,
            )
            assert await running.metric("gridm2m_uplink_rejected_total", priority) == 0.0
        health = await running.health()
        assert sum(health["outbox"].values()) == 0 and health["rejected"] == 0
        for family in ("reading", "event"):
            assert len(await instances(admin, f"{HOME}/{family}")) == 1


@pytest.mark.parametrize("transport", ["http", "mqtt"])
async def test_a_head_end_ae_on_acme_reads_the_mirrored_data_and_commands_a_meter(
    tmp_path: Path, broker: Broker, transport: str
) -> None:
    mqtt = broker if transport == "mqtt" else None
    async with sniffer(mqtt) as seen, stack(tmp_path, mqtt, provision=True) as running:
        headend = running.headend
        # The gateway took over the registration made in its name: ACME answered its CREATE
        # with 4105 (TS-0004 7.4.4.2.1 says 4117) and the gateway updated its poa.
        rsc, body = await running.admin.retrieve(HOME)
        assert body["m2m:csr"]["poa"] == running.poa != [PLACEHOLDER_POA]

        dap = await meter(running, "reading", "event", "command", "ondemand")
        assert await dap.subscribe("command") == 2001
        notified: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        dap.on_notify = notified.put_nowait
        serving = asyncio.create_task(dap.serve())
        try:
            assert await dap.post("reading", {"flow": "mr-interval", "type": "resp-data"}) == 2001
            assert await dap.post("event", {"flow": "ev-power-outage", "type": "alarm"}) == 2001
            # The head-end AE finds both by label (discovery) and reads them.
            found = await poll(
                "both messages on ACME",
                lambda: headend.retrieve(HOME, {"fu": "1", "ty": "4", "lbl": f"meter:{METER}"}),
                lambda reply: reply[0] == 2000 and len(reply[1].get("m2m:uril", [])) == 2,
            )
            as_admin = running.client(running.gateway_url, ADMIN)
            names = []
            for family in ("event", "reading"):
                [original] = await instances(as_admin, f"/dap1/{METER}/{family}")
                names.append(f"cse-in/id-dap1/{family}/{METER}_{original['ri']}")
                [mirrored] = await instances(headend, f"{HOME}/{family}")
                assert mirrored["con"] == original["con"]
            assert sorted(found[1]["m2m:uril"]) == names

            # A command through ACME: it retargets the CREATE to the gateway's poa.
            command = json.dumps({"cmd": "read", "id": "c-1"})
            cin = {"m2m:cin": {"cnf": "application/json:0", "con": command}}
            target = f"/~{GATEWAY}/dap1/{METER}/command"
            rsc, body = await headend.create(target, TY_CIN, cin)
            assert rsc == 2001, body  # the gateway's answer, relayed by ACME
            assert body["m2m:cin"]["con"] == command
            async with asyncio.timeout(30):
                primitive = await notified.get()
            created = primitive["pc"]["m2m:sgn"]["nev"]["rep"]["m2m:cin"]
            assert json.loads(created["con"]) == {"cmd": "read", "id": "c-1"}
            # The meter answers; the answer is mirrored and the head-end reads it on ACME.
            answer = {"flow": "pp-ondemand", "type": "resp-data", "ref": "c-1", "kwh": 12}
            assert await dap.post("ondemand", answer) == 2001
            [mirrored] = await poll(
                "the answer on ACME",
                lambda: instances(headend, f"{HOME}/ondemand"),
                lambda found: len(found) == 1,
            )
            assert json.loads(mirrored["con"])["ref"] == "c-1"
            # A RETRIEVE is forwarded too; the command arrived once.
            rsc, body = await headend.retrieve(target)
            assert rsc == 2000 and body["m2m:cnt"]["cni"] == 1, body
            # The same target in absolute form (own SP-ID) is a transit request as well
            # (TS-0004 7.3.2.8), but ACME answers 4004 and does not forward it.
            absolute = f"/_/acme.example.com{GATEWAY}/dap1/{METER}/command"
            rsc, body = await headend.create(absolute, TY_CIN, cin)
            assert rsc == 4004, body
            rsc, body = await headend.retrieve(target)
            assert body["m2m:cnt"]["cni"] == 1, body
        finally:
            await dap.close()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    if mqtt is None:
        return
    # TS-0010 6.4.2/6.4.3: <originator> is the entity that sends on Mcc, <receiver> the next.
    topics = {topic for topic, _ in seen}
    # The gateway registers on req (it knows its CSE-ID), not reg_req, and ACME answers on resp.
    [registration] = [
        m for t, m in seen if t == "/oneM2M/req/id-dap1/id-in/json" and m.get("ty") == TY_CSR
    ]
    assert registration["fr"] == GATEWAY and registration["to"] == "/id-in/cse-in"
    [answer] = [
        m
        for t, m in seen
        if t == "/oneM2M/resp/id-dap1/id-in/json" and m.get("rqi") == registration["rqi"]
    ]
    assert answer["rsc"] == 4105  # the registration made in the gateway's name, above
    # ACME forwards the head-end's command as the sender on Mcc (its own CSE-ID in the topic),
    # with the originator made SP-relative in `fr` (TS-0004 7.3.2.6); the gateway answers on
    # the matching resp topic. ACME sends rvi "4" (the highest in our srv), not the "3" the
    # head-end used.
    [forwarded] = [m for t, m in seen if t == "/oneM2M/req/id-in/id-dap1/json" and m.get("op") == 1]
    assert (
        forwarded["fr"] == f"/id-in/{HEADEND}"
        and forwarded["to"] == f"{GATEWAY}/dap1/{METER}/command"
    )
    assert forwarded["rvi"] == "4"
    assert "/oneM2M/resp/id-in/id-dap1/json" in topics


async def test_acme_sends_one_retargeted_request_to_every_point_of_access(
    tmp_path: Path, broker: Broker
) -> None:
    """ACME retargets to each poa in turn, not to the first that works: a gateway reachable
    over HTTP and MQTT receives the head-end's one CREATE twice (see docs/interop.md)."""
    async with stack(tmp_path, broker, poa="http+mqtt") as running:
        dap = await meter(running, "command")
        await dap.close()
        cin = {"m2m:cin": {"cnf": "application/json:0", "con": '{"cmd":"read","id":"c-2"}'}}
        rsc, body = await running.headend.create(f"/~{GATEWAY}/dap1/{METER}/command", TY_CIN, cin)
        assert rsc == 2001, body
        # ACME waited for each answer before it answered: both copies are there by now.
        as_admin = running.client(running.gateway_url, ADMIN)
        copies = await instances(as_admin, f"/dap1/{METER}/command")
        assert [c["con"] for c in copies] == [cin["m2m:cin"]["con"]] * 2
        assert len({c["ri"] for c in copies}) == 2


async def test_acme_drops_an_unreachable_gateway_with_its_data_and_the_gateway_registers_again(
    tmp_path: Path,
) -> None:
    """ACME's liveliness check deletes the remoteCSE of a registree it cannot reach, with
    every mirrored instance under it. The gateway registers again when it is back, but what it
    had delivered before is gone from ACME and is not sent again."""
    async with stack(tmp_path, None, liveliness_interval=1) as running:
        admin = running.admin
        dap = await meter(running, "reading")
        assert await dap.post("reading", {"flow": "mr-interval", "type": "resp-data"}) == 2001
        await dap.close()
        await poll(
            "the reading on ACME",
            lambda: instances(admin, f"{HOME}/reading"),
            lambda found: len(found) == 1,
        )
        rsc, body = await admin.retrieve(HOME)
        created = body["m2m:csr"]["ct"]
        await running.gateway.stop()
        await poll(
            "ACME to drop the gateway's remoteCSE",
            lambda: admin.retrieve(HOME),
            lambda reply: reply[0] == 4004,
        )
        await running.gateway.start()
        await running.wait_registered()
        rsc, body = await admin.retrieve(HOME)
        assert rsc == 2000 and body["m2m:csr"]["ct"] != created  # a new registration
        rsc, body = await admin.retrieve(f"{HOME}/reading")
        assert rsc == 2000 and body["m2m:cnt"]["cni"] == 0  # the reading did not come back
        health = await running.health()
        assert sum(health["outbox"].values()) == 0

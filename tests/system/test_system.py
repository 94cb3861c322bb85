"""The gateway and the head-end end to end: real `gridm2m headend` and `gridm2m gateway`
processes, a real Mosquitto, and meters running the agent code over CoAP and MQTT."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device_agents.agent import onem2m
from device_agents.agent.compat import LinkError
from tests.brokers import Broker, private_broker
from tests.system.harness import System, content_of

pytestmark = pytest.mark.slow


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


def flows_of(messages: list[dict[str, Any]], meter: str) -> list[str]:
    return [m["flow"] for m in messages if m["meter"] == meter]


@pytest.mark.parametrize("upstream", ["http", "mqtt"])
async def test_meter_data_reaches_the_mdms_over_coap_and_mqtt(
    tmp_path: Path, broker: Broker, upstream: str
) -> None:
    async with System(tmp_path, broker, upstream_mqtt=upstream == "mqtt") as system:
        await system.meter("mtr-c", "coap")
        await system.meter("mtr-m", "mqtt")
        for meter in ("mtr-c", "mtr-m"):
            issued = await system.command(meter, {"cmd": "read"})
            result = await system.command_result(issued["id"])
            assert result["status"] == "answered", result
        messages = await system.wait_for_messages(
            lambda found: {"mtr-c", "mtr-m"} <= {m["meter"] for m in found}
        )
        for meter in ("mtr-c", "mtr-m"):
            [read] = [m for m in messages if m["meter"] == meter and "ondemand" in m["flow"]]
            assert read["dap"] == "id-dap1"
            assert content_of(read)["obis"]["1.8.0"] > 0
            assert read["latency"] >= 0 and read["budget_s"] > 0


COMMANDS: list[tuple[dict[str, Any], str, str]] = [
    ({"cmd": "read"}, "answered", "pp-ondemand"),
    ({"cmd": "read", "n": 4}, "answered", "mr-multi-interval"),
    ({"cmd": "switch", "op": "status"}, "answered", "pp-switch-state"),
    ({"cmd": "switch", "op": "disconnect"}, "answered", "pp-switch-"),
    ({"cmd": "dr", "ev": 7, "dur": 30}, "answered", "dr-"),
    ({"cmd": "han-join", "dev": "00124b0001020304"}, "answered", "han-join-ack"),
    ({"cmd": "han-unjoin", "dev": "00124b00ffffffff"}, "failed", "han-unjoin-err"),
    ({"cmd": "fw", "target": "metrology", "ver": "2.1.0"}, "answered", "fw-metrology-fw"),
    ({"cmd": "price", "price": 125000, "tier": 2}, "answered", "ev-audit-alert"),
]


async def test_each_command_type_reaches_a_meter_and_its_answer_comes_back(
    tmp_path: Path, broker: Broker
) -> None:
    async with System(tmp_path, broker) as system:
        await system.meter("mtr-1", "coap", dr_opt_out_rate=0.0)
        for body, status, flow_prefix in COMMANDS:
            issued = await system.command("mtr-1", body)
            result = await system.command_result(issued["id"])
            assert result["status"] == status, (body, result)
            if body["cmd"] != "fw":  # through <firmware>: the DAP writes the command itself
                assert result["reached_dap_at"] >= result["issued_at"], result
            answer = result["result"]
            answer = json.loads(answer) if isinstance(answer, str) else answer
            assert answer["flow"].startswith(flow_prefix), (body, answer)
            # A DR answer names the event; every other answer names the command.
            assert (
                answer.get("ev") == body["ev"]
                if body["cmd"] == "dr"
                else answer["ref"] == issued["id"]
            )


async def test_a_dr_event_to_a_group_collects_every_ack_and_opt_out(
    tmp_path: Path, broker: Broker
) -> None:
    meters = [f"mtr-dr{i}" for i in range(6)]
    async with System(tmp_path, broker) as system:
        for index, meter in enumerate(meters):
            # Half of them opt out of every event, the other half never do.
            await system.meter(
                meter, "coap" if index % 2 else "mqtt", dr_opt_out_rate=float(index < 3)
            )
        issued = await system.command(meters, {"cmd": "dr", "ev": 42, "dur": 60, "shed": 40})
        results = {m: await system.command_result(f"{issued['id']}@{m}") for m in meters}
        # The API lists each member's command with when the DAP created it (from the fan-
        # out's answer): what an interop run measures head-end → DAP rows by.
        listed = await system.get(f"{system.api}/api/commands?after=&limit=100")
        mine = {c["id"]: c for c in listed["commands"] if c["id"].startswith(issued["id"])}
        assert sorted(mine) == sorted(f"{issued['id']}@{m}" for m in meters)
        assert all(c["reached_dap_at"] >= c["issued_at"] for c in mine.values()), mine
    answers = {m: r["result"] for m, r in results.items()}
    answers = {m: json.loads(a) if isinstance(a, str) else a for m, a in answers.items()}
    assert all(a["ev"] == 42 for a in answers.values())
    opted_out = {m for m, a in answers.items() if a["flow"].startswith("dr-optout")}
    acked = {m for m, a in answers.items() if a["flow"].startswith("dr-ack")}
    assert opted_out == set(meters[:3]) and acked == set(meters[3:])


def message(seq: int, flow: str = "mr-interval", kind: str = "resp-data") -> dict[str, Any]:
    return {"flow": flow, "type": kind, "seq": seq, "ts": 1767225600 + seq, "v": seq}


async def post_until_acknowledged(
    dap: Any, family: str, content: dict[str, Any], attempts: int = 200
) -> None:
    """The meter's side of store-and-forward: keep the message until the DAP says 2001."""
    for _ in range(attempts):
        try:
            rsc = await dap.post(family, json.dumps(content))
        except (LinkError, OSError):
            await asyncio.sleep(0.05)  # the DAP is down: a meter's retry interval
            continue
        if rsc == 2001:
            return
        assert rsc >= 5000 or rsc == 4004, rsc
        if rsc == 4004:
            await dap.register()
            await dap.ensure_container(family)
    raise AssertionError(f"message {content['seq']} was never acknowledged")


async def test_a_killed_gateway_delivers_every_acknowledged_post_exactly_once(
    tmp_path: Path, broker: Broker
) -> None:
    async with System(tmp_path, broker) as system:
        config = system.meter_config(
            "mtr-k", "coap", coap_ack_timeout_ms=200, coap_max_retransmit=1
        )
        dap = onem2m.Dap(config)
        await dap.connect()
        await dap.register()
        await dap.ensure_container("reading")
        acknowledged = []
        for seq in range(120):
            if seq in (40, 80):
                # SIGKILL right after an acknowledgement: the uplink may not have sent it yet.
                await system.gateway.kill()
                await system.gateway.start()
            await post_until_acknowledged(dap, "reading", message(seq))
            acknowledged.append(seq)
        await dap.close()
        found = await system.wait_for_messages(
            lambda got: len([m for m in got if m["meter"] == "mtr-k"]) >= len(acknowledged),
            "every acknowledged post at the MDMS",
        )
    seqs = sorted(m["seq"] for m in found if m["meter"] == "mtr-k")
    assert seqs == acknowledged  # each once: nothing lost, nothing twice


async def test_a_head_end_outage_queues_everything_and_alarms_arrive_first(
    tmp_path: Path, broker: Broker
) -> None:
    async with System(tmp_path, broker) as system:
        dap = onem2m.Dap(system.meter_config("mtr-o", "coap"))
        await dap.connect()
        await dap.register()
        for family in ("reading", "event"):
            await dap.ensure_container(family)
        await system.headend.stop()
        # While the head-end is away the gateway acknowledges and queues.
        for seq in range(30):
            await post_until_acknowledged(dap, "reading", message(seq))
            if seq % 10 == 9:
                alarm = message(1000 + seq, "ev-power-outage", "alarm")
                await post_until_acknowledged(dap, "event", alarm)
        await dap.close()
        health = await system.poll(
            "33 queued messages",
            system.health,
            lambda h: sum(h.get("outbox", {}).values()) == 33,
        )
        assert health["outbox"]["alarm"] == 3 and health["outbox"]["bulk"] == 30
        await system.headend.start()
        found = await system.wait_for_messages(
            lambda got: len([m for m in got if m["meter"] == "mtr-o"]) == 33,
            "the queued messages at the MDMS",
        )
    arrived = sorted((m for m in found if m["meter"] == "mtr-o"), key=lambda m: m["id"])
    assert [m["ptype"] for m in arrived[:3]] == ["alarm"] * 3
    assert sorted(m["seq"] for m in arrived[3:]) == list(range(30))


async def test_a_broker_restart_loses_no_qos1_message(tmp_path: Path, broker: Broker) -> None:
    if not broker.persistent:
        pytest.skip("the fallback broker keeps nothing across its own restart")
    async with System(tmp_path, broker) as system:
        dap = onem2m.Dap(system.meter_config("mtr-b", "mqtt", timeout_ms=2000))
        await dap.connect()
        await dap.register()
        await dap.ensure_container("reading")
        for seq in range(60):
            if seq in (20, 40):
                await broker.stop()
                await broker.start()
                await dap.close()
                await dap.connect()
            await post_until_acknowledged(dap, "reading", message(seq))
        await dap.close()
        found = await system.wait_for_messages(
            lambda got: len([m for m in got if m["meter"] == "mtr-b"]) >= 60,
            "every acknowledged post at the MDMS",
        )
    assert sorted(m["seq"] for m in found if m["meter"] == "mtr-b") == list(range(60))


async def test_a_flooding_meter_and_an_impostor_do_not_stop_the_others(
    tmp_path: Path, broker: Broker
) -> None:
    import aiohttp

    async with System(tmp_path, broker) as system:
        gateway = system.gateway_url
        headers = {"X-M2M-RVI": "3", "Accept": "application/json"}
        # Each meter proves itself with its own client certificate (mutual TLS).
        tls = {f"C{meter}": system.meter_tls(meter) for meter in ("mtr-flood", "mtr-calm")}

        async def http(
            session: aiohttp.ClientSession,
            origin: str,
            path: str,
            ty: int,
            body: Any,
            certificate: str | None = None,
        ) -> int:
            request_headers = {
                **headers,
                "X-M2M-Origin": origin,
                "X-M2M-RI": f"{origin}-{path}-{id(body)}",
                "Content-Type": f"application/json;ty={ty}",
            }
            async with session.post(
                f"{gateway}/{path}",
                json=body,
                headers=request_headers,
                ssl=tls[certificate or origin],
            ) as r:
                return int(r.headers["X-M2M-RSC"])

        async with aiohttp.ClientSession() as session:
            for meter in ("mtr-flood", "mtr-calm"):
                ae = {"m2m:ae": {"rn": meter, "api": "Nmeter", "rr": False, "srv": ["3"]}}
                assert await http(session, f"C{meter}", "dap1", 2, ae) == 2001
                cnt = {"m2m:cnt": {"rn": "reading"}}
                assert await http(session, f"C{meter}", f"dap1/{meter}", 3, cnt) == 2001
            # A meter writing into another meter's container is refused, with its own
            # certificate or another's.
            forged = {"m2m:cin": {"con": json.dumps(message(0))}}
            assert await http(session, "Cmtr-flood", "dap1/mtr-calm/reading", 4, forged) == 4103
            as_calm = await http(
                session, "Cmtr-calm", "dap1/mtr-calm/reading", 4, forged, "Cmtr-flood"
            )
            assert as_calm == 4103

            async def flood(worker: int) -> int:
                acked = 0
                for seq in range(worker * 1000, worker * 1000 + 50):
                    body = {"m2m:cin": {"con": json.dumps(message(seq))}}
                    if await http(session, "Cmtr-flood", "dap1/mtr-flood/reading", 4, body) == 2001:
                        acked += 1
                return acked

            flooding = [asyncio.create_task(flood(worker)) for worker in range(16)]
            calm = 0
            for seq in range(20):
                body = {"m2m:cin": {"con": json.dumps(message(seq))}}
                calm += await http(session, "Cmtr-calm", "dap1/mtr-calm/reading", 4, body) == 2001
            flooded = sum(await asyncio.gather(*flooding))
        assert calm == 20
        found = await system.wait_for_messages(
            lambda got: sum(m["meter"] in ("mtr-flood", "mtr-calm") for m in got) >= 20 + flooded,
            "the calm meter's and the flood's messages at the MDMS",
        )
    assert sorted(m["seq"] for m in found if m["meter"] == "mtr-calm") == list(range(20))
    # The flood is cut at the gateway's rate limit for one meter (200 at once, then 20/s,
    # [gateway.cse.limits]); what it was told is stored reached the MDMS like the rest.
    assert 200 <= flooded < 16 * 50

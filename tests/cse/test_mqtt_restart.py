"""Over MQTT, a SIGKILLed CSE loses nothing and does nothing twice.

A real CSE process (tests/run_cse_mqtt.py: SQLite + MqttBinding) serves a private Mosquitto.
A meter keeps publishing QoS 1 CREATEs of contentInstances; the CSE is killed mid-stream, the
meter goes on publishing while it is down, and the CSE comes back on the same database. Then:
every request is answered, each CREATE made exactly one instance (cni equals the number of
distinct request IDs), and everything answered before the kill is still there.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from tests.brokers import USERNAME, Broker, private_broker, raw_client
from tests.processes import MqttCSEProcess

pytestmark = pytest.mark.slow

REQUESTS = "/oneM2M/req/Cmeter/id-in/json"
RESPONSES = "/oneM2M/resp/Cmeter/id-in/json"


class Meter:
    """Publishes requests at QoS 1 and collects every response, by request ID."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.published: list[str] = []
        self.responses: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self.limit: int | None = None  # the writer stops once this many are published
        self._arrived = asyncio.Condition()
        self._ids = itertools.count(1)

    async def read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            response = orjson.loads(message.payload)
            async with self._arrived:
                self.responses[response["rqi"]].append(response)
                self._arrived.notify_all()

    async def publish(self, op: int, to: str, **params: Any) -> str:
        rqi = f"q{next(self._ids)}"
        request = {"op": op, "to": to, "fr": "Cmeter", "rqi": rqi, "rvi": "3", **params}
        await self.client.publish(REQUESTS, orjson.dumps(request), qos=1)
        self.published.append(rqi)  # the broker has it (PUBACK)
        return rqi

    async def wait_for(self, predicate: Any, timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(predicate)

    async def call(self, op: int, to: str, **params: Any) -> dict[str, Any]:
        rqi = await self.publish(op, to, **params)
        await self.wait_for(lambda: rqi in self.responses)
        return self.responses[rqi][0]


async def _keep_creating(meter: Meter) -> list[str]:
    """CREATE instances until meter.limit requests are published; their request IDs."""
    created = []
    while meter.limit is None or len(meter.published) < meter.limit:
        pc = {"m2m:cin": {"con": "21.5"}}
        created.append(await meter.publish(1, "cse-in/meter/reads", ty=4, pc=pc))
    return created


async def test_mqtt_requests_survive_sigkill(tmp_path: Path) -> None:
    async with private_broker(tmp_path / "broker") as broker:
        if not broker.persistent:
            pytest.skip("this broker does not redeliver what a killed client left unacknowledged")
        await _run_scenario(tmp_path, broker)


async def _run_scenario(tmp_path: Path, broker: Broker) -> None:
    db = tmp_path / "cse.db"
    cse = MqttCSEProcess(db, broker.url, USERNAME)
    await cse.start()
    async with raw_client(broker) as client:
        await client.subscribe(RESPONSES, qos=1)
        meter = Meter(client)
        reader = asyncio.create_task(meter.read())
        ae = {"m2m:ae": {"rn": "meter", "api": "Nmeter", "rr": True, "srv": ["3"]}}
        assert (await meter.call(1, "cse-in", ty=2, pc=ae))["rsc"] == 2001
        cnt = {"m2m:cnt": {"rn": "reads"}}
        assert (await meter.call(1, "cse-in/meter", ty=3, pc=cnt))["rsc"] == 2001

        writer = asyncio.create_task(_keep_creating(meter))
        await meter.wait_for(lambda: len(meter.responses) >= 2 + 200)
        await cse.kill()  # while the writer keeps publishing
        answered_before_kill = {rqi: list(answers) for rqi, answers in meter.responses.items()}
        published_at_kill = len(meter.published)
        meter.limit = published_at_kill + 50  # 50 more while the CSE is down
        created = await writer
        during_outage = meter.published[published_at_kill:]

        restarted = MqttCSEProcess(db, broker.url, USERNAME)
        await restarted.start()
        try:
            for _ in range(20):
                pc = {"m2m:cin": {"con": "1"}}
                created.append(await meter.publish(1, "cse-in/meter/reads", ty=4, pc=pc))
            await meter.wait_for(lambda: all(rqi in meter.responses for rqi in meter.published))
            container = await meter.call(2, "cse-in/meter/reads")
            found = await meter.call(2, "cse-in/meter/reads", fc={"fu": 1, "ty": [4]}, drt=2)
        finally:
            assert await restarted.stop() == 0
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)

    assert len(answered_before_kill) >= 202 and len(during_outage) == 50
    assert all(rqi in meter.responses for rqi in during_outage)  # served after the restart
    for rqi in created:
        answers = meter.responses[rqi]
        assert {answer["rsc"] for answer in answers} == {2001}, answers
        # a redelivered CREATE is answered with the instance its first delivery made
        assert len({answer["pc"]["m2m:cin"]["ri"] for answer in answers}) == 1, answers
    # Every CREATE made exactly one instance: nothing lost, nothing twice.
    assert container["pc"]["m2m:cnt"]["cni"] == len(created) == len(set(created))
    stored = set(found["pc"]["m2m:uril"])
    assert len(stored) == len(created)
    for rqi, answers in answered_before_kill.items():
        if rqi in created:  # what was answered before the kill is still there
            assert answers[0]["pc"]["m2m:cin"]["ri"] in stored

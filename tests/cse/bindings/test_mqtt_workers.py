"""Several workers of one CSE behind a real Mosquitto: MQTT 5 shared subscriptions.

Each worker here is a CSE with storage of its own (in memory, or a SQLite file for a worker
in a subprocess): these tests are about how requests reach the workers and are acknowledged,
not about shared state (the workers of a deployment share PostgreSQL). Requests are RETRIEVEs
of the CSEBase, which every worker answers alike; each answer names the request it answers
(rqi), so "answered exactly once" is counted per request ID.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from cse.bindings.mqtt import MqttBinding, MqttSettings
from cse.bindings.mqtt.settings import WorkerSettings, default_share_group, default_worker_name
from cse.bindings.mqtt.topics import (
    WORKER_GONE,
    request_filters,
    shared,
    worker_gone,
    worker_topic,
)
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.storage.memory import MemoryStorage
from gridm2m.broker import HOST, MosquittoBroker, mosquitto_binary
from tests.processes import GUARD, MqttCSEProcess

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="shared subscriptions need Mosquitto (apt install mosquitto)"
)

CSE_ID = "/id-in"
GROUP = "workers"
REQUESTS = "/oneM2M/req/CAdmin/id-in/json"
RESPONSES = "/oneM2M/resp/CAdmin/id-in/json"
_ids = itertools.count(1)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    async with MosquittoBroker(tmp_path / "broker") as running:
        yield running


def worker_settings(broker: MosquittoBroker, name: str, **options: Any) -> MqttSettings:
    worker = WorkerSettings(name, GROUP, will_delay=options.pop("will_delay", 1))
    return MqttSettings(broker.url, username="gridm2m-test", worker=worker, **options)


def worker_process(
    broker: MosquittoBroker, directory: Path, name: str, will_delay: int
) -> MqttCSEProcess:
    db = directory / f"{name}.db"
    return MqttCSEProcess(
        db, broker.url, "gridm2m-test", worker=(name, GROUP), will_delay=will_delay
    )


def new_cse() -> CommonServicesEntity:
    return CommonServicesEntity(MemoryStorage(), CSESettings(cse_id=CSE_ID))


class Worker:
    """A CSE on its own in-memory storage served by a worker binding, in this process."""

    def __init__(self, broker: MosquittoBroker, name: str) -> None:
        self.name = name
        self.cse = new_cse()
        # The test broker holds nobody to their topics: MQTT proves nothing here.
        self.binding = MqttBinding(self.cse, worker_settings(broker, name), trust=Trust.INSECURE)

    async def __aenter__(self) -> MqttBinding:
        await self.cse.__aenter__()
        try:
            return await self.binding.__aenter__()
        except BaseException:
            await self.cse.__aexit__(None, None, None)
            raise

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.binding.__aexit__(*exc_info)
        finally:
            await self.cse.__aexit__(*exc_info)


class Originator:
    """Publishes RETRIEVEs at QoS 1 and collects every answer, by request ID."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.published: list[str] = []
        self.answers: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        self._arrived = asyncio.Condition()

    async def read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            answer = orjson.loads(message.payload)
            async with self._arrived:
                self.answers[answer["rqi"]].append(answer)
                self._arrived.notify_all()

    async def publish(self, count: int) -> list[str]:
        """`count` requests; returns once the broker has taken each (and routed it)."""
        sent = []
        for _ in range(count):
            rqi = f"q{next(_ids)}"
            request = {"op": 2, "to": "cse-in", "fr": "CAdmin", "rqi": rqi, "rvi": "3"}
            await self.client.publish(REQUESTS, orjson.dumps(request), qos=1)
            sent.append(rqi)
        self.published += sent
        return sent

    async def wait_answered(self, request_ids: Iterable[str]) -> None:
        wanted = list(request_ids)
        async with asyncio.timeout(GUARD), self._arrived:
            await self._arrived.wait_for(lambda: all(rqi in self.answers for rqi in wanted))

    def check_answered_once(self) -> None:
        assert set(self.answers) == set(self.published)
        for rqi in self.published:
            assert [answer["rsc"] for answer in self.answers[rqi]] == [2000], rqi


@pytest.fixture
async def originator(broker: MosquittoBroker) -> AsyncIterator[Originator]:
    async with aiomqtt.Client(HOST, broker.port, username="gridm2m-test") as client:
        await client.subscribe(RESPONSES, qos=1)
        peer = Originator(client)
        reader = asyncio.create_task(peer.read())
        yield peer
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_two_workers_share_the_requests(
    broker: MosquittoBroker, originator: Originator
) -> None:
    async with Worker(broker, "a") as a, Worker(broker, "b") as b:
        assert a.client_id == "C::id-in.a" and b.client_id == "C::id-in.b"
        await originator.wait_answered(await originator.publish(100))
    # (Counted once the workers have stopped: an answer can arrive before its PUBACK is sent.)
    originator.check_answered_once()
    # Each worker took a share, and acknowledged exactly what it answered, and the marker that
    # ended its session when it stopped.
    assert a.served["a"] > 0 and b.served["b"] > 0
    assert a.served["a"] + b.served["b"] == 100
    assert (a.acknowledged, b.acknowledged) == (a.served["a"] + 1, b.served["b"] + 1)
    assert a.taken_over == [] and b.taken_over == []


async def test_a_worker_that_stops_leaves_nothing_in_its_session(
    broker: MosquittoBroker, originator: Originator
) -> None:
    """Mosquitto keeps handing a share to a member whose session outlives its connection; a
    worker that stops leaves the group first, so every later request reaches the other."""
    async with Worker(broker, "b") as b:
        async with Worker(broker, "a") as a:
            await originator.wait_answered(await originator.publish(10))
        await originator.wait_answered(await originator.publish(20))
    originator.check_answered_once()
    assert a.served["a"] > 0 and b.served["b"] == 30 - a.served["a"]


async def test_a_killed_worker_s_requests_are_answered_by_another(
    broker: MosquittoBroker, originator: Originator, tmp_path: Path
) -> None:
    """Worker a (a process) holds its share of the requests unanswered, then dies by SIGKILL:
    it never acknowledged them, so they stay in its session; its will tells worker b, which
    takes the session over and answers them. Every request is answered exactly once."""
    a = worker_process(broker, tmp_path, "a", will_delay=1)
    await a.start()
    try:
        async with Worker(broker, "b") as b:
            a.freeze()  # a's share reaches its socket, and is never answered
            requests = await originator.publish(40)
            await a.kill()
            await originator.wait_answered(requests)
            async with asyncio.timeout(GUARD):
                await b.wait_taken_over("a")
            # a's session is out of the group: what comes next is b's alone.
            await originator.wait_answered(await originator.publish(10))
    finally:
        await a.kill()
    originator.check_answered_once()
    # b answered its own share and, from a's session, what a held.
    assert b.taken_over == ["a"] and b.served["a"] > 0
    # (and two end-of-session markers: its own and a's)
    assert b.served["b"] + b.served["a"] == 50 == b.acknowledged - 2


async def test_a_worker_back_in_time_resumes_its_own_session(
    broker: MosquittoBroker, originator: Originator, tmp_path: Path
) -> None:
    """A worker restarted (same name) before its will is due gets its unanswered requests
    back itself; nobody takes its session over."""
    a = worker_process(broker, tmp_path, "a", will_delay=300)
    await a.start()
    try:
        async with Worker(broker, "b") as b:
            a.freeze()
            requests = await originator.publish(20)
            await a.kill()
            restarted = worker_process(broker, tmp_path, "a", will_delay=300)
            await restarted.start()
            try:
                await originator.wait_answered(requests)
            finally:
                assert await restarted.stop() == 0
    finally:
        await a.kill()
    originator.check_answered_once()
    assert 0 < b.served["b"] < 20 and b.taken_over == [] and b.served["a"] == 0


def test_worker_settings_and_topics() -> None:
    assert shared(GROUP, request_filters("id-in")[0]) == "$share/workers//oneM2M/req/+/id-in/+"
    gone = worker_topic("id-in", "w1", WORKER_GONE)
    assert gone == "/gridm2m/workers/id-in/w1/gone"
    assert worker_gone(gone, "id-in") == "w1"
    assert worker_gone("/gridm2m/workers/id-dap1/w1/gone", "id-in") is None
    assert worker_gone("/gridm2m/workers/id-in/w1/drained", "id-in") is None
    with pytest.raises(ValueError, match="worker name"):
        WorkerSettings("a/b", GROUP)
    with pytest.raises(ValueError, match="share group"):
        WorkerSettings("a", "#")
    with pytest.raises(ValueError, match="shorter"):
        WorkerSettings("a", GROUP, session_expiry=5, will_delay=5)
    assert WorkerSettings(default_worker_name(), GROUP).name.endswith(f"-{os.getpid()}")
    # Unguessable without the password; the same for every worker that has it.
    group = default_share_group(CSE_ID, "secret")
    assert group == default_share_group(CSE_ID, "secret") != default_share_group(CSE_ID, "other")
    assert "id-in" not in group and WorkerSettings("a", group).group == group
    assert default_share_group(CSE_ID, None) == "gridm2m-id-in"


async def test_a_worker_stops_although_its_broker_has_stopped_answering(
    broker: MosquittoBroker,
) -> None:
    """A frozen broker never closes the socket after a DISCONNECT, which aiomqtt waits for
    without a bound: stopping must still end (here, within the guard)."""
    settings = worker_settings(broker, "a", publish_timeout=1.0, drain_timeout=1.0)
    cse = new_cse()
    binding = MqttBinding(cse, settings, trust=Trust.INSECURE)
    assert broker.process is not None
    async with cse:
        await binding.__aenter__()
        broker.process.send_signal(signal.SIGSTOP)
        try:
            async with asyncio.timeout(GUARD):
                await binding.__aexit__(None, None, None)
        finally:
            broker.process.send_signal(signal.SIGCONT)

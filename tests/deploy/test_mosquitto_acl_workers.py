"""Workers of one CSE behind docker/mosquitto with its ACL on (docs/scale-out.md).

The broker runs the shipped config with the password file and ACL `gridm2m credentials
mosquitto` makes (tests/deploy/dap_broker.py). The gateway's CSE runs as two workers logged
in with its own broker password: `a` a process, `b` in this process, each on storage of its
own (this is about the broker, not shared state). A meter publishes its requests over TLS as
itself; another meter joins a share group under the name a lab broker would use, to take
requests away from the workers (the broker picks a member before it checks read access, and
drops what the member may not read: a login that knew the workers' group would make the
broker drop its share). The shared subscriptions, the will that announces a dead worker and
the takeover of its session must all pass the ACL, and the meter must get none.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from cse.bindings.mqtt import MqttBinding, MqttSettings
from cse.bindings.mqtt.settings import WorkerSettings, default_share_group
from cse.bindings.mqtt.topics import request_filters, shared
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.storage.memory import MemoryStorage
from gridm2m.broker import mosquitto_binary
from tests.deploy.dap_broker import GATEWAY, GATEWAY_CSE, dap_broker
from tests.processes import GUARD, MqttCSEProcess

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None, reason="needs the mosquitto binary (apt install mosquitto)"
)

METER_A, METER_B = "mtr-000001", "mtr-000002"
A, B = "Cmtr-000001", "Cmtr-000002"


async def test_workers_share_requests_and_take_over_a_dead_one_under_the_acl(
    tmp_path: Path,
) -> None:
    async with dap_broker(tmp_path / "broker", (METER_A, METER_B)) as broker:
        password = broker.password(GATEWAY)
        group = default_share_group(GATEWAY_CSE, password)
        worker_a = MqttCSEProcess(
            tmp_path / "a.db",
            broker.url,
            GATEWAY,
            worker=("a", group),
            password=password,
            cse_id=GATEWAY_CSE,
        )
        await worker_a.start()
        cse = CommonServicesEntity(MemoryStorage(), CSESettings(cse_id=GATEWAY_CSE))
        settings = MqttSettings(
            broker.url, username=GATEWAY, password=password, worker=WorkerSettings("b", group)
        )
        answers: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        arrived = asyncio.Condition()
        stolen: list[bytes] = []

        async def read_answers(client: Any, into: Any) -> None:
            async for message in client.messages:
                answer = orjson.loads(message.payload)
                async with arrived:
                    into[answer["rqi"]].append(answer)
                    arrived.notify_all()

        async def steal(client: Any) -> None:
            async for message in client.messages:
                stolen.append(message.payload)

        lab_group = default_share_group(GATEWAY_CSE, None)  # what a lab broker's workers use
        try:
            async with (
                cse,
                MqttBinding(cse, settings, trust=Trust.INSECURE) as b,
                broker.client(A) as meter,
                broker.client(B) as thief,
            ):
                await meter.subscribe(f"/oneM2M/resp/{A}/{GATEWAY}/json", qos=1)
                for name in (*request_filters(GATEWAY), f"/gridm2m/workers/{GATEWAY}/+/gone"):
                    await thief.subscribe(shared(lab_group, name), qos=1)
                readers = [
                    asyncio.create_task(read_answers(meter, answers)),
                    asyncio.create_task(steal(thief)),
                ]
                worker_a.freeze()
                published = []
                for number in itertools.islice(itertools.count(1), 30):
                    rqi = f"q{number}"
                    request = {"op": 2, "to": "cse-in", "fr": A, "rqi": rqi, "rvi": "3"}
                    await meter.publish(
                        f"/oneM2M/req/{A}/{GATEWAY}/json", orjson.dumps(request), qos=1
                    )
                    published.append(rqi)
                await worker_a.kill()
                async with asyncio.timeout(GUARD), arrived:
                    await arrived.wait_for(lambda: all(rqi in answers for rqi in published))
                async with asyncio.timeout(GUARD):
                    await b.wait_taken_over("a")
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
        finally:
            await worker_a.kill()
    assert sorted(answers) == sorted(published)
    assert all(len(answers[rqi]) == 1 for rqi in published)
    assert b.taken_over == ["a"] and b.served["a"] > 0
    # The meter's subscriptions delivered it nothing: Mosquitto checks read access on delivery.
    assert stolen == []

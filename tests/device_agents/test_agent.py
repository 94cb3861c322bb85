"""The agent: registration, the accelerated schedule, commands, store-and-forward over outages.

Everything runs against an in-memory Dap and a virtual clock (time passes when the agent
sleeps), so a simulated day takes milliseconds and nothing depends on wall-clock timing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from device_agents.agent import flows
from device_agents.agent.agent import Agent, command_of
from device_agents.agent.compat import LinkError
from tests.brokers import Broker, private_broker
from tests.device_agents import mp

T0 = 1767225600  # 2026-01-01 00:00 UTC
DAY = 86400


class VirtualClock:
    """Milliseconds that pass only when the agent sleeps."""

    def __init__(self) -> None:
        self.ms = 0

    def now_ms(self) -> int:
        return self.ms

    async def sleep_ms(self, ms: int) -> None:
        self.ms += max(ms, 1)
        await asyncio.sleep(0)


class FakeDap:
    """The Dap contract in memory: records what the agent sends; `down` simulates an outage."""

    def __init__(self) -> None:
        self.down = False
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.attempts: list[int] = []  # clock ms of every post attempt
        self.containers: list[str] = []
        self.subscriptions: list[str] = []
        self.connects = 0
        self.registrations = 0
        self.on_notify: Any = None
        self.answer: Any = None  # (family, content) -> rsc, default 2001
        self.clock: VirtualClock | None = None
        self.closed = asyncio.Event()
        self.delivered = asyncio.Event()
        self.request_ids = 0
        self.sent_ids: list[str | None] = []  # the request ID of every post attempt

    def _link(self) -> None:
        if self.down:
            raise LinkError("DAP unreachable")

    async def connect(self) -> None:
        self._link()
        self.connects += 1

    async def register(self) -> str:
        self._link()
        self.registrations += 1
        return "Cmtr-1"

    async def ensure_container(self, name: str) -> int:
        self._link()
        self.containers.append(name)
        return 2001

    async def subscribe(self, name: str) -> int:
        self._link()
        self.subscriptions.append(name)
        return 2001

    def next_request_id(self) -> str:
        self.request_ids += 1
        return f"mtr-1-test-{self.request_ids}"

    async def post(self, family: str, content: Any, request_id: str | None = None) -> int:
        await asyncio.sleep(0)
        self.sent_ids.append(request_id)
        if self.clock is not None:
            self.attempts.append(self.clock.ms)
        self._link()
        decoded = json.loads(content) if isinstance(content, str) else content
        rsc = self.answer(family, decoded) if self.answer else 2001
        if 2000 <= rsc < 3000:
            self.posts.append((family, decoded))
            self.delivered.set()
        return int(rsc)

    async def serve(self) -> None:
        await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()

    def command(self, ri: str | None, con: Any) -> int:
        """The DAP notifies the meter of a new command instance."""
        instance = {"con": con if not isinstance(con, dict) else json.dumps(con)}
        if ri is not None:
            instance["ri"] = ri
        primitive = {"op": 5, "pc": {"m2m:sgn": {"nev": {"rep": {"m2m:cin": instance}, "net": 3}}}}
        return int(self.on_notify(primitive))

    def flows(self) -> list[str]:
        return [content["flow"] for _, content in self.posts]


def config(**extra: Any) -> dict[str, Any]:
    base = {
        "meter_id": "mtr-1",
        "kind": "electric",
        "transport": "coap",
        "clock_speed": 3600,  # a meter hour each clock second
        "seed": 7,
        "start_ts": T0,
        "prepay": False,
        "buffer_max": 10000,
        "buffer_bytes": 4_000_000,
    }
    base.update(extra)
    return base


def make(**extra: Any) -> tuple[Agent, FakeDap, VirtualClock]:
    dap, clock = FakeDap(), VirtualClock()
    dap.clock = clock
    return Agent(config(**extra), dap=dap, clock=clock), dap, clock


def priority(flow_id: str) -> int:
    return int(flows.get(flow_id)[flows.PRIORITY])


@pytest.mark.parametrize("kind", ["electric", "gas"])
async def test_start_registers_creates_the_containers_and_subscribes(kind: str) -> None:
    agent, dap, _ = make(kind=kind)
    await agent.start()
    assert dap.connects == dap.registrations == 1
    assert dap.containers == [*flows.families(kind), "command"]
    assert dap.subscriptions == ["command"]
    assert dap.on_notify is not None and agent.started and agent.link_up
    await agent.close()
    assert dap.closed.is_set()


async def test_a_simulated_day_runs_on_the_accelerated_clock() -> None:
    agent, dap, _ = make(rate_scale=400)
    await agent.run(duration=24)  # 24 clock seconds x 3600 = one meter day
    assert agent.meter_time() == T0 + DAY
    assert agent.sent_total == agent.generated == len(dap.posts) > 5
    assert sum(agent.sent.values()) == agent.sent_total
    seqs = [content["seq"] for _, content in dap.posts]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))  # no gaps, no repeats
    for family, content in dap.posts:
        flow = flows.get(content["flow"])
        assert family == flow[flows.FAMILY] and content["type"] == flow[flows.TYPE]
        start, end = flow[flows.WINDOW]
        assert start <= (content["ts"] - 1) % DAY // 3600 < end
        assert T0 < content["ts"] <= T0 + DAY
    expected = 400 * (0.025 + 0.025)  # multiple-interval reads and on-demand reads
    assert abs(agent.sent.get("mr-ondemand", 0) + agent.sent["mr-multi-interval"] - expected) < 15


async def test_commands_arrive_as_notifications_and_are_answered() -> None:
    agent, dap, _ = make()
    await agent.start()
    assert dap.command("cin-1", {"cmd": "read", "id": "c000001"}) == 2000
    assert dap.command("cin-1", {"cmd": "read", "id": "c000001"}) == 2000  # redelivered
    assert dap.command("cin-2", {"cmd": "read", "id": "c000002", "n": 8}) == 2000
    assert dap.command("cin-3", "this is not JSON") == 2000
    assert dap.command(None, {"cmd": "price", "price": 99}) == 2000
    # CBOR serialization delivers the command as a map, not a JSON string.
    primitive = {"pc": {"m2m:sgn": {"nev": {"rep": {"m2m:cin": {"con": {"cmd": "read"}}}}}}}
    assert dap.on_notify(primitive) == 2000
    assert dap.on_notify({"pc": {"m2m:sgn": {"vrq": True, "sur": "/x"}}}) == 2000
    assert dap.on_notify({"pc": {"m2m:sgn": {"sud": True}}}) == 2000
    assert agent.commands == 5
    await agent.step()
    answers = [(family, content["flow"], content.get("ref")) for family, content in dap.posts]
    assert answers == [
        ("event", "ev-audit-alert", None),  # the price, acknowledged as an audit alert
        ("ondemand", "mr-ondemand-err", None),  # not JSON: a command error
        ("ondemand", "mr-ondemand", "c000001"),
        ("ondemand", "mr-ondemand", None),
        ("reading", "mr-multi-interval", "c000002"),
    ]


async def test_store_and_forward_across_an_outage_loses_nothing_and_sends_alarms_first() -> None:
    agent, dap, clock = make(rate_scale=300, backoff_max_ms=8000, start_ts=T0 + 8 * 3600)
    await agent.run(duration=2)
    delivered_before = len(dap.posts)
    assert delivered_before > 0 and agent.link_up
    dap.down = True
    await agent.run(duration=10)  # ten meter hours with the DAP gone
    dap.command("c-1", {"cmd": "read", "id": "c1", "n": 96})  # bulk (3)
    dap.command("c-2", {"cmd": "read", "id": "c2"})  # on-demand data (2)
    dap.command("c-3", {"cmd": "han-join", "id": "c3", "dev": "000D6F00AABBCCDD"})  # ack (1)
    dap.command("c-4", {"cmd": "price", "id": "c4", "price": 120})  # alert (0)
    await agent.run(duration=30)
    assert len(dap.posts) == delivered_before
    assert not agent.link_up and agent.outages == 1
    assert len(agent.store) == agent.generated - delivered_before > 10
    # Backoff: 1 s doubling to the 8 s cap, +-25 %.
    tries = dap.attempts[delivered_before:]
    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert 750 <= gaps[0] <= 1250 and 1500 <= gaps[1] <= 2500
    assert all(gap <= 10000 for gap in gaps) and max(gaps) >= 6000
    waiting = {json.loads(entry[3])["seq"] for entry in agent.store.items()}
    failed = agent.failed
    dap.down = False
    clock.ms += 10000  # past the longest backoff: the next retry is due
    await agent.step()  # (its due flows join the backlog)
    after = [content for _, content in dap.posts[delivered_before:]]
    assert len(after) == agent.generated - delivered_before and len(agent.store) == 0
    assert waiting <= {content["seq"] for content in after}
    order = [priority(content["flow"]) for content in after]
    assert order == sorted(order)  # alarms and alerts first, bulk reads last
    assert after[0]["ref"] == "c4" and order[0] == 0
    seqs = sorted(content["seq"] for _, content in dap.posts)
    assert seqs == list(range(1, agent.generated + 1))  # nothing lost, nothing twice
    assert agent.sent_total == agent.generated and agent.failed == failed
    assert agent.link_up and agent.store.dropped == 0


async def test_a_long_outage_sheds_bulk_reads_and_keeps_alarms() -> None:
    agent, dap, _ = make(rate_scale=3000, buffer_max=30, buffer_bytes=20000, backoff_max_ms=4000)
    await agent.start()
    dap.down = True
    await agent.run(duration=24)
    dap.command("p", {"cmd": "price", "id": "c1", "price": 130})  # an alert (priority 0)
    await agent.run(duration=24)  # two meter days in all
    dap.down = False
    await agent.run(duration=10)
    assert agent.store.dropped > 0
    assert agent.generated == agent.sent_total + agent.store.dropped
    dropped = agent.store.dropped_by_flow
    assert not [flow_id for flow_id in dropped if priority(flow_id) == 0]
    assert agent.store.dropped_alarms == 0
    assert dropped.get("mr-multi-interval", 0) >= max(dropped.values()) // 2
    assert "ev-audit-alert" in dap.flows()


async def test_response_codes() -> None:
    agent, dap, clock = make()
    await agent.start()
    dap.command("a", {"cmd": "read", "id": "c1"})
    codes = [5000]
    dap.answer = lambda family, content: codes.pop(0) if codes else 2001
    await agent.step()  # 5000: kept, retried after the backoff
    assert agent.failed == 1 and len(agent.store) == 1 and not dap.posts
    clock.ms += 2000
    await agent.step()
    assert dap.flows() == ["mr-ondemand"] and agent.failed == 1

    dap.command("b", {"cmd": "read", "id": "c2"})
    dap.command("c", {"cmd": "read", "id": "c3", "n": 4})
    codes[:] = [4000]  # the first is refused: dropped, and the next goes on
    await agent.step()
    assert agent.refused == 1 and dap.flows()[-1] == "mr-multi-interval"

    dap.command("d", {"cmd": "read", "id": "c4"})
    codes[:] = [4004]  # the DAP lost the AE: register again, then deliver
    await agent.step()
    assert not agent.started and len(agent.store) == 1
    await agent.step()
    assert dap.registrations == 2 and dap.connects == 1 and dap.posts[-1][1]["ref"] == "c4"

    dap.command("e", {"cmd": "read", "id": "c5"})
    codes[:] = [4004, 4004]  # still unknown after registering again: dropped
    await agent.step()
    await agent.step()
    assert agent.refused == 2 and len(agent.store) == 0

    dap.command("f", {"cmd": "read", "id": "c6"})
    codes[:] = [4103]  # a DAP that forgot the AE: no privilege (as ACME): register again
    await agent.step()
    assert not agent.started and len(agent.store) == 1
    await agent.step()
    assert dap.registrations == 4 and dap.posts[-1][1]["ref"] == "c6"

    dap.command("g", {"cmd": "read", "id": "c7"})
    codes[:] = [4103, 4103]  # still refused after registering again: dropped
    await agent.step()
    await agent.step()
    assert agent.refused == 3 and len(agent.store) == 0


async def test_start_is_retried_until_the_dap_answers() -> None:
    agent, dap, _ = make(rate_scale=300)
    dap.down = True
    await agent.run(duration=20)
    assert agent.start_failures > 3 and not agent.started and len(agent.store) > 0
    dap.down = False
    await agent.run(duration=70)
    assert agent.started and len(agent.store) == 0 and agent.sent_total == agent.generated


async def test_running_out_of_memory_in_a_step_does_not_stop_the_agent() -> None:
    # MicroPython raises MemoryError wherever an allocation fails, also where nothing catches
    # it (here: making a request ID while sending). The step is lost, the run goes on and the
    # message that was being sent is sent in a later step.
    agent, dap, _ = make(rate_scale=400)
    making = dap.next_request_id
    failures = []

    def short_of_memory() -> str:
        if not failures:
            failures.append(1)
            raise MemoryError("memory allocation failed")
        return making()

    dap.next_request_id = short_of_memory  # type: ignore[method-assign]
    await agent.run(duration=12)  # midnight to noon: reads from 7 h on
    assert failures and agent.memory_errors == 1
    assert agent.sent_total == agent.generated == len(dap.posts) > 0  # nothing lost
    seqs = [content["seq"] for _, content in dap.posts]
    assert sorted(seqs) == list(range(1, len(seqs) + 1))


async def test_stop_ends_run_and_closes_the_link() -> None:
    agent, dap, _ = make()
    running = asyncio.create_task(agent.run())
    while not dap.posts and not agent.started:
        await asyncio.sleep(0)
    agent.stop()
    await asyncio.wait_for(running, 5)
    assert dap.closed.is_set() and not agent.running
    await agent.run()  # a stopped agent stays stopped
    assert not agent.running


async def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    outbox = str(tmp_path / "outbox.log")
    agent, dap, _ = make(rate_scale=300, buffer_file=outbox)
    dap.down = True
    await agent.run(duration=12)
    waiting = [json.loads(entry[3])["seq"] for entry in agent.store.items()]
    assert len(waiting) > 3 and dap.posts == []
    # The meter reboots: a new agent on the same flash file.
    again, dap2, _ = make(rate_scale=300, buffer_file=outbox, start_ts=T0 + 12 * 3600)
    assert again.meter.seq == max(waiting)
    await again.run(duration=1)
    seqs = [content["seq"] for _, content in dap2.posts]
    assert set(waiting) <= set(seqs)
    assert len(set(seqs)) == len(seqs)  # new messages continue the sequence


async def test_a_command_wakes_the_loop_on_the_real_clock() -> None:
    dap = FakeDap()
    agent = Agent(config(tick_ms=60000, start_ts=None), dap=dap)  # default ticks clock
    running = asyncio.create_task(agent.run())
    while not agent.started:
        await asyncio.sleep(0.001)
    dap.command("x", {"cmd": "read", "id": "c1"})
    await asyncio.wait_for(dap.delivered.wait(), 5)  # not after the 60 s tick
    assert dap.flows() == ["mr-ondemand"]
    agent.stop()
    await asyncio.wait_for(running, 5)


async def test_many_agents_share_one_event_loop() -> None:
    agents = [make(seed=seed % 10, meter_id=f"mtr-{seed}", rate_scale=200) for seed in range(200)]
    await asyncio.gather(*(agent.run(duration=12) for agent, _, _ in agents))
    stats = [agent.stats() for agent, _, _ in agents]
    assert all(s["sent_total"] == s["generated"] > 0 for s in stats)
    for s in stats[10:]:  # the same seed makes the same meter, whatever runs beside it
        twin = stats[int(s["meter_id"].split("-")[1]) % 10]
        assert s["sent"] == twin["sent"]


def test_command_of() -> None:
    def notification(cin: Any) -> dict[str, Any]:
        return {"pc": {"m2m:sgn": {"nev": {"rep": {"m2m:cin": cin}, "net": 3}}}}

    assert command_of(notification({"ri": "r1", "con": '{"cmd": "read"}'})) == (
        "r1",
        {"cmd": "read"},
    )
    assert command_of(notification({"con": b'{"cmd": "read"}'})) == (None, {"cmd": "read"})
    assert command_of(notification({"con": "read"})) == (None, "read")
    assert command_of({"pc": {"sgn": {"nev": {"rep": {"cin": {"con": "{}"}}}}}}) == (None, {})
    assert command_of(notification({"ri": "r1"})) is None
    assert command_of({"pc": {"m2m:sgn": {"vrq": True}}}) is None
    assert command_of({"pc": None}) is None
    assert command_of("junk") is None


# ---- MicroPython ---------------------------------------------------------------------------

AGENT_SNIPPET = """
import asyncio, json
from agent import Agent
from compat import LinkError


class Clock:
    def __init__(self):
        self.ms = 0

    def now_ms(self):
        return self.ms

    async def sleep_ms(self, ms):
        self.ms += ms if ms > 0 else 1
        await asyncio.sleep(0)


class Dap:
    # Keeps counts, not messages: the heap is 96 KB.
    def __init__(self):
        self.down = False
        self.on_notify = None
        self.seqs = 0
        self.first = []

    def _link(self):
        if self.down:
            raise LinkError("down")

    async def connect(self):
        self._link()

    async def register(self):
        self._link()
        return "C" + config["meter_id"]

    async def ensure_container(self, name):
        self._link()
        return 2001

    async def subscribe(self, name):
        self._link()
        return 2001

    def next_request_id(self):
        return "r"

    async def post(self, family, content, request_id=None):
        await asyncio.sleep(0)
        self._link()
        if isinstance(content, list):  # a long message, in pieces on MicroPython
            content = "".join(content)
        i = content.find('"seq":') + 6
        self.seqs += int(content[i:content.find(",", i) if "," in content[i:] else -1])
        if len(self.first) < 6:
            i = content.find('"flow":"') + 8
            self.first.append(content[i:content.find('"', i)])
        return 2001

    async def serve(self):
        while True:
            await asyncio.sleep(1)

    async def close(self):
        pass


def command(dap, ri, con):
    cin = {"ri": ri, "con": json.dumps(con)}
    dap.on_notify({"pc": {"m2m:sgn": {"nev": {"rep": {"m2m:cin": cin}}}}})


async def main():
    dap = Dap()
    agent = Agent(config, dap=dap, clock=Clock())
    await agent.run(duration=6)
    dap.down = True
    await agent.run(duration=12)
    command(dap, "a", {"cmd": "read", "id": "c1", "n": 96})
    command(dap, "b", {"cmd": "price", "id": "c2", "price": 120})
    command(dap, "c", {"cmd": "dr", "ev": 5})
    await agent.run(duration=12)
    dap.first = []
    dap.down = False
    await agent.run(duration=30)
    stats = agent.stats()
    stats["seq_sum"] = dap.seqs
    stats["first"] = dap.first
    print(json.dumps(stats))


config = json.load(open("config.json"))
asyncio.run(main())
"""


@mp.needs_micropython
def test_the_agent_rides_out_an_outage_on_micropython_in_96k_as_on_cpython() -> None:
    settings = config(rate_scale=200, buffer_max=100, buffer_bytes=10240, seed=11)
    result = mp.run(AGENT_SNIPPET, config=settings)
    assert result.rc == 0, result.output
    on_micropython = json.loads(result.lines[-1])
    result = mp.run(AGENT_SNIPPET, config=settings, cpython=True)
    assert result.rc == 0, result.output
    on_cpython = json.loads(result.lines[-1])
    assert on_micropython == on_cpython  # the same meter, the same messages, the same drops
    stats = on_micropython
    assert stats["commands"] == 3 and stats["outages"] == 1 and stats["buffered"] == 0
    assert stats["sent_total"] + stats["dropped"] == stats["generated"] > 20
    assert stats["first"][0] == "ev-audit-alert"  # the alert went first after the outage
    assert stats["dropped"] > 0  # a 10 KB outbox overflows in the outage: bulk reads went
    assert all(priority(flow_id) == 3 for flow_id in stats["dropped_by_flow"]), stats


# ---- end to end: the agent on MicroPython against a real DAP -------------------------------------

END_TO_END = """
import asyncio, json
from agent import Agent

config = json.load(open("config.json"))
expected = config.pop("expect")  # the flows to wait for (every command's answer, a read)
agent = Agent(config)


def answered():
    for flow_id in expected:
        if not agent.sent.get(flow_id):
            return False
    return True


async def main():
    running = asyncio.create_task(agent.run())
    while not agent.started:
        await asyncio.sleep_ms(10)
    print("started")
    while not answered():
        await asyncio.sleep_ms(10)
    agent.stop()
    await running
    print("stats", json.dumps(agent.stats()))


asyncio.run(main())
"""

# Every command a meter acts on, with the flow that answers it and the container it goes to.
EVERY_COMMAND = (
    ({"cmd": "read", "id": "c1", "src": "ipd"}, "mr-ondemand-ipd", "ondemand"),
    ({"cmd": "price", "id": "c2", "price": 120}, "ev-audit-alert", "event"),
    ({"cmd": "switch", "id": "c3", "op": "disconnect"}, "pp-metrology", "prepay"),
    ({"cmd": "dr", "ev": 44, "shed": 20}, "dr-ack-lms-utl", "drdlc"),
    ({"cmd": "han-join", "id": "c5", "dev": "000D6F00AABBCCDD"}, "han-join-ack-utl", "han"),
    ({"cmd": "fw", "id": "c6", "target": "nic", "ver": "5.3.1"}, "fw-nic-fw", "firmware"),
)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    async with private_broker(tmp_path / "broker") as running:
        yield running


@mp.needs_micropython
@pytest.mark.parametrize(
    ("transport", "serialization"),
    [("coap", "json"), ("mqtt", "json"), ("mqtt", "cbor")],
    ids=["coap", "mqtt", "mqtt-cbor"],
)
async def test_the_agent_end_to_end_on_micropython_in_96k(
    broker: Broker, transport: str, serialization: str
) -> None:
    """Registers, posts its schedule (a 2 KB read goes as Block1 over CoAP) and answers every
    command, in a board's 96 KB heap."""
    meter = f"mtr-e2e-{transport}-{serialization}"
    async with mp.DapCse(mqtt_url=broker.url) as dap:
        settings = dap.config(meter, transport, serialization=serialization)
        settings.update(
            seed=3, prepay=False, clock_speed=3600, start_ts=T0 + 8 * 3600, rate_scale=1000
        )
        settings.update(dr_opt_out_rate=0, expect=[flow for _, flow, _ in EVERY_COMMAND])
        settings["expect"].append("mr-multi-interval")
        async with mp.MicroPython(END_TO_END, config=settings, heap="96k") as agent:
            await agent.expect("started")
            for number, (command, _, _) in enumerate(EVERY_COMMAND):
                cin = {"rn": f"k{number}", "cnf": "application/json:0", "con": json.dumps(command)}
                status, _ = await dap.create_as_admin(
                    f"cse-in/{meter}/command", 4, {"m2m:cin": cin}
                )
                assert status == 2001
            stats = json.loads((await agent.expect("stats"))[len("stats ") :])
            result = await agent.wait()
        assert result.rc == 0, result.output
        assert stats["commands"] == len(EVERY_COMMAND) and stats["refused"] == 0
        assert stats["memory_errors"] == 0, stats  # nothing was lost to a full heap

        async def latest(container: str, flow_id: str) -> dict[str, Any]:
            status, found = await dap.http("GET", f"cse-in/{meter}/{container}?rcn=4")
            assert status == 2000, found
            for instance in reversed(found["m2m:cnt"].get("m2m:cin", [])):
                con = instance["con"]
                content = json.loads(con) if isinstance(con, str) else con
                if content["flow"] == flow_id:
                    return dict(content)
            raise AssertionError(f"no {flow_id} in {container}")

        answers = {flow: await latest(where, flow) for _, flow, where in EVERY_COMMAND}
        for command, flow, _ in EVERY_COMMAND:
            if "id" in command:  # the answer refers to the command (DR: to the event)
                assert answers[flow]["ref"] == command["id"], answers[flow]
        assert answers["mr-ondemand-ipd"]["obis"]["1.8.0"] > 0
        assert answers["ev-audit-alert"]["p"] == 120
        assert answers["pp-metrology"]["sw"] == 0  # disconnected
        assert answers["dr-ack-lms-utl"]["ev"] == 44 and answers["dr-ack-lms-utl"]["sh"] == 20
        assert answers["han-join-ack-utl"]["ok"] == 1
        assert answers["fw-nic-fw"]["ver"] == "5.3.1"
        block = await latest("reading", "mr-multi-interval")
        assert len(block["ch"][0]["v"]) == block["n"] >= 32


OUTAGE_END_TO_END = """
import asyncio, json
from agent import Agent

config = json.load(open("config.json"))
agent = Agent(config)


async def wait_until(condition):
    while not condition():
        await asyncio.sleep_ms(10)


async def main():
    running = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.started and agent.sent_total >= 3)
    print("started")
    await wait_until(lambda: agent.outages and len(agent.store) >= 6)
    print("buffering", len(agent.store))
    await wait_until(lambda: agent.link_up and agent.generated > 12 and not len(agent.store))
    agent.stop()
    await running
    print("stats", json.dumps(agent.stats()))


asyncio.run(main())
"""


@mp.needs_micropython
@pytest.mark.parametrize("transport", ["coap", "mqtt"])
async def test_the_agent_stores_and_forwards_across_a_real_dap_outage_in_96k(
    broker: Broker, tmp_path: Path, transport: str
) -> None:
    """The DAP's CSE is killed while the meter runs on MicroPython; what the meter makes
    meanwhile waits in its outbox and arrives, once each, when the same DAP is back."""
    meter = f"mtr-outage-{transport}"
    db = str(tmp_path / "dap.db")
    async with mp.DapCse(mqtt_url=broker.url, db=db) as dap:
        settings = dap.config(meter, transport, verbose=True)
        settings.update(seed=5, prepay=False, clock_speed=3600, start_ts=T0 + 9 * 3600)
        settings.update(rate_scale=300, timeout_ms=1500, coap_ack_timeout_ms=300)
        settings.update(coap_max_retransmit=1, backoff_ms=300, backoff_max_ms=1000)
        ports = {"http_port": int(dap.http_url.rsplit(":", 1)[1]), "coap_port": dap.coap_port}
        async with mp.MicroPython(OUTAGE_END_TO_END, config=settings, heap="96k") as agent:
            await agent.expect("started")  # registered and sending
            await dap.kill()
            await agent.expect("buffering")  # the outbox fills while the DAP is away
            async with mp.DapCse(mqtt_url=broker.url, db=db, **ports) as back:
                stats = json.loads((await agent.expect("stats"))[len("stats ") :])
                result = await agent.wait()
                assert result.rc == 0, result.output
                seqs = []
                for family in flows.families("electric"):
                    status, found = await back.http("GET", f"cse-in/{meter}/{family}?rcn=4")
                    assert status == 2000, found
                    for instance in found["m2m:cnt"].get("m2m:cin", []):
                        seqs.append(json.loads(instance["con"])["seq"])
    assert stats["outages"] >= 1 and stats["buffered"] == 0 and stats["memory_errors"] == 0
    # A 6 KB outbox may shed bulk reads in the outage, nothing else; the rest was delivered.
    assert all(priority(flow_id) == 3 for flow_id in stats["dropped_by_flow"]), stats
    assert stats["sent_total"] + stats["dropped"] == stats["generated"] > 12, stats
    # Each delivered message stored once, though some were retried across the outage.
    assert len(seqs) == len(set(seqs)) == stats["sent_total"]
    assert set(seqs) <= set(range(1, stats["generated"] + 1))


@mp.needs_micropython
async def test_main_runs_a_bundle_on_the_unix_port(tmp_path: Path) -> None:
    """`micropython main.py` beside config.json: the board entry point, minus the Wi-Fi."""
    bundle = tmp_path / "bundle"  # as a board has it: main.py beside the compiled modules
    bundle.mkdir()
    for module in mp.compile_agent().glob("*.mpy"):
        if module.name != "main.mpy":
            shutil.copy(module, bundle)
    main = bundle / "main.py"
    shutil.copy(mp.AGENT_DIR / "main.py", main)
    meter = "mtr-main"
    async with mp.DapCse() as dap:
        settings = dap.config(meter, "coap", verbose=True, start_ts=T0 + 9 * 3600)
        settings.update(clock_speed=3600, rate_scale=1000, prepay=False)
        async with mp.MicroPython(main, config=settings, heap="128k") as agent:
            assert (await agent.expect("meter")).split()[1:3] == [meter, "electric"]
            await agent.expect(f"{meter} registered")
            status, _ = await dap.create_as_admin(
                f"cse-in/{meter}/command", 4, {"m2m:cin": {"con": '{"cmd": "read", "id": "m1"}'}}
            )
            assert status == 2001
            while True:  # each line is the agent's own log; wait for the answer to go out
                line = await agent.readline()
                assert line, agent.lines
                if line.startswith(meter) and "mr-ondemand" in line:
                    break
        status, found = await dap.retrieve_as_admin(f"cse-in/{meter}/ondemand/la")
        assert status == 2000 and json.loads(found["m2m:cin"]["con"])["ref"] == "m1"


async def test_a_message_keeps_its_request_id_across_retries() -> None:
    agent, dap, clock = make()
    await agent.start()
    dap.command("a", {"cmd": "read", "id": "c1"})
    dap.down = True
    await agent.step()
    clock.ms += 2000
    await agent.step()
    dap.down = False
    clock.ms += 5000
    await agent.step()
    dap.command("b", {"cmd": "read", "id": "c2"})
    await agent.step()
    first, retry, delivered, other = dap.sent_ids
    assert first is not None and first == retry == delivered  # one ID for every attempt
    assert other is not None and other != first  # a new message, a new ID

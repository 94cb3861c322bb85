"""The ESI role: gas meters hand their interval records over the HAN to an ESI (inside an
electric meter, or a utility's own), which writes them into its own container at the DAP.

The agents run against in-memory Daps on a virtual clock (test_agent.py's), and once more on
the real MicroPython unix port in a 96 KB heap, where the result must equal CPython's.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from device_agents.agent.agent import Agent
from device_agents.agent.esi import RELAYED, Esi
from device_agents.agent.han import LocalHan
from tests.device_agents import mp
from tests.device_agents.test_agent import T0, FakeDap, VirtualClock, config


def premises(
    esi: str = "meter", members: tuple[str, ...] = ("gas-1",), **extra: Any
) -> tuple[Agent, FakeDap, Agent, FakeDap, LocalHan]:
    """An ESI agent and a gas meter agent behind it, on one virtual clock."""
    clock = VirtualClock()
    han = LocalHan("gas-1", f"esi-{esi}")
    kind = "electric" if esi == "meter" else "esi"
    esi_dap, gas_dap = FakeDap(), FakeDap()
    host = Agent(
        config(meter_id="esi-1", kind=kind, esi=esi, esi_members=list(members), **extra),
        dap=esi_dap,
        clock=clock,
    )
    assert host.esi is not None
    han.attach(host.esi)
    gas = Agent(
        config(meter_id="gas-1", kind="gas", gas_period_h=4, seed=3, **extra),
        dap=gas_dap,
        clock=clock,
        han=han,
    )
    return host, esi_dap, gas, gas_dap, han


def test_an_esi_takes_a_members_record_and_adds_who_when_and_how() -> None:
    queued: list[tuple[str, dict[str, Any], str]] = []
    esi = Esi("esi-1", "meter", ["gas-1"], lambda: T0 + 60, lambda *item: queued.append(item))
    record = {"flow": "gas-interval-4h", "type": "resp-data", "seq": 4, "ts": T0, "recs": []}
    assert esi.receive("gas-1", record)
    family, content, key = queued[0]
    assert (family, key) == ("esi", "esi-meter:gas-interval-4h")
    assert content["gm"] == "gas-1" and content["rx"] == T0 + 60 and content["via"] == "esi-meter"
    assert content["seq"] == 4 and content["ts"] == T0  # the gas meter's own members stay


def test_an_esi_refuses_a_meter_not_joined_to_it_and_a_record_without_a_flow() -> None:
    queued: list[Any] = []
    esi = Esi("esi-1", "utility", ["gas-1"], lambda: T0, lambda *item: queued.append(item))
    assert not esi.receive("gas-2", {"flow": "gas-interval-4h"})
    assert not esi.receive("gas-1", {"recs": []})
    assert not esi.receive("gas-1", "not a record")
    assert queued == [] and esi.refused == 3 and esi.received == 0
    with pytest.raises(ValueError):
        Esi("esi-1", "cloud", [], lambda: 0, lambda *item: None)


@pytest.mark.parametrize("esi", ["meter", "utility"])
async def test_gas_interval_records_reach_the_dap_only_through_the_esis_own_container(
    esi: str,
) -> None:
    host, esi_dap, gas, gas_dap, han = premises(esi, rate_floor=8)
    for _ in range(30):  # 30 clock seconds x 3600: 30 meter hours, 7 gas reports
        await gas.step()
        await host.step()
        await gas.clock.sleep_ms(1000)
    # The gas meter sent none of its interval records itself, only its other flows.
    assert gas_dap.posts and all(family == "event" for family, _ in gas_dap.posts)
    assert han.handed == {"gas-interval-4h": 7} and han.failed == 0
    relayed = [content for family, content in esi_dap.posts if family == "esi"]
    assert host.esi is not None and len(relayed) == host.esi.received == 7
    for content in relayed:
        assert content["gm"] == "gas-1" and content["via"] == f"esi-{esi}"
        assert content["flow"] == "gas-interval-4h" and content["ts"] <= content["rx"]
    assert host.sent["esi-" + esi + ":gas-interval-4h"] == 7  # counted apart from its own
    if esi == "utility":  # an AE with no meter: nothing of its own, no commands
        assert esi_dap.containers == ["esi"] and esi_dap.subscriptions == []
        assert all(family == "esi" for family, _ in esi_dap.posts)
    else:
        assert "esi" in esi_dap.containers and esi_dap.subscriptions == ["command"]
        assert host.meter is not None and host.meter.seq == len(esi_dap.posts) - 7


async def test_a_gas_meter_whose_esi_is_missing_counts_what_it_could_not_hand_over() -> None:
    clock, han, dap = VirtualClock(), LocalHan("gas-1", "esi-meter"), FakeDap()
    settings = config(meter_id="gas-1", kind="gas", gas_period_h=6)
    gas = Agent(settings, dap=dap, clock=clock, han=han)
    for _ in range(15):  # 14 meter hours: two 6-hour reports
        await gas.step()
        await clock.sleep_ms(1000)
    assert han.handed == {"gas-interval-6h": 2} and han.failed == 2
    assert all(content["flow"] != "gas-interval-6h" for _, content in dap.posts)


def test_the_relayed_members_are_what_the_esi_adds() -> None:
    assert RELAYED == ("gm", "rx", "via")


# ---- MicroPython ---------------------------------------------------------------------------

PREMISES = """
import asyncio, json
from agent import Agent
from han import LocalHan


class Clock:
    def __init__(self):
        self.ms = 0

    def now_ms(self):
        return self.ms

    async def sleep_ms(self, ms):
        self.ms += ms if ms > 0 else 1


class Dap:
    # Counts, not messages: the heap is 96 KB.
    def __init__(self):
        self.on_notify = None
        self.by_family = {}
        self.gm = 0

    async def connect(self):
        pass

    async def register(self):
        return "C"

    async def ensure_container(self, name):
        return 2001

    async def subscribe(self, name):
        return 2001

    def next_request_id(self):
        return "r"

    async def post(self, family, content, request_id=None):
        if isinstance(content, list):  # a long message, in pieces on MicroPython
            content = "".join(content)
        self.by_family[family] = self.by_family.get(family, 0) + 1
        if '"gm":"gas-1"' in content and '"via":"esi-meter"' in content:
            self.gm += 1
        return 2001

    async def serve(self):
        while True:
            await asyncio.sleep(1)

    async def close(self):
        pass


async def main():
    clock = Clock()
    han = LocalHan("gas-1", "esi-meter")
    esi_dap, gas_dap = Dap(), Dap()
    host = Agent(config["esi"], dap=esi_dap, clock=clock)
    han.attach(host.esi)
    gas = Agent(config["gas"], dap=gas_dap, clock=clock, han=han)
    for _ in range(72):  # 71 meter hours
        await gas.step()
        await host.step()
        await clock.sleep_ms(1000)
    print(json.dumps({"esi": host.stats(), "gas": gas.stats(), "at_dap": esi_dap.by_family,
                      "gas_at_dap": gas_dap.by_family, "gm": esi_dap.gm, "handed": han.handed,
                      "relayed": host.esi.received}))


config = json.load(open("config.json"))
asyncio.run(main())
"""


@mp.needs_micropython
def test_an_esi_in_a_meter_relays_on_micropython_in_96k_as_on_cpython() -> None:
    settings = {
        "esi": config(meter_id="esi-1", esi="meter", esi_members=["gas-1"], rate_scale=50,
                      buffer_max=100, buffer_bytes=10240),
        "gas": config(meter_id="gas-1", kind="gas", gas_period_h=4, seed=3, rate_scale=50,
                      buffer_max=100, buffer_bytes=10240),
    }  # fmt: skip
    result = mp.run(PREMISES, config=settings)
    assert result.rc == 0, result.output
    on_micropython = json.loads(result.lines[-1])
    result = mp.run(PREMISES, config=settings, cpython=True)
    assert result.rc == 0, result.output
    assert on_micropython == json.loads(result.lines[-1])
    found = on_micropython
    assert found["esi"]["memory_errors"] == found["gas"]["memory_errors"] == 0
    assert found["handed"] == {"gas-interval-4h": 17}  # every 4 h
    assert found["relayed"] == found["gm"] == 17
    assert found["at_dap"]["esi"] == 17 and "reading" not in found["gas_at_dap"]
    assert found["esi"]["sent"]["esi-meter:gas-interval-4h"] == 17

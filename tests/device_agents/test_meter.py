"""The meter model: its schedule on the meter clock, its registers, and its answers to commands."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from device_agents.agent import flows
from device_agents.agent.meter import Meter, window_seconds
from tests.device_agents import mp

DAY = 86400
T0 = 1767225600  # 2026-01-01 00:00 UTC


def run_day(meter: Meter, start: int = T0, step: int = 300, days: int = 1) -> list[dict[str, Any]]:
    out = []
    for now in range(start + step, start + days * DAY + 1, step):
        for family, content in meter.due_flows(now):
            assert family == flows.get(content["flow"])[flows.FAMILY]
            out.append(content)
    return out


def only(meter: Meter, prefix: str) -> Meter:
    # Keep the schedule of some flows only, so a test can scale rare ones up cheaply.
    meter._sched = [entry for entry in meter._sched if entry[0].startswith(prefix)]
    return meter


def assert_near(count: int, expected: float, what: str) -> None:
    # Poisson counts: within five standard deviations.
    assert abs(count - expected) <= 5 * math.sqrt(expected), (what, count, expected)


# ---- the schedule ------------------------------------------------------------------------------


def test_scheduled_flows_come_at_their_daily_rate() -> None:
    meters, scale = 300, 40
    counts: dict[str, int] = {}
    for seed in range(meters):
        for content in run_day(Meter("electric", "m", seed, now=T0, rate_scale=scale)):
            counts[content["flow"]] = counts.get(content["flow"], 0) + 1
    scheduled = [f for f in flows.for_kind("electric") if f[flows.SCHED] == flows.SCHED_RANDOM]
    assert {f[flows.ID] for f in scheduled} == {
        "mr-multi-interval",
        "mr-ondemand",
        "pp-switch-state",
        *(f"ev-{name}" for name in ("audit-alert", "config", "fault", "pq-alarm")),
        "ev-security-alarm",
    }
    for flow_id in ("mr-multi-interval", "mr-ondemand", "pp-switch-state"):
        expected = flows.get(flow_id)[flows.PER_DAY] * scale * meters
        assert_near(counts[flow_id], expected, flow_id)


def test_events_come_at_one_per_thousand_meters_a_month() -> None:
    meters, scale = 200, 3000  # 3000 x (1 / 30000 a day) = 0.1 a day each
    counts: dict[str, int] = {}
    for seed in range(meters):
        meter = only(Meter("electric", "m", seed, now=T0, rate_scale=scale), "ev-")
        for content in run_day(meter, step=900, days=3):
            counts[content["flow"]] = counts.get(content["flow"], 0) + 1
    for flow_id in ("ev-audit-alert", "ev-config", "ev-fault", "ev-pq-alarm", "ev-security-alarm"):
        assert_near(counts.get(flow_id, 0), meters * 3 * scale / 30000, flow_id)


def test_scheduled_flows_stay_inside_their_clock_window_on_the_meter_clock() -> None:
    tz = -5 * 3600  # a meter on US Eastern time
    seen = set()
    for seed in range(40):
        meter = Meter("electric", "m", seed, now=T0, rate_scale=400, tz=tz)
        for content in run_day(meter, step=60, days=2):
            start, end = flows.get(content["flow"])[flows.WINDOW]
            local_hour = (content["ts"] - 1 + tz) % DAY // 3600
            assert start <= local_hour < end, content
            seen.add((content["flow"], local_hour))
    assert {hour for flow_id, hour in seen if flow_id == "pp-switch-state"} == set(range(8, 20))
    assert {hour for flow_id, hour in seen if flow_id == "mr-multi-interval"} == set(range(7, 18))


def test_window_seconds() -> None:
    assert window_seconds(T0, T0 + DAY, (7, 18)) == 11 * 3600
    assert window_seconds(T0, T0 + 3 * DAY, (0, 24)) == 3 * DAY
    assert window_seconds(T0 + 17 * 3600, T0 + 32 * 3600, (7, 18)) == 3600 + 3600
    assert window_seconds(T0 + 12 * 3600, T0 + 13 * 3600, (7, 18), tz=-5 * 3600) == 3600
    assert window_seconds(T0 + 2 * 3600, T0 + 3 * 3600, (7, 18), tz=-5 * 3600) == 0
    assert window_seconds(T0 + 5, T0 + 5, (0, 24)) == 0


def test_gas_meters_report_every_four_or_six_hours_without_gaps() -> None:
    for period, count in ((4, 6), (6, 4)):
        meter = Meter("gas", "g", 11, now=T0, gas_period_h=period, rate_scale=0)
        messages = run_day(meter, step=3600, days=2)
        # The last period's report goes up to 30 minutes after its boundary.
        messages += [content for _, content in meter.due_flows(T0 + 2 * DAY + 1800)]
        assert [m["flow"] for m in messages] == [f"gas-interval-{period}h"] * (2 * count)
        assert [m["ts"] for m in messages] == [
            T0 + i * period * 3600 for i in range(1, 2 * count + 1)
        ]
        records = [record for m in messages for record in m["recs"]]
        assert [r["t"] for r in records] == list(range(T0 + 900, T0 + 2 * DAY + 1, 900))
        for before, after in itertools.pairwise(records):
            assert after["vm"] == before["vm"] + after["dvm"]
            assert after["vb"] == before["vb"] + after["dvb"]


def test_gas_meters_report_at_their_own_delay_after_the_boundary() -> None:
    delays = set()
    for seed in range(40):
        meter = Meter("gas", f"g{seed}", seed, now=T0, gas_period_h=4, rate_scale=0)
        assert 0 <= meter.report_delay < 1800
        delays.add(meter.report_delay)
        boundary = T0 + 4 * 3600
        assert meter.due_flows(boundary + meter.report_delay - 1) == []  # not yet
        [(_, report)] = meter.due_flows(boundary + meter.report_delay)
        assert report["ts"] == boundary and report["recs"][-1]["t"] == boundary
    assert len(delays) > 30  # spread out, not one instant for every meter


def test_a_seed_is_a_meter() -> None:
    def trace(seed: int) -> list[dict[str, Any]]:
        meter = Meter("electric", "m", seed, now=T0, rate_scale=50)
        return run_day(meter) + [c for _, c in meter.handle_command({"cmd": "read", "id": "c1"})]

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_registers_run_with_meter_time() -> None:
    meter = Meter("electric", "m", 3, now=T0, prepay=True)
    start, credit = meter.wh_del, meter.credit
    meter.advance(T0 + DAY)
    used = meter.wh_del - start
    assert 3000 < used < 60000  # a household: 3-60 kWh a day
    assert used == sum(meter.interval_wh(k) for k in range(T0 // 900, (T0 + DAY) // 900))
    assert meter.register_at((T0 + 12 * 3600) // 900) < meter.wh_del
    assert meter.credit < credit
    meter.advance(T0 + 400 * DAY)  # a long sleep is booked without a 40000-step loop
    assert meter.wh_del > start + 300 * 3000
    gas = Meter("gas", "g", 3, now=T0)
    volume = gas.gas_vm
    gas.advance(T0 + DAY)
    assert gas.gas_vm > volume and gas.gas_vb > gas.gas_vm  # base conditions: more litres


# ---- commands ------------------------------------------------------------------------------

ELECTRIC = {"prepay": False}
PREPAY = {"prepay": True}
DEV = "000D6F00AABBCCDD"
JOINED = "000D6F0011223344"  # joined before the command of a case is sent

# (meter keyword arguments, command, the flows it answers with)
CASES: list[tuple[dict[str, Any], dict[str, Any], list[str]]] = [
    (ELECTRIC, {"cmd": "read"}, ["mr-ondemand"]),
    (ELECTRIC, {"cmd": "read", "src": "ipd"}, ["mr-ondemand-ipd"]),
    (ELECTRIC, {"cmd": "read", "src": "ems"}, ["mr-ondemand-ems"]),
    (ELECTRIC, {"cmd": "read", "n": 96}, ["mr-multi-interval"]),
    (ELECTRIC, {"cmd": "read", "src": "tv"}, ["mr-ondemand-err"]),
    (ELECTRIC, {"cmd": "read", "src": "ipd", "colour": 1}, ["mr-ondemand-err-ipd"]),
    (ELECTRIC, {"cmd": "read", "src": "ems", "n": 0}, ["mr-ondemand-err-ems"]),
    (ELECTRIC, {"cmd": "reboot"}, ["mr-ondemand-err"]),
    (PREPAY, {"cmd": "read"}, ["pp-ondemand"]),
    (PREPAY, {"cmd": "read", "src": "ipd"}, ["pp-ondemand-ipd"]),
    (PREPAY, {"cmd": "read", "src": "ems"}, ["pp-ondemand-ems"]),
    (PREPAY, {"cmd": "read", "n": "all"}, ["pp-ondemand-err"]),
    (PREPAY, {"cmd": "read", "src": "ipd", "n": 500}, ["pp-ondemand-err-ipd"]),
    (PREPAY, {"cmd": "read", "src": "ems", "x": 1}, ["pp-ondemand-err-ems"]),
    (PREPAY, {"cmd": "switch", "op": "status"}, ["pp-switch-state"]),
    (PREPAY, {"cmd": "switch", "op": "disconnect"}, ["pp-switch-ack", "pp-metrology"]),
    (ELECTRIC, {"cmd": "switch", "op": "connect"}, ["pp-switch-ack", "pp-metrology"]),
    (PREPAY, {"cmd": "switch", "op": "toggle"}, ["pp-switch-fail"]),
    (PREPAY, {"cmd": "switch"}, ["pp-switch-fail"]),
    ({"opt_out_rate": 0}, {"cmd": "dr", "ev": 77}, ["dr-ack-lms-utl"]),
    ({"opt_out_rate": 0}, {"cmd": "dr", "ev": 77, "src": "dsm"}, ["dr-ack-dsm-utl"]),
    ({"opt_out_rate": 0}, {"cmd": "dr", "ev": "e9", "prog": "repi"}, ["dr-ack-lms-repi"]),
    (
        {"opt_out_rate": 0},
        {"cmd": "dr", "ev": 1, "prog": "repi", "src": "dsm", "dur": 30, "shed": 50},
        ["dr-ack-dsm-repi"],
    ),
    ({"opt_out_rate": 1}, {"cmd": "dr", "ev": 77}, ["dr-optout-lms-utl"]),
    ({"opt_out_rate": 1}, {"cmd": "dr", "ev": 77, "src": "dsm"}, ["dr-optout-dsm-utl"]),
    ({"opt_out_rate": 1}, {"cmd": "dr", "ev": 77, "prog": "repi"}, ["dr-optout-lms-repi"]),
    (
        {"opt_out_rate": 1},
        {"cmd": "dr", "ev": 77, "prog": "repi", "src": "dsm"},
        ["dr-optout-dsm-repi"],
    ),
    (ELECTRIC, {"cmd": "dr"}, ["ev-audit-alert"]),
    (ELECTRIC, {"cmd": "dr", "ev": 5, "shed": 101}, ["ev-audit-alert"]),
    ({"dr_programs": ("utl",)}, {"cmd": "dr", "ev": 5, "prog": "repi"}, ["ev-audit-alert"]),
    (ELECTRIC, {"cmd": "han-join", "dev": DEV, "by": "utl"}, ["han-join-ack-utl"]),
    (ELECTRIC, {"cmd": "han-join", "dev": DEV}, ["han-join-ack-utl"]),
    (ELECTRIC, {"cmd": "han-join", "dev": DEV, "by": "repi"}, ["han-join-ack-repi"]),
    (ELECTRIC, {"cmd": "han-join", "dev": "xyz", "by": "utl"}, ["han-join-err-utl"]),
    (ELECTRIC, {"cmd": "han-join", "dev": "xyz"}, ["han-join-err"]),
    (ELECTRIC, {"cmd": "han-join", "dev": 12, "by": "repi"}, ["han-join-err-repi"]),
    (ELECTRIC, {"cmd": "han-join", "dev": DEV, "by": "nsa"}, ["han-join-err"]),
    (ELECTRIC, {"cmd": "han-unjoin", "dev": JOINED, "by": "utl"}, ["han-unjoin-ack-utl"]),
    (ELECTRIC, {"cmd": "han-unjoin", "dev": JOINED}, ["han-unjoin-ack-utl"]),
    (ELECTRIC, {"cmd": "han-unjoin", "dev": JOINED, "by": "repi"}, ["han-unjoin-ack-repi"]),
    (ELECTRIC, {"cmd": "han-unjoin", "dev": DEV, "by": "utl"}, ["han-unjoin-err-utl"]),
    (ELECTRIC, {"cmd": "han-unjoin", "dev": DEV}, ["han-unjoin-err"]),
    (ELECTRIC, {"cmd": "han-unjoin", "dev": DEV, "by": "repi"}, ["han-unjoin-err-repi"]),
    (ELECTRIC, {"cmd": "fw", "target": "metrology", "ver": "3.2.0"}, ["fw-metrology-fw"]),
    (ELECTRIC, {"cmd": "fw", "target": "nic", "ver": "5.3.1"}, ["fw-nic-fw"]),
    (
        ELECTRIC,
        {"cmd": "fw", "target": "metrology", "image": "program", "ver": "p51"},
        ["fw-metrology-prog"],
    ),
    (ELECTRIC, {"cmd": "fw", "target": "nic", "image": "program", "ver": "n9"}, ["fw-nic-prog"]),
    (
        ELECTRIC,
        {"cmd": "fw", "target": "metrology", "ver": "3.2.1", "via": "tool"},
        ["fw-metrology-fw-tool"],
    ),
    (ELECTRIC, {"cmd": "fw", "target": "nic", "ver": "5.4", "via": "tool"}, ["fw-nic-fw-tool"]),
    (
        ELECTRIC,
        {"cmd": "fw", "target": "metrology", "image": "program", "ver": "p52", "via": "tool"},
        ["fw-metrology-prog-tool"],
    ),
    (
        ELECTRIC,
        {"cmd": "fw", "target": "nic", "image": "program", "ver": "n10", "via": "tool"},
        ["fw-nic-prog"],  # the tables have no row of its own for this one
    ),
    (ELECTRIC, {"cmd": "fw", "target": "gpu", "ver": "1"}, ["ev-audit-alert"]),
    (ELECTRIC, {"cmd": "price", "price": 145, "tier": 2}, ["ev-audit-alert"]),
    (ELECTRIC, {"cmd": "price", "price": -1}, ["ev-audit-alert"]),
    ({"kind": "gas"}, {"cmd": "read"}, ["gas-interval-{period}h"]),
    ({"kind": "gas"}, {"cmd": "switch", "op": "connect"}, ["ev-audit-alert"]),
    ({"kind": "gas"}, {"cmd": "reboot"}, ["ev-audit-alert"]),
]


def make_meter(kwargs: dict[str, Any], seed: int = 1) -> Meter:
    kwargs = dict(kwargs)
    kind = kwargs.pop("kind", "electric")
    return Meter(kind, "mtr-1", seed, now=T0 + 12 * 3600, **kwargs)


def test_every_command_answers_with_its_flow_inside_the_table_sizes() -> None:
    reachable = set()
    for number, (kwargs, command, expected) in enumerate(CASES):
        meter = make_meter(kwargs)
        meter.rng.chance = lambda p: p >= 1  # no random 1-in-1000 failures here
        ref = f"c{number:06d}"
        if command.get("dev") == JOINED:
            meter.handle_command({"cmd": "han-join", "dev": JOINED})
        answers = meter.handle_command({**command, "id": ref})
        ids = [content["flow"] for _, content in answers]
        period = meter.gas_period_h
        assert ids == [flow_id.format(period=period) for flow_id in expected], command
        for family, content in answers:
            flow = flows.get(content["flow"])
            assert family == flow[flows.FAMILY]
            low, high = flows.size_bounds(flow)
            assert low <= flows.payload_size(content) <= high, content
            if not content["flow"].startswith("dr-"):
                assert content["ref"] == ref  # DR answers name the event instead
            reachable.add(content["flow"])
    scheduled = {f[flows.ID] for f in flows.all_flows() if f[flows.SCHED] != flows.SCHED_CMD}
    missing = {f[flows.ID] for f in flows.all_flows()} - reachable - scheduled
    assert missing == set()


def test_random_failures_follow_the_tables_rates() -> None:
    meter = make_meter(PREPAY, seed=9)
    failures = 0
    for i in range(20000):
        op = "connect" if i % 2 else "disconnect"
        answers = meter.handle_command({"cmd": "switch", "op": op, "id": i})
        if answers[0][1]["flow"] == "pp-switch-fail":
            assert answers[0][1]["e"] == "fault" and len(answers) == 1
            failures += 1
    assert_near(failures, 20000 * 0.001, "switch failures")
    meter = make_meter({"opt_out_rate": 0.1}, seed=9)
    outs = sum(
        meter.handle_command({"cmd": "dr", "ev": i})[0][1]["flow"] == "dr-optout-lms-utl"
        for i in range(3000)
    )
    assert_near(outs, 300, "DR opt-outs")


def test_commands_change_the_meter() -> None:
    meter = make_meter(PREPAY)
    k = meter.now // 900
    assert meter.interval_wh(k + 1) > 0
    ack, metrology = meter.handle_command({"cmd": "switch", "op": "disconnect", "id": "c1"})
    assert meter.switch == 0 and ack[1]["sw"] == 0 and metrology[1]["sw"] == 0
    assert meter.interval_wh(k + 1) == 0
    meter.handle_command({"cmd": "switch", "op": "connect", "id": "c2"})
    assert meter.switch == 1 and meter.interval_wh(k + 1) > 0

    during, after = meter.interval_wh(k + 2), meter.interval_wh(k + 6)
    start = (k + 1) * 900
    [(_, ack)] = meter.handle_command({"cmd": "dr", "ev": 5, "start": start, "dur": 60, "shed": 50})
    assert ack["flow"] == "dr-ack-lms-utl" and (ack["ev"], ack["sh"]) == (5, 50)
    assert meter.interval_wh(k + 2) == during * 50 // 100  # load shed while the event runs
    assert meter.interval_wh(k + 6) == after  # and back after its hour

    joined = len(meter.han)
    [(_, ack)] = meter.handle_command({"cmd": "han-join", "dev": DEV.lower(), "id": "c3"})
    assert DEV in meter.han and ack["n"] == joined + 1
    [(_, ack)] = meter.handle_command({"cmd": "han-join", "dev": DEV, "id": "c4"})
    assert ack["flow"] == "han-join-ack-utl" and ack["n"] == joined + 1  # already joined
    [(_, ack)] = meter.handle_command({"cmd": "han-unjoin", "dev": DEV, "id": "c5"})
    assert DEV not in meter.han and ack["flow"] == "han-unjoin-ack-utl"
    for i in range(8):
        meter.handle_command({"cmd": "han-join", "dev": f"000D6F00000000{i:02X}"})
    [(_, full)] = meter.handle_command({"cmd": "han-join", "dev": DEV, "by": "repi"})
    assert full["flow"] == "han-join-err-repi" and full["e"] == "full"

    [(_, done)] = meter.handle_command({"cmd": "fw", "target": "nic", "ver": "6.0.0"})
    assert done["ver"] == "6.0.0" == meter.version("nic", "firmware")

    [(_, alert)] = meter.handle_command({"cmd": "price", "price": 321, "id": "c6"})
    assert alert["ev"] == "3." + flows.EVENT_TARIFF and alert["p"] == 321
    [(_, state)] = meter.handle_command({"cmd": "switch", "op": "status"})
    assert state["p"] == 321


def test_a_bulk_read_asks_for_a_day_of_intervals_unless_it_says_otherwise() -> None:
    meter = make_meter(ELECTRIC)
    [(_, day)] = meter.handle_command({"cmd": "bulk", "id": "c1"})
    [(_, read)] = meter.handle_command({"cmd": "read", "n": 96, "id": "c2"})
    assert day["flow"] == read["flow"] == "mr-multi-interval"
    assert day["n"] == read["n"] == 96


def test_prepaid_credit_is_charged_at_the_half_hours_rate_of_the_price_signal() -> None:
    def credit_used(command: dict[str, Any]) -> int:
        meter = Meter("electric", "m", 3, now=T0, prepay=True)
        meter.handle_command(command)
        credit = meter.credit
        meter.advance(T0 + DAY)
        return credit - meter.credit

    flat = credit_used({"cmd": "price", "price": 100})
    # Free before noon, double after: the day costs about as much as the flat rate's day.
    shaped = [0] * 24 + [200] * 24
    day = credit_used({"cmd": "price", "price": 100, "start": T0, "hh": shaped})
    morning = credit_used({"cmd": "price", "price": 100, "start": T0, "hh": [0] * 48})
    assert morning == 0 < flat
    assert day != flat and 0.5 * flat < day < 2 * flat


def test_a_price_signal_with_bad_half_hourly_rates_is_refused() -> None:
    meter = make_meter(ELECTRIC)
    for rates in ([], [1] * 49, [-1], [1.5], "cheap"):
        [(_, alert)] = meter.handle_command({"cmd": "price", "price": 90, "hh": rates})
        assert alert["e"] == "hh", rates
    assert meter.price_hh is None


def test_bad_commands_get_command_errors_that_say_what_is_wrong() -> None:
    meter = make_meter(ELECTRIC)

    def answer(command: Any) -> dict[str, Any]:
        [(_, content)] = meter.handle_command(command)
        return content

    assert answer({"cmd": "reboot", "id": "c1"})["e"] == "cmd"
    assert answer({"cmd": "reboot", "id": "c1"})["rc"] == 4
    assert answer({"cmd": "read", "id": "c1", "colour": "red"})["f"] == "colour"
    assert answer({"cmd": "read", "n": True})["e"] == "n"  # a bool is not a number
    assert answer({"cmd": "read", "id": ["x"]})["e"] == "id"
    assert answer("read")["flow"] == "mr-ondemand-err"
    assert answer(None)["e"] == "cmd"
    assert answer({"cmd": "dr", "ev": True})["e"] == "ev"
    assert answer({"cmd": "dr", "ev": 1, "dur": 1.5})["e"] == "dur"
    assert answer({"cmd": "fw", "target": "nic"})["e"] == "ver"
    gas = make_meter({"kind": "gas"})
    [(_, content)] = gas.handle_command({"cmd": "han-join", "dev": DEV, "id": "c2"})
    assert content["flow"] == "ev-audit-alert" and content["e"] == "kind"
    assert content["ev"].startswith("7.")  # a gas meter's event


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
commands = st.fixed_dictionaries(
    {
        "cmd": st.sampled_from(
            ["read", "bulk", "switch", "dr", "han-join", "han-unjoin", "fw", "price"]
        )
    },
    optional={
        key: json_values | st.sampled_from(["hes", "ipd", "utl", "repi", "nic", "tool", DEV])
        for key in (
            *("id", "src", "n", "op", "ev", "prog", "dur", "shed", "start", "dev", "by"),
            *("target", "image", "ver", "via", "price", "tier", "hh", "extra"),
        )
    },
)


@settings(max_examples=400, deadline=None)
@given(command=commands | json_values, kind=st.sampled_from(["electric", "gas"]))
def test_any_command_gets_an_answer_and_never_an_exception(command: Any, kind: str) -> None:
    meter = Meter(kind, "m", 3, now=T0 + 40000, prepay=True)
    answers = meter.handle_command(command)
    assert answers
    for family, content in answers:
        assert family in flows.families(kind)
        assert flows.get(content["flow"])[flows.FAMILY] == family
        json.dumps(content)


# ---- MicroPython ---------------------------------------------------------------------------

DAY_AND_COMMANDS = """
import gc, json, sys
from meter import Meter
T0 = int(sys.argv[1])
commands = json.load(open("config.json"))


def show(family, content):
    # Streamed, so the test's own output does not need a 2 KB string on the meter's heap.
    json.dump([family, content], sys.stdout)
    print()


for kind, seed in (("electric", 4), ("gas", 5)):
    meter = Meter(kind, "mtr", seed, now=T0, prepay=True, rate_scale=500, opt_out_rate=0.5)
    for now in range(T0 + 600, T0 + 86400 + 1, 600):
        for family, content in meter.due_flows(now):
            show(family, content)
        gc.collect()
    for command in commands:
        for family, content in meter.handle_command(command):
            show(family, content)
    meter = None
    gc.collect()
"""


@mp.needs_micropython
def test_micropython_runs_the_same_meter_day_and_answers() -> None:
    commands = [{**command, "id": f"c{i}"} for i, (_, command, _) in enumerate(CASES)]
    commands += [{"cmd": "dr", "ev": i} for i in range(20)] + ["junk", {"cmd": None}]
    result = mp.run(DAY_AND_COMMANDS, str(T0), config=commands)
    assert result.rc == 0, result.output
    expected = []
    for kind, seed in (("electric", 4), ("gas", 5)):
        meter = Meter(kind, "mtr", seed, now=T0, prepay=True, rate_scale=500, opt_out_rate=0.5)
        for now in range(T0 + 600, T0 + DAY + 1, 600):
            expected += [[family, content] for family, content in meter.due_flows(now)]
        for command in commands:
            expected += [[family, content] for family, content in meter.handle_command(command)]
    got = [json.loads(line) for line in result.lines]
    assert len(got) == len(expected) > 150
    assert got == expected

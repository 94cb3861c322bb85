"""The MDMS store, run against both backends: a SQLite file and a real PostgreSQL server.

PostgreSQL is the local server (tests/postgres.py): this module makes a database of its own
and drops it at the end; each test gets a schema of its own in it. Its cases are skipped,
with the reason, when no server answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from headend.config import HeadendConfigError, load_headend_config
from headend.store import (
    BulkReadAnswered,
    BulkReadReceived,
    CisAnswer,
    CisRequest,
    CommandRecord,
    InvalidRecord,
    MdmsStore,
    MeterMessage,
    PostgresMdmsStore,
    SQLiteMdmsStore,
    StoreError,
    open_store,
)
from tests.postgres import fresh_database

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


@pytest.fixture(scope="module")
def postgres_database() -> Iterator[str]:
    with fresh_database("mdms_store") as url:
        yield url


StoreFactory = Callable[[], MdmsStore]


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Makes (unopened) stores that all see the same database."""
    if request.param == "sqlite":
        yield lambda: SQLiteMdmsStore(tmp_path / "mdms" / "mdms.db")
        return
    url = request.getfixturevalue("postgres_database")
    schema = f"mdms_test_{uuid.uuid4().hex[:12]}"
    yield lambda: PostgresMdmsStore(url, schema=schema)


@pytest.fixture
async def store(make_store: StoreFactory) -> AsyncIterator[MdmsStore]:
    async with make_store() as opened:
        yield opened


def message(key: Any, **changes: Any) -> MeterMessage:
    """A plausible on-demand read of meter m1; any field can be changed."""
    fields: dict[str, Any] = {
        "key": key,
        "dap": "dap1",
        "meter": "m1",
        "family": "ondemand",
        "flow": "mr-ondemand",
        "ptype": "resp-data",
        "seq": 1,
        "meter_ts": T0,
        "created_at": T0,
        "received_at": T0 + 1,
        "size": 100,
        "budget_s": 5.0,
        "priority": 2,
        "content": {"flow": "mr-ondemand", "type": "resp-data", "seq": 1, "ts": int(T0)},
    }
    fields.update(changes)
    return MeterMessage(**fields)


def command(command_id: str, meter: str = "m1", name: str = "read") -> CommandRecord:
    body = {"cmd": name, "id": command_id.partition("@")[0]}
    return CommandRecord(command_id, "dap1", meter, name, body, T0, "test")


# ---- messages --------------------------------------------------------------------------------


async def test_a_message_is_stored_once(store: MdmsStore) -> None:
    assert await store.record_messages([message("a"), message("b")]) == 2
    assert await store.record_messages([message("b"), message("c"), message("c")]) == 1
    stored = await store.recent_messages()
    assert [m["key"] for m in stored] == ["c", "b", "a"]
    assert stored[0]["id"] > stored[1]["id"] > stored[2]["id"]
    assert await store.counts_by_flow() == {"mr-ondemand": 3}
    meters = await store.meters()
    assert [(m["meter"], m["messages"]) for m in meters] == [("m1", 3)]


async def test_a_message_comes_back_as_it_was_recorded(store: MdmsStore) -> None:
    # What a COPY in text format must escape: backslash, tab, newline (and NUL, in JSON).
    content = {"flow": "ev-fault", "type": "alarm", "ev": "3.18.85.79", "ctx": [1, 2],
               "s": "é\x00\\N\t\n\r"}  # fmt: skip
    key = "dap1/event/k\\N\t\n"
    sent = message(
        key, family="event", flow="ev-fault", ptype="alarm", seq=None, meter_ts=None, size=42,
        budget_s=None, priority=0, content=content,
    )  # fmt: skip
    others = [message(f"other{i}") for i in range(60)]  # a batch PostgreSQL COPies
    assert await store.record_messages([sent, *others]) == 61
    assert await store.record_messages([sent]) == 0
    got = next(m for m in await store.recent_messages(limit=100) if m["key"] == key)
    assert (got["key"], got["content"]) == (key, content)
    assert (got["family"], got["flow"], got["ptype"], got["seq"], got["meter_ts"]) == (
        "event", "ev-fault", "alarm", None, None,
    )  # fmt: skip
    assert (got["size"], got["budget_s"], got["priority"], got["latency"]) == (42, None, 0, 1.0)


async def test_recent_messages_by_meter_family_and_after_id(store: MdmsStore) -> None:
    await store.record_messages(
        [
            message("1", meter="m1"),
            message("2", meter="m2", family="event", flow="ev-fault", ptype="alarm"),
            message("3", meter="m1", family="event", flow="ev-config", ptype="alarm"),
            message("4", meter="m2"),
        ]
    )
    everything = await store.recent_messages()
    assert [m["key"] for m in everything] == ["4", "3", "2", "1"]
    assert [m["key"] for m in await store.recent_messages(meter="m1")] == ["3", "1"]
    assert [m["key"] for m in await store.recent_messages(family="event")] == ["3", "2"]
    assert [m["key"] for m in await store.recent_messages(meter="m2", family="event")] == ["2"]
    after = everything[2]["id"]  # message "2"
    assert [m["key"] for m in await store.recent_messages(after_id=after)] == ["4", "3"]
    assert [m["key"] for m in await store.recent_messages(limit=1)] == ["4"]
    assert await store.recent_messages(after_id=everything[0]["id"]) == []


async def test_concurrent_batches_store_each_key_once(store: MdmsStore) -> None:
    batches = [[message(f"k{i}") for i in range(start, start + 20)] for start in range(0, 60, 10)]
    new = await asyncio.gather(*(store.record_messages(batch) for batch in batches))
    assert sum(new) == 70
    ids = [m["id"] for m in await store.recent_messages(limit=1000)]
    assert len(ids) == len(set(ids)) == 70
    assert (await store.meters())[0]["messages"] == 70


# ---- meters ----------------------------------------------------------------------------------


def on_demand(key: str, meter_ts: float, wh: int, **changes: Any) -> MeterMessage:
    content = {"flow": "mr-ondemand", "type": "resp-data", "obis": {"1.8.0": wh, "32.7.0": 2301}}
    return message(key, meter_ts=meter_ts, content=content, **changes)


async def test_meters_show_their_latest_registers_by_meter_time(store: MdmsStore) -> None:
    interval = {
        "flow": "mr-multi-interval",
        "type": "resp-data",
        "t0": int(T0),
        "ip": 900,
        "n": 3,
        "ch": [{"rt": "0.0.2.4.1.1.12.0.0.0.0.0.0.0.0.0.72.0", "v": [100, 200, 300], "r0": 5000}],
    }
    gas = {
        "flow": "gas-interval-4h",
        "type": "resp-data",
        "recs": [{"t": T0, "vm": 1000, "vb": 1037}, {"t": T0 + 900, "vm": 1500, "vb": 1555}],
    }
    await store.record_messages(
        [
            on_demand("e1", T0 + 3600, 7000),
            # Bulk interval data arrives after the on-demand read (lower priority), but was
            # read earlier on the meter: it must not replace the newer register.
            message("e2", family="reading", flow="mr-multi-interval", meter_ts=T0 + 1800,
                    content=interval, received_at=T0 + 50),
            message("g1", meter="g1", family="reading", flow="gas-interval-4h", content=gas),
        ]
    )  # fmt: skip
    meters = {m["meter"]: m for m in await store.meters()}
    assert meters["m1"]["registers"] == {"1.8.0": 7000, "32.7.0": 2301}
    assert meters["m1"]["read_at"] == T0 + 3600
    assert meters["g1"]["registers"] == {"vm": 1500, "vb": 1555}

    # A later interval read updates 1.8.0 to the register at its end: r0 + its intervals.
    await store.record_messages(
        [message("e3", family="reading", flow="mr-multi-interval", meter_ts=T0 + 7200,
                 content=interval)]
    )  # fmt: skip
    m1 = await store.meter("m1")
    assert m1 is not None
    assert m1["registers"] == {"1.8.0": 5600, "32.7.0": 2301}
    assert m1["read_at"] == T0 + 7200


async def test_meter_summary_counts_alarms_and_follows_switch_and_dap(store: MdmsStore) -> None:
    def switch(key: str, sw: int, meter_ts: float, **changes: Any) -> MeterMessage:
        content = {"flow": "pp-switch-ack", "type": "ack", "sw": sw}
        return message(key, family="prepay", flow="pp-switch-ack", ptype="ack",
                       meter_ts=meter_ts, content=content, **changes)  # fmt: skip

    await store.record_messages(
        [
            message("a1", family="event", flow="ev-fault", ptype="alarm", received_at=T0 + 10),
            message("a2", family="event", flow="ev-audit-alert", ptype="alert", received_at=T0 + 5),
            switch("s1", 0, T0 + 100, received_at=T0 + 20),
            switch("s0", 1, T0 + 50, received_at=T0 + 30),  # older on the meter: ignored
        ]
    )
    m1 = await store.meter("m1")
    assert m1 is not None
    assert (m1["messages"], m1["alarms"], m1["switch"], m1["switch_at"]) == (4, 1, 0, T0 + 100)
    assert (m1["first_seen"], m1["last_seen"], m1["dap"]) == (T0 + 5, T0 + 30, "dap1")
    assert [m["key"] for m in m1["recent"]] == ["s0", "s1", "a2", "a1"]

    # The meter moved to another DAP: the latest message says where it is.
    await store.record_messages([message("moved", dap="dap2", received_at=T0 + 40)])
    await store.record_messages([message("late", dap="dap1", received_at=T0 + 35)])
    m1 = await store.meter("m1")
    assert m1 is not None
    assert (m1["dap"], m1["last_seen"]) == ("dap2", T0 + 40)
    assert await store.meter("nobody") is None


async def test_meters_page_in_id_order(store: MdmsStore) -> None:
    await store.record_messages(
        [on_demand(f"k{i}", T0, 1000 + i, meter=f"m{i:02d}") for i in range(12)]
    )
    page = await store.meters(limit=5, offset=5)
    assert [m["meter"] for m in page] == [f"m{i:02d}" for i in range(5, 10)]
    assert [m["registers"]["1.8.0"] for m in page] == [1005, 1006, 1007, 1008, 1009]
    assert len(await store.meters(offset=10)) == 2


# ---- commands --------------------------------------------------------------------------------


async def test_an_answer_completes_its_command(store: MdmsStore) -> None:
    await store.record_command(command("c1", name="switch"))
    await store.record_command(command("c2"))
    assert (await store.command("c1") or {})["status"] == "pending"

    ack = {"flow": "pp-switch-ack", "type": "ack", "sw": 0, "ref": "c1"}
    metrology = {"flow": "pp-metrology", "type": "resp-data", "sw": 0, "ref": "c1", "obis": {}}
    await store.record_messages(
        [
            message("r1", family="prepay", flow="pp-switch-ack", ptype="ack", content=ack,
                    received_at=T0 + 3),
            message("r2", family="prepay", flow="pp-metrology", content=metrology,
                    received_at=T0 + 4),
        ]
    )  # fmt: skip
    c1 = await store.command("c1")
    assert c1 is not None
    assert (c1["status"], c1["result"], c1["answered_at"]) == ("answered", ack, T0 + 3)
    assert c1["body"] == {"cmd": "switch", "id": "c1"}
    assert [m["key"] for m in c1["answers"]] == ["r1", "r2"]
    assert (await store.command("c2") or {})["status"] == "pending"
    overview = await store.overview(online_since=0)
    assert overview["commands"] == {"pending": 1, "answered": 1, "failed": 0, "timed-out": 0}


async def test_an_unanswered_command_times_out_and_a_late_answer_still_completes_it(
    store: MdmsStore,
) -> None:
    for command_id, issued_at in (("old", T0), ("new", T0 + 100), ("answered", T0)):
        await store.record_command(dataclasses.replace(command(command_id), issued_at=issued_at))
    answer = {"flow": "mr-ondemand", "type": "resp-data", "ref": "answered"}
    await store.record_messages([message("a1", content=answer)])

    timed_out = await store.time_out_commands(issued_before=T0 + 50)
    assert [c["id"] for c in timed_out] == ["old"] and timed_out[0]["status"] == "timed-out"
    assert await store.time_out_commands(issued_before=T0 + 50) == []  # marked once
    assert (await store.command("new") or {})["status"] == "pending"
    assert (await store.command("answered") or {})["status"] == "answered"
    counts = (await store.overview(online_since=0))["commands"]
    assert counts == {"pending": 1, "answered": 1, "failed": 0, "timed-out": 1}

    late = {"flow": "mr-ondemand", "type": "resp-data", "ref": "old"}
    await store.record_messages([message("a2", content=late, received_at=T0 + 400)])
    old = await store.command("old") or {}
    assert (old["status"], old["answered_at"]) == ("answered", T0 + 400)


async def test_a_command_error_fails_its_command(store: MdmsStore) -> None:
    await store.record_command(command("c9"))
    err = {"flow": "mr-ondemand-err", "type": "cmd-err", "e": "n", "cmd": "read", "rc": 12}
    await store.record_messages(
        [message("e2", flow="mr-ondemand-err", ptype="cmd-err", content={**err, "ref": "c9"})]
    )
    c9 = await store.command("c9")
    assert c9 is not None
    assert (c9["status"], c9["result"]["e"]) == ("failed", "n")


async def test_an_integer_ref_matches(store: MdmsStore) -> None:
    await store.record_command(command("17"))
    await store.record_messages([message("a", content={"ref": 17, "obis": {}})])
    assert (await store.command("17") or {})["status"] == "answered"


async def test_an_answer_stored_before_its_command_completes_it(store: MdmsStore) -> None:
    answer = {"flow": "mr-ondemand", "type": "resp-data", "ref": "early"}
    await store.record_messages([message("a", content=answer, received_at=T0 + 2)])
    await store.record_command(command("early"))
    early = await store.command("early")
    assert early is not None
    assert (early["status"], early["result"], early["answered_at"]) == ("answered", answer, T0 + 2)


async def test_a_group_command_is_answered_per_meter(store: MdmsStore) -> None:
    for meter in ("m1", "m2", "m3"):
        await store.record_command(command(f"g1@{meter}", meter=meter))
    await store.record_messages(
        [
            message("a1", meter="m1", content={"ref": "g1"}),
            message("a2", meter="m2", ptype="cmd-err", content={"ref": "g1", "e": "fault"}),
        ]
    )
    states = {c["meter"]: c["status"] for c in await store.commands()}
    assert states == {"m1": "answered", "m2": "failed", "m3": "pending"}
    g1_m2 = await store.command("g1@m2")
    assert g1_m2 is not None and [m["key"] for m in g1_m2["answers"]] == ["a2"]
    # The answer of m3, stored before its record: found through the group id and the meter.
    await store.record_messages([message("a3", meter="m3", content={"ref": "g1"})])
    await store.record_command(command("g1@m3", meter="m3"))
    assert (await store.command("g1@m3") or {})["status"] == "answered"


async def test_commands_newest_first_and_by_meter(store: MdmsStore) -> None:
    for i, meter in enumerate(("m1", "m2", "m1")):
        record = command(f"c{i}", meter=meter)
        await store.record_command(
            CommandRecord(record.id, "dap1", meter, "read", record.body, T0 + i, "ops")
        )
    assert [c["id"] for c in await store.commands()] == ["c2", "c1", "c0"]
    assert [c["id"] for c in await store.commands(limit=2)] == ["c2", "c1"]
    assert [c["id"] for c in await store.commands(meter="m1")] == ["c2", "c0"]
    # Recording a known id again keeps the first record.
    await store.record_command(CommandRecord("c0", "dap9", "m9", "fw", {}, T0 + 9, "other"))
    c0 = await store.command("c0")
    assert c0 is not None and (c0["meter"], c0["issued_by"]) == ("m1", "ops")
    assert await store.command("unknown") is None


async def test_every_command_pages_in_the_order_issued_with_when_it_reached_the_dap(
    store: MdmsStore,
) -> None:
    # Two share an issue time (a group command's members): the id orders them.
    for command_id, at in (("c3", T0 + 2), ("c1", T0), ("c2b", T0 + 1), ("c2a", T0 + 1)):
        await store.record_command(CommandRecord(command_id, "dap1", "m1", "read", {}, at, "ops"))
    await store.record_command_reached_dap([("c1", T0 + 0.25), ("unknown", T0)])
    await store.record_command_reached_dap([("c1", T0 + 9)])  # the first time is kept
    seen, after = [], None
    while True:
        page = await store.commands_in_order(after, limit=2)
        seen.extend(page)
        if len(page) < 2:
            break
        after = (page[-1]["issued_at"], page[-1]["id"])
    assert [c["id"] for c in seen] == ["c1", "c2a", "c2b", "c3"]
    assert [c["reached_dap_at"] for c in seen] == [T0 + 0.25, None, None, None]


async def test_a_database_from_before_reached_dap_at_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # the commands table as an earlier release made it
        old.execute(
            "CREATE TABLE commands (id TEXT PRIMARY KEY, dap TEXT NOT NULL, meter TEXT NOT NULL,"
            " name TEXT NOT NULL, body TEXT NOT NULL, issued_at REAL NOT NULL, issued_by TEXT"
            " NOT NULL, status TEXT NOT NULL, result TEXT, answered_at REAL)"
        )
        old.execute("INSERT INTO commands VALUES ('c1','d','m1','read','{}',1.0,'ops','pending',"
                    "NULL,NULL)")  # fmt: skip
    async with open_store(str(path)) as store:
        await store.record_command_reached_dap([("c1", 2.0)])
        assert (await store.command("c1") or {})["reached_dap_at"] == 2.0


async def test_a_database_from_before_the_container_in_the_key_is_upgraded(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # the messages table as an earlier release made it
        old.execute(
            "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL "
            "UNIQUE, dap TEXT NOT NULL, meter TEXT NOT NULL, family TEXT NOT NULL, flow TEXT NOT"
            " NULL, ptype TEXT NOT NULL, seq INTEGER, meter_ts REAL, created_at REAL NOT NULL,"
            " received_at REAL NOT NULL, latency REAL NOT NULL, size INTEGER NOT NULL, budget_s"
            " REAL, priority INTEGER NOT NULL, ref TEXT, content TEXT NOT NULL)"
        )
        for key, family, created in (
            ("dap1/m1_7", "ondemand", T0),
            ("dap1/m1_8", "event", T0),
            ("dap1/m1_9", "ondemand", T0 - 86_400),
            ("other", "event", T0),
        ):
            old.execute(
                "INSERT INTO messages (key, dap, meter, family, flow, ptype, created_at, "
                "received_at, latency, size, priority, content) "
                "VALUES (?, 'dap1', 'm1', ?, 'f', 'resp-data', ?, ?, 1.0, 10, 2, '{}')",
                (key, family, created, created + 1),
            )  # fmt: skip
    async with open_store(str(path)) as store:
        keys = [m["key"] for m in await store.recent_messages()]
        assert keys == ["other", "dap1/ondemand/m1_9", "dap1/event/m1_8", "dap1/ondemand/m1_7"]
        # A copy of an old message, keyed as the MDMS keys it now, is known.
        assert await store.record_messages([message("dap1/event/m1_8")]) == 0
    with sqlite3.connect(path) as upgraded:
        days = upgraded.execute("SELECT day, family, messages FROM message_days ORDER BY 1, 2")
        assert days.fetchall() == [(20453, "ondemand", 1), (20454, "event", 2),
                                   (20454, "ondemand", 1)]  # fmt: skip
    async with open_store(str(path)) as store:  # upgraded once: opening again changes nothing
        assert len(await store.recent_messages()) == 4


def test_a_retention_needs_postgres(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention of MDMS messages needs PostgreSQL"):
        open_store(str(tmp_path / "a.db"), None, retention_days=30)
    with pytest.raises(HeadendConfigError, match="retention_days needs postgres_url"):
        load_headend_config(None, {"mdms.retention_days": 30}, environ={})
    config = load_headend_config(
        None, {"mdms.retention_days": 30, "mdms.postgres_url": "postgresql://db/mdms"}, environ={}
    )
    assert config.mdms.retention_days == 30


# ---- latency and counts ----------------------------------------------------------------------


async def test_latency_per_family_against_the_budget(store: MdmsStore) -> None:
    # Latencies 1..100 s in one family, over two flows with budgets 90 s and 60 s.
    batch = [
        message(f"r{i}", family="reading", flow="a" if i % 2 else "b",
                budget_s=90.0 if i % 2 else 60.0, created_at=T0, received_at=T0 + i)
        for i in range(100, 0, -1)
    ]  # fmt: skip
    batch.append(message("e1", family="event", flow="ev-fault", budget_s=None, received_at=T0 + 7))
    await store.record_messages(batch)
    stats = await store.latency_by_family()
    assert stats["reading"] == {
        "count": 100,
        "p50": 50.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
        "budget_s": 60.0,  # the tightest budget seen in the family
        "within_budget": 45 + 30,  # odd latencies <= 90 s, even ones <= 60 s
    }
    assert stats["event"] == {
        "count": 1, "p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0, "budget_s": None,
        "within_budget": 0,
    }  # fmt: skip
    assert await store.counts_by_flow() == {"a": 50, "b": 50, "ev-fault": 1}


async def test_latency_percentiles_of_a_few_messages(store: MdmsStore) -> None:
    await store.record_messages(
        [message(f"k{i}", received_at=T0 + latency) for i, latency in enumerate((3, 1, 2))]
    )
    stats = (await store.latency_by_family())["ondemand"]
    assert (stats["p50"], stats["p95"], stats["p99"], stats["max"]) == (2.0, 3.0, 3.0, 3.0)
    assert stats["within_budget"] == 3


async def test_overview_counts(store: MdmsStore) -> None:
    await store.record_messages(
        [
            message("1", meter="m1", received_at=T0 + 100),
            message("2", meter="m2", received_at=T0 + 10),
            message("3", meter="m2", family="event", flow="ev-pq-alarm", ptype="alarm"),
            message("4", meter="m3", family="event", flow="ev-audit-alert", ptype="alert"),
        ]
    )
    overview = await store.overview(online_since=T0 + 50)
    assert overview["meters"] == {"total": 3, "online": 1}
    assert overview["messages"] == {"event": 2, "ondemand": 2}
    assert (overview["alarms"], overview["alerts"]) == (1, 1)
    assert overview["commands"] == {"pending": 0, "answered": 0, "failed": 0, "timed-out": 0}


# ---- gateways --------------------------------------------------------------------------------


async def test_gateway_status_keeps_the_latest_report(store: MdmsStore) -> None:
    newer = {"outbox": {"0": 0, "1": 2, "2": 5, "3": 40}, "shed": 3, "meters": 12}
    await store.record_gateway_status("dap1", T0 + 20, newer)
    await store.record_gateway_status("dap1", T0 + 10, {"outbox": {}, "shed": 0})  # late, older
    await store.record_gateway_status("dap2", T0, {"outbox": {"3": 1}})
    status = await store.gateway_status()
    assert status == {
        "dap1": {"at": T0 + 20, "status": newer},
        "dap2": {"at": T0, "status": {"outbox": {"3": 1}}},
    }


# ---- bad input -------------------------------------------------------------------------------


class NotJson:
    pass


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"content": {"v": NotJson()}}, "content is not JSON-serialisable"),
        ({"content": {"v": {1, 2}}}, "content is not JSON-serialisable"),
        ({"content": {1: "non-string key"}}, "content is not JSON-serialisable"),
        ({"content": {"big": 2**70}}, "content is not JSON-serialisable"),
        ({"content": ["not", "a", "dict"]}, "content must be a dict"),
        ({"meter": None}, "meter must be a non-empty string"),
        ({"meter": ""}, "meter must be a non-empty string"),
        ({"dap": "d\x00p"}, "dap must be a non-empty string"),
        ({"key": 7}, "key must be a non-empty string"),
        ({"seq": "3"}, "seq must be a 64-bit integer"),
        ({"seq": True}, "seq must be a 64-bit integer"),
        ({"seq": 2**63}, "seq must be a 64-bit integer"),
        ({"created_at": math.nan}, "created_at must be a finite number"),
        ({"received_at": None}, "received_at must be a finite number"),
        ({"budget_s": "5"}, "budget_s must be a finite number"),
        ({"size": -1}, "size must not be negative"),
        ({"priority": 1.5}, "priority must be a 64-bit integer"),
    ],
)
async def test_a_bad_message_is_refused_and_nothing_of_its_batch_is_stored(
    store: MdmsStore, changes: dict[str, Any], complaint: str
) -> None:
    await store.record_command(command("c1"))
    version = store.version
    good = message("good", content={"ref": "c1"})
    with pytest.raises(InvalidRecord, match=complaint):
        await store.record_messages([good, message(**{"key": "bad", **changes})])
    assert store.version == version
    assert await store.recent_messages() == []
    assert await store.meters() == []
    assert await store.counts_by_flow() == {}
    assert (await store.command("c1") or {})["status"] == "pending"
    # The store goes on working.
    assert await store.record_messages([good]) == 1


async def test_a_message_with_a_missing_field_cannot_be_made() -> None:
    fields = {k: v for k, v in vars_of(message("x")).items() if k != "meter"}
    with pytest.raises(TypeError, match="meter"):
        MeterMessage(**fields)


def vars_of(m: MeterMessage) -> dict[str, Any]:
    return {name: getattr(m, name) for name in MeterMessage.__slots__}


async def test_bad_commands_and_statuses_are_refused(store: MdmsStore) -> None:
    with pytest.raises(InvalidRecord, match="body is not JSON-serialisable"):
        await store.record_command(CommandRecord("c1", "d", "m", "read", {"x": NotJson()}, T0, "t"))
    with pytest.raises(InvalidRecord, match="id must be a non-empty string"):
        await store.record_command(CommandRecord("", "d", "m", "read", {}, T0, "t"))
    with pytest.raises(InvalidRecord, match="expected a CommandRecord"):
        await store.record_command({"id": "c1"})  # type: ignore[arg-type]
    with pytest.raises(InvalidRecord, match="expected a MeterMessage"):
        await store.record_messages([{"key": "k"}])  # type: ignore[list-item]
    with pytest.raises(InvalidRecord, match="status is not JSON-serialisable"):
        await store.record_gateway_status("dap1", T0, {"outbox": NotJson()})
    with pytest.raises(InvalidRecord, match="at must be a finite number"):
        await store.record_gateway_status("dap1", math.inf, {})
    assert await store.commands() == []
    assert await store.gateway_status() == {}


async def test_bad_read_arguments_are_refused(store: MdmsStore) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.recent_messages(limit=0)
    with pytest.raises(ValueError, match="offset"):
        await store.meters(offset=-1)
    with pytest.raises(ValueError, match="after_id"):
        await store.recent_messages(after_id="5")  # type: ignore[arg-type]


# ---- CIS/Billing's bulk reads -----------------------------------------------------------------


def cis_request(request_id: str, sent_at: float = T0, **changes: Any) -> CisRequest:
    fields: dict[str, Any] = {
        "id": request_id, "cycle": "c1", "meters": 2, "sent_at": sent_at,
        "utility_ts": T0 + 19 * 3600, "size": 26,
    }  # fmt: skip
    fields.update(changes)
    return CisRequest(**fields)


async def test_a_cis_request_shows_both_sides_once_each_has_recorded(store: MdmsStore) -> None:
    await store.record_cis_request(cis_request("b1"))
    [sent] = await store.cis_requests()
    assert (sent["id"], sent["status"], sent["size"], sent["mdms_received_at"]) == (
        "b1", "sent", 26, None,
    )  # fmt: skip
    await store.record_bulk_read(
        BulkReadReceived("b1", "c1", T0 + 0.1, T0 + 1800.1, {"m1": "cab1", "m2": "cab1@m2"})
    )
    [opened] = await store.open_bulk_reads()
    assert opened["commands"] == {"m1": "cab1", "m2": "cab1@m2"} and opened["missing"] == {}
    await store.record_bulk_read_answered(
        BulkReadAnswered("b1", "partial", T0 + 5, T0 + 5.01, 1200, 1, {"m2": "no answer"})
    )
    reads = {"m1": {"t0": 1, "ch": [{"v": [1, 2]}]}}
    await store.record_cis_answer(CisAnswer("b1", T0 + 5.02, 1200, 1, reads, {"m2": "no answer"}))
    assert await store.open_bulk_reads() == []
    [both] = await store.cis_requests()
    assert both["status"] == "answered" and both["missing"] == {"m2": "no answer"}
    assert (both["mdms_received_at"], both["mdms_status"], both["data_received_at"]) == (
        T0 + 0.1, "partial", T0 + 5.02,
    )  # fmt: skip
    assert "reads" not in both
    assert (await store.cis_request("b1") or {})["reads"] == reads


async def test_the_first_answer_and_the_first_receipt_of_a_request_are_kept(
    store: MdmsStore,
) -> None:
    await store.record_cis_request(cis_request("b1"))
    await store.record_cis_request(cis_request("b1", sent_at=T0 + 9))
    received = BulkReadReceived("b1", "c1", T0, T0 + 60, {"m1": "c1"})
    assert await store.record_bulk_read(received)
    assert not await store.record_bulk_read(received)
    for at in (T0 + 1, T0 + 2):
        await store.record_bulk_read_answered(BulkReadAnswered("b1", "complete", at, at, 9, 1, {}))
        await store.record_cis_answer(CisAnswer("b1", at, 9, 1, {"m1": {}}, {}))
    found = await store.cis_request("b1") or {}
    assert (found["sent_at"], found["mdms_answered_at"], found["data_received_at"]) == (
        T0, T0 + 1, T0 + 1,
    )  # fmt: skip


async def test_cis_requests_page_in_the_order_sent(store: MdmsStore) -> None:
    for number in range(5):
        await store.record_cis_request(cis_request(f"b{number}", sent_at=T0 + number))
    first = await store.cis_requests(limit=2)
    rest = await store.cis_requests(after=first[-1]["seq"])
    assert [r["id"] for r in first + rest] == ["b0", "b1", "b2", "b3", "b4"]
    assert await store.cis_request("nope") is None


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        (cis_request(""), "id must be a non-empty string"),
        (cis_request("b1", size=-1), "size must be a non-negative integer"),
        (cis_request("b1", status="lost"), "status must be one of sent, failed"),
        (BulkReadReceived("b1", "c1", math.nan, T0, {}), "received_at must be a finite number"),
        (BulkReadAnswered("b1", "open", T0, T0, 0, 0, {}), "status must be one of complete"),
        (CisAnswer("b1", T0, 1, 1, {"m1": {1, 2}}, {}), "reads is not JSON-serialisable"),
    ],
)
async def test_bad_bulk_read_records_are_refused(
    store: MdmsStore, record: Any, problem: str
) -> None:
    write = {
        CisRequest: store.record_cis_request,
        BulkReadReceived: store.record_bulk_read,
        BulkReadAnswered: store.record_bulk_read_answered,
        CisAnswer: store.record_cis_answer,
    }[type(record)]
    with pytest.raises(InvalidRecord, match=problem):
        await write(record)
    assert await store.cis_requests() == [] and await store.open_bulk_reads() == []


# ---- live updates and lifecycle --------------------------------------------------------------


async def test_version_moves_on_every_write_and_wakes_waiters(store: MdmsStore) -> None:
    start = store.version
    waiter = asyncio.create_task(store.wait_for_change(start, timeout=30))
    await store.record_messages([message("a")])
    assert await waiter == start + 1
    # Nothing new: the version stays, and a waiter gives up after its timeout.
    assert await store.record_messages([message("a")]) == 0
    assert store.version == start + 1
    assert await store.wait_for_change(start + 1, timeout=0.01) == start + 1
    # Already past: no wait at all.
    assert await store.wait_for_change(start, timeout=30) == start + 1
    await store.record_command(command("c1"))
    await store.record_gateway_status("dap1", T0, {})
    assert store.version == start + 3


async def test_data_survives_reopening(make_store: StoreFactory) -> None:
    async with make_store() as first:
        await first.record_messages([message("a"), message("b")])
        await first.record_command(command("c1"))
        ids = [m["id"] for m in await first.recent_messages()]
    async with make_store() as second:
        assert await second.record_messages([message("b"), message("c")]) == 1
        stored = await second.recent_messages()
        assert [m["key"] for m in stored] == ["c", "b", "a"]
        assert stored[0]["id"] > max(ids)
        assert (await second.command("c1") or {})["status"] == "pending"


async def test_a_closed_store_says_so(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(StoreError, match="not open"):
        await store.meters()
    async with store:
        pass
    with pytest.raises(StoreError, match="not open"):
        await store.record_messages([message("a")])
    await store.close()  # twice is fine


async def test_an_unreachable_postgres_gives_a_clear_error() -> None:
    store = PostgresMdmsStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=1)
    with pytest.raises(StoreError, match="cannot open the MDMS database on PostgreSQL"):
        await store.open()


async def test_a_sqlite_file_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot open the MDMS database"):
        await SQLiteMdmsStore(tmp_path / "file" / "mdms.db").open()


async def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path / "a.db"), None), SQLiteMdmsStore)
    assert isinstance(open_store(str(tmp_path / "a.db"), ""), SQLiteMdmsStore)
    pg = open_store(str(tmp_path / "a.db"), "postgresql://postgres@127.0.0.1:5432/test")
    assert isinstance(pg, PostgresMdmsStore)


async def test_sqlite_in_memory_works(tmp_path: Path) -> None:
    async with SQLiteMdmsStore(":memory:") as store:
        assert await store.record_messages([message("a")]) == 1
        assert [m["key"] for m in await store.recent_messages()] == ["a"]


def test_a_head_end_on_sqlite_never_loads_psycopg(tmp_path: Path) -> None:
    # psycopg (and libpq with it) is for PostgreSQL users only: the head-end, its store and a
    # SQLite store it opened leave it unimported. A fresh interpreter, as this one has it.
    script = (
        "import sys, asyncio\n"
        "import headend.app\n"
        "from headend.store import SQLiteMdmsStore, open_store\n"
        "async def main():\n"
        f"    async with open_store({str(tmp_path / 'mdms.db')!r}, None) as store:\n"
        "        assert isinstance(store, SQLiteMdmsStore)\n"
        "asyncio.run(main())\n"
        "print(sorted(name for name in sys.modules if name.startswith('psycopg')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"

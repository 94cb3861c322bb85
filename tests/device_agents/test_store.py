"""The store-and-forward buffer: order, bounds, shedding, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from device_agents.agent.store import ITEM_RAM, Store
from tests.device_agents import mp

Item = list[Any]  # [priority, family, flow_id, body, request_id]


def item(priority: int, flow: str, number: int, size: int = 50) -> Item:
    """An item whose body is `size` characters (it costs the store ITEM_RAM more)."""
    body = json.dumps({"flow": flow, "seq": number})
    return [priority, "family", flow, body + " " * max(0, size - len(body)), None]


def flows_of(store: Store) -> list[str]:
    return [f"{entry[2]}#{json.loads(entry[3])['seq']}" for entry in store.items()]


def test_priority_then_age() -> None:
    store = Store()
    for number, (priority, flow) in enumerate(
        [(3, "bulk"), (2, "read"), (0, "alarm"), (3, "bulk"), (1, "ack"), (0, "alarm")]
    ):
        assert store.put(item(priority, flow, number))
    assert flows_of(store) == ["alarm#2", "alarm#5", "ack#4", "read#1", "bulk#0", "bulk#3"]
    assert store.peek() is store.items()[0]
    first = store.pop()
    assert first is not None and first[2] == "alarm"
    assert store.pop(first) is None  # already gone
    ack = store.items()[1]
    assert store.pop(ack) is ack  # an exact item, wherever it is
    assert flows_of(store) == ["alarm#5", "read#1", "bulk#0", "bulk#3"]
    bulk = store.items()[2]
    store.pop(bulk)
    store.put(item(3, "bulk", 9))
    store.requeue(bulk)  # a failed send goes back to the front of its priority
    assert flows_of(store) == ["alarm#5", "read#1", "bulk#0", "bulk#3", "bulk#9"]
    assert len(store) == 5 and store.bytes == 5 * (ITEM_RAM + 50)


def test_bounds_shed_bulk_reads_first_and_never_alarms() -> None:
    store = Store(max_items=6, max_bytes=10_000)
    for number in range(3):
        store.put(item(3, "bulk", number))
    store.put(item(2, "read", 3))
    store.put(item(1, "ack", 4))
    store.put(item(0, "alarm", 5))
    assert store.put(item(0, "alarm", 6))  # full: the oldest bulk read goes
    assert store.put(item(1, "ack", 7))
    assert store.put(item(2, "read", 8))
    assert flows_of(store) == ["alarm#5", "alarm#6", "ack#4", "ack#7", "read#3", "read#8"]
    assert store.dropped == 3 and store.dropped_by_flow == {"bulk": 3}
    assert not store.put(item(3, "bulk", 9))  # nothing less important to drop: the new one
    assert store.dropped_new == 1 and store.dropped_by_flow == {"bulk": 4}
    assert store.put(item(2, "read", 10))  # same priority: the oldest of it goes
    assert flows_of(store)[-2:] == ["read#8", "read#10"]
    for number in range(11, 15):
        assert store.put(item(0, "alarm", number))  # alarms push out everything else
    assert flows_of(store) == [f"alarm#{n}" for n in (5, 6, 11, 12, 13, 14)]
    assert not store.put(item(0, "alarm", 15))  # a store full of alarms keeps the first ones
    assert store.dropped_alarms == 1
    assert flows_of(store) == [f"alarm#{n}" for n in (5, 6, 11, 12, 13, 14)]
    assert store.dropped_by_flow == {"bulk": 4, "read": 3, "ack": 2, "alarm": 1}


def test_byte_bound() -> None:
    store = Store(max_items=100, max_bytes=1000)
    for number in range(5):
        assert store.put(item(3, "bulk", number, size=300 - ITEM_RAM))
    assert len(store) == 3 and store.bytes == 900
    assert store.put(item(0, "alarm", 9, size=800 - ITEM_RAM))
    assert flows_of(store) == ["alarm#9"] and store.bytes == 800
    assert not store.put(item(1, "ack", 10, size=1001 - ITEM_RAM))  # more than the whole store
    assert store.bytes <= store.max_bytes


def test_small_items_count_what_they_cost_a_heap() -> None:
    # 40-byte acknowledgements: the budget holds far fewer than their lengths alone would let
    # in, because each one's lists and objects take a board's heap too.
    store = Store(max_items=1000, max_bytes=8192)
    for number in range(200):
        store.put(item(1, "ack", number, size=40))
    assert len(store) == 8192 // (ITEM_RAM + 40) < 200 and store.dropped == 200 - len(store)


def test_persistence_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.log")
    store = Store(max_items=50, path=path)
    for number, priority in enumerate([3, 2, 0, 1, 3, 0]):
        store.put(item(priority, f"f{priority}", number))
    sent = store.pop()
    failed = store.pop()
    assert failed is not None and sent is not None
    store.requeue(failed)
    expected = store.items()
    again = Store(max_items=50, path=path)
    assert again.items() == expected
    assert again.bytes == store.bytes
    assert flows_of(again) == ["f0#5", "f1#3", "f2#1", "f3#0", "f3#4"]
    # The log was compacted on restore: one line per item.
    assert len(Path(path).read_text().splitlines()) == len(expected)


def test_a_torn_last_line_is_ignored_and_the_log_stays_small(tmp_path: Path) -> None:
    path = tmp_path / "outbox.log"
    store = Store(max_items=10, path=str(path))
    for number in range(300):  # many puts and pops: the log is rewritten now and then
        store.put(item(number % 4, "f", number))
        if number % 3:
            store.pop()
    assert len(path.read_text().splitlines()) <= 4 * len(store) + 64
    expected = store.items()
    with path.open("a") as log:
        log.write('+[999, 0, "family", "f", "{\\"flow\\": \\"f\\", \\"se')  # power lost
    assert Store(max_items=10, path=str(path)).items() == expected


def test_an_interrupted_compaction_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "outbox.log"
    store = Store(path=str(path))
    store.put(item(0, "alarm", 1))
    path.rename(tmp_path / "outbox.log.tmp")  # removed, not yet renamed back
    assert flows_of(Store(path=str(path))) == ["alarm#1"]
    assert Store(path=str(tmp_path / "nothing.log")).items() == []


STORE_ON_MICROPYTHON = """
import json
from store import Store
store = Store(max_items=5, max_bytes=4000, path="outbox.log")
for n, prio in enumerate((3, 3, 2, 1, 0, 0, 3, 1)):
    store.put((prio, "fam", "f" + str(prio), json.dumps({"seq": n})))
store.requeue(store.pop())
again = Store(max_items=5, max_bytes=4000, path="outbox.log")
print(json.dumps([list(entry) for entry in again.items()]))
print(store.dropped, store.dropped_new, store.dropped_alarms, json.dumps(store.dropped_by_flow))
"""


@mp.needs_micropython
def test_store_and_its_file_on_micropython() -> None:
    result = mp.run(STORE_ON_MICROPYTHON)
    assert result.rc == 0, result.output
    items = [tuple(entry) for entry in json.loads(result.lines[0])]
    assert [(entry[0], json.loads(entry[3])["seq"]) for entry in items] == [
        (0, 4),
        (0, 5),
        (1, 3),
        (1, 7),
        (2, 2),
    ]
    dropped, new, alarms, by_flow = result.lines[1].split(" ", 3)
    assert (int(dropped), int(new), int(alarms)) == (3, 0, 0)
    assert json.loads(by_flow) == {"f3": 3}


def test_a_request_id_given_at_the_first_send_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.log")
    store = Store(path=path)
    first, second = item(2, "read", 1), item(3, "bulk", 2)
    store.put(first)
    store.put(second)
    store.set_request_id(first, "mtr-1-a1b2c3-7")  # sent once, the answer lost
    again = Store(path=path)  # the meter restarts
    assert [entry[4] for entry in again.items()] == ["mtr-1-a1b2c3-7", None]
    assert Store(path=path).items() == again.items()  # and after the log was compacted


PIECES_ON_MICROPYTHON = """
import json
import ucbor
import store as store_module
from store import Store
store = Store(max_items=5, max_bytes=8000, path="outbox.log")
records = [{"t": n} for n in range(99)]
cbor = ucbor.dump_parts({"flow": "gas-interval-6h", "seq": 7, "recs": records})
text = ["{\\"flow\\":\\"mr-multi-interval\\",", "\\"seq\\":8}"]
store.put([3, "reading", "gas-interval-6h", cbor, None])
store.put([3, "reading", "mr-multi-interval", text, None])
again = Store(max_items=5, max_bytes=8000, path="outbox.log")
items = again.items()
size = sum(len(p) for p in cbor) + sum(len(p) for p in text)
size += 2 * store_module.ITEM_RAM + (len(cbor) + len(text)) * store_module.PIECE_RAM
print(again.bytes == store.bytes, store.bytes == size)
print(json.dumps(ucbor.loads(b"".join(items[0][3]))))
print(json.dumps(items[1][3]))
"""


@mp.needs_micropython
def test_a_message_in_pieces_survives_a_restart_as_cbor_and_as_json() -> None:
    # A board keeps a long message in pieces: bytes for CBOR (hex on the flash log), strings
    # for JSON (jsonparts.to_json); both come back as they were put.
    result = mp.run(PIECES_ON_MICROPYTHON)
    assert result.rc == 0, result.output
    assert result.lines[0] == "True True"
    restored = json.loads(result.lines[1])
    assert restored["seq"] == 7 and [r["t"] for r in restored["recs"]] == list(range(99))
    assert json.loads(result.lines[2]) == ['{"flow":"mr-multi-interval",', '"seq":8}']

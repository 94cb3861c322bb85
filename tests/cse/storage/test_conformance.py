"""One suite every storage backend must pass (run against memory and SQLite)."""

from __future__ import annotations

from typing import Any

import pytest

from cse.storage.base import (
    DeleteTree,
    Dequeue,
    Enqueue,
    Put,
    QueuedNotification,
    Resource,
    StorageError,
)


def res(path: str, ty: int, ri: str, pi: str, et: str | None = None, **attrs: Any) -> Resource:
    attributes = {"ty": ty, "ri": ri, "rn": path.rsplit("/", 1)[-1], "pi": pi, **attrs}
    if et is not None:
        attributes["et"] = et
    return Resource(attributes, path, "Cowner")


async def _tree(storage: Any) -> dict[str, Resource]:
    items = {
        "cb": res("cse-in", 5, "id-in", ""),
        "ae": res("cse-in/ae", 2, "Cae", "id-in", et="20300101T000000,000000"),
        "cnt": res("cse-in/ae/cnt", 3, "cnt1", "Cae", et="20290101T000000,000000"),
        "i1": res("cse-in/ae/cnt/i1", 4, "cin1", "cnt1", et="20270101T000000,000000", con="1"),
        "i2": res("cse-in/ae/cnt/i2", 4, "cin2", "cnt1", et="20280101T000000,000000", con="2"),
        "sub": res("cse-in/ae/cnt/s", 23, "sub1", "cnt1"),
        "other": res("cse-in/ae2", 2, "Cae2", "id-in"),
        # a sibling whose name shares the prefix: must never count as a descendant
        "prefix": res("cse-in/ae-x", 2, "Caex", "id-in"),
    }
    await storage.apply([Put(r) for r in items.values()])
    await storage.sync()
    return items


async def test_get_by_id_and_path(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    items = await _tree(storage)
    assert (await storage.get("cnt1")).path == "cse-in/ae/cnt"
    assert (await storage.get_by_path("cse-in/ae/cnt/i2")).attributes["con"] == "2"
    assert await storage.get("nothing") is None
    assert await storage.get_by_path("cse-in/none") is None
    assert items["i1"].seq < items["i2"].seq
    await storage.close()


async def test_children_in_creation_order_with_type_filter(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    assert [r.ri for r in await storage.children("cnt1")] == ["cin1", "cin2", "sub1"]
    assert [r.ri for r in await storage.children("cnt1", [23])] == ["sub1"]
    assert [r.ri for r in await storage.children("cnt1", limit=1)] == ["cin1"]
    assert await storage.count_children("cnt1", 4) == 2
    await storage.close()


async def test_children_pages_by_type_then_creation_resume_at_the_cursor(
    storage_factory: Any,
) -> None:
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    # A subscription older than some instances still comes after them: (type, seq) order.
    late = [res(f"cse-in/ae/cnt/i{n}", 4, f"cin{n}", "cnt1") for n in range(3, 8)]
    await storage.apply([Put(r) for r in late])
    expected = ["cin1", "cin2", "cin3", "cin4", "cin5", "cin6", "cin7", "sub1"]
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = await storage.children_page("cnt1", after=cursor, limit=3)
        assert len(page) <= 3  # the limit is the most read, whatever the types
        if not page:
            break
        pages.append([r.ri for r in page])
        cursor = (page[-1].ty, page[-1].seq)
    assert pages == [expected[0:3], expected[3:6], expected[6:8]]
    only_subs = await storage.children_page("cnt1", types=[23, 99], limit=10)
    assert [r.ri for r in only_subs] == ["sub1"]
    resumed = await storage.children_page("cnt1", types=[4, 23], after=(4, late[-1].seq), limit=9)
    assert [r.ri for r in resumed] == ["sub1"]
    assert [r.ri for r in await storage.children_page("cse-in/none", limit=5)] == []
    assert [r.ri for r in await storage.children_page("id-in", types=[2], limit=2)] == [
        "Cae",
        "Cae2",
    ]
    await storage.apply([DeleteTree(late[0])])
    assert "cin3" not in [r.ri for r in await storage.children_page("cnt1", limit=20)]
    await storage.close()


async def test_descendants_respect_depth_and_prefix(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    below_ae = [r.ri for r in await storage.descendants("cse-in/ae")]
    assert below_ae == ["cnt1", "cin1", "cin2", "sub1"]
    assert [r.ri for r in await storage.descendants("cse-in/ae", max_depth=1)] == ["cnt1"]
    assert [r.ri for r in await storage.descendants("cse-in", types=[2])] == ["Cae", "Cae2", "Caex"]
    await storage.close()


async def test_instances_from_either_end(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    assert [r.ri for r in await storage.instances("cnt1", newest=True, limit=1)] == ["cin2"]
    assert [r.ri for r in await storage.instances("cnt1", newest=False, limit=5)] == [
        "cin1",
        "cin2",
    ]
    await storage.close()


async def test_instances_and_a_child_by_attribute_of_another_instance_type(
    storage_factory: Any,
) -> None:
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    series = [
        res("cse-in/ae/ts", 29, "ts1", "Cae"),
        res("cse-in/ae/ts/a", 30, "tsi1", "ts1", dgt="20260101T000000,000000"),
        res("cse-in/ae/ts/b", 30, "tsi2", "ts1", dgt="20260101T001500,000000"),
    ]
    await storage.apply([Put(r) for r in series])
    newest = await storage.instances("ts1", newest=True, limit=5, resource_type=30)
    assert [r.ri for r in newest] == ["tsi2", "tsi1"]
    assert await storage.instances("ts1", newest=True, limit=5) == []  # contentInstances
    found = await storage.find_child("ts1", 30, "dgt", "20260101T001500,000000")
    assert found is not None and found.ri == "tsi2"
    assert await storage.find_child("ts1", 30, "dgt", "20260101T003000,000000") is None
    assert await storage.find_child("cnt1", 4, "con", "2") is not None
    assert await storage.find_child("cnt1", 23, "con", "2") is None  # of that type only
    await storage.close()


async def test_created_since_resumes_after_a_sequence_number(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    items = await _tree(storage)
    assert [r.ri for r in await storage.created_since(0, 4, 10)] == ["cin1", "cin2"]
    assert [r.ri for r in await storage.created_since(items["i1"].seq, 4, 10)] == ["cin2"]
    assert [r.ri for r in await storage.created_since(0, 4, 1)] == ["cin1"]
    assert await storage.created_since(items["i2"].seq, 4, 10) == []
    assert await storage.last_seq() == max(r.seq for r in items.values())
    await storage.close()


async def test_update_keeps_identity_and_order(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    items = await _tree(storage)
    changed = items["i1"].with_attributes(lbl=["x"])
    await storage.apply([Put(changed)])
    assert (await storage.get("cin1")).attributes["lbl"] == ["x"]
    assert [r.ri for r in await storage.instances("cnt1", newest=False, limit=1)] == ["cin1"]
    await storage.close()


async def test_delete_tree_removes_exactly_the_subtree(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    items = await _tree(storage)
    await storage.apply([DeleteTree(items["ae"])])
    await storage.sync()
    for ri in ("Cae", "cnt1", "cin1", "cin2", "sub1"):
        assert await storage.get(ri) is None, ri
    assert await storage.get_by_path("cse-in/ae/cnt") is None
    assert (await storage.get("Caex")) is not None
    assert (await storage.get("Cae2")) is not None
    assert [r.ri for r in await storage.children("id-in")] == ["Cae2", "Caex"]
    await storage.close()


async def test_expired_soonest_first(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    found = await storage.expired("20281231T000000,000000", limit=10)
    assert [r.ri for r in found] == ["cin1", "cin2"]
    assert [r.ri for r in await storage.expired("20281231T000000,000000", limit=1)] == ["cin1"]
    await storage.close()


async def test_outbox(storage_factory: Any) -> None:
    storage = storage_factory()
    await storage.open()
    items = [QueuedNotification(n, "http://x", "sub1", 1.0 * n, {"n": n}) for n in (1, 2, 3)]
    await storage.apply([Enqueue(item) for item in items])
    await storage.apply([Dequeue((2,))])
    await storage.sync()
    queued = await storage.queued_notifications(limit=10)
    assert [(q.id, q.body) for q in queued] == [(1, {"n": 1}), (3, {"n": 3})]
    await storage.close()


async def test_a_batch_is_atomic(storage_factory: Any) -> None:
    """A batch that fails half-way leaves nothing of itself behind."""
    storage = storage_factory()
    await storage.open()
    await _tree(storage)
    clash = res("cse-in/ae/cnt", 3, "cnt-other", "Cae")  # same path as an existing resource
    fresh = res("cse-in/fresh", 3, "fresh", "id-in")
    with pytest.raises(StorageError):
        await storage.apply([Put(fresh), Put(clash)])
    assert await storage.get("fresh") is None
    assert await storage.get("cnt-other") is None
    assert (await storage.get_by_path("cse-in/ae/cnt")).ri == "cnt1"
    await storage.sync()
    await storage.close()


async def test_sqlite_survives_reopen(tmp_path: Any) -> None:
    from cse.storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(tmp_path / "x.db")
    await storage.open()
    await _tree(storage)
    await storage.close()
    again = SQLiteStorage(tmp_path / "x.db")
    await again.open()
    assert (await again.get_by_path("cse-in/ae/cnt/i2")).attributes["con"] == "2"
    assert [r.ri for r in await again.instances("cnt1", newest=True, limit=1)] == ["cin2"]
    await again.close()


async def test_request_log(storage_factory: Any) -> None:
    from cse.storage.base import ForgetRequests, RecordRequest

    storage = storage_factory()
    await storage.open()
    await storage.apply(
        [RecordRequest("Ca\nr1", "cin1", 10.0), RecordRequest("Ca\nr2", "cin2", 20.0)]
    )
    assert await storage.recorded_request("Ca\nr1") == "cin1"
    await storage.apply([ForgetRequests(15.0)])
    await storage.sync()
    assert await storage.recorded_request("Ca\nr1") is None
    assert await storage.recorded_request("Ca\nr2") == "cin2"
    await storage.close()

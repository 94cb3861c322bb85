"""The SQLite backend's faults: numbers never handed out twice, a damaged file, a full file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cse.storage.base import (
    DatabaseDamaged,
    DeleteTree,
    Put,
    ReserveSequence,
    Resource,
    StorageError,
)
from cse.storage.sqlite import SQLiteStorage


def _resource(name: str, payload: str = "") -> Resource:
    attributes = {"ty": 3, "ri": name, "rn": name, "pi": "base", "lbl": [payload]}
    return Resource(attributes, f"base/{name}", "CAdmin")


async def test_a_sequence_number_is_not_handed_out_again_after_a_restart(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "cse.db")
    await storage.open()
    older, newest = _resource("a"), _resource("b")
    await storage.apply([Put(older), Put(newest)])
    await storage.apply([DeleteTree(newest)])  # the newest resource goes
    await storage.sync()
    await storage.close()
    storage = SQLiteStorage(tmp_path / "cse.db")
    await storage.open()
    later = _resource("c")
    await storage.apply([Put(later)])
    await storage.sync()
    assert later.seq > newest.seq
    await storage.close()


async def test_reserved_numbers_stay_reserved(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "cse.db")
    await storage.open()
    database_id = await storage.database_id()
    await storage.apply([ReserveSequence(1000)])
    await storage.sync()
    await storage.close()
    storage = SQLiteStorage(tmp_path / "cse.db")
    await storage.open()
    assert await storage.database_id() == database_id
    assert await storage.last_seq() == 1000
    fresh = _resource("a")
    await storage.apply([Put(fresh)])
    assert fresh.seq == 1001
    await storage.close()


async def test_a_truncated_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "cse.db"
    storage = SQLiteStorage(path)
    await storage.open()
    await storage.apply([Put(_resource(f"r{n}", "x" * 500)) for n in range(2000)])
    await storage.sync()
    await storage.close()
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)
    with pytest.raises(DatabaseDamaged) as refused:
        await SQLiteStorage(path).open()
    message = str(refused.value)
    assert str(path) in message and "backup" in message and "register again" in message
    locked_again = SQLiteStorage(tmp_path / "cse.db")
    with pytest.raises(DatabaseDamaged):
        await locked_again.open()  # the failed open released its lock


async def test_a_full_file_fails_the_write_and_the_next_one_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = SQLiteStorage(tmp_path / "cse.db")
    await storage.open()
    await storage.apply([Put(_resource("seed"))])
    await storage.sync()
    conn = storage._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    for number in range(3):
        with pytest.raises(StorageError):
            await storage.apply([Put(_resource(f"big{number}", "x" * 100_000))])
    assert storage.health.failing and storage.health.failures == 3
    assert caplog.text.count("writes are failing") == 1
    assert "rollback failed" not in caplog.text and "Traceback" not in caplog.text
    assert await storage.get("seed") is not None  # reads go on
    conn.execute("PRAGMA max_page_count = 1073741823")
    await storage.apply([Put(_resource("after", "x" * 100_000))])
    await storage.sync()
    assert not storage.health.failing
    assert "writes succeed again after 3 failures" in caplog.text
    await storage.close()
    with sqlite3.connect(tmp_path / "cse.db") as check:
        names = {row[0] for row in check.execute("SELECT ri FROM resources")}
    assert names == {"seed", "after"}

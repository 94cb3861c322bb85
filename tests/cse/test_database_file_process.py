"""The database as a user meets it: a second process on a file, a URL the CSE cannot use."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.processes import CSEProcess

pytestmark = pytest.mark.slow


async def _run_cse(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gridm2m",
        "cse",
        "--http-port",
        "0",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )
    async with asyncio.timeout(60):
        _, errors = await process.communicate()
    assert process.returncode is not None
    return process.returncode, errors.decode()


async def test_a_second_process_on_the_same_database_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "cse.db")
    first = CSEProcess("--db", db)
    await first.start()
    try:
        status, errors = await _run_cse("--db", db)
        assert status == 3, errors
        assert f"the database {db} is in use by another process" in errors
        assert f"pid {first.process.pid}" in errors  # type: ignore[union-attr]
        assert "Traceback" not in errors
    finally:
        await first.kill()  # no clean shutdown: the OS releases the lock with the process
    again = CSEProcess("--db", db)
    await again.start()
    assert await again.stop() == 0


async def test_a_database_url_of_another_kind_is_refused_without_repeating_its_password(
    tmp_path: Path,
) -> None:
    url = "mysql://meter:s3cret@db.example/gridm2m"
    status, errors = await _run_cse("--db", url, cwd=tmp_path)
    assert status == 2, errors
    assert "mysql:// URL" in errors and "SQLite file" in errors and "postgresql://" in errors
    assert "s3cret" not in errors
    assert not list(tmp_path.iterdir())  # and no file was made of the URL


async def test_an_unreachable_postgresql_stops_the_start_without_repeating_its_password(
    tmp_path: Path,
) -> None:
    url = "postgresql://meter:s3cret@127.0.0.1:1/gridm2m"  # nothing listens on port 1
    status, errors = await _run_cse(
        "--db", url, cwd=tmp_path, env={"GRIDM2M_DATA_DIR": str(tmp_path / "data")}
    )
    assert status == 3, errors  # the operator must act
    assert "cannot open the CSE database on PostgreSQL" in errors
    assert "s3cret" not in errors and "Traceback" not in errors
    assert not (tmp_path / "postgresql:").exists()  # no file was made of the URL

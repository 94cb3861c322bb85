"""Smoke test of the MDMS ingest benchmark at a small size, on the local PostgreSQL (skipped,
with the reason, when there is none). It checks that every case runs and is printed, and that
the bench drops the database it made; never a timing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.postgres import server_url

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]


def database_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return found.fetchone() is not None


def test_a_small_run_prints_every_case_side_by_side() -> None:
    url = server_url()
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_mdms_ingest", "--url", url, "--messages", "400"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for line in (
        "per-row  COPY batch",
        "1 caller, 1 a call",
        "1 caller, 1000 a call",
        "8 callers, 10 a call",
        "batch 1000",
        "COPY + INSERT SELECT",
        "unnest(arrays)",
    ):
        assert line in out, f"{line!r} missing from:\n{out}"
    made = re.search(r"^database (\S+) \(dropped at the end\)$", out, re.MULTILINE)
    assert made is not None, out
    assert not database_exists(url, made.group(1))

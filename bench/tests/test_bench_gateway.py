"""Smoke test of the gateway benchmark at its smallest size (--quick: 50 meters, 100 reads).

It starts a real head-end and gateway, so it takes a few seconds; it checks only that the
benchmark runs to the end and prints its tables, never a timing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]


def test_quick_run_prints_its_tables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_gateway", "--quick"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for heading in (
        "50 meters",
        "ALL ALARMS AT THE MDMS",
        "meter send -> MDMS",
        "bulk 100 with the storm",
        "Timeline, 50 meters",
        "VmRSS, MB",
        "50 + one reading each",
        "to registered=true, s",
    ):
        assert heading in out, f"{heading!r} missing from:\n{out}"

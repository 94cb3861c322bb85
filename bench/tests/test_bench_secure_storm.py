"""Smoke test of the secure storm benchmark at a tiny size (20 meters).

It starts a real head-end and gateway (and kills and restarts the gateway twice), so it takes
a few seconds; it checks that the benchmark runs to the end and prints its table with every
phase, and that the phases did what they are named for: every alarm reached the MDMS in each,
and only the storm after kill -9 paid an Echo round per meter. Never a timing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
METERS = 20


def test_tiny_run_prints_every_phase() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_secure_storm", "--meters", str(METERS)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    phases = (
        "plain CoAP",
        "OSCORE, contexts up",
        "OSCORE after kill -9",
        "OSCORE after a clean stop",
    )
    header = next(line for line in out.splitlines() if "plain CoAP" in line and "|" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")][1:] == list(phases)
    for heading in ("ALL ALARMS AT THE MDMS", "Echo rounds", "CPU ms per alarm", "First OSCORE"):
        assert heading in out, f"{heading!r} missing from:\n{out}"
    for phase in phases:
        found = re.search(rf"^{re.escape(phase)}: (\d+)/(\d+) alarms at the MDMS", out, re.M)
        assert found is not None, f"no summary line for {phase!r} in:\n{out}"
        assert found.groups() == (str(METERS), str(METERS)), out
    echo_row = next(line for line in out.splitlines() if "Echo rounds (4.01" in line)
    assert [cell.strip() for cell in echo_row.strip("|").split("|")][1:] == [
        "0",
        "0",
        str(METERS),
        "0",
    ]

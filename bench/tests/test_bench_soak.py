"""The soak benchmark at its smallest (20 meters, 10 s): it runs to the end with real processes,
prints its table and verdicts, and the comparison with the MDMS finds nothing lost or doubled.

No timing or resource figure is checked: those are the benchmark's to print.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]


def test_a_tiny_soak_loses_nothing_and_refuses_the_hostile(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_soak", "--meters", "20", "--duration", "10",
         "--json", str(figures)],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Time series" in out and "Hostile requests by answer" in out
    verdicts = [line for line in out.splitlines() if line.startswith("VERDICT ")]
    assert any(line.startswith("VERDICT lost: 0 of ") for line in verdicts), verdicts
    run = json.loads(figures.read_text())
    comparison = run["comparison"]
    assert comparison["acknowledged"] > 0
    assert (comparison["lost"], comparison["duplicated"]) == (0, 0)
    assert run["samples"], "no sample was taken"
    # The hostile client ran and each of its attacks got answers.
    kinds = {what.split("/")[0] for what in run["hostile"]}
    assert {"junk", "oversize", "exhaust", "ssrf", "discovery", "impersonate"} <= kinds
    held = {v["check"]: v["held"] for v in run["verdicts"]}
    for check in ("ssrf refused", "impersonation refused", "oversize refused"):
        assert held[check], out

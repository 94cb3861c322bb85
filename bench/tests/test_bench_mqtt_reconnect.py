"""Smoke test of the MQTT reconnect benchmark at a tiny size (20 meters).

It provisions a real credential store, starts the shipped DAP broker (the `mosquitto` binary)
and has every meter log in with its own password and subscribe as the ACL allows, over the
plain and the TLS listener; it checks that the table comes out with both phases and that
every meter got in on each, with no failure. Never a timing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gridm2m.broker import mosquitto_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(mosquitto_binary() is None, reason="no mosquitto binary"),
]

REPOSITORY = Path(__file__).resolve().parents[2]
METERS = 20


def test_tiny_run_connects_every_meter_plain_and_over_tls(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    command = ["bench.bench_mqtt_reconnect", "--meters", str(METERS), "--json", str(figures)]
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    header = next(line for line in out.splitlines() if "plain MQTT" in line and "|" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")][1:] == [
        "plain MQTT",
        "MQTT over TLS",
    ]
    for phase in ("plain MQTT", "MQTT over TLS"):
        found = re.search(
            rf"^{re.escape(phase)}: (\d+)/(\d+) meters connected and subscribed in [\d.]+ s, "
            r"(\d+) failures",
            out,
            re.M,
        )
        assert found is not None, f"no summary line for {phase!r} in:\n{out}"
        assert found.groups() == (str(METERS), str(METERS), "0"), out
    assert re.search(r"TLS listener negotiates TLSv1\.[23] ", out), out
    phases = json.loads(figures.read_text())["phases"]
    assert [(p["name"], p["connected"], p["failures"]) for p in phases] == [
        ("plain MQTT", METERS, {}),
        ("MQTT over TLS", METERS, {}),
    ]
    # Every meter held its connection at the peak: one broker fd each, beyond those at rest.
    assert all(p["broker_fds"] >= METERS for p in phases), phases

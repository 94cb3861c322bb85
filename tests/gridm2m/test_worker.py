"""`--worker` on the command line: what a worker needs, and the refusals when it lacks it.

Several processes on one SQLite file cannot work (the storage locks the file for one process,
and each would keep its own cache): a worker refuses such a database before it starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cse.app import ConfigError, CSEConfig, MqttConfig, scale_out_problem
from cse.bindings.mqtt.settings import default_share_group


def gridm2m(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridm2m", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={"GRIDM2M_DATA_DIR": str(cwd), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "args",
    [
        ("cse", "--worker", "--db", "cse.db", "--http-port", "0"),
        ("cse", "--worker", "--http-port", "0"),  # the default database: a SQLite file too
        ("headend", "--worker", "--db", "in.db", "--http-port", "0"),
        ("headend", "--worker", "--http-port", "0"),
    ],
)
def test_a_worker_on_sqlite_is_refused_with_the_reason(tmp_path: Path, args: tuple[str]) -> None:
    result = gridm2m(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "several workers on one SQLite file cannot work" in result.stderr
    assert 'db = "postgresql://..."' in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.glob("*.db")) == []  # refused before any file was made


def test_a_worker_in_memory_is_refused(tmp_path: Path) -> None:
    result = gridm2m("cse", "--worker", "--db", ":memory:", cwd=tmp_path)
    assert result.returncode == 2
    assert "':memory:', which each process would keep to itself" in result.stderr


def test_what_a_scaled_out_cse_needs() -> None:
    assert scale_out_problem("postgresql://gridm2m@db/in", None) is None
    assert "SQLite" in str(scale_out_problem("/var/lib/gridm2m/id-in.db", None))
    assert "SQLite" in str(scale_out_problem(None, None))
    assert "CoAP" in str(scale_out_problem("postgresql://gridm2m@db/in", 5683))
    with pytest.raises(ValueError, match="SQLite"):
        CSEConfig.model_validate({"scale_out": True, "db": "in.db"})
    assert CSEConfig.model_validate({"db": "in.db"}).scale_out is False


def test_a_worker_s_mqtt_settings() -> None:
    mqtt = MqttConfig(url="mqtt://127.0.0.1:1883", worker_name="w1", will_delay=2)
    worker = mqtt.worker("/id-in", "broker password")
    assert (worker.name, worker.will_delay, worker.session_expiry) == ("w1", 2, 24 * 3600)
    assert worker.group == default_share_group("/id-in", "broker password")
    chosen = MqttConfig(url="mqtt://127.0.0.1:1883", share_group="g1").worker("/id-in", None)
    assert chosen.group == "g1" and chosen.name  # a name of its own by default
    with pytest.raises(ConfigError, match="worker name"):
        MqttConfig(worker_name="w/1").worker("/id-in", None)

"""The command line: config precedence, bad config and arguments, start and clean stop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cse.app import ConfigError, load_cse_config
from tests.processes import CSEProcess


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    config = tmp_path / "cse.toml"
    config.write_text('[cse]\ncse_id = "/id-file"\n[cse.http]\nport = 1111\n')
    loaded = load_cse_config(
        config,
        {"http.port": 3333, "cse_name": None},
        environ={"GRIDM2M_CSE__HTTP__PORT": "2222", "GRIDM2M_CSE__CSE_NAME": "cse-env"},
    )
    assert (loaded.cse_id, loaded.cse_name, loaded.http.port) == ("/id-file", "cse-env", 3333)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[cse]\ncse_id = 'id-in'\n", "cse_id"),
        ("[cse]\nbogus = 1\n", "bogus"),
        ("[cse]\n[cse.http]\nport = 70000\n", "http.port"),
        ("[cse\n", "TOML"),
    ],
)
def test_bad_config_is_reported_with_the_field(tmp_path: Path, text: str, words: str) -> None:
    config = tmp_path / "cse.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_cse_config(config, environ={})


def test_bad_config_exits_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gridm2m", "cse", "--cse-id", "nope", "--db", ":memory:"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cse_id" in result.stderr and "Traceback" not in result.stderr


async def test_starts_prints_address_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = CSEProcess("--db", str(tmp_path / "x.db"), "--cse-id", "/id-mn", "--role", "mn")
    url = await process.start()
    assert url.startswith("http://127.0.0.1:")
    assert await process.stop() == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["gateway", "--upstream-url", "ftp://head-end"], "upstream"),
        (["gateway", "--http-port", "70000"], "http.port"),
        (["headend", "--dashboard-port", "70000"], "dashboard.port"),
        (["command", "mtr-1", "read", "n"], "name=value"),
    ],
)
def test_bad_arguments_of_the_other_parts_exit_with_a_message(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gridm2m.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_an_impossible_loss_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from gridm2m.cli import main

    with pytest.raises(SystemExit) as ended:
        main(["interop", "run", "--loss", "1.5"])
    assert ended.value.code == 2
    assert "loss" in capsys.readouterr().err

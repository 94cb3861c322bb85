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


def test_pki_lab_makes_what_the_shipped_configs_name_and_pins_each_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cse.security.credentials import CredentialStore
    from gateway.config import load_gateway_config
    from gridm2m.cli import main
    from gridm2m.pki import client_files
    from headend.config import load_headend_config

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRIDM2M_DATA_DIR", str(tmp_path / "data"))
    configs = [f"--gateway-config={root}/configs/gateway.toml",
               f"--headend-config={root}/configs/headend.toml"]  # fmt: skip
    assert main(["pki", "lab", "pki", *configs]) == 0
    gateway = load_gateway_config(root / "configs" / "gateway.toml")
    headend = load_headend_config(root / "configs" / "headend.toml")
    # Every file the shipped configs name exists (their paths are relative to the folder).
    named = [gateway.upstream.ca_file, gateway.upstream.cert_file, gateway.upstream.key_file]
    for cse in (gateway.cse, headend.cse):
        assert cse.http.tls is not None
        named += [cse.http.tls.cert, cse.http.tls.key, cse.http.tls.client_ca]
        named += [cse.http.client.ca, cse.http.client.cert, cse.http.client.key]
    assert all(name and (tmp_path / name).is_file() for name in named), named
    assert all((key.stat().st_mode & 0o077) == 0 for key in (tmp_path / "pki").rglob("*.key"))
    for config, peer in ((gateway.cse, "id-in"), (headend.cse, "id-dap1")):
        with CredentialStore(str(config.credentials_path())) as store:
            pinned = store.by_certificate(client_files(tmp_path / "pki", peer).der())
            assert pinned is not None and pinned.originator == "/" + peer
    # Again: the files are kept and pinned again, nothing fails.
    before = (tmp_path / "pki" / "ca.pem").read_bytes()
    assert main(["pki", "lab", "pki", *configs]) == 0
    assert (tmp_path / "pki" / "ca.pem").read_bytes() == before
    assert "pinned /id-in" in capsys.readouterr().out


def test_gridm2m_command_without_a_token_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gridm2m.cli import main

    monkeypatch.delenv("GRIDM2M_HEADEND_TOKEN", raising=False)
    assert main(["command", "mtr-1", "read"]) == 2
    assert "add-admin" in capsys.readouterr().err

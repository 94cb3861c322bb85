"""The broker's password file and ACL from a credential store (Mosquitto itself reads them in
tests/deploy): the `$7$` hash, who gets in, and `gridm2m credentials mosquitto`."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from cse.security.credentials import CredentialError, CredentialStore
from cse.security.mosquitto import (
    acl_file,
    broker_users,
    hash_password,
    password_file,
    password_matches,
)
from gridm2m.cli import main


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:  # type: ignore[misc]
    with CredentialStore(tmp_path / "credentials.db") as opened:
        yield opened


def test_a_hash_is_mosquitto_s_own_format() -> None:
    hashed = hash_password("s3cret", salt=bytes(range(12)))
    assert hashed.startswith("$7$101$AAECAwQFBgcICQoL$")
    assert password_matches("s3cret", hashed)
    assert not password_matches("s3cret!", hashed)
    assert hash_password("s3cret") != hash_password("s3cret")  # a fresh salt each time


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_a_hash_made_by_mosquitto_passwd_checks_out_here(tmp_path: Path) -> None:
    """The same derivation as Mosquitto's own tool (its PBKDF2-SHA512, salt and rounds)."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "alice", "s3cret"],
        check=True,
        capture_output=True,
    )
    user, hashed = passwd.read_text().strip().split(":", 1)
    assert user == "alice" and hashed.startswith("$7$")
    assert password_matches("s3cret", hashed) and not password_matches("other", hashed)


def test_only_usable_devices_and_cses_with_a_password_get_in(store: CredentialStore) -> None:
    meter = store.add_device("mtr-1").credential
    store.add_device("mtr-2")
    store.revoke("mtr-2")
    store.add_device("mtr-3", expires=time.time() - 1)
    store.add_device("mtr-4", mqtt=False)
    store.add_cse("/id-in", mqtt=True)
    store.add_cse("/id-other")  # no MQTT password
    store.add_admin("ops", "CAdmin")
    users = broker_users(store.all(), time.time())
    assert [user.name for user in users] == ["Cmtr-1", "id-in"]
    text = password_file(users)
    assert meter.mqtt_password is not None and meter.mqtt_password not in text
    line = text.splitlines()[0]
    assert line.startswith("Cmtr-1:") and password_matches(meter.mqtt_password, line[7:])


def test_a_device_and_a_cse_with_one_login_are_refused(store: CredentialStore) -> None:
    store.add_device("x")
    store.add_cse("/Cx", mqtt=True)
    with pytest.raises(CredentialError, match="'Cx'"):
        broker_users(store.all(), time.time())


def test_the_acl_ties_everyone_to_the_cse_and_the_cse_to_everyone(
    store: CredentialStore,
) -> None:
    store.add_cse("/id-dap1", mqtt=True)
    store.add_cse("/id-in", mqtt=True)
    acl = acl_file("/id-dap1", broker_users(store.all(), time.time()))
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert rules[:6] == [
        "pattern write /oneM2M/req/%u/id-dap1/+",
        "pattern write /oneM2M/reg_req/%u/id-dap1/+",
        "pattern read /oneM2M/resp/%u/+/+",
        "pattern read /oneM2M/reg_resp/%u/+/+",
        "pattern read /oneM2M/req/id-dap1/%u/+",
        "pattern write /oneM2M/resp/id-dap1/%u/+",
    ]
    assert "user id-dap1" in rules and "topic write /oneM2M/req/id-dap1/+/+" in rules
    # its workers' own topics (docs/scale-out.md), its login only
    assert rules.count("topic readwrite /gridm2m/workers/id-dap1/#") == 1
    assert rules.index("topic readwrite /gridm2m/workers/id-dap1/#") < rules.index("user id-in")
    assert "user id-in" in rules and "topic read /oneM2M/reg_req/id-dap1/id-in/+" in rules
    assert rules[-2:] == ["user health", "topic read $SYS/broker/uptime"]


def test_the_command_makes_the_cse_s_own_login_once_and_private_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_path = tmp_path / "credentials.db"
    files = ["--passwords", str(tmp_path / "passwd"), "--acl", str(tmp_path / "acl")]
    args = ["credentials", "--store", str(store_path), "mosquitto"]
    assert main([*args, *files]) == 2  # which CSE: --cse-id, or a --config
    assert "--cse-id" in capsys.readouterr().err
    health = ["--health-env", str(tmp_path / "health.env")]
    assert main([*args, "--cse-id", "/id-dap1", *files, *health]) == 0
    assert "made the credential id-dap1" in capsys.readouterr().out
    with CredentialStore(store_path) as store:
        own = store.by_originator("/id-dap1")
        assert own is not None and own.mqtt_password is not None
        store.add_device("mtr-1")
    health_env = (tmp_path / "health.env").read_text()
    assert main([*args, "--cse-id", "id-dap1", *files, *health]) == 0
    out = capsys.readouterr().out
    assert "made the credential" not in out and "2 meters" not in out and "1 meters" in out
    assert (tmp_path / "health.env").read_text() == health_env  # the health login stays
    users = [line.split(":")[0] for line in (tmp_path / "passwd").read_text().splitlines()]
    assert sorted(users) == ["Cmtr-1", "health", "id-dap1"]
    for name in ("passwd", "acl", "health.env"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
        assert own.mqtt_password not in (tmp_path / name).read_text()
    assert own.mqtt_password not in out

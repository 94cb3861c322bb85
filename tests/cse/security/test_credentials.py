"""The credential store: what it issues, what it finds, and that another process's revocation
reaches a running reader at its next lookup."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cse.core.identity import Principal, Role
from cse.security.credentials import CredentialError, CredentialStore, Kind


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:  # type: ignore[misc]
    with CredentialStore(tmp_path / "credentials.db") as opened:
        yield opened


def test_a_device_gets_oscore_keys_a_short_kid_and_an_mqtt_password(
    store: CredentialStore, tmp_path: Path
) -> None:
    issued = store.add_device("mtr-000001").credential
    assert issued.kind is Kind.DEVICE and issued.originator == "Cmtr-000001"
    assert issued.oscore_kid is not None and len(issued.oscore_kid) == 2
    assert issued.oscore_secret is not None and len(issued.oscore_secret) == 16
    assert issued.oscore_salt is not None and len(issued.oscore_salt) == 8
    assert issued.mqtt_password
    assert store.by_oscore_kid(issued.oscore_kid) == issued
    assert store.by_originator("Cmtr-000001") == issued
    assert issued.principal("oscore") == Principal(
        Role.DEVICE, "mtr-000001", "Cmtr-000001", "oscore"
    )
    assert stat.S_IMODE((tmp_path / "credentials.db").stat().st_mode) == 0o600


def test_kids_are_unique(store: CredentialStore) -> None:
    kids = {store.add_device(f"mtr-{n}").credential.oscore_kid for n in range(300)}
    assert len(kids) == 300


def test_a_token_is_shown_once_and_kept_as_a_digest(store: CredentialStore) -> None:
    issued = store.add_admin("alice", "CAdmin")
    assert issued.token
    assert issued.credential.token_sha256 is not None
    assert issued.token.encode() not in (store.path.read_bytes())
    assert store.by_token(issued.token) == issued.credential
    assert store.by_token(issued.token + "x") is None
    rotated = store.new_token("alice")
    assert store.by_token(issued.token) is None
    assert store.by_token(rotated) is not None


def test_a_certificate_is_pinned_by_fingerprint(store: CredentialStore) -> None:
    store.add_cse("/id-in", certificate=b"der of the head-end's certificate")
    found = store.by_certificate(b"der of the head-end's certificate")
    assert found is not None and found.originator == "/id-in" and found.kind is Kind.CSE
    assert store.by_certificate(b"another certificate") is None


@pytest.mark.parametrize("name", ["", "../x", "a/b", "x" * 65, "-lead", "sp ace", "é"])
def test_unusable_names_are_refused(store: CredentialStore, name: str) -> None:
    with pytest.raises(CredentialError):
        store.add_device(name)


def test_a_name_or_originator_is_issued_once(store: CredentialStore) -> None:
    store.add_device("mtr-1")
    with pytest.raises(CredentialError, match="exists already"):
        store.add_device("mtr-1")


def test_a_revocation_by_another_process_reaches_a_running_reader(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    with CredentialStore(path) as running, CredentialStore(path) as cli:
        kid = cli.add_device("mtr-1").credential.oscore_kid
        assert kid is not None
        assert running.by_oscore_kid(kid) is not None  # the new meter is seen at once
        cli.revoke("mtr-1")
        assert running.by_oscore_kid(kid) is None
        assert running.by_originator("Cmtr-1") is None
        assert [c.status for c in running.all()] == ["revoked"]


def test_an_expired_credential_is_not_found(store: CredentialStore) -> None:
    kid = store.add_device("mtr-1", expires=1.0).credential.oscore_kid
    assert kid is not None and store.by_oscore_kid(kid) is None
    assert store.all()[0].status == "expired"


def test_new_oscore_keys_replace_the_old_ones_at_a_running_keyring(tmp_path: Path) -> None:
    """Rotation: the running CSE's keyring (another process) takes the new keys at its next
    lookup, so a meter still on the old ones fails to verify from then on; the new keys start
    a context of their own."""
    from cse.bindings.coap.oscore import OscoreState
    from cse.security.oscore_keyring import CredentialKeyring

    path = tmp_path / "credentials.db"
    with CredentialStore(path) as running, CredentialStore(path) as cli:
        kid = cli.add_device("mtr-1").credential.oscore_kid
        assert kid is not None
        keyring = CredentialKeyring(running)
        old = keyring.keys_for(kid)
        assert old is not None
        keyring.save_state(old, OscoreState(500, None))
        rotated = cli.new_oscore_keys("mtr-1")
        new = keyring.keys_for(kid)
        assert new is not None and rotated.oscore_kid == kid
        assert (new.master_secret, new.master_salt) != (old.master_secret, old.master_salt)
        assert (new.master_secret, new.master_salt) == (rotated.oscore_secret, rotated.oscore_salt)
        assert keyring.load_state(new) is None  # a fresh context, nothing of the old one's
        with pytest.raises(CredentialError):
            cli.new_oscore_keys("nobody")
        cli.add_admin("alice", "CAdmin")
        with pytest.raises(CredentialError):
            cli.new_oscore_keys("alice")


def test_a_meter_made_without_oscore_keys_can_be_given_some(store: CredentialStore) -> None:
    bare = store.add_device("mtr-2", oscore=False).credential
    assert bare.oscore_kid is None
    given = store.new_oscore_keys("mtr-2")
    assert given.oscore_kid is not None and given.oscore_secret is not None
    assert store.by_oscore_kid(given.oscore_kid) == given


def test_the_rekey_command_rotates_a_meters_secrets_and_refuses_others(tmp_path: Path) -> None:
    from tests.deploy.dap_broker import gridm2m_credentials

    path = tmp_path / "credentials.db"
    with CredentialStore(path) as store:
        before = store.add_device("mtr-3").credential
        store.add_admin("ops", "CAdmin")
    out = gridm2m_credentials(path, "rekey", "mtr-3")
    assert "mtr-3" in out and (before.oscore_secret or b"").hex() not in out  # no secret shown
    with CredentialStore(path) as store:
        after = store.by_name("mtr-3")
        assert after is not None and after.oscore_kid == before.oscore_kid
        assert after.oscore_secret != before.oscore_secret
        assert after.mqtt_password != before.mqtt_password
    refused = subprocess.run(
        [sys.executable, "-m", "gridm2m", "credentials", "--store", str(path), "rekey", "ops"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0 and "not a meter" in refused.stderr

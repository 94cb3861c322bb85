"""The OSCORE keyring over the credential store: keys by kid and AE-ID, revocation at the next
lookup, and context state that survives a restart without a write per meter."""

from __future__ import annotations

from pathlib import Path

from cse.bindings.coap.oscore import OscoreState
from cse.security.credentials import CredentialStore
from cse.security.oscore_keyring import CredentialKeyring


def test_keys_come_from_device_credentials_and_go_with_a_revocation(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    with CredentialStore(path) as running, CredentialStore(path) as cli:
        issued = cli.add_device("mtr-1").credential
        cli.add_admin("alice", "CAdmin")
        assert issued.oscore_kid is not None
        keyring = CredentialKeyring(running)
        keys = keyring.keys_for(issued.oscore_kid)
        assert keys is not None
        assert (keys.master_secret, keys.master_salt) == (issued.oscore_secret, issued.oscore_salt)
        assert keys.principal.originator == "Cmtr-1" and keys.principal.via == "oscore"
        assert keyring.keys_for_originator("Cmtr-1") == keys
        assert keyring.keys_for_originator("CAdmin") is None
        cli.revoke("mtr-1")
        assert keyring.keys_for(issued.oscore_kid) is None
        assert keyring.keys_for_originator("Cmtr-1") is None


def test_state_survives_a_restart_and_a_crash_forgets_the_window(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    with CredentialStore(path) as store:
        kid = store.add_device("mtr-1").credential.oscore_kid
        assert kid is not None
        keyring = CredentialKeyring(store)
        keys = keyring.keys_for(kid)
        assert keys is not None and keyring.load_state(keys) is None
        keyring.save_state(keys, OscoreState(64, (5, 0b1011)))  # a clean stop
    with CredentialStore(path) as store:
        keyring = CredentialKeyring(store)
        keys = keyring.keys_for(kid)
        assert keys is not None
        assert keyring.load_state(keys) == OscoreState(64, (5, 0b1011))
        # ... and this run crashes without saving again.
    with CredentialStore(path) as store:
        keyring = CredentialKeyring(store)
        keys = keyring.keys_for(kid)
        assert keys is not None
        assert keyring.load_state(keys) == OscoreState(64, None)  # Echo, never a stale window


def test_saving_what_is_on_disk_costs_no_write(tmp_path: Path) -> None:
    with CredentialStore(tmp_path / "credentials.db") as store:
        kids = [store.add_device(f"mtr-{n}").credential.oscore_kid for n in range(50)]
        keyring = CredentialKeyring(store)
        for kid in kids:
            assert kid is not None
            keys = keyring.keys_for(kid)
            assert keys is not None
            keyring.save_state(keys, OscoreState(64, (1, 1)))
    with CredentialStore(tmp_path / "credentials.db") as store:
        keyring = CredentialKeyring(store)
        before = store.connection.total_changes
        for kid in kids:
            assert kid is not None
            keys = keyring.keys_for(kid)
            assert keys is not None
            # What a context saves when its first request after the restart is accepted.
            keyring.save_state(keys, OscoreState(64, None))
        assert store.connection.total_changes == before


def test_new_keys_start_with_fresh_state(tmp_path: Path) -> None:
    with CredentialStore(tmp_path / "credentials.db") as store:
        kid = store.add_device("mtr-1").credential.oscore_kid
        assert kid is not None
        keyring = CredentialKeyring(store)
        keys = keyring.keys_for(kid)
        assert keys is not None
        keyring.save_state(keys, OscoreState(640, None))
        other = type(keys)(kid, b"\x07" * 16, b"\x08" * 8, keys.principal)
        assert keyring.load_state(other) is None

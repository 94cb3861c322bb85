"""The OSCORE keyring over the credential store: keys by kid and AE-ID, revocation at the next
lookup, and context state that survives a restart without a write per meter."""

from __future__ import annotations

from pathlib import Path

from cse.bindings.coap.oscore import OscoreContexts, OscoreState
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
        assert keys is not None
        # Never used: an empty window, and its first numbers reserved when the keyring opened.
        assert keyring.load_state(keys) == OscoreState(0, None, 64, fresh=True)
        keyring.save_state(keys, OscoreState(64, (5, 0b1011)))  # a clean stop
    with CredentialStore(path) as store:
        keyring = CredentialKeyring(store)
        keys = keyring.keys_for(kid)
        assert keys is not None
        assert keyring.load_state(keys) == OscoreState(64, (5, 0b1011), 128)
        # ... and this run crashes without saving again.
    with CredentialStore(path) as store:
        keyring = CredentialKeyring(store)
        keys = keyring.keys_for(kid)
        assert keys is not None
        # Echo, never a stale window; never a number the crashed run may have used.
        assert keyring.load_state(keys) == OscoreState(128, None, 192)


def _meters_after_a_restart(store: CredentialStore, kids: list[bytes | None]) -> None:
    """What 50 meters cost after a restart: each request opened (the window moves) and each
    answered with the gateway's own sequence number (an Echo challenge takes one)."""
    keyring = CredentialKeyring(store)
    contexts = OscoreContexts(keyring)
    before = store.connection.total_changes
    for kid in kids:
        assert kid is not None
        keys = keyring.keys_for(kid)
        assert keys is not None
        context = contexts.for_keys(keys)
        if context.recipient_replay_window.is_initialized():
            context.recipient_replay_window.strike_out(7)
        context.sender_sequence_number += 1  # what protect() does, then it calls:
        context.post_seqnoincrease()
    assert store.connection.total_changes == before


def test_meters_after_a_restart_or_a_crash_cost_no_write_each(tmp_path: Path) -> None:
    path = tmp_path / "credentials.db"
    with CredentialStore(path) as store:
        kids = [c.oscore_kid for c in store.add_devices([f"mtr-{n}" for n in range(50)])]
        _meters_after_a_restart(store, kids)  # keys never used
        unused = OscoreContexts(CredentialKeyring(store))
        statements: list[str] = []
        store.connection.set_trace_callback(statements.append)
        unused.save()  # no context used: nothing to write
        store.connection.set_trace_callback(None)
        assert statements == []
    with CredentialStore(path) as store:
        _meters_after_a_restart(store, kids)  # a crash: every window unknown
    with CredentialStore(path) as store:
        keyring = CredentialKeyring(store)
        contexts = OscoreContexts(keyring)
        for kid in kids:
            assert kid is not None
            keys = keyring.keys_for(kid)
            assert keys is not None
            contexts.for_keys(keys).sender_sequence_number += 3
        statements = []
        store.connection.set_trace_callback(statements.append)
        contexts.save()  # a clean stop: one transaction for every context
        store.connection.set_trace_callback(None)
        assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
        assert sum(s.startswith("INSERT") for s in statements) == 50
    with CredentialStore(path) as store:
        _meters_after_a_restart(store, kids)  # windows saved at the clean stop


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

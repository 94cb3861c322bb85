"""The CoAP binding's OSCORE keyring on top of the credential store.

Keys come from the meters' device credentials (`CredentialStore.by_oscore_kid`, asked on every
request, so a revocation cuts a meter off at its next one). The contexts' state, the gateway's
sender sequence number reserve and the replay windows saved at a clean stop, lives in a table
of the same file, keyed by the kid and a digest of the keys (new keys start fresh).

Opening the keyring reads every saved state and marks all saved replay windows "unknown" on
disk in one transaction: from then on the windows move in memory only, and a crash brings the
Echo round (RFC 8613 Appendix B.1.2) instead of a window that would take a replay. A context
that saves a state the keyring already holds costs no write, so meters coming back after a
restart cost nothing each; a write happens when a meter is first used, when the gateway
reserves sequence numbers for its notifications (every 64), and at a clean stop.
"""

from __future__ import annotations

import hashlib

from cse.bindings.coap.oscore import OscoreKeys, OscoreState
from cse.security.credentials import Credential, CredentialStore, Kind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS oscore_state (
    kid           BLOB PRIMARY KEY,
    keys_sha256   BLOB NOT NULL,
    next_sequence INTEGER NOT NULL,
    window_index  INTEGER,
    window_bits   INTEGER
);
"""


def _digest(keys: OscoreKeys) -> bytes:
    return hashlib.sha256(keys.master_secret + b"\0" + keys.master_salt).digest()


class CredentialKeyring:
    """An `OscoreKeyring` (cse/bindings/coap/oscore.py) backed by a credential store."""

    def __init__(self, store: CredentialStore) -> None:
        self._store = store
        self._keys: dict[bytes, tuple[Credential, OscoreKeys]] = {}
        conn = store.connection
        conn.executescript(_SCHEMA)
        self._states: dict[bytes, tuple[bytes, OscoreState]] = {}
        for kid, digest, next_sequence, index, bits in conn.execute(
            "SELECT kid, keys_sha256, next_sequence, window_index, window_bits FROM oscore_state"
        ):
            window = None if index is None else (int(index), int(bits))
            self._states[bytes(kid)] = (bytes(digest), OscoreState(int(next_sequence), window))
        # What is on disk now says "window unknown"; the windows just read stay in memory.
        conn.execute("UPDATE oscore_state SET window_index = NULL, window_bits = NULL")
        self._on_disk = {
            kid: (digest, OscoreState(state.next_sequence))
            for kid, (digest, state) in self._states.items()
        }

    def _to_keys(self, credential: Credential | None) -> OscoreKeys | None:
        if credential is None or credential.kind is not Kind.DEVICE:
            return None
        kid, secret, salt = credential.oscore_kid, credential.oscore_secret, credential.oscore_salt
        if kid is None or secret is None or salt is None:
            return None
        cached = self._keys.get(kid)
        if cached is not None and cached[0] == credential:
            return cached[1]
        keys = OscoreKeys(kid, secret, salt, credential.principal("oscore"))
        self._keys[kid] = (credential, keys)
        return keys

    def keys_for(self, kid: bytes) -> OscoreKeys | None:
        return self._to_keys(self._store.by_oscore_kid(kid))

    def keys_for_originator(self, originator: str) -> OscoreKeys | None:
        return self._to_keys(self._store.by_originator(originator))

    def load_state(self, keys: OscoreKeys) -> OscoreState | None:
        saved = self._states.get(keys.sender_id)
        if saved is None or saved[0] != _digest(keys):
            return None  # never used, or the meter has been given new keys since
        return saved[1]

    def save_state(self, keys: OscoreKeys, state: OscoreState) -> None:
        digest = _digest(keys)
        self._states[keys.sender_id] = (digest, state)
        if self._on_disk.get(keys.sender_id) == (digest, state):
            return
        window_index, window_bits = state.replay_window or (None, None)
        # One statement in autocommit: durable (fsynced) before the number is used.
        self._store.connection.execute(
            "INSERT OR REPLACE INTO oscore_state VALUES (?, ?, ?, ?, ?)",
            (keys.sender_id, digest, state.next_sequence, window_index, window_bits),
        )
        self._on_disk[keys.sender_id] = (digest, state)

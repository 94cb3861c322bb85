"""The CoAP binding's OSCORE keyring on top of the credential store.

Keys come from the meters' device credentials (`CredentialStore.by_oscore_kid`, asked on every
request, so a revocation cuts a meter off at its next one). The contexts' state, the gateway's
sender sequence number reserve and the replay windows saved at a clean stop, lives in a table
of the same file, keyed by the kid and a digest of the keys (new keys start fresh).

Opening the keyring reads every saved state and, in one transaction, marks all saved replay
windows "unknown" on disk, reserves the next SEQUENCE_CHUNK sender sequence numbers of every
context, and writes a row for every meter whose keys were never used: from then on the windows
move in memory only, and a crash brings the Echo round (RFC 8613 Appendix B.1.2) instead of a
window that would take a replay. A context that saves a state the keyring already holds costs
no write, so 5,000 meters coming back after a restart, each answered with an Echo challenge
(which takes a sequence number), cost no write each; a write happens for a meter provisioned
while the gateway runs, when a context has used its reserve of 64, and at a clean stop (one
transaction for every context).
"""

from __future__ import annotations

import hashlib

from cse.bindings.coap.oscore import SEQUENCE_CHUNK, OscoreKeys, OscoreState
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


def _digest(secret: bytes, salt: bytes) -> bytes:
    return hashlib.sha256(secret + b"\0" + salt).digest()


def _keys_digest(keys: OscoreKeys) -> bytes:
    return _digest(keys.master_secret, keys.master_salt)


class CredentialKeyring:
    """An `OscoreKeyring` (cse/bindings/coap/oscore.py) backed by a credential store."""

    def __init__(self, store: CredentialStore) -> None:
        self._store = store
        self._keys: dict[bytes, tuple[Credential, OscoreKeys]] = {}
        conn = store.connection
        conn.executescript(_SCHEMA)
        saved: dict[bytes, tuple[bytes, int, tuple[int, int] | None]] = {}
        for kid, digest, next_sequence, index, bits in conn.execute(
            "SELECT kid, keys_sha256, next_sequence, window_index, window_bits FROM oscore_state"
        ):
            window = None if index is None else (int(index), int(bits))
            saved[bytes(kid)] = (bytes(digest), int(next_sequence), window)
        self._states: dict[bytes, tuple[bytes, OscoreState]] = {}
        self._on_disk: dict[bytes, tuple[bytes, OscoreState]] = {}
        rows = []
        for kid, (digest, next_sequence, window) in saved.items():
            reserved = next_sequence + SEQUENCE_CHUNK
            self._states[kid] = (digest, OscoreState(next_sequence, window, reserved))
            rows.append((kid, digest, reserved))
        for credential in store.all():
            kid, secret, salt = (
                credential.oscore_kid,
                credential.oscore_secret,
                credential.oscore_salt,
            )
            if credential.kind is not Kind.DEVICE or kid is None or secret is None or salt is None:
                continue
            digest = _digest(secret, salt)
            if kid in self._states and self._states[kid][0] == digest:
                continue
            # Never used (any use writes a row first), or new keys for this kid.
            self._states[kid] = (digest, OscoreState(0, None, SEQUENCE_CHUNK, fresh=True))
            rows.append((kid, digest, SEQUENCE_CHUNK))
        # On disk now: every window "unknown" (the windows just read stay in memory), every
        # context's next SEQUENCE_CHUNK numbers reserved. One transaction, one fsync.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT OR REPLACE INTO oscore_state VALUES (?, ?, ?, NULL, NULL)", rows
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._on_disk = {kid: (digest, OscoreState(reserved)) for kid, digest, reserved in rows}

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
        if saved is None or saved[0] != _keys_digest(keys):
            return None  # never used, or the meter has been given new keys since
        return saved[1]

    def _changed(self, keys: OscoreKeys, state: OscoreState) -> tuple[object, ...] | None:
        """The row to write for this state; None when the disk holds it already."""
        digest = _keys_digest(keys)
        self._states[keys.sender_id] = (digest, state)
        if self._on_disk.get(keys.sender_id) == (digest, state):
            return None
        self._on_disk[keys.sender_id] = (digest, state)
        window_index, window_bits = state.replay_window or (None, None)
        return (keys.sender_id, digest, state.next_sequence, window_index, window_bits)

    def save_state(self, keys: OscoreKeys, state: OscoreState) -> None:
        row = self._changed(keys, state)
        if row is not None:
            # One statement in autocommit: durable (fsynced) before the number is used.
            self._store.connection.execute(
                "INSERT OR REPLACE INTO oscore_state VALUES (?, ?, ?, ?, ?)", row
            )

    def save_states(self, states: list[tuple[OscoreKeys, OscoreState]]) -> None:
        rows = [row for keys, state in states if (row := self._changed(keys, state)) is not None]
        if not rows:
            return
        conn = self._store.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO oscore_state VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

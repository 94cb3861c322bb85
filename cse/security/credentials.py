"""The credential store: which entity may use a CSE, under which name, with which secret.

One SQLite file per CSE (mode 0600, beside its database), written by `gridm2m credentials`
and read by the running CSE. Each credential names one entity and binds it to the originator
it may use:

- a device (a meter): AE-ID `C<name>`, registration under the resource name `<name>` only,
  proved by its OSCORE keys (CoAP) or its MQTT password (checked by the broker, whose password
  file and ACL are made from this store);
- a CSE (the head-end, a gateway): its CSE-ID and the entities behind it, proved by a TLS client
  certificate (pinned by fingerprint) or a bearer token;
- an admin (an operator): the admin originator, proved by a bearer token or a certificate.

A bearer token is shown once when it is made and kept only as its SHA-256. The OSCORE keys and
the MQTT password are kept as they are: the gateway needs them to talk to the meter and to
rebuild a board's bundle. The running CSE keeps the store in memory and reloads it when another
process (the CLI) commits a change, checked on every lookup (`PRAGMA data_version`), so a
revocation cuts the entity off at its next request.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cse.core.identity import Principal, Role

_SCHEMA = """
CREATE TABLE IF NOT EXISTS credential (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    originator    TEXT NOT NULL,
    created       REAL NOT NULL,
    expires       REAL,
    revoked       REAL,
    oscore_kid    BLOB UNIQUE,
    oscore_secret BLOB,
    oscore_salt   BLOB,
    mqtt_password TEXT,
    token_sha256  BLOB UNIQUE,
    cert_sha256   BLOB UNIQUE
);
CREATE INDEX IF NOT EXISTS credential_by_originator ON credential (originator);
"""

# What a device or CSE name may contain: it becomes a resource name and an MQTT topic level.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OSCORE_SECRET_BYTES = 16
OSCORE_SALT_BYTES = 8


class CredentialError(Exception):
    """A credential that cannot be added or changed; the message says why."""


class Kind(enum.Enum):
    DEVICE = "device"
    CSE = "cse"
    ADMIN = "admin"

    @property
    def role(self) -> Role:
        return {Kind.DEVICE: Role.DEVICE, Kind.CSE: Role.CSE, Kind.ADMIN: Role.ADMIN}[self]


def device_originator(name: str) -> str:
    """The AE-ID a device registers with: `C` + its name (the meter agent's rule)."""
    return "C" + name


@dataclass(frozen=True, slots=True)
class Credential:
    name: str
    kind: Kind
    originator: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    oscore_kid: bytes | None = None
    oscore_secret: bytes | None = None
    oscore_salt: bytes | None = None
    mqtt_password: str | None = None
    token_sha256: bytes | None = None
    cert_sha256: bytes | None = None

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)

    def principal(self, via: str) -> Principal:
        return Principal(self.kind.role, self.name, self.originator, via)

    @property
    def status(self) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and time.time() >= self.expires:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential just made, with the secrets shown only now (the token is not kept)."""

    credential: Credential
    token: str | None = None


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CredentialStore:
    """The store file, and an in-memory index of it that follows other processes' commits."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._version = -1
        self._by_name: dict[str, Credential] = {}
        self._by_kid: dict[bytes, Credential] = {}
        self._by_token: dict[bytes, Credential] = {}
        self._by_cert: dict[bytes, Credential] = {}
        self._by_originator: dict[str, Credential] = {}

    # ---- opening -----------------------------------------------------------------------

    def open(self) -> CredentialStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Made private before SQLite writes a secret into it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        db.executescript(_SCHEMA)
        self._db = db
        self._reload_if_changed()
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> CredentialStore:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection (autocommit), for tables kept beside the credentials."""
        if self._db is None:
            raise RuntimeError("the credential store is not open")
        return self._db

    _conn = connection

    # ---- lookups (the running CSE) -----------------------------------------------------------

    def _reload_if_changed(self, *, ours: bool = False) -> None:
        # data_version moves only with other connections' commits, so our own changes reload
        # explicitly (ours=True).
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if version == self._version and not ours:
            return
        self._version = version
        credentials = [self._row(row) for row in self._conn.execute("SELECT * FROM credential")]
        self._by_name = {c.name: c for c in credentials}
        self._by_kid = {c.oscore_kid: c for c in credentials if c.oscore_kid is not None}
        self._by_token = {c.token_sha256: c for c in credentials if c.token_sha256 is not None}
        self._by_cert = {c.cert_sha256: c for c in credentials if c.cert_sha256 is not None}
        self._by_originator = {c.originator: c for c in credentials if c.kind is not Kind.ADMIN}

    def _usable(self, credential: Credential | None) -> Credential | None:
        if credential is None or not credential.usable(time.time()):
            return None
        return credential

    def by_name(self, name: str) -> Credential | None:
        self._reload_if_changed()
        return self._usable(self._by_name.get(name))

    def by_oscore_kid(self, kid: bytes) -> Credential | None:
        self._reload_if_changed()
        return self._usable(self._by_kid.get(kid))

    def by_token(self, token: str) -> Credential | None:
        self._reload_if_changed()
        return self._usable(self._by_token.get(token_digest(token)))

    def by_certificate(self, der: bytes) -> Credential | None:
        self._reload_if_changed()
        return self._usable(self._by_cert.get(hashlib.sha256(der).digest()))

    def by_originator(self, originator: str) -> Credential | None:
        """The device or CSE credential bound to an originator (not admins, who share one)."""
        self._reload_if_changed()
        return self._usable(self._by_originator.get(originator))

    def all(self) -> list[Credential]:
        self._reload_if_changed()
        return sorted(self._by_name.values(), key=lambda c: (c.kind.value, c.name))

    # ---- changes (the CLI, the demo, agent builds) -------------------------------------------

    def add_device(
        self, name: str, *, expires: float | None = None, mqtt: bool = True, oscore: bool = True
    ) -> Issued:
        """A meter: OSCORE keys with a fresh short kid, and an MQTT password."""
        _check_name(name)
        credential = self._new_device(name, expires, mqtt=mqtt, oscore=oscore)
        return Issued(self._insert(credential, with_kid=oscore))

    @staticmethod
    def _new_device(name: str, expires: float | None, *, mqtt: bool, oscore: bool) -> Credential:
        return Credential(
            name=name,
            kind=Kind.DEVICE,
            originator=device_originator(name),
            created=time.time(),
            expires=expires,
            oscore_secret=secrets.token_bytes(OSCORE_SECRET_BYTES) if oscore else None,
            oscore_salt=secrets.token_bytes(OSCORE_SALT_BYTES) if oscore else None,
            mqtt_password=secrets.token_urlsafe(18) if mqtt else None,
        )

    def add_devices(self, names: list[str]) -> list[Credential]:
        """Many meters at once, in one transaction (a fleet or a lab); names the store knows
        already are skipped. Returns the credentials made."""
        made: list[Credential] = []
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            known = {row[0] for row in conn.execute("SELECT name FROM credential")}
            for name in names:
                if name in known:
                    continue
                _check_name(name)
                credential = replace(
                    self._new_device(name, None, mqtt=True, oscore=True),
                    oscore_kid=self._free_kid(conn),
                )
                self._insert_row(conn, credential)
                known.add(name)
                made.append(credential)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._reload_if_changed(ours=True)
        return made

    def add_cse(
        self,
        cse_id: str,
        *,
        certificate: bytes | None = None,
        token: bool = False,
        mqtt: bool = False,
        expires: float | None = None,
    ) -> Issued:
        """Another CSE: proved by a client certificate (DER, pinned) and/or a bearer token."""
        name = cse_id.lstrip("/")
        _check_name(name)
        return self._add_with_token(
            Credential(
                name=name,
                kind=Kind.CSE,
                originator="/" + name,
                created=time.time(),
                expires=expires,
                mqtt_password=secrets.token_urlsafe(18) if mqtt else None,
                cert_sha256=hashlib.sha256(certificate).digest() if certificate else None,
            ),
            token,
        )

    def add_admin(
        self,
        name: str,
        originator: str,
        *,
        certificate: bytes | None = None,
        token: bool = True,
        expires: float | None = None,
    ) -> Issued:
        """An operator who may act as the admin originator."""
        _check_name(name)
        return self._add_with_token(
            Credential(
                name=name,
                kind=Kind.ADMIN,
                originator=originator,
                created=time.time(),
                expires=expires,
                cert_sha256=hashlib.sha256(certificate).digest() if certificate else None,
            ),
            token,
        )

    def _add_with_token(self, credential: Credential, token: bool) -> Issued:
        secret = secrets.token_urlsafe(32) if token else None
        if secret is not None:
            credential = replace(credential, token_sha256=token_digest(secret))
        return Issued(self._insert(credential, with_kid=False), secret)

    def new_token(self, name: str) -> str:
        """Replace a credential's bearer token (rotation); the old one stops working."""
        secret = secrets.token_urlsafe(32)
        self._update(name, "token_sha256 = ?", (token_digest(secret),))
        return secret

    def new_mqtt_password(self, name: str) -> str:
        """Give a credential a new MQTT password (or its first); the broker takes it once its
        password file is made again (`gridm2m credentials mosquitto`)."""
        password = secrets.token_urlsafe(18)
        self._update(name, "mqtt_password = ?", (password,))
        return password

    def new_oscore_keys(self, name: str) -> Credential:
        """Give a meter new OSCORE keys (rotation, or its first): a new Master Secret and
        Salt under its kid (a new kid if it had none). The old keys stop working at the
        running CSE's next request; the meter needs a new bundle."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT kind, oscore_kid FROM credential WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise CredentialError(f"no credential named {name!r}")
            if row[0] != Kind.DEVICE.value:
                raise CredentialError(f"{name!r} is not a meter: only meters have OSCORE keys")
            kid = bytes(row[1]) if row[1] is not None else self._free_kid(conn)
            conn.execute(
                "UPDATE credential SET oscore_kid = ?, oscore_secret = ?, oscore_salt = ? "
                "WHERE name = ?",
                (
                    kid,
                    secrets.token_bytes(OSCORE_SECRET_BYTES),
                    secrets.token_bytes(OSCORE_SALT_BYTES),
                    name,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._reload_if_changed(ours=True)
        return self._by_name[name]

    def pin_certificate(self, name: str, certificate: bytes) -> None:
        self._update(name, "cert_sha256 = ?", (hashlib.sha256(certificate).digest(),))

    def revoke(self, name: str) -> Credential:
        self._update(name, "revoked = ?", (time.time(),))
        return self._by_name[name]

    def remove(self, name: str) -> None:
        self._update(name, None, ())

    def _update(self, name: str, assignment: str | None, values: tuple[object, ...]) -> None:
        conn = self._conn
        if assignment is None:
            cursor = conn.execute("DELETE FROM credential WHERE name = ?", (name,))
        else:
            cursor = conn.execute(
                f"UPDATE credential SET {assignment} WHERE name = ?", (*values, name)
            )
        if cursor.rowcount == 0:
            raise CredentialError(f"no credential named {name!r}")
        self._reload_if_changed(ours=True)

    def _insert(self, credential: Credential, *, with_kid: bool) -> Credential:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(
                "SELECT 1 FROM credential WHERE name = ?", (credential.name,)
            ).fetchone():
                raise CredentialError(f"a credential named {credential.name!r} exists already")
            if (
                credential.kind is not Kind.ADMIN
                and conn.execute(
                    "SELECT 1 FROM credential WHERE originator = ?", (credential.originator,)
                ).fetchone()
            ):
                raise CredentialError(f"originator {credential.originator} is taken already")
            if with_kid:
                credential = replace(credential, oscore_kid=self._free_kid(conn))
            self._insert_row(conn, credential)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._reload_if_changed(ours=True)
        return credential

    @staticmethod
    def _insert_row(conn: sqlite3.Connection, credential: Credential) -> None:
        conn.execute(
            "INSERT INTO credential VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                credential.name,
                credential.kind.value,
                credential.originator,
                credential.created,
                credential.expires,
                credential.revoked,
                credential.oscore_kid,
                credential.oscore_secret,
                credential.oscore_salt,
                credential.mqtt_password,
                credential.token_sha256,
                credential.cert_sha256,
            ),
        )

    @staticmethod
    def _free_kid(conn: sqlite3.Connection) -> bytes:
        """A short OSCORE Sender ID no other meter of this store has: it travels in every
        request, so it is 2 bytes while there is room and grows only when there is not."""
        for size in (2, 3, 4):
            for _ in range(64):
                kid = secrets.token_bytes(size)
                if not conn.execute(
                    "SELECT 1 FROM credential WHERE oscore_kid = ?", (kid,)
                ).fetchone():
                    return kid
        raise CredentialError("no free OSCORE key ID left")

    @staticmethod
    def _row(row: tuple[object, ...]) -> Credential:
        (name, kind, originator, created, expires, revoked, kid, secret, salt, password,
         token, cert) = row  # fmt: skip
        return Credential(
            name=str(name),
            kind=Kind(kind),
            originator=str(originator),
            created=float(created),  # type: ignore[arg-type]
            expires=None if expires is None else float(expires),  # type: ignore[arg-type]
            revoked=None if revoked is None else float(revoked),  # type: ignore[arg-type]
            oscore_kid=kid,  # type: ignore[arg-type]
            oscore_secret=secret,  # type: ignore[arg-type]
            oscore_salt=salt,  # type: ignore[arg-type]
            mqtt_password=None if password is None else str(password),
            token_sha256=token,  # type: ignore[arg-type]
            cert_sha256=cert,  # type: ignore[arg-type]
        )

    def __iter__(self) -> Iterator[Credential]:
        return iter(self.all())


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise CredentialError(
            f"{name[:80]!r} is not a usable name: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )

"""The DAP broker's password file and ACL, made from a CSE's credential store.

Mosquitto authenticates every client and holds it to its own topics; the CSE's MQTT binding
then believes the originator in a request's topic (cse/bindings/mqtt/server.py). Both files
come from the same store, so a meter the store knows can log in and publish as itself only,
and a revoked one disappears from both at the next `gridm2m credentials mosquitto`, which
Mosquitto reads again on SIGHUP.

Broker user names are originators in topic form (TS-0010): a meter logs in as its AE-ID
(`C<meter id>`), a CSE as its CSE-ID without the slash (`id-dap1`). The CSE that serves
through the broker (the gateway) logs in with its own credential from its own store.

The password file uses Mosquitto 2.0's `$7$` format: PBKDF2-HMAC-SHA512, a 12-byte salt,
base64, `user:$7$<iterations>$<salt>$<hash>`. The iteration count is Mosquitto's own default
(101): every CONNECT costs the broker one derivation, and the passwords are 18 random bytes,
which no dictionary holds, so more rounds would slow a fleet's reconnection and protect
nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cse.security.credentials import Credential, CredentialError, CredentialStore, Kind

PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HEALTH_USER = "health"  # the container health check: reads the broker's uptime, nothing else


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A password as Mosquitto 2.0 stores it (`$7$...`)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    encode = base64.b64encode
    return f"$7${PBKDF2_ITERATIONS}${encode(salt).decode()}${encode(digest).decode()}"


def password_matches(password: str, hashed: str) -> bool:
    """Whether `password` is the one behind a `$7$` hash (as Mosquitto checks it)."""
    try:
        _, kind, rounds, salt, digest = hashed.split("$")
        expected = base64.b64decode(digest, validate=True)
        derived = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt, validate=True), int(rounds)
        )
    except ValueError:
        return False
    return kind == "7" and hmac.compare_digest(derived, expected)


def broker_username(credential: Credential) -> str:
    """The user name a credential logs in to the broker with: its originator in topic form."""
    return credential.originator.lstrip("/").replace("/", ":")


@dataclass(frozen=True, slots=True)
class BrokerUser:
    name: str
    password: str
    credential: Credential | None  # None for the health-check user


def broker_users(credentials: Iterable[Credential], now: float) -> list[BrokerUser]:
    """Every usable device and CSE credential that has an MQTT password, by user name.

    Raises CredentialError when two credentials would share a user name (a meter `X` and a
    CSE `CX`): the broker could not tell them apart, nor could the CSE."""
    users: dict[str, BrokerUser] = {}
    for credential in credentials:
        if credential.kind is Kind.ADMIN or credential.mqtt_password is None:
            continue
        if not credential.usable(now):
            continue
        name = broker_username(credential)
        if name in users or name == HEALTH_USER:
            raise CredentialError(
                f"{credential.name!r} would log in to the broker as {name!r}, "
                "which another credential uses: rename or remove one of them"
            )
        users[name] = BrokerUser(name, credential.mqtt_password, credential)
    return sorted(users.values(), key=lambda user: user.name)


def password_file(users: Iterable[BrokerUser]) -> str:
    return "".join(f"{user.name}:{hash_password(user.password)}\n" for user in users)


def acl_file(cse_id: str, users: Iterable[BrokerUser]) -> str:
    """Topic access for the DAP broker: every client talks with the CSE `cse_id` only, as
    itself; that CSE talks with every client."""
    own = cse_id.lstrip("/")
    lines = [
        f"# Made by `gridm2m credentials mosquitto` from the credential store of {cse_id}.",
        "# Do not edit: make it again (and the password file) and send Mosquitto a SIGHUP.",
        "# Topics of oneM2M TS-0010 with IDs in topic form (no leading slash):",
        "#   request  /oneM2M/req/<originator>/<receiver>/<json|cbor>",
        "#   response /oneM2M/resp/<originator>/<receiver>/<same>",
        "# A user name is its owner's originator in topic form; %u stands for it.",
        "",
        f"# Every client: its requests to {own} (registration on reg_req) and their answers,",
        f"# the requests (notifications) {own} sends it, and its answers to those only: a `+`",
        "# in place of the CSE would let a meter answer another meter's requests.",
        f"pattern write /oneM2M/req/%u/{own}/+",
        f"pattern write /oneM2M/reg_req/%u/{own}/+",
        "pattern read /oneM2M/resp/%u/+/+",
        "pattern read /oneM2M/reg_resp/%u/+/+",
        f"pattern read /oneM2M/req/{own}/%u/+",
        f"pattern write /oneM2M/resp/{own}/%u/+",
        "",
        f"# {own} itself: serves every client's requests and notifies them.",
        f"# Several processes serving {own} (docs/scale-out.md) all log in as {own} and read",
        "# requests through a shared subscription `$share/<group>/...`; Mosquitto checks read",
        "# access on the topic each message is delivered on, without that prefix, so the lines",
        "# below cover them. Under /gridm2m/workers they tell each other of a dead worker.",
        f"user {own}",
        f"topic read /oneM2M/req/+/{own}/+",
        f"topic read /oneM2M/reg_req/+/{own}/+",
        f"topic write /oneM2M/resp/+/{own}/+",
        f"topic write /oneM2M/reg_resp/+/{own}/+",
        f"topic write /oneM2M/req/{own}/+/+",
        f"topic readwrite /gridm2m/workers/{own}/#",
    ]
    for user in users:
        if user.credential is None or user.credential.kind is not Kind.CSE or user.name == own:
            continue
        lines += [
            "",
            f"# Another CSE: {own} may register with it (an IN-CSE serving through this broker).",
            f"user {user.name}",
            f"topic read /oneM2M/reg_req/{own}/{user.name}/+",
            f"topic write /oneM2M/reg_resp/{own}/{user.name}/+",
        ]
    lines += [
        "",
        "# The container health check reads the broker's uptime, nothing else.",
        f"user {HEALTH_USER}",
        "topic read $SYS/broker/uptime",
    ]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Replace `path` at once (Mosquitto may reload it at any moment), readable by its owner
    only; a group that was given read access keeps it (the mosquitto group on a host)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600
    group = -1
    if path.exists():
        status = path.stat()
        mode, group = (status.st_mode & 0o640) | 0o600, status.st_gid
    work = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(work, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if group != -1:
            os.chown(work, -1, group)
        os.chmod(work, mode)
        os.replace(work, path)
    except BaseException:
        work.unlink(missing_ok=True)
        raise


def own_login(store: CredentialStore, cse_id: str) -> tuple[Credential, bool]:
    """The CSE's own credential with an MQTT password (made or given one now: True)."""
    own = store.by_originator(cse_id)
    if own is None:
        return store.add_cse(cse_id, mqtt=True).credential, True
    if own.mqtt_password is None:
        store.new_mqtt_password(own.name)
        renewed = store.by_name(own.name)
        assert renewed is not None
        return renewed, True
    return own, False


def write_broker_files(
    store: CredentialStore,
    cse_id: str,
    passwords: Path,
    acl: Path,
    extra: Iterable[BrokerUser] = (),
) -> list[BrokerUser]:
    """The broker's password file and ACL for the CSE `cse_id` from its store (its own login
    made first if needed); returns the users written."""
    own_login(store, cse_id)
    users = broker_users(store.all(), time.time()) + list(extra)
    write_private(passwords, password_file(users))
    write_private(acl, acl_file(cse_id, users))
    return users

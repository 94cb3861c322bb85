"""`gridm2m credentials`: provision, list, rotate and revoke who may use a CSE.

The store is the CSE's (gateway's, head-end's) credential file, found from the same config
file the part runs with (`--config configs/gateway.toml`), or given directly (`--store`).
Secrets are printed only when they are made (a bearer token is not kept at all), never logged.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import tomllib
from pathlib import Path

from cse.app import ConfigError, CSEConfig, load_cse_config
from cse.security import mosquitto
from cse.security.credentials import Credential, CredentialError, CredentialStore, Kind

_SECTIONS = (("gateway", "cse"), ("headend", "cse"), ("cse",))
_HEALTH_VARIABLE = "MQTT_HEALTH_PASSWORD"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "credentials",
        help="provision, list, rotate and revoke the credentials a CSE accepts",
        description="The credential store of a gateway, head-end or bare CSE: meters (OSCORE "
        "keys, MQTT password), other CSEs (client certificate, token), operators (token).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--config", help="the part's TOML file ([gateway.cse], [headend.cse], [cse])"
    )
    where.add_argument("--store", help="the credential store file itself")
    parser.add_argument("--log-level", default="WARNING")
    actions = parser.add_subparsers(dest="action", required=True)

    device = actions.add_parser("add-device", help="a meter: OSCORE keys and an MQTT password")
    device.add_argument("name", help="the meter id (its AE resource name)")
    device.add_argument("--days", type=float, help="valid for this many days (default: no end)")

    cse = actions.add_parser("add-cse", help="another CSE (the head-end, a gateway)")
    cse.add_argument("cse_id", help="its CSE-ID, e.g. /id-in")
    cse.add_argument("--cert", help="its client certificate (PEM) to pin")
    cse.add_argument("--token", action="store_true", help="also make a bearer token (shown once)")
    cse.add_argument("--mqtt", action="store_true", help="also an MQTT password for the broker")
    cse.add_argument("--days", type=float)

    admin = actions.add_parser("add-admin", help="an operator who may act as the admin")
    admin.add_argument("name")
    admin.add_argument("--cert", help="a client certificate (PEM) to pin instead of a token")
    admin.add_argument("--days", type=float)

    broker = actions.add_parser(
        "mosquitto",
        help="write the MQTT broker's password file and ACL from the store",
        description="The DAP broker's password file (Mosquitto 2.0 $7$ hashes) and ACL for "
        "every usable meter and CSE with an MQTT password, and for this CSE itself (its "
        "credential is made on first use). Then reload Mosquitto: kill -HUP <pid>.",
    )
    broker.add_argument("--passwords", required=True, metavar="FILE", help="password_file")
    broker.add_argument("--acl", required=True, metavar="FILE", help="acl_file")
    broker.add_argument(
        "--cse-id", help="the CSE serving through the broker (default: from --config)"
    )
    broker.add_argument(
        "--health-env",
        metavar="FILE",
        help="also a `health` user for the container health check; its password is kept "
        "in FILE as MQTT_HEALTH_PASSWORD=... (made once, then reused)",
    )

    actions.add_parser("list", help="every credential, its kind and status (no secrets)")
    for action, text in (
        ("revoke", "cut a credential off at once (a running CSE sees it at the next request)"),
        ("token", "make a new bearer token for a credential (the old one stops working)"),
        (
            "rekey",
            "give a meter new OSCORE keys and a new broker password (the old ones stop working;"
            " build its bundle again, and the broker's files: credentials mosquitto)",
        ),
        ("remove", "delete a credential (revoke keeps it listed; prefer revoke)"),
    ):
        one = actions.add_parser(action, help=text)
        one.add_argument("name")
    parser.set_defaults(run=run)


def store_path(config_file: str | None, store: str | None) -> str:
    """The store named on the command line, or the one of the CSE in a part's config file."""
    if store:
        return store
    config = _cse_config(config_file)
    path = config.credentials_path()
    if path is None:
        raise ConfigError("the CSE keeps no credential store (its database is :memory:)")
    return path


def _cse_config(config_file: str | None) -> CSEConfig:
    if config_file is None:
        return load_cse_config(None)
    try:
        document = tomllib.loads(Path(config_file).read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {config_file}: {error}") from error
    for section in _SECTIONS:
        table: object = document
        for key in section:
            table = table.get(key) if isinstance(table, dict) else None
        if isinstance(table, dict):
            return CSEConfig.model_validate(table)
    raise ConfigError(f"{config_file} has no [gateway.cse], [headend.cse] or [cse] section")


def _expiry(days: float | None) -> float | None:
    return None if days is None else time.time() + days * 86400


def _pem_to_der(path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def _describe(credential: Credential) -> str:
    proofs = [
        label
        for label, present in (
            ("oscore", credential.oscore_kid is not None),
            ("mqtt", credential.mqtt_password is not None),
            ("token", credential.token_sha256 is not None),
            ("certificate", credential.cert_sha256 is not None),
        )
        if present
    ]
    kid = f" kid={credential.oscore_kid.hex()}" if credential.oscore_kid else ""
    return (
        f"{credential.name:<24} {credential.kind.value:<7} {credential.originator:<24} "
        f"{credential.status:<8} {'+'.join(proofs) or '-'}{kid}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        path = store_path(args.config, args.store)
    except ConfigError as error:
        print(f"gridm2m credentials: {error}", file=sys.stderr)
        return 2
    try:
        with CredentialStore(path) as store:
            return _act(store, args)
    except CredentialError as error:
        print(f"gridm2m credentials: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"gridm2m credentials: cannot use {path}: {error}", file=sys.stderr)
        return 1


def _act(store: CredentialStore, args: argparse.Namespace) -> int:
    action = args.action
    if action == "add-device":
        issued = store.add_device(args.name, expires=_expiry(args.days))
        print(_describe(issued.credential))
        print("its secrets go into its bundle: gridm2m agent build --credentials ...")
    elif action == "add-cse":
        certificate = _pem_to_der(args.cert) if args.cert else None
        issued = store.add_cse(
            args.cse_id,
            certificate=certificate,
            token=args.token,
            mqtt=args.mqtt,
            expires=_expiry(args.days),
        )
        print(_describe(issued.credential))
        if issued.token:
            print(f"token (shown once): {issued.token}")
    elif action == "add-admin":
        certificate = _pem_to_der(args.cert) if args.cert else None
        admin = _admin_originator(args)
        issued = store.add_admin(
            args.name,
            admin,
            certificate=certificate,
            token=certificate is None,
            expires=_expiry(args.days),
        )
        print(_describe(issued.credential))
        if issued.token:
            print(f"token (shown once): {issued.token}")
    elif action == "list":
        for credential in store.all():
            print(_describe(credential))
    elif action == "revoke":
        print(_describe(store.revoke(args.name)))
    elif action == "token":
        print(f"token (shown once): {store.new_token(args.name)}")
    elif action == "rekey":
        rekeyed = store.new_oscore_keys(args.name)  # first: refuses what is not a meter
        store.new_mqtt_password(args.name)
        print(_describe(rekeyed))
    elif action == "remove":
        store.remove(args.name)
        print(f"removed {args.name}")
    elif action == "mosquitto":
        return _write_broker_files(store, args)
    return 0


def _write_broker_files(store: CredentialStore, args: argparse.Namespace) -> int:
    cse_id = args.cse_id or (None if args.store else _cse_config(args.config).cse_id)
    if not cse_id:
        print("gridm2m credentials mosquitto: --store needs --cse-id", file=sys.stderr)
        return 2
    cse_id = "/" + cse_id.lstrip("/")
    own, made = mosquitto.own_login(store, cse_id)
    if made:
        print(f"made the credential {own.name} its MQTT password for {cse_id}'s own broker login")
    extra = []
    if args.health_env:
        health = _health_password(Path(args.health_env))
        extra.append(mosquitto.BrokerUser(mosquitto.HEALTH_USER, health, None))
    users = mosquitto.write_broker_files(store, cse_id, Path(args.passwords), Path(args.acl), extra)
    meters = sum(1 for user in users if user.credential and user.credential.kind is Kind.DEVICE)
    print(
        f"wrote {args.passwords} and {args.acl}: {len(users)} users ({meters} meters); "
        "reload Mosquitto with SIGHUP (kill -HUP <pid>, docker compose kill -s HUP mosquitto)"
    )
    return 0


def _health_password(path: Path) -> str:
    """The health user's password from its env file, or a new one written there."""
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == _HEALTH_VARIABLE and value.strip():
                return value.strip()
    password = secrets.token_urlsafe(18)
    mosquitto.write_private(path, f"{_HEALTH_VARIABLE}={password}\n")
    return password


def _admin_originator(args: argparse.Namespace) -> str:
    if args.store:
        return "CAdmin"
    return _cse_config(args.config).admin_originator

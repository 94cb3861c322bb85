"""`gridm2m pki`: certificates for a lab or a first deployment, made with `cse.security.pki`.

    gridm2m pki init DIR                      a CA: DIR/ca.pem (share it), DIR/ca.key (keep it)
    gridm2m pki server DIR NAME --host H ...  DIR/server/NAME.pem and .key, for hosts H
    gridm2m pki client DIR NAME               DIR/client/NAME.pem and .key (CN = NAME)
    gridm2m pki lab DIR                       what configs/gateway.toml and headend.toml name

`lab` makes the CA (or keeps the one in DIR), a server certificate for each side, a client
certificate for each CSE (named by its CSE-ID without the slash), and pins each side's client
certificate as a CSE credential in the other side's credential store: the gateway then accepts
the head-end's CSE-ID only from the head-end's certificate, and the head-end the gateway's.
Running it again keeps the files it finds and pins them again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from cse.app import ConfigError, CSEConfig
from cse.security.credentials import CredentialError, CredentialStore
from cse.security.pki import CertificateFiles, LabCA

DEFAULT_HOSTS = ["127.0.0.1", "localhost", "::1"]


@dataclass(frozen=True)
class LabFiles:
    """Everything `lab` made: what the configs of both sides point at."""

    ca: Path
    headend_server: CertificateFiles
    gateway_server: CertificateFiles
    headend_client: CertificateFiles
    gateway_client: CertificateFiles


def server_files(folder: Path, name: str) -> CertificateFiles:
    return CertificateFiles(folder / "server" / f"{name}.pem", folder / "server" / f"{name}.key")


def client_files(folder: Path, name: str) -> CertificateFiles:
    return CertificateFiles(folder / "client" / f"{name}.pem", folder / "client" / f"{name}.key")


def _server(ca: LabCA, folder: Path, name: str, hosts: list[str]) -> CertificateFiles:
    files = server_files(folder, name)
    return files if files.cert.exists() else ca.issue_server(folder / "server", name, hosts)


def _client(ca: LabCA, folder: Path, name: str) -> CertificateFiles:
    files = client_files(folder, name)
    return files if files.cert.exists() else ca.issue_client(folder / "client", name)


def pin_cse(store_path: str, cse_id: str, certificate: CertificateFiles) -> None:
    """Make (or re-pin) the CSE credential `cse_id`, proved by this client certificate."""
    with CredentialStore(store_path) as store:
        name = cse_id.lstrip("/")
        if any(credential.name == name for credential in store.all()):
            store.pin_certificate(name, certificate.der())  # a revoked one stays revoked
        else:
            store.add_cse(cse_id, certificate=certificate.der())


def make_lab(
    folder: str | Path,
    gateway: CSEConfig,
    headend: CSEConfig,
    hosts: list[str] | None = None,
) -> LabFiles:
    """The lab's certificates in `folder`, and each side's certificate pinned in the other's
    credential store (the stores named by the two CSE configs)."""
    folder = Path(folder)
    ca = LabCA.open_or_create(folder)
    server_hosts = [*DEFAULT_HOSTS, *(hosts or [])]
    files = LabFiles(
        ca.cert_path,
        _server(ca, folder, "headend", server_hosts),
        _server(ca, folder, "gateway", server_hosts),
        _client(ca, folder, headend.cse_id.lstrip("/")),
        _client(ca, folder, gateway.cse_id.lstrip("/")),
    )
    for config, peer_id, peer_cert in (
        (gateway, headend.cse_id, files.headend_client),
        (headend, gateway.cse_id, files.gateway_client),
    ):
        store = config.credentials_path()
        if store is None:
            raise ConfigError(f"{config.cse_id} keeps no credential store (its db is :memory:)")
        pin_cse(store, peer_id, peer_cert)
    return files


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pki",
        help="make a lab CA and the certificates for HTTPS and mutual TLS",
        description="Certificates for a lab or a first deployment (ECDSA P-256). Keys are "
        "written with mode 0600. A utility with its own PKI uses its own files instead.",
    )
    parser.add_argument("--log-level", default="WARNING")
    actions = parser.add_subparsers(dest="action", required=True)
    init = actions.add_parser("init", help="a new CA in DIR (ca.pem, ca.key)")
    init.add_argument("dir")
    server = actions.add_parser("server", help="a server certificate from DIR's CA")
    server.add_argument("dir")
    server.add_argument("name")
    server.add_argument("--host", action="append", required=True, help="DNS name or IP (repeat)")
    client = actions.add_parser("client", help="a client certificate from DIR's CA")
    client.add_argument("dir")
    client.add_argument("name", help="its common name: the credential's name (id-in, alice)")
    lab = actions.add_parser(
        "lab", help="CA, server and client certificates of a gateway and head-end, pinned"
    )
    lab.add_argument("dir")
    lab.add_argument("--gateway-config", default="configs/gateway.toml")
    lab.add_argument("--headend-config", default="configs/headend.toml")
    lab.add_argument(
        "--host", action="append", default=[], help="another name or IP the servers answer as"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    try:
        if args.action == "init":
            ca = LabCA.create(folder)
            print(f"CA: {ca.cert_path} (share it), {ca.key_path} (keep it private)")
        elif args.action == "server":
            files = LabCA(folder).issue_server(folder / "server", args.name, args.host)
            print(f"server certificate: {files.cert}, key: {files.key}")
        elif args.action == "client":
            files = LabCA(folder).issue_client(folder / "client", args.name)
            print(f"client certificate: {files.cert}, key: {files.key}")
        else:
            return _run_lab(args)
    except FileExistsError as error:
        print(f"gridm2m pki: {error}", file=sys.stderr)
        return 1
    except FileNotFoundError as error:
        print(f"gridm2m pki: no CA in {folder} ({error.filename}): run `init` first",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _run_lab(args: argparse.Namespace) -> int:
    from gateway.config import GatewayConfigError, load_gateway_config
    from headend.config import HeadendConfigError, load_headend_config

    try:
        gateway = load_gateway_config(args.gateway_config).cse
        headend = load_headend_config(args.headend_config).cse
        files = make_lab(args.dir, gateway, headend, args.host)
    except (GatewayConfigError, HeadendConfigError, ConfigError, CredentialError) as error:
        print(f"gridm2m pki lab: {error}", file=sys.stderr)
        return 2
    print(f"CA {files.ca}")
    for label, made in (
        ("head-end server", files.headend_server),
        ("gateway server", files.gateway_server),
        (f"{headend.cse_id} client", files.headend_client),
        (f"{gateway.cse_id} client", files.gateway_client),
    ):
        print(f"{label:<20} {made.cert}")
    print(f"pinned {headend.cse_id} in {gateway.credentials_path()}")
    print(f"pinned {gateway.cse_id} in {headend.credentials_path()}")
    return 0

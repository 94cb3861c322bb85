"""A small certificate authority for a lab or a first deployment, and TLS contexts from files.

`LabCA` makes an ECDSA P-256 CA and issues server certificates (with the host names and IP
addresses clients use) and client certificates (the common name is the credential's name: a
CSE-ID without its slash, a meter name, an operator). A utility with its own PKI uses its own
files instead; everything here reads and writes ordinary PEM files, so either works.

Private keys are written with mode 0600. Nothing here shells out to `openssl`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Where one issued certificate and its key were written."""

    cert: Path
    key: Path

    def der(self) -> bytes:
        """The certificate in DER (what the credential store pins)."""
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LabCA:
    """A CA kept as two PEM files in a folder: `ca.pem` (share it) and `ca.key` (keep it)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.cert_path = self.folder / "ca.pem"
        self.key_path = self.folder / "ca.key"

    @classmethod
    def create(cls, folder: str | Path, name: str = "GridM2M lab CA", days: int = 3650) -> LabCA:
        ca = cls(folder)
        if ca.cert_path.exists() or ca.key_path.exists():
            raise FileExistsError(f"a CA exists already in {ca.folder}")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + days * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_private(ca.key_path, _key_pem(key))
        ca.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ca

    @classmethod
    def open_or_create(cls, folder: str | Path) -> LabCA:
        ca = cls(folder)
        return ca if ca.cert_path.exists() else cls.create(folder)

    def _load(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.key_path} is not an EC private key")
        return cert, key

    def issue_server(
        self, out: str | Path, name: str, hosts: list[str], days: int = 825
    ) -> CertificateFiles:
        """A server certificate for `hosts` (DNS names or IP addresses)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(
            Path(out),
            name,
            ExtendedKeyUsageOID.SERVER_AUTH,
            days,
            x509.SubjectAlternativeName(names),
        )

    def issue_client(self, out: str | Path, name: str, days: int = 825) -> CertificateFiles:
        """A client certificate whose common name is the credential's name."""
        return self._issue(Path(out), name, ExtendedKeyUsageOID.CLIENT_AUTH, days, None)

    def _issue(
        self,
        out: Path,
        name: str,
        usage: x509.ObjectIdentifier,
        days: int,
        alt_names: x509.SubjectAlternativeName | None,
    ) -> CertificateFiles:
        ca_cert, ca_key = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + days * _DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if alt_names is not None:
            builder = builder.add_extension(alt_names, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        files = CertificateFiles(out / f"{name}.pem", out / f"{name}.key")
        _write_private(files.key, _key_pem(key))
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return files


def server_context(
    cert: str | Path, key: str | Path, client_ca: str | Path | None, *, require_client: bool
) -> ssl.SSLContext:
    """TLS for a listener; with `client_ca`, client certificates from that CA are verified
    (required when `require_client`, else optional: a token may prove the client instead)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        context.load_verify_locations(str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_OPTIONAL
    return context


def client_context(
    ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext:
    """TLS for a client: the server verified against `ca` (default: the system's), and our
    own certificate presented when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def self_probe_context(
    cert: str | Path | None = None, key: str | Path | None = None
) -> ssl.SSLContext:
    """TLS for a process that probes its own listener on loopback: the server is not verified
    (the socket is the process's own), the client certificate is presented when given (for a
    listener that requires one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context

"""Who sent an HTTP request: a TLS client certificate or a bearer token, mapped to a principal
through the credential store, or the listener's trust for requests that prove nothing.

A client certificate has passed the TLS layer's check against the listener's client CA before
a request arrives; here it must also be pinned (by fingerprint) to a usable credential. A bearer
token (`Authorization: Bearer <token>`) is looked up by its digest. Both lookups go through the
store on every request, so a credential revoked or expired in the store is refused at its next
request, even on a keep-alive connection that was accepted before.

A token never reaches a log: refusals name the peer address and what was missing or wrong.
"""

from __future__ import annotations

import logging
import ssl
from typing import NoReturn

from aiohttp import web

from cse.core.identity import Principal, Trust
from cse.security.credentials import Credential, CredentialStore

logger = logging.getLogger(__name__)

_BEARER = "bearer "


class NotAuthenticated(Exception):
    """The request proved no identity this listener accepts; `bad_token` when it sent a token
    that is not (or no longer) a usable credential (the reply then carries WWW-Authenticate)."""

    def __init__(self, message: str, *, bad_token: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.bad_token = bad_token


def peer_certificate(http_request: web.Request) -> bytes | None:
    """The client certificate (DER) the TLS layer verified, None on plain HTTP or without one."""
    transport = http_request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


def bearer_token(http_request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer` header ("" for another scheme or none given)."""
    header = http_request.headers.get("Authorization")
    if header is None:
        return None
    if header[: len(_BEARER)].lower() != _BEARER:
        return ""
    return header[len(_BEARER) :].strip()


class HttpAuthenticator:
    """Turns what an HTTP request proved into the principal the core judges it by."""

    def __init__(self, trust: Trust, credentials: CredentialStore | None) -> None:
        self.trust = trust
        self.credentials = credentials
        self._log = True

    def principal(self, http_request: web.Request, *, log: bool = True) -> Principal:
        """Raises NotAuthenticated; `log`: say why at WARNING (not for the CSE's own probe)."""
        self._log = log
        certificate = peer_certificate(http_request)
        token = bearer_token(http_request)
        by_certificate = self._by_certificate(certificate, http_request)
        by_token = self._by_token(token, http_request)
        if by_certificate is not None and by_token is not None:
            if by_certificate.name != by_token.name:
                self._refuse(http_request, "a certificate and a token of different credentials")
            return by_certificate.principal("tls")
        if by_certificate is not None:
            return by_certificate.principal("tls")
        if by_token is not None:
            return by_token.principal("token")
        principal = self.trust.principal_without_credential()
        if principal is None:
            self._refuse(http_request, "no client certificate or token")
        return principal

    def _by_certificate(self, der: bytes | None, http_request: web.Request) -> Credential | None:
        if der is None:
            return None
        found = self.credentials.by_certificate(der) if self.credentials is not None else None
        if found is None:
            # Issued by our CA (TLS checked that) but not pinned to a usable credential: never
            # or no longer allowed (revoked, expired, removed).
            self._refuse(http_request, "a client certificate of no usable credential")
        return found

    def _by_token(self, token: str | None, http_request: web.Request) -> Credential | None:
        if token is None:
            return None
        if not token:
            self._refuse(
                http_request, "an Authorization header that is not 'Bearer <token>'", bad_token=True
            )
        found = self.credentials.by_token(token) if self.credentials is not None else None
        if found is None:
            self._refuse(http_request, "a token of no usable credential", bad_token=True)
        return found

    def _refuse(self, http_request: web.Request, why: str, *, bad_token: bool = False) -> NoReturn:
        if self._log:
            logger.warning("refused an HTTP request from %s: %s", http_request.remote, why)
        raise NotAuthenticated(f"not authenticated: {why}", bad_token=bad_token)

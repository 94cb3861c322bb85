"""Who may use the head-end's web server: the operator after a login, or a script with a token.

Two ways in, checked by one middleware in front of every route but the login page, the
static files (the login page's style; nothing secret) and /health:

- a browser logs in with the operator's password (kept only as its scrypt hash) and gets a
  session cookie (random, HttpOnly, SameSite=Strict, Secure over HTTPS), valid for
  `session_s`; sessions live in memory, so a restart logs everyone out;
- a script sends `Authorization: Bearer <token>` with an admin token from the head-end's
  credential store (`gridm2m credentials --config configs/headend.toml add-admin NAME`).

A request without either gets 401 (the JSON API) or a redirect to /login (the page). A
state-changing request on a cookie must come from the dashboard's own origin (the Origin
header, where a browser sends one), on top of SameSite. Repeated wrong passwords from one
address are answered 429 for a while, so the password cannot be guessed at scrypt's pace.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

logger = logging.getLogger(__name__)

COOKIE = "gridm2m_session"
USER = web.RequestKey("user", str)  # who the request proved to be: "dashboard" or an admin
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TokenCheck = Callable[[str], str | None]  # token -> the admin's name, None: not an admin token

_PUBLIC = ("/login", "/health")
_PUBLIC_PREFIX = "/static/"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

# scrypt with n=2**14, r=8 (16 MiB, ~50 ms here): the work factor RFC 7914 suggests for
# interactive logins.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_FAILURES_ALLOWED = 5
_FAILURE_WINDOW_S = 60.0


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.strip().split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(digest) // 2,
            maxmem=1 << 26,
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed.hex(), digest)


def new_password() -> str:
    return secrets.token_urlsafe(15)


class WebLogin:
    """The login form, the sessions and the middleware that checks every request."""

    def __init__(
        self,
        password_hash: str,
        admin_token: TokenCheck,
        *,
        title: str = "GridM2M head-end",
        session_s: float = 8 * 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._password_hash = password_hash
        self._admin_token = admin_token
        self._session_s = session_s
        self._clock = clock
        self._sessions: dict[bytes, float] = {}  # digest of the cookie -> expiry
        self._failures: dict[str, list[float]] = {}
        page = (resources.files("headend.dashboard") / "static" / "login.html").read_text("utf-8")
        self._page = string.Template(page)
        self._title = html.escape(title)

    def install(self, app: web.Application) -> None:
        app.middlewares.insert(0, self.middleware)
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.log_in)
        app.router.add_post("/logout", self.log_out)

    # ---- checking requests ---------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in _PUBLIC or path.startswith(_PUBLIC_PREFIX):
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is not None:
            return await self._with_token(request, handler, header)
        if not self._has_session(request):
            if path.startswith("/api/"):
                return _unauthorized("log in, or send an admin token")
            raise web.HTTPSeeOther("/login")
        if request.method not in _SAFE_METHODS and not _same_origin(request):
            logger.warning("refused a %s to %s from another origin", request.method, path)
            return web.json_response({"error": "cross-origin request refused"}, status=403)
        request[USER] = "dashboard"
        return await handler(request)

    async def _with_token(
        self, request: web.Request, handler: Handler, header: str
    ) -> web.StreamResponse:
        scheme, _, token = header.partition(" ")
        name = self._admin_token(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            logger.warning("refused a request to %s from %s: not an admin token",
                           request.path, request.remote)  # fmt: skip
            return _unauthorized("not an admin token of this head-end", invalid=True)
        request[USER] = name
        return await handler(request)

    def _has_session(self, request: web.Request) -> bool:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return False
        key = hashlib.sha256(cookie.encode()).digest()
        expiry = self._sessions.get(key)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._sessions[key]
            return False
        return True

    # ---- the login form --------------------------------------------------------------------

    def _form(self, message: str = "", status: int = 200) -> web.Response:
        body = self._page.substitute(title=self._title, message=html.escape(message))
        return web.Response(
            text=body,
            status=status,
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    async def login_form(self, request: web.Request) -> web.Response:
        return self._form()

    async def log_in(self, request: web.Request) -> web.StreamResponse:
        source = request.remote or "-"
        now = self._clock()
        recent = [t for t in self._failures.get(source, []) if t > now - _FAILURE_WINDOW_S]
        self._failures[source] = recent
        if len(recent) >= _FAILURES_ALLOWED:
            return self._form("Too many wrong passwords: wait a minute.", 429)
        form = await request.post()
        password = form.get("password")
        if not isinstance(password, str) or not await asyncio.to_thread(
            verify_password, password, self._password_hash
        ):
            recent.append(now)
            logger.warning("wrong dashboard password from %s", source)
            return self._form("Wrong password.", 401)
        self._failures.pop(source, None)
        cookie = secrets.token_urlsafe(32)
        self._forget_expired(now)
        self._sessions[hashlib.sha256(cookie.encode()).digest()] = now + self._session_s
        response = web.HTTPSeeOther("/")
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self._session_s),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        raise response

    async def log_out(self, request: web.Request) -> web.StreamResponse:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            self._sessions.pop(hashlib.sha256(cookie.encode()).digest(), None)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    def _forget_expired(self, now: float) -> None:
        for key in [key for key, expiry in self._sessions.items() if expiry <= now]:
            del self._sessions[key]


def _unauthorized(message: str, *, invalid: bool = False) -> web.Response:
    challenge = 'Bearer realm="gridm2m"' + (', error="invalid_token"' if invalid else "")
    return web.json_response(
        {"error": message}, status=401, headers={"WWW-Authenticate": challenge}
    )


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser's cross-site request: those carry Origin on POST
    return urlsplit(origin).netloc == request.host

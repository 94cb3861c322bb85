"""OSCORE (RFC 8613) for the CoAP binding: per-meter security contexts, opened and sealed here.

The CoAP server stops believing the originator a request names: a request protected with a
meter's OSCORE context is what proves who sent it, and the keys' `Principal` goes with it to
the core. The profile (docs/security.md, "OSCORE profile"): AES-CCM-16-64-128, HKDF-SHA256, no
ID Context, replay window 32; the meter's Sender ID is its kid (1-4 bytes), the gateway's is
the empty byte string, for requests in both directions (notifications to a meter too).

- `OscoreKeys`, `OscoreState`, `OscoreKeyring`: what the gateway's credential store gives
  (keys by kid or by originator; `None` is unknown or revoked) and keeps (the sender sequence
  number, reserved in chunks before use, and the replay window, saved at a clean stop).
  `MemoryKeyring` is a complete in-memory keyring for tests and benchmarks.
- `SecurityContext`: aiocoap's OSCORE primitives (`CanProtect`, `CanUnprotect`,
  `SecurityContextUtils`, `ReplayWindow`) with that persistence.
- `OscoreContexts`: the contexts of one keyring, asked again on every request so a
  revocation cuts a meter off at once. The server and the notification client must share one
  (they send from the same sequence number space).
- `open_request` / `Opened.seal`: the server's side; `OscoreRefused` carries the RFC 8613 §8.2
  answer to a request that cannot be opened (4.02 malformed, 4.01 unknown kid or replay, 4.00
  does not verify, or the protected 4.01 + Echo that rebuilds a lost replay window).
- `protect_request` / `open_answer`: the client's side.

aiocoap's own OSCORE server and client wrappers are not used: they import `lakers` (EDHOC),
which has no wheels for a Raspberry Pi's armv7.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiocoap  # type: ignore[import-untyped]
from aiocoap import interfaces
from aiocoap import oscore as cose
from aiocoap.numbers import MAX_REGULAR_BLOCK_SIZE_EXP  # type: ignore[import-untyped]

from cse.core.identity import Principal

logger = logging.getLogger(__name__)

ALGORITHM = cose.algorithms["AES-CCM-16-64-128"]  # COSE algorithm 10
KDF_HASH = cose.hashfunctions["sha256"]
REPLAY_WINDOW = 32
SEQUENCE_CHUNK = 64  # sender sequence numbers reserved by one write to the keyring
GATEWAY_ID = b""  # the gateway's Sender ID (every meter's Recipient ID)


@dataclass(frozen=True, slots=True)
class OscoreKeys:
    """One meter's OSCORE credential, as the gateway's credential store hands it over."""

    sender_id: bytes  # the meter's kid: 1 to 4 bytes, unique per gateway
    master_secret: bytes = field(repr=False)
    master_salt: bytes = field(repr=False)
    principal: Principal

    def __post_init__(self) -> None:
        if not 1 <= len(self.sender_id) <= 4:
            raise ValueError("an OSCORE Sender ID (kid) has 1 to 4 bytes")
        if len(self.master_secret) < 16:
            raise ValueError("an OSCORE Master Secret has at least 16 bytes")


def generate_keys(sender_id: bytes, principal: Principal) -> OscoreKeys:
    """Fresh keys for a meter: a 16-byte Master Secret and an 8-byte Master Salt."""
    return OscoreKeys(sender_id, secrets.token_bytes(16), secrets.token_bytes(8), principal)


@dataclass(frozen=True, slots=True)
class OscoreState:
    """What survives a restart of one context. Every sequence number the gateway used is below
    `next_sequence`. `replay_window` is (lowest number, bitfield) as saved at a clean stop;
    None when unknown (a crash): the first request is then answered 4.01 + Echo."""

    next_sequence: int
    replay_window: tuple[int, int] | None = None
    # Numbers below this are already reserved on disk (None: next_sequence), so the context
    # may use them without a write: a keyring reserves for every context at once at start.
    reserved: int | None = None
    # Keys nobody used before this process: nothing to replay (an empty window), while the
    # disk already says "window unknown" for the case of a crash.
    fresh: bool = False


class OscoreKeyring(Protocol):
    """The keys the CoAP binding may use, and the persistence of their contexts' state."""

    def keys_for(self, kid: bytes) -> OscoreKeys | None:
        """The keys of the meter with this kid; None when unknown or revoked (refused)."""
        ...

    def keys_for_originator(self, originator: str) -> OscoreKeys | None:
        """The keys of the meter registered as `originator` (to protect notifications)."""
        ...

    def load_state(self, keys: OscoreKeys) -> OscoreState | None:
        """The saved state of these keys' context; None for keys never used."""
        ...

    def save_state(self, keys: OscoreKeys, state: OscoreState) -> None:
        """Keep the state durably before returning (a sequence number is used right after)."""
        ...

    def save_states(self, states: list[tuple[OscoreKeys, OscoreState]]) -> None:
        """Keep many states at once (a clean stop): one write for all of them."""
        ...


class MemoryKeyring:
    """An OscoreKeyring in memory: for tests and benchmarks (state lives as long as it does)."""

    def __init__(self, *keys: OscoreKeys) -> None:
        self._keys: dict[bytes, OscoreKeys] = {}
        self._states: dict[OscoreKeys, OscoreState] = {}
        for each in keys:
            self.add(each)

    def add(self, keys: OscoreKeys) -> None:
        self._keys[keys.sender_id] = keys

    def revoke(self, kid: bytes) -> None:
        self._keys.pop(kid, None)

    def keys_for(self, kid: bytes) -> OscoreKeys | None:
        return self._keys.get(kid)

    def keys_for_originator(self, originator: str) -> OscoreKeys | None:
        for keys in self._keys.values():
            if keys.principal.originator == originator:
                return keys
        return None

    def load_state(self, keys: OscoreKeys) -> OscoreState | None:
        return self._states.get(keys)

    def save_state(self, keys: OscoreKeys, state: OscoreState) -> None:
        self._states[keys] = state

    def save_states(self, states: list[tuple[OscoreKeys, OscoreState]]) -> None:
        for keys, state in states:
            self.save_state(keys, state)


class SecurityContext(cose.CanProtect, cose.CanUnprotect, cose.SecurityContextUtils):  # type: ignore[misc]
    """The gateway's side of one meter's context: it sends as GATEWAY_ID, receives the kid."""

    def __init__(
        self,
        keys: OscoreKeys,
        state: OscoreState | None,
        save: Callable[[OscoreState], None],
    ) -> None:
        self.keys = keys
        self.alg_aead = ALGORITHM
        self.hashfun = KDF_HASH
        self.id_context = None
        self.sender_id = GATEWAY_ID
        self.recipient_id = keys.sender_id
        self.derive_keys(keys.master_salt, keys.master_secret)
        # A fresh Echo value per context: a request recorded before a restart cannot carry it.
        self.echo_recovery = secrets.token_bytes(8)
        self.recipient_replay_window = cose.ReplayWindow(REPLAY_WINDOW, self._window_changed)
        if state is None or state.fresh:  # keys never used: nothing can be replayed yet
            self.recipient_replay_window.initialize_empty()
        elif state.replay_window is not None:
            index, bitfield = state.replay_window
            self.recipient_replay_window.initialize_from_persisted(
                {"index": index, "bitfield": bitfield}
            )
        self.sender_sequence_number = state.next_sequence if state is not None else 0
        self._save = save
        # Nothing is written until something changes: a request accepted (the saved window
        # is stale from then on, so an Echo must follow a crash) or a sequence number taken
        # beyond the reserve. A keyring skips writing a state it already holds, so 5,000
        # meters coming back after a restart cost no write each.
        self._reserved = self.sender_sequence_number
        if state is not None and state.reserved is not None:
            self._reserved = state.reserved
        # Keys never used, or a window saved at a clean stop: the first accepted request must
        # first be recorded as "window unknown", so that a crash leads to an Echo, not to a
        # window that would take a replay.
        self._window_saved = state is None or state.replay_window is not None

    def _reserve(self, upto: int) -> None:
        self._reserved = upto
        self._window_saved = False
        self._save(OscoreState(upto))

    def post_seqnoincrease(self) -> None:
        # Called by protect() before anything is encrypted: the number just taken
        # (sender_sequence_number - 1) must be below what the keyring holds.
        if self.sender_sequence_number > self._reserved:
            self._reserve(self.sender_sequence_number + SEQUENCE_CHUNK)

    def _window_changed(self) -> None:
        if self._window_saved:
            self._reserve(self._reserved)

    def final_state(self) -> OscoreState:
        """For a clean stop: the next sequence number and the replay window as they are. The
        caller saves it (for every context in one write)."""
        window = self.recipient_replay_window.persist()
        known = window["index"] is not None
        replay_window = (window["index"], window["bitfield"]) if known else None
        self._reserved = self.sender_sequence_number
        self._window_saved = True
        return OscoreState(self.sender_sequence_number, replay_window)


class OscoreContexts:
    """The security contexts of one keyring; share one between the CoapServer and the
    CoapClient that notifies meters (both send from the same sequence numbers)."""

    def __init__(self, keyring: OscoreKeyring) -> None:
        self.keyring = keyring
        self._contexts: dict[bytes, SecurityContext] = {}

    def for_kid(self, kid: bytes) -> SecurityContext | None:
        """The context of a kid, if the keyring still has keys for it (asked every time)."""
        return self._current(kid, self.keyring.keys_for(kid))

    def for_keys(self, keys: OscoreKeys) -> SecurityContext:
        context = self._current(keys.sender_id, keys)
        assert context is not None
        return context

    def _current(self, kid: bytes, keys: OscoreKeys | None) -> SecurityContext | None:
        context = self._contexts.get(kid)
        if keys is None:
            self._contexts.pop(kid, None)  # revoked: its state no longer matters
            return None
        if context is None or context.keys != keys:  # new, or the meter was given new keys
            keyring = self.keyring
            state = keyring.load_state(keys)
            context = SecurityContext(keys, state, lambda saved: keyring.save_state(keys, saved))
            self._contexts[kid] = context
        return context

    def save(self) -> None:
        """Save every context's state (a clean stop) in one write; using them later is still
        safe."""
        self.keyring.save_states(
            [(context.keys, context.final_state()) for context in self._contexts.values()]
        )


# ---- the server's side --------------------------------------------------------------------


class _ProtectedRemote(interfaces.EndpointAddress):  # type: ignore[misc]
    """The peer of an opened request: its UDP address, plus its kid for Block1 reassembly (the
    blocks of one body all come from one context)."""

    def __init__(self, underlying: Any, kid: bytes) -> None:
        self._underlying = underlying
        self._kid = kid

    hostinfo = property(lambda self: self._underlying.hostinfo)
    sockaddr = property(lambda self: getattr(self._underlying, "sockaddr", None))
    hostinfo_local = property(lambda self: self._underlying.hostinfo_local)
    uri_base = property(lambda self: self._underlying.uri_base)
    uri_base_local = property(lambda self: self._underlying.uri_base_local)
    is_multicast = property(lambda self: False)
    is_multicast_locally = property(lambda self: False)
    scheme = property(lambda self: self._underlying.scheme)
    blockwise_key = property(lambda self: (self._underlying.blockwise_key, self._kid))
    maximum_block_size_exp = MAX_REGULAR_BLOCK_SIZE_EXP
    maximum_payload_size = 1024  # inner Block2: the tag and the OSCORE option still fit


@dataclass(slots=True)
class Opened:
    """A request whose protection was removed: handle `request` as `principal`, and seal
    every answer to it."""

    request: aiocoap.Message
    principal: Principal
    context: SecurityContext
    request_id: Any  # aiocoap.oscore.RequestIdentifiers: binds each answer to this request

    def seal(self, answer: aiocoap.Message) -> aiocoap.Message:
        sealed, _ = self.context.protect(answer, self.request_id)
        return sealed


class OscoreRefused(Exception):
    """A protected request that is answered here and never reaches the core."""

    def __init__(self, answer: aiocoap.Message, cause: str) -> None:
        super().__init__(cause)
        self.answer = answer
        self.cause = cause


def _refused(code: Any, cause: str) -> OscoreRefused:
    # Unprotected, as RFC 8613 §8.2 has it, with Max-Age 0 so no proxy keeps it.
    return OscoreRefused(aiocoap.Message(code=code, max_age=0, payload=cause.encode()), cause)


def open_request(contexts: OscoreContexts, request: aiocoap.Message) -> Opened:
    """Verify and decrypt a request that carries an OSCORE option; OscoreRefused if it cannot
    be taken. Logs one line per refusal (INFO for a key problem, DEBUG otherwise)."""
    try:
        header = cose.verify_start(request)
    except cose.DecodeError:
        logger.debug("OSCORE: malformed option from %s", request.remote)
        raise _refused(aiocoap.BAD_OPTION, "malformed OSCORE option") from None
    if request.code != aiocoap.POST:
        raise _refused(aiocoap.METHOD_NOT_ALLOWED, "OSCORE requests are POSTs here")
    kid = header.get(cose.COSE_KID)
    context = None
    if kid is not None and cose.COSE_KID_CONTEXT not in header:
        context = contexts.for_kid(kid)
    if context is None:
        # Refusals are WARNINGs, as HTTP's are: the CLI's RepeatFilter cuts a flood of them.
        logger.warning(
            "OSCORE: refused kid %s from %s: unknown or revoked", _hex(kid), request.remote
        )
        raise _refused(aiocoap.UNAUTHORIZED, "security context not found")
    try:
        inner, request_id = context.unprotect(request)
    except cose.ReplayErrorWithEcho as challenge:
        logger.debug("OSCORE: kid %s asked to repeat with Echo (replay state lost)", kid.hex())
        raise OscoreRefused(challenge.to_message(), "echo") from None
    except cose.ReplayError:
        logger.warning("OSCORE: refused kid %s from %s: a replay", kid.hex(), request.remote)
        raise _refused(aiocoap.UNAUTHORIZED, "replay detected") from None
    except cose.DecodeError:
        logger.debug("OSCORE: undecodable request for kid %s", kid.hex())
        raise _refused(aiocoap.BAD_OPTION, "failed to decode COSE") from None
    except (cose.ProtectionInvalid, aiocoap.error.Error, ValueError):
        logger.warning(
            "OSCORE: refused kid %s from %s: does not verify (wrong key)", kid.hex(), request.remote
        )
        raise _refused(aiocoap.BAD_REQUEST, "decryption failed") from None
    inner.remote = _ProtectedRemote(request.remote, kid)
    return Opened(inner, context.keys.principal, context, request_id)


def _hex(kid: bytes | None) -> str:
    return "(none)" if kid is None else kid.hex() or "(empty)"


# ---- the client's side ------------------------------------------------------------------------


def protect_request(context: SecurityContext, request: aiocoap.Message) -> tuple[Any, Any]:
    """(outer request, request identifiers for open_answer); the request's Uri-Path, query and
    every other option go inside, Uri-Host outside."""
    return context.protect(request)  # type: ignore[no-any-return]


def open_answer(
    context: SecurityContext, answer: aiocoap.Message, request_id: Any
) -> aiocoap.Message:
    """The inner answer; ValueError when it is unprotected or does not verify."""
    if answer.opt.oscore is None:
        raise ValueError(f"unprotected answer {answer.code}")
    try:
        inner, _ = context.unprotect(answer, request_id)
    except (cose.ProtectionInvalid, aiocoap.error.Error) as error:
        raise ValueError(f"the answer does not verify: {error}") from None
    return inner

"""OSCORE (RFC 8613) for a meter's CoAP link: object security for every request and answer.

Loaded only by a meter whose config has OSCORE keys. The profile (docs/security.md):
AES-CCM-16-64-128 (COSE alg 10), HKDF-SHA256, no ID Context; the meter's Sender ID is its
kid, the gateway's is the empty byte string; replay window 32; every option but Uri-Host,
Uri-Port, Proxy-Uri, Proxy-Scheme and OSCORE is inner (encrypted, Block1 included); the outer
code is POST for a request and 2.04 for an answer.

Layers, bottom up:

- `AesCcm`: AES-CCM with a 13-byte nonce and an 8-byte tag (RFC 3610) built on AES-ECB
  (`cryptolib.aes(key, 1)`), encrypting in place so a 1 KB block needs no second buffer.
  CPython (the fleet) uses `cryptography`'s AESCCM instead, through compat.
- HKDF-SHA256 (RFC 5869) with a hand-written HMAC (MicroPython has no hmac module).
- `Context`: the keys, the nonce and AAD of RFC 8613 §5, the sender sequence number
  (persisted in chunks: a reboot never reuses a nonce), the replay window for requests from
  the gateway, and the Echo value (RFC 9175) that rebuilds the window after a reboot.
- `Client` and `Listener`: coap.py's CoapClient and CoapListener, protecting (a request
  built in the client's one buffer, its answer verified, the Echo round; the listener's
  refusals, Echo challenge and sealed answers). `secure(link, config)` puts them in a
  CoapLink: a plain meter's coap.py carries none of this.

The sequence store is any object with `load()` (the next number to use, 0 for a new context)
and `save(value)`; `SequenceFile` keeps it in a small file (config key `oscore_state`).
"""

import hashlib

try:
    from . import coap, compat
except ImportError:
    import coap
    import compat

const = compat.const
LinkError = compat.LinkError

OSCORE = const(9)
ECHO = const(252)
_MAX_AGE = const(14)
_MORE = const(32)  # a protected datagram's extra bytes: OSCORE option (<= 12), code, marker, tag
_TAG = const(8)
_WINDOW = const(32)
_CHUNK = const(64)  # sequence numbers reserved per write of the state file
_CHANGED = const(68)  # 2.04, the outer code of every protected answer
_BAD_REQUEST = const(128)  # 4.00
_UNAUTHORIZED = const(129)  # 4.01
_BAD_OPTION = const(130)  # 4.02

# Every name a module uses costs a board's heap (a qstr), so the helpers here are few and
# their arguments share names: a 96 KB meter has room for this module only so.


def _hmac(key, data):
    """HMAC-SHA256 (RFC 2104) for keys up to 64 bytes."""
    pad = bytearray(64)
    pad[: len(key)] = key
    for index in range(64):
        pad[index] ^= 0x36
    digest = hashlib.sha256(pad)
    digest.update(data)
    inner = digest.digest()
    for index in range(64):
        pad[index] ^= 0x36 ^ 0x5C
    digest = hashlib.sha256(pad)
    digest.update(inner)
    return digest.digest()


def _derive(key, kid, kind, size):
    """HKDF-Expand of RFC 8613 §3.2.1 from the PRK `key`: info = [kid, nil, 10, kind, size] in
    CBOR; size <= 32."""
    info = bytes((0x85, 0x40 | len(kid))) + kid + b"\xf6\x0a"
    info += bytes((0x60 | len(kind),)) + kind + bytes((size, 1))  # 1: the counter T(1)
    return _hmac(key, info)[:size]


def _aad(kid, piv):
    """The Enc_structure ["Encrypt0", h'', external_aad] of RFC 8613 §5.4, in CBOR."""
    external = b"\x85\x01\x81\x0a" + bytes((0x40 | len(kid),)) + kid
    external += bytes((0x40 | len(piv),)) + piv + b"\x40"
    return b"\x83\x68Encrypt0\x40" + bytes((0x40 | len(external),)) + external


def _plaintext(code, options, payload=b""):
    """The plaintext of RFC 8613 §5.3: the code, the inner options, the payload. It is a CoAP
    message without the header's first, third and fourth byte and the token: coap.encode's."""
    plain = coap.encode(0, 0, 0, b"", options, payload)[3:]
    plain[0] = code
    return plain


class AesCcm:
    """AES-CCM, 13-byte nonce (L = 2), 8-byte tag, on AES-ECB (`aes.encrypt(in, out)`). Works
    in place on the caller's buffer, with three 16-byte blocks of its own: no allocation that
    grows with the message."""

    def __init__(self, key, aes=None):
        if aes is None:
            import cryptolib

            aes = cryptolib.aes(key, 1)
        self._ecb = aes
        self._mac = bytearray(16)
        self._counter = bytearray(16)
        self._out = bytearray(16)  # a block of key stream

    def _tag(self, nonce, aad, data):
        """CBC-MAC over the B0 block, the AAD (with its length) and data, then encrypted with
        counter block 0: the tag, in a new 8-byte bytearray."""
        mac = self._mac
        ecb = self._ecb
        mac[0] = 0x59  # flags: AAD present, tag (8 - 2) / 2 << 3, L - 1
        mac[1:14] = nonce
        mac[14] = len(data) >> 8
        mac[15] = len(data) & 0xFF
        ecb.encrypt(mac, mac)
        # The AAD goes in with its 2-byte length in front: block 1 is length + 14 bytes of it.
        size = len(aad)
        mac[0] ^= size >> 8
        mac[1] ^= size & 0xFF
        index = 2
        for byte in aad:
            mac[index] ^= byte
            index += 1
            if index == 16:
                ecb.encrypt(mac, mac)
                index = 0
        if index:
            ecb.encrypt(mac, mac)
        size = len(data)
        for start in range(0, size, 16):
            for index in range(min(16, size - start)):
                mac[index] ^= data[start + index]
            ecb.encrypt(mac, mac)
        tag = bytearray(mac[:_TAG])
        self._crypt(nonce, 0, tag)
        return tag

    def _crypt(self, nonce, index, data):
        """XOR data with the key stream from counter block `index` on (CTR mode)."""
        counter = self._counter
        stream = self._out
        counter[0] = 1  # flags: L - 1
        counter[1:14] = nonce
        size = len(data)
        for start in range(0, size, 16):
            counter[14] = index >> 8
            counter[15] = index & 0xFF
            self._ecb.encrypt(counter, stream)
            for offset in range(min(16, size - start)):
                data[start + offset] ^= stream[offset]
            index += 1

    def seal(self, nonce, aad, data):
        """Encrypt `data` (a bytearray or a view of one) in place; the tag."""
        tag = self._tag(nonce, aad, data)
        self._crypt(nonce, 1, data)
        return tag

    def open(self, nonce, aad, data, tag):
        """Decrypt `data` in place; False (data is garbage then) when the tag does not match."""
        self._crypt(nonce, 1, data)
        expected = self._tag(nonce, aad, data)
        differ = len(tag) ^ _TAG
        for index in range(min(len(tag), _TAG)):
            differ |= expected[index] ^ tag[index]
        return differ == 0


class SequenceFile:
    """The next sender sequence number a meter may use, in a small file (config
    `oscore_state`). A missing file is a new context (0); an unreadable one raises
    ValueError: guessing could reuse a nonce, so the meter needs new keys."""

    def __init__(self, path):
        self.path = path

    def load(self):
        try:
            with open(self.path) as stored:
                text = stored.read()
        except OSError:
            return 0
        return int(text.strip())

    def save(self, value):
        import os

        temporary = self.path + ".new"
        with open(temporary, "w") as stored:
            stored.write(str(value))
        os.rename(temporary, self.path)  # atomic: a reset mid-write keeps the old mark


def parse_option(value):
    """(Partial IV or None, kid or None) of an OSCORE option; ValueError if malformed."""
    if not value:
        return None, None
    flags = value[0]
    if flags & 0xE0 or flags & 0x10 or flags & 7 > 5:
        raise ValueError("OSCORE option flags this profile does not use")
    end = 1 + (flags & 7)
    if len(value) < end:
        raise ValueError("OSCORE option cut short")
    piv = bytes(value[1:end]) if flags & 7 else None
    kid = bytes(value[end:]) if flags & 8 else None
    return piv, kid


class Context:
    """The OSCORE security context a meter shares with its gateway."""

    def __init__(self, kid, secret, salt, store=None):
        if not 1 <= len(kid) <= 7:
            raise ValueError("an OSCORE kid has 1 to 7 bytes")
        self.kid = kid
        key = _hmac(salt, secret)  # the PRK: dropped once the keys are derived
        # The fleet runs thousands of meters in one CPython process: no pure-Python AES there.
        cipher = AesCcm if compat.IS_MICROPYTHON else compat.aes_ccm
        self._sender = cipher(_derive(key, kid, b"Key", 16))
        self._recipient = cipher(_derive(key, b"", b"Key", 16))
        self._common_iv = _derive(key, b"", b"IV", 13)
        self.store = store
        self.sequence = store.load() if store is not None else 0
        self._reserved = self.sequence
        self._top = None  # highest sequence number the gateway used; None: unknown (Echo)
        self._seen = 0  # bit i: number _top - i was seen
        self._echo = None  # the Echo value this meter asked the gateway to repeat
        self.echo_rounds = 0  # times a server asked this meter to repeat an Echo

    def nonce(self, kid, piv):
        out = bytearray(13)
        out[0] = len(kid)
        out[8 - len(kid) : 8] = kid
        out[13 - len(piv) :] = piv
        common = self._common_iv
        for index in range(13):
            out[index] ^= common[index]
        return out

    def next_piv(self):
        """A fresh Partial IV (big-endian, no leading zeros, 0 as one byte); the store learns
        of a new chunk before its first number goes."""
        number = self.sequence
        if number >= self._reserved:
            self._reserved = number + _CHUNK
            if self.store is not None:
                self.store.save(self._reserved)
        self.sequence = number + 1
        return coap.uint(number) or b"\x00"

    # ---- the meter as a client ---------------------------------------------------------------

    def request_datagram(self, out, mid, code, options, token, parts, offset, size):
        """A protected CON for bytes [offset, offset + size) of the body, built in `out`;
        the Partial IV it used (open_reply needs it) and the datagram (a view of `out`)."""
        piv = self.next_piv()
        inner = []
        outer = [(OSCORE, 0, bytes((len(piv) | 8,)) + piv + self.kid)]
        for option in options:
            # Uri-Host, Uri-Port, Proxy-Uri, Proxy-Scheme are class U: outside.
            (outer if option[0] in (3, 7, 35, 39) else inner).append(option)
        head = coap.encode(coap.CON, coap.POST, mid, token, outer)
        head.append(0xFF)  # the ciphertext is the outer payload
        plain = _plaintext(code, inner)
        if size:
            plain.append(0xFF)
        start = len(head)
        body = start + len(plain)
        view = memoryview(out)
        view[:start] = head
        view[start:body] = plain
        if size:
            body += compat.take_into(parts, offset, view[body : body + size])
        tag = self._sender.seal(self.nonce(self.kid, piv), _aad(self.kid, piv), view[start:body])
        view[body : body + _TAG] = tag
        return piv, view[: body + _TAG]

    def open_reply(self, message, piv):
        """The inner answer to our request with Partial IV `piv`. LinkError for an answer that
        is unprotected (nobody vouches for it: a forged 4.01 must not drop a message) or that
        does not verify."""
        value = message.option(OSCORE)
        if value is None:
            code = message.code
            raise LinkError(f"the DAP answered {code >> 5}.{code & 31:02d} unprotected")
        try:
            own, _ = parse_option(value)
        except ValueError:
            raise LinkError("an answer with a malformed OSCORE option") from None
        # An answer without a Partial IV reuses the request's nonce.
        nonce = self.nonce(self.kid, piv) if own is None else self.nonce(b"", own)
        return self._open(nonce, _aad(self.kid, piv), message)

    def _open(self, nonce, aad, message):
        """The inner message of a protected one, decrypted in place in one new buffer (which
        also takes the inner header)."""
        sealed = message.payload
        size = len(sealed) - _TAG
        if size <= 0:
            raise LinkError("a protected message too short to verify")
        plain = bytearray(size + 3)  # room for the 4-byte header that replaces the code
        plain[3:] = memoryview(sealed)[:size]
        view = memoryview(plain)[3:]
        if not self._recipient.open(nonce, aad, view, memoryview(sealed)[size:]):
            raise LinkError("a protected message that does not verify")
        plain[0], plain[1], plain[2], plain[3] = 0x40, plain[3], 0, 0
        inner = coap.decode(plain)
        inner.type, inner.mid, inner.token = message.type, message.mid, message.token
        return inner

    # ---- the meter as a server (notifications from the gateway) ------------------------------

    def _strike(self, number):
        if self._top is None:  # the first number after a boot: it and all before it are spent
            self._top, self._seen = number, 0xFFFFFFFF
        elif number - self._top >= _WINDOW:
            self._top, self._seen = number, 1
        elif number > self._top:
            self._seen = (self._seen << (number - self._top) | 1) & 0xFFFFFFFF
            self._top = number
        else:
            self._seen |= 1 << (self._top - number)

    def open_request(self, request):
        """(inner request, Partial IV, needs Echo) or (CoAP code of the refusal, None, None).

        The refusals are those of RFC 8613 §8.2: a malformed option 4.02, a request that is
        not from the gateway or a replay 4.01, one that does not verify 4.00. After a reboot
        the window is unknown: a request is taken only if it repeats the Echo value this meter
        sent (`needs Echo` True: answer with `echo_challenge()`)."""
        try:
            piv, kid = parse_option(request.option(OSCORE))
        except ValueError:
            return _BAD_OPTION, None, None
        if piv is None or kid != b"" or request.code != coap.POST:
            return _UNAUTHORIZED, None, None
        number = int.from_bytes(piv, "big")
        top = self._top
        if top is not None and number <= top:  # fresh only if in the window and not seen
            age = top - number
            if age >= _WINDOW or (self._seen >> age) & 1:
                return _UNAUTHORIZED, None, None
        try:
            inner = self._open(self.nonce(b"", piv), _aad(b"", piv), request)
        except (LinkError, ValueError):
            return _BAD_REQUEST, None, None
        if top is None:
            echo = inner.option(ECHO)
            if self._echo is None or echo != self._echo:
                return inner, piv, True
        self._strike(number)
        return inner, piv, False

    def echo_challenge(self):
        """The inner option of a 4.01 that asks the gateway to repeat its request with Echo."""
        if self._echo is None:
            self._echo = compat.random_bits(32).to_bytes(4, "big")
            self._echo += compat.random_bits(32).to_bytes(4, "big")
        return [(ECHO, 0, self._echo)]

    def seal_reply(self, piv, code, options, payload, fresh=False):
        """The outer (2.04, options, payload) of a protected answer to the gateway's request
        with Partial IV `piv`. An answer reuses the request's nonce, except a `fresh` one (the
        Echo challenge, which may answer a replay) that takes a Partial IV of its own."""
        plain = _plaintext(code, options, payload)
        if fresh:
            own = self.next_piv()
            nonce = self.nonce(self.kid, own)
            value = bytes((len(own),)) + own
        else:
            nonce = self.nonce(b"", piv)
            value = b""
        tag = self._sender.seal(nonce, _aad(b"", piv), plain)
        plain.extend(tag)
        return _CHANGED, [(OSCORE, 0, value)], plain


class Client(coap.CoapClient):
    """A CoapClient whose every request is protected and every answer verified and opened.

    A server that lost its replay window (it restarted) answers 4.01 with an Echo value: the
    same request goes once more, with a new sequence number, carrying it (RFC 8613 B.1.2)."""

    def __init__(self, context, *args):
        super().__init__(*args)
        self.context = context
        self._out = bytearray(len(self._out) + _MORE)
        # (Partial IV, code, options, token, parts, offset, size) of the datagram in flight:
        # to open its answer and to send it again with Echo. Dropped after the exchange, so
        # that a sent message's body is not kept alive.
        self._sent = None

    def _datagram(self, code, options, token, parts, offset, size):
        piv, datagram = self.context.request_datagram(
            self._out, self._next_mid(), code, options, token, parts, offset, size
        )
        self._sent = (piv, code, options, token, parts, offset, size)
        return datagram

    async def _exchange(self, datagram, mid, token):
        context = self.context
        try:
            message = await super()._exchange(datagram, mid, token)
            message = context.open_reply(message, self._sent[0])
            echo = message.option(ECHO) if message.code == _UNAUTHORIZED else None
            if echo is None:
                return message
            context.echo_rounds += 1
            _, code, options, token, parts, offset, size = self._sent
            options = options + [(ECHO, 0, echo)]
            datagram = self._datagram(code, options, token, parts, offset, size)
            message = await super()._exchange(datagram, self._mid, token)
            message = context.open_reply(message, self._sent[0])
            if message.code == _UNAUTHORIZED and message.option(ECHO) is not None:
                raise LinkError("the DAP did not take its own Echo value")
            return message
        finally:
            self._sent = None


class Listener(coap.CoapListener):
    """A CoapListener that takes protected requests only: a meter with keys obeys its gateway
    alone, so a plain NOTIFY (a disconnect from anyone on the LAN) never reaches the handler."""

    def __init__(self, context, *args):
        super().__init__(*args)
        self.context = context

    def _respond(self, request, peer):
        context = self.context
        if request.option(OSCORE) is None:
            return _UNAUTHORIZED, [(_MAX_AGE, 0, b"")], b""
        inner, piv, challenge = context.open_request(request)
        if piv is None:  # refused (RFC 8613 §8.2): unprotected, Max-Age 0
            return inner, [(_MAX_AGE, 0, b"")], b""
        if challenge:
            return context.seal_reply(piv, _UNAUTHORIZED, context.echo_challenge(), b"", True)
        code, options, payload = super()._respond(inner, peer)
        return context.seal_reply(piv, code, options, payload)


def secure(link, config):
    """Give a coap.CoapLink the protecting client and listener, from config["oscore"]
    ({"kid", "secret", "salt"} in hex) and config["oscore_state"] (the sequence number file,
    default "oscore.seq", or an object with load() and save(value): the fleet's, in memory)."""
    keys = config["oscore"]
    store = config.get("oscore_state") or "oscore.seq"
    if isinstance(store, str):
        store = SequenceFile(store)
    salt = bytes.fromhex(keys.get("salt") or "")
    context = Context(bytes.fromhex(keys["kid"]), bytes.fromhex(keys["secret"]), salt, store)
    client, listener = link.client, link.listener
    link.client = Client(
        context, client.host, client.port, client.ack_timeout_ms, client.max_retransmit,
        client.response_timeout_ms,
    )  # fmt: skip
    link.listener = Listener(
        context, listener.handler, listener.decode, listener.host, listener.port
    )
    return context

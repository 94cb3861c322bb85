"""A small CoAP client and notification listener for the meter agent (RFC 7252, RFC 7959).

Layers, bottom up:

- framing: `encode()` / `decode()` of one datagram (header, token, delta-encoded options,
  payload). Options go in as (number, index, value) tuples and are sorted as tuples, because
  MicroPython's sort is not stable: sorting by number alone would reorder Uri-Path segments.
- `CoapClient`: one request at a time (NSTART 1) over a connected UDP socket. A CON is sent
  again after ACK_TIMEOUT x random(1, 1.5), doubling, up to MAX_RETRANSMIT times; the answer
  may ride in the ACK or follow as a separate CON/NON (which is acknowledged). Bodies over
  1024 B go as Block1 (szx 6), each block a CON with a new message ID, the same token, and
  Size1 on the first. Stale, foreign and unreadable datagrams are ignored; a reset, an ICMP
  "port unreachable" or silence raise LinkError.
- oneM2M over CoAP (TS-0008): `m2m_request()` turns a request primitive into a method and
  options (FR 279, RQI 283, TY 267, RVI 271, Content-Format, Accept, Uri-Path/-Query);
  `m2m_response()` reads RSC 307 (or guesses it from the code) and decodes the content.
- `CoapListener`: a UDP socket on the listen port that takes NOTIFY requests (POST, Block1
  reassembled), calls `handler(primitive)`, and answers a CON with a piggy-backed 2.04 and
  RSC 2000 (or the code for the rsc the handler returned). Retransmitted CONs get the cached
  answer instead of a second call.
- `CoapLink`: the Dap's transport, a CoapClient for requests plus a CoapListener; a meter
  with OSCORE keys gets oscore.py's protecting subclasses of both instead.
"""

import asyncio

try:
    from . import compat
except ImportError:
    import compat

const = compat.const
LinkError = compat.LinkError

# Public names are the ones tests and the Dap use; the `_` ones are true constants on
# MicroPython (folded into the bytecode, no RAM for a global).
CON = const(0)
_NON = const(1)
ACK = const(2)
_RST = const(3)

_EMPTY = const(0)
POST = const(2)
_CREATED = const(65)  # 2.01
_CHANGED = const(68)  # 2.04
_CONTENT = const(69)  # 2.05
_CONTINUE = const(95)  # 2.31
_BAD_REQUEST = const(128)  # 4.00
_BAD_OPTION = const(130)  # 4.02
_FORBIDDEN = const(131)  # 4.03
_NOT_FOUND = const(132)  # 4.04
_METHOD_NOT_ALLOWED = const(133)  # 4.05
_REQUEST_ENTITY_INCOMPLETE = const(136)  # 4.08
_REQUEST_ENTITY_TOO_LARGE = const(141)  # 4.13
_INTERNAL_SERVER_ERROR = const(160)  # 5.00

URI_PATH = const(11)
CONTENT_FORMAT = const(12)
_URI_QUERY = const(15)
_ACCEPT = const(17)
_BLOCK1 = const(27)
_SIZE1 = const(60)
M2M_TY = const(267)
M2M_RVI = const(271)
M2M_FR = const(279)
M2M_RQI = const(283)
_M2M_RSC = const(307)

_FORMAT_JSON = const(50)
_FORMAT_CBOR = const(60)

_ACK_TIMEOUT_MS = const(2000)
_MAX_RETRANSMIT = const(4)
_BLOCK_SZX = const(6)
_BLOCK_SIZE = const(1024)
_DATAGRAM_MAX = const(1152)  # a 1024 B block plus up to 127 B of header, token and options
_ASSEMBLY_MAX = const(16384)  # largest NOTIFY body the listener reassembles
_SEEN_MAX = const(4)  # answers kept to repeat for retransmitted CONs
_POLL_MS = const(30000)  # serve() looks at close() at least this often


def _understood(number):
    """A critical option the listener understands (any other is answered 4.02): Uri-Path,
    Uri-Query, Accept, Block1, and the oneM2M options 259, 263, ... 351."""
    if number in (URI_PATH, _URI_QUERY, _ACCEPT, _BLOCK1):
        return True
    return 259 <= number <= 351 and number % 4 == 3


def uint(number):
    """A uint option value: big-endian, no leading zero bytes (0 is empty)."""
    size = 0
    rest = number
    while rest:
        size += 1
        rest >>= 8
    return number.to_bytes(size, "big")


def read_uint(value):
    return int.from_bytes(value, "big") if value else 0


def _extended(number):
    """The option nibble for a delta or length, and its extension bytes."""
    if number < 13:
        return number, b""
    if number < 269:
        return 13, bytes((number - 13,))
    return 14, (number - 269).to_bytes(2, "big")


def encode(kind, code, mid, token, options=(), payload=b""):
    """One datagram. `options`: (number, index, value) tuples in any order."""
    out = bytearray((0x40 | kind << 4 | len(token), code, mid >> 8, mid & 0xFF))
    out.extend(token)
    ordered = sorted(options)  # (number, index) is unique: an unstable sort is harmless
    previous = 0
    for number, _, value in ordered:
        if isinstance(value, str):
            value = value.encode()
        elif isinstance(value, int):
            value = uint(value)
        delta, delta_ext = _extended(number - previous)
        length, length_ext = _extended(len(value))
        out.append(delta << 4 | length)
        out.extend(delta_ext)
        out.extend(length_ext)
        out.extend(value)
        previous = number
    if payload:
        out.append(0xFF)
        out.extend(payload)
    return out


class Message:
    """A decoded datagram; options are (number, value bytes) pairs in wire order."""

    def __init__(self, kind, code, mid, token, options, payload):
        self.type = kind
        self.code = code
        self.mid = mid
        self.token = token
        self.options = options
        self.payload = payload

    def option(self, number, default=None):
        for found, value in self.options:
            if found == number:
                return value
        return default

    def strings(self, number):
        return [value.decode() for found, value in self.options if found == number]


def _read_extended(data, index, value):
    """A delta or length from its nibble `value` and the extension bytes at `index`."""
    if value < 13:
        return value, index
    if value == 13:
        return data[index] + 13, index + 1
    if value == 14:
        return (data[index] << 8 | data[index + 1]) + 269, index + 2
    raise ValueError("reserved option nibble 15")


def decode(data):
    """A Message from one datagram; ValueError when it is no CoAP message or cut short."""
    size = len(data)
    if size < 4 or data[0] >> 6 != 1:
        raise ValueError("not a CoAP 1 message")
    token_length = data[0] & 0x0F
    if token_length > 8 or 4 + token_length > size:
        raise ValueError("bad token length")
    index = 4 + token_length
    options = []
    number = 0
    try:
        while index < size and data[index] != 0xFF:
            head = data[index]
            delta, index = _read_extended(data, index + 1, head >> 4)
            length, index = _read_extended(data, index, head & 0x0F)
            if index + length > size:
                raise ValueError("option runs past the end")
            number += delta
            options.append((number, bytes(data[index : index + length])))
            index += length
    except IndexError:
        raise ValueError("options cut short") from None
    payload = b""
    if index < size:  # at the payload marker
        if index + 1 == size:
            raise ValueError("payload marker without payload")
        payload = bytes(data[index + 1 : size])
    token = bytes(data[4 : 4 + token_length])
    mid = data[2] << 8 | data[3]
    return Message((data[0] >> 4) & 3, data[1], mid, token, options, payload)


class CoapClient:
    """Requests to one server, one at a time, over a connected UDP socket."""

    def __init__(
        self,
        host,
        port,
        ack_timeout_ms=_ACK_TIMEOUT_MS,
        max_retransmit=_MAX_RETRANSMIT,
        response_timeout_ms=30000,
    ):
        self.host = host
        self.port = port
        self.ack_timeout_ms = ack_timeout_ms
        self.max_retransmit = max_retransmit
        self.response_timeout_ms = response_timeout_ms
        self._sock = None
        # CPython receives into a buffer; MicroPython's recv() allocates (see compat.receive).
        self._buffer = None if compat.IS_MICROPYTHON else bytearray(_DATAGRAM_MAX)
        self._out = bytearray(_DATAGRAM_MAX)  # every request datagram is built here
        self._reply_max = _DATAGRAM_MAX
        self._mid = compat.random_bits(16)
        self._lock = None

    def open(self):
        """Resolves the server and opens the socket; raises LinkError."""
        self.close()
        peer = compat.address(self.host, self.port)
        sock, _ = compat.udp_socket()
        try:
            sock.connect(peer)
        except OSError as error:
            sock.close()
            raise LinkError(f"cannot reach {self.host}:{self.port}: {error}") from None
        self._sock = sock
        if self._lock is None:
            self._lock = asyncio.Lock()

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next_mid(self):
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    async def request(self, code, options, payload=b"", reply_max=_DATAGRAM_MAX):
        """Send a request; return the final response Message. Raises LinkError.

        `options`: (number, value) pairs, value str, bytes or int, repeated ones in order.
        `payload`: bytes, or a list of bytes-like parts (jsonparts.dump_parts).
        `reply_max`: the largest answer datagram taken; a longer one is cut there (MicroPython
        allocates that much for each datagram received, so asking for less helps a small heap
        where the answer is known to be short).
        """
        if self._sock is None:
            raise LinkError("the CoAP client is not open")
        numbered = [(number, index, value) for index, (number, value) in enumerate(options)]
        token = compat.random_bits(32).to_bytes(4, "big")
        parts = payload if isinstance(payload, list) else [payload]
        total = compat.parts_size(parts)
        async with self._lock:
            self._reply_max = reply_max
            if total <= _BLOCK_SIZE:
                datagram = self._datagram(code, numbered, token, parts, 0, total)
                return await self._exchange(datagram, self._mid, token)
            return await self._blockwise(code, numbered, parts, total, token)

    def _datagram(self, code, options, token, parts, offset, size):
        """A CON carrying bytes [offset, offset + size) of the body, built in the client's
        one outgoing buffer (one request at a time: the lock in request())."""
        head = encode(CON, code, self._next_mid(), token, options)  # tens of bytes
        start = len(head)
        view = memoryview(self._out)
        view[:start] = head
        if not size:
            return view[:start]
        view[start] = 0xFF
        filled = compat.take_into(parts, offset, view[start + 1 : start + 1 + size])
        return view[: start + 1 + filled]

    async def _blockwise(self, code, options, parts, total, token):
        offset = 0
        size = _BLOCK_SIZE
        szx = _BLOCK_SZX
        while True:
            number = offset // size
            more = offset + size < total
            block = list(options)
            block.append((_BLOCK1, 0, uint(number << 4 | (8 if more else 0) | szx)))
            if offset == 0:
                block.append((_SIZE1, 0, uint(total)))
            chunk = size if offset + size <= total else total - offset
            datagram = self._datagram(code, block, token, parts, offset, chunk)
            reply = await self._exchange(datagram, self._mid, token)
            if not more or reply.code != _CONTINUE:
                return reply
            offset += size
            echoed = reply.option(_BLOCK1)
            if echoed and (read_uint(echoed) & 7) < szx:  # the server wants smaller blocks
                szx = read_uint(echoed) & 7
                size = 16 << szx

    async def _exchange(self, datagram, mid, token):
        timeout = self.ack_timeout_ms + (self.ack_timeout_ms * compat.random_bits(8) >> 9)
        for _ in range(self.max_retransmit + 1):
            self._send(datagram)
            deadline = compat.ticks_add(compat.ticks_ms(), timeout)
            reply = await self._await_reply(mid, token, deadline)
            if reply is True:  # an empty ACK: the answer follows on its own
                break
            if reply is not None:
                return reply
            timeout *= 2
        else:
            raise LinkError(f"no answer from {self.host}:{self.port}")
        deadline = compat.ticks_add(compat.ticks_ms(), self.response_timeout_ms)
        reply = await self._await_reply(-1, token, deadline)
        if reply is None or reply is True:
            raise LinkError("the separate response did not come")
        return reply

    def _send(self, datagram):
        try:
            self._sock.send(datagram)
        except OSError as error:
            raise LinkError(f"cannot send to {self.host}:{self.port}: {error}") from None

    async def _await_reply(self, mid, token, deadline):
        """The response for token (or True for an empty ACK to mid) before deadline, else None."""
        while True:
            remaining = compat.ticks_diff(deadline, compat.ticks_ms())
            if remaining <= 0:
                return None
            data = await self._receive(remaining)
            if not data:
                continue
            try:
                message = decode(data)
            except ValueError:
                continue  # truncated or garbage: wait for a retransmission
            if message.type == ACK or message.type == _RST:
                if message.mid != mid:
                    continue  # an answer to an earlier transmission
                if message.type == _RST:
                    raise LinkError("the server reset the exchange")
                if message.code == _EMPTY:
                    return True
                if message.token == token:
                    return message
                continue
            if message.type == CON:  # a (separate) response, or a stray request: acknowledge
                kind = ACK if message.code >= 64 else _RST
                self._send(encode(kind, _EMPTY, message.mid, b""))
            if message.code >= 64 and message.token == token:
                return message

    async def _receive(self, ms):
        """The next datagram; None after `ms` or on a spurious wake-up."""
        try:
            data = compat.receive(self._sock, self._buffer, self._reply_max)
            if data is None:
                await compat.wait_for_ms(compat.wait_readable(self._sock), ms)
                data = compat.receive(self._sock, self._buffer, self._reply_max)
        except compat.TimeoutError:
            return None
        except OSError as error:
            if error.args and error.args[0] == compat.ECONNREFUSED:
                raise LinkError(f"nothing listens on {self.host}:{self.port}") from None
            raise LinkError(f"receive failed: {error}") from None
        return data


# ---- oneM2M over CoAP (TS-0008) ----------------------------------------------------------


def path_segments(to):
    """Uri-Path for a target: CSE-relative as is, SP-relative under `~`, absolute under `_`."""
    if to.startswith("//"):
        return ["_"] + to[2:].split("/")
    if to.startswith("/"):
        return ["~"] + to[1:].split("/")
    return to.split("/") if to else []


def m2m_request(primitive, format, body):
    """(method code, options) for a request primitive (op, to, fr, rqi, rvi, ty, rcn)."""
    options = [(URI_PATH, segment) for segment in path_segments(primitive["to"])]
    if body:
        options.append((CONTENT_FORMAT, format))
    if primitive.get("rcn") is not None:
        options.append((_URI_QUERY, "rcn=" + str(primitive["rcn"])))
    options.append((_ACCEPT, format))
    if primitive.get("ty") is not None:
        options.append((M2M_TY, primitive["ty"]))
    options.append((M2M_RVI, primitive.get("rvi") or "3"))
    if primitive.get("fr"):
        options.append((M2M_FR, primitive["fr"]))
    options.append((M2M_RQI, primitive["rqi"]))
    # The CoAP method code by oneM2M operation 1..5.
    return b"\x00\x02\x01\x03\x04\x02"[primitive["op"]], options


def rsc_for_code(code):
    """A best guess when a reply carries no oneM2M-RSC option."""
    guess = {65: 2001, 66: 2002, 68: 2004, 69: 2000, 128: 4000, 131: 4103, 132: 4004, 133: 4005,
             134: 5207, 143: 4015, 160: 5000, 161: 5001, 164: 4008}.get(code)  # fmt: skip
    if guess is not None:
        return guess
    return (2000, 4000, 5000)[min(max(code >> 5, 2), 4) - 2]


def code_for_rsc(rsc):
    """The CoAP code that answers a NOTIFY with this rsc."""
    if rsc < 3000:
        return _CHANGED
    if rsc == 4004:
        return _NOT_FOUND
    if rsc == 4005:
        return _METHOD_NOT_ALLOWED
    if 4100 <= rsc < 4200:
        return _FORBIDDEN
    return _BAD_REQUEST if rsc < 5000 else _INTERNAL_SERVER_ERROR


def decode_content(message, decode):
    """The payload, by Content-Format (JSON when absent), through decode(data, cbor)."""
    if not message.payload:
        return None
    # oneM2M's own content formats (TS-0008): 60 and the +cbor ones; the others are JSON/XML.
    value = read_uint(message.option(CONTENT_FORMAT))
    return decode(message.payload, value == _FORMAT_CBOR or 10010 <= value <= 10013)


def m2m_response(message, decode):
    """The response primitive {rsc, rqi, pc} in a reply; pc is None if it is unreadable."""
    raw = message.option(_M2M_RSC)
    rsc = read_uint(raw) if raw else rsc_for_code(message.code)
    rqi = message.option(M2M_RQI)
    try:
        content = decode_content(message, decode)
    except (ValueError, UnicodeError):
        content = None
    return {"rsc": rsc, "rqi": rqi.decode() if rqi else None, "pc": content}


# ---- the listener -------------------------------------------------------------------------


class CoapListener:
    """Answers NOTIFY requests (POST) that arrive on `port` (0: any; `self.port` tells)."""

    def __init__(self, handler, decode, host="0.0.0.0", port=0):
        self.handler = handler  # handler(primitive) -> rsc (None counts as 2000)
        self.decode = decode  # decode(data, cbor) -> content
        self.host = host
        self.port = port
        self.received = 0
        self._sock = None
        self._closed = False
        self._serving = False
        self._seen = []  # [(mid, peer, answer)] for retransmitted CONs
        self._assembly = None  # (peer, token, bytearray) of a Block1 upload in progress

    def open(self):
        """Bind (again on the same port after a close: the AE's poa stays valid)."""
        if self._sock is None:
            self._sock, self.port = compat.udp_socket(self.host, self.port)
        self._closed = False

    def close(self):
        """Stop serving. A running serve() is woken by a datagram to itself and closes the
        socket on its way out (a socket closed under a poller wakes nobody)."""
        self._closed = True
        sock = self._sock
        if sock is None:
            return
        if not self._serving:
            self._sock = None
            sock.close()
            return
        try:
            host = "127.0.0.1" if self.host == "0.0.0.0" else self.host
            sock.sendto(b"\x00", compat.address(host, self.port))
        except (OSError, LinkError):
            pass  # serve() still sees _closed within _POLL_MS

    async def serve(self):
        """Answer requests until close()."""
        if self._closed:
            return
        if self._sock is None:
            raise LinkError("the CoAP listener is not open")
        self._serving = True
        try:
            while not self._closed:
                try:
                    datagram, peer = self._sock.recvfrom(_DATAGRAM_MAX)
                except OSError as error:
                    if error.args and error.args[0] != compat.EAGAIN:
                        await compat.sleep_ms(10)  # e.g. an ICMP error about an earlier answer
                        continue
                    try:
                        await compat.wait_for_ms(compat.wait_readable(self._sock), _POLL_MS)
                    except compat.TimeoutError:
                        pass  # look at _closed again
                    continue
                if self._closed:
                    break
                try:
                    answer = self.answer(datagram, peer)
                except Exception as error:  # whatever one datagram does, keep serving
                    print("coap: cannot answer a datagram:", repr(error))
                    continue
                if answer is not None:
                    try:
                        self._sock.sendto(answer, peer)
                    except OSError:
                        pass  # the peer retransmits and gets the cached answer
        finally:
            self._serving = False
            if self._closed and self._sock is not None:
                self._sock.close()
                self._sock = None

    def answer(self, datagram, peer):
        """The datagram that answers one incoming datagram (None: nothing to send)."""
        try:
            request = decode(datagram)
        except ValueError:
            return None
        if request.type == ACK or request.type == _RST:
            return None
        if request.code == _EMPTY:  # a CoAP ping (CON) or nonsense
            return encode(_RST, _EMPTY, request.mid, b"") if request.type == CON else None
        for mid, sender, answer in self._seen:
            if mid == request.mid and sender == peer:
                return answer
        code, options, payload = self._respond(request, peer)
        if request.type != CON:
            return None
        answer = encode(ACK, code, request.mid, request.token, options, payload)
        self._seen.append((request.mid, peer, answer))
        if len(self._seen) > _SEEN_MAX:
            self._seen.pop(0)
        return answer

    def _respond(self, request, peer):
        """(code, options, payload) for a request."""
        echo = [(M2M_RVI, 0, b"3")]
        rqi = request.option(M2M_RQI)
        if rqi is not None:
            echo.append((M2M_RQI, 0, rqi))
        if request.code != POST:
            return _METHOD_NOT_ALLOWED, echo + [(_M2M_RSC, 0, uint(4005))], b""
        for number, _ in request.options:
            if number & 1 and not _understood(number):
                return _BAD_OPTION, echo + [(_M2M_RSC, 0, uint(4000))], b""
        block = request.option(_BLOCK1)
        if block is not None:
            body, reply = self._assemble(request, peer, read_uint(block))
            if reply is not None:
                return reply[0], echo + reply[1], b""
            request.payload = body
            echo.append((_BLOCK1, 0, block))  # the final answer acknowledges the last block
        rsc = self._deliver(request)
        return code_for_rsc(rsc), echo + [(_M2M_RSC, 0, uint(rsc))], b""

    def _assemble(self, request, peer, block):
        """Block1 reassembly: (whole body, None) when complete, else (None, (code, options))."""
        number, more, size = block >> 4, block & 8, 16 << (block & 7)
        if number == 0:
            self._assembly = (peer, request.token, bytearray())
        assembly = self._assembly
        if assembly is None or assembly[0] != peer or len(assembly[2]) != number * size:
            self._assembly = None
            return None, (_REQUEST_ENTITY_INCOMPLETE, [(_M2M_RSC, 0, uint(4000))])
        parts = assembly[2]
        if len(parts) + len(request.payload) > _ASSEMBLY_MAX:
            self._assembly = None
            return None, (_REQUEST_ENTITY_TOO_LARGE, [(_M2M_RSC, 0, uint(4000))])
        parts.extend(request.payload)
        if more:
            return None, (_CONTINUE, [(_BLOCK1, 0, uint(block))])
        self._assembly = None
        return bytes(parts), None

    def _deliver(self, request):
        try:
            primitive = {
                "op": 5,
                "to": "/".join(request.strings(URI_PATH)),
                "fr": (request.option(M2M_FR) or b"").decode(),
                "rqi": (request.option(M2M_RQI) or b"").decode(),
                "rvi": (request.option(M2M_RVI) or b"3").decode(),
                "pc": decode_content(request, self.decode),
            }
        except (ValueError, UnicodeError):
            return 4000
        self.received += 1
        try:
            rsc = self.handler(primitive)
        except Exception as error:  # a bug in the handler must not stop the listener
            print("coap: notification handler failed:", repr(error))
            return 5000
        return 2000 if rsc is None else rsc


# ---- the Dap's CoAP transport ----------------------------------------------------------------


class CoapLink:
    """The Dap's transport over CoAP: requests through a CoapClient, notifications through a
    CoapListener; the poa is coap://<poa_host>:<listener port> (?ct=cbor for a CBOR meter)."""

    def __init__(self, dap, config):
        self.dap = dap
        host = config["dap_host"]
        port = config.get("dap_port") or 5683
        self.client = CoapClient(
            host,
            port,
            config.get("coap_ack_timeout_ms") or _ACK_TIMEOUT_MS,
            config.get("coap_max_retransmit", _MAX_RETRANSMIT),
            dap.timeout_ms,
        )
        self.listener = CoapListener(
            dap.notified_with,
            dap.decode,
            config.get("listen_host") or "0.0.0.0",
            config.get("listen_port") or 0,
        )
        if config.get("oscore"):  # only a meter with keys loads OSCORE (kilobytes of heap)
            try:
                from . import oscore
            except ImportError:
                import oscore
            oscore.secure(self, config)
        self.poa_host = config.get("poa_host") or compat.local_host(host, port)
        self.format = _FORMAT_CBOR if dap.cbor else _FORMAT_JSON

    def poa(self):
        # ?ct=cbor: the DAP notifies a CBOR meter in CBOR (it never loads the JSON code).
        poa = f"coap://{self.poa_host}:{self.listener.port}"
        return poa + "?ct=cbor" if self.dap.cbor else poa

    async def open(self):
        self.client.open()
        try:
            self.listener.open()
        except OSError as error:
            raise LinkError(f"cannot listen on port {self.listener.port}: {error}") from None

    async def request(self, primitive, registration):
        content = primitive.get("pc")
        body = [] if content is None else self.dap.encode(content)
        code, options = m2m_request(primitive, self.format, bool(body))
        # An answer to a request for no content (rcn 0: every message a meter posts) is a
        # code and options: 256 B hold it.
        short = primitive.get("rcn") == 0
        reply = await self.client.request(code, options, body, 256 if short else _DATAGRAM_MAX)
        return m2m_response(reply, self.dap.decode)

    async def serve(self, closing):
        await self.listener.serve()

    async def close(self):
        self.listener.close()
        self.client.close()

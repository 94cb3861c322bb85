"""What compat.py gives on CPython (the fleet emulator, the tests, and
`python -m device_agents.agent.main` from the source tree).

Kept apart so that none of it is compiled into a board's bundle: every function of a module
costs heap on MicroPython when the module is imported, whether it runs there or not.
"""

import asyncio
import socket
import ssl
import time


def const(value):
    return value


_TICKS_PERIOD = 1 << 30  # as on a board with 31-bit small ints: wraps after ~12.4 days
_TICKS_MAX = _TICKS_PERIOD - 1
_TICKS_HALF = _TICKS_PERIOD // 2


def ticks_ms():
    return time.monotonic_ns() // 1_000_000 & _TICKS_MAX


def ticks_diff(end, start):
    return ((end - start + _TICKS_HALF) & _TICKS_MAX) - _TICKS_HALF


def ticks_add(ticks, delta):
    return (ticks + delta) & _TICKS_MAX


def sleep_ms(ms):
    return asyncio.sleep(ms / 1000)


def wait_for_ms(awaitable, ms):
    return asyncio.wait_for(awaitable, ms / 1000)


def _wake(future):
    if not future.done():
        future.set_result(None)


async def wait_readable(sock):
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    descriptor = sock.fileno()
    loop.add_reader(descriptor, _wake, ready)
    try:
        await ready
    finally:
        loop.remove_reader(descriptor)


def receive(sock, buffer, size):
    """One datagram (a view of buffer, which holds `size` bytes), or None when nothing is
    waiting."""
    try:
        return memoryview(buffer)[: sock.recv_into(buffer, size)]
    except BlockingIOError:
        return None


def local_host(host, port):
    """The local address a UDP socket would use towards host:port (nothing is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, port))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def bind(sock, host, port):
    """Bind a UDP socket; the port it got (for port 0)."""
    sock.bind((host, port))
    return sock.getsockname()[1]


def set_nodelay(writer):
    """TCP_NODELAY on a stream's socket."""
    try:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


class AesCcm:
    """AES-CCM-16-64-128 (13-byte nonce, 8-byte tag) from `cryptography`, with the in-place
    interface of oscore.AesCcm: a fleet of thousands of meters must not run AES in Python."""

    def __init__(self, key):
        from cryptography.hazmat.primitives.ciphers.aead import AESCCM  # only meters with keys

        self._aead = AESCCM(key, tag_length=8)

    def seal(self, nonce, aad, data):
        sealed = self._aead.encrypt(bytes(nonce), bytes(data), aad)
        data[:] = sealed[:-8]
        return sealed[-8:]

    def open(self, nonce, aad, data, tag):
        from cryptography.exceptions import InvalidTag

        try:
            data[:] = self._aead.decrypt(bytes(nonce), bytes(data) + bytes(tag), aad)
        except InvalidTag:
            return False
        return True


# One context per CA for the whole process: a fleet of thousands of meters shares it (each
# context holds the parsed CA and its own session cache).
_TLS_CONTEXTS = {}


def tls_context(ca):
    """A TLS client context that verifies the server against the CA certificate `ca` (DER,
    or PEM: the fleet reads the file a lab's PKI wrote)."""
    context = _TLS_CONTEXTS.get(ca)
    if context is None:
        cadata = ca.decode() if ca.lstrip().startswith(b"-----BEGIN") else ca
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=cadata)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _TLS_CONTEXTS[ca] = context
    return context


aes_ccm = AesCcm  # OSCORE's cipher (a board builds its own on cryptolib)

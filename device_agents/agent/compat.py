"""The few things that differ between MicroPython (boards, unix port) and CPython (fleet).

Every other agent module imports these names instead of branching itself, so the same files
run on an ESP32, on `micropython -X heapsize=96k` and under CPython's asyncio:

- `IS_MICROPYTHON`, `IS_BOARD` (MicroPython on a microcontroller, not the unix port);
- `const` (a real compile-time constant on MicroPython, the identity on CPython);
- `ticks_ms` / `ticks_diff` / `ticks_add`: wrapping millisecond ticks (CPython wraps at
  2**30 like a board does, so wrap bugs show up in the fleet too); `sleep_ms`, `wait_for_ms`,
  `TimeoutError` for asyncio;
- `wait_readable(sock)` (await until a non-blocking socket has data), `receive`,
  `udp_socket` (binds; reports the port even where sockets cannot tell it), `address`
  (a `getaddrinfo` result that `sendto`/`connect` accept), `set_nodelay`, `local_host`;
- `random_bits(n)`: unpredictable bits (tokens, request-ID prefixes) that differ after
  every restart;
- `parts_size`, `take_into`: a message as a list of small parts, so that sending a 2 KB
  reading needs no block of that size on a small heap;
- `ucbor()`, `jsonparts()`: the CBOR and the JSON-in-pieces modules, each imported when
  first asked for (a meter loads the one of its serialization);
- `LinkError`: "not delivered", raised by both transports;
- CPython only: `aes_ccm(key)`, OSCORE's AES-CCM from `cryptography` (see oscore.py).
"""

import asyncio
import errno
import os
import socket
import sys
import time

IS_MICROPYTHON = sys.implementation.name == "micropython"
# The unix port says "linux" or "darwin"; boards say "esp32", "rp2", "esp8266", ...
IS_BOARD = IS_MICROPYTHON and sys.platform not in ("linux", "darwin", "freebsd", "win32")

EAGAIN = errno.EAGAIN
ECONNREFUSED = errno.ECONNREFUSED
TimeoutError = asyncio.TimeoutError  # MicroPython's asyncio has its own class


class LinkError(Exception):
    """The message was not delivered (link down, no answer): keep it and try again later."""


if IS_MICROPYTHON:
    from micropython import const  # noqa: F401 (for the other modules: compat.const)

    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    ticks_add = time.ticks_add
    sleep_ms = asyncio.sleep_ms
    wait_for_ms = asyncio.wait_for_ms

    def wait_readable(sock):
        # What asyncio's own streams do: park this task on the poller until sock is readable.
        yield asyncio.core._io_queue.queue_read(sock)

    def receive(sock, buffer, size):
        """One datagram of up to `size` bytes, or None when nothing is waiting. (readinto()
        would glue queued datagrams together: MicroPython allocates with recv() instead.)"""
        try:
            return sock.recv(size)
        except OSError as error:
            if error.args[0] == EAGAIN:
                return None
            raise

else:  # CPython: the fleet emulator and the tests (the module never goes into a bundle).
    # A star import: the names of CPython-only code stay out of compat.mpy, where each would
    # cost a board's heap (a qstr) though it never runs there.
    try:
        from .cpython_compat import *  # noqa: F403
    except ImportError:
        from cpython_compat import *  # noqa: F403


def ucbor():
    """The CBOR codec module, loaded on first use (a JSON meter never pays its heap)."""
    try:
        from . import ucbor as codec
    except ImportError:
        import ucbor as codec
    return codec


def jsonparts():
    """The JSON-in-pieces module, loaded on first use (a CBOR meter never pays its heap)."""
    try:
        from . import jsonparts as codec
    except ImportError:
        import jsonparts as codec
    return codec


def unload(name):
    """Let a board free a module it uses rarely; the next import loads it again."""
    if IS_MICROPYTHON:
        sys.modules.pop(name, None)


def parts_size(parts):
    size = 0
    for part in parts:
        size += len(part)
    return size


def take_into(parts, start, buffer):
    """Copy bytes [start, start + len(buffer)) of a list of parts into `buffer` (a bytearray
    or a view of one); the count copied. A link reuses one buffer for every datagram: a
    fresh 1 KB block each time is what a small, fragmented heap cannot find."""
    size = len(buffer)
    filled = 0
    offset = start
    for part in parts:
        if offset >= len(part):
            offset -= len(part)
            continue
        piece = memoryview(part)[offset : offset + size - filled]
        buffer[filled : filled + len(piece)] = piece
        filled += len(piece)
        offset = 0
        if filled >= size:
            break
    return filled


def random_bits(bits):
    """Unpredictable bits (up to 32) from the OS or hardware RNG; not reproducible by design."""
    value = int.from_bytes(os.urandom(4), "big")
    return value >> (32 - bits)


def address(host, port):
    """What sendto() and connect() take for host:port (the unix port needs a raw sockaddr)."""
    try:
        if IS_MICROPYTHON:
            return socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
        return socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][-1]
    except (OSError, IndexError) as error:
        raise LinkError(f"cannot resolve {host}: {error}") from None


def udp_socket(host="0.0.0.0", port=None):
    """A non-blocking UDP socket, bound when `port` is given (0: any); returns (sock, port).

    MicroPython sockets have no getsockname(), so for port 0 it picks a random ephemeral port
    itself and tries again while the port is taken.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if port is None:
            pass
        elif not IS_MICROPYTHON:
            port = bind(sock, host, port)  # noqa: F405 (cpython_compat)
        elif port:
            sock.bind(address(host, port))
        else:
            for attempt in range(32):
                port = 49152 + random_bits(14)
                try:
                    sock.bind(address(host, port))
                    break
                except OSError:
                    if attempt == 31:
                        raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, port


if IS_MICROPYTHON:

    def set_nodelay(writer):
        """TCP_NODELAY on a stream's socket, where the port supports it (else Nagle stays on)."""
        try:
            writer.s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: no named constants here
        except (AttributeError, OSError):
            pass

    def local_host(host, port):
        """The address the DAP at host:port can reach us at (for a poa); 127.0.0.1 when it
        cannot be known."""
        if IS_BOARD:
            try:
                import network

                return network.WLAN(network.STA_IF).ifconfig()[0]
            except (ImportError, OSError, AttributeError):
                pass
        return "127.0.0.1"  # the unix port cannot tell its own address: set poa_host

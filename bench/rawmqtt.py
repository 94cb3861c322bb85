"""A lean MQTT 3.1.1 client on raw asyncio streams, for load generation and the bare echo.

No MQTT library: packets are built here and parsed from the stream in one buffer loop (one
``read()`` may yield many packets). What it speaks: CONNECT/CONNACK, SUBSCRIBE/SUBACK,
PUBLISH at QoS 0 and 1 both ways, PUBACK both ways, PINGREQ/PINGRESP, DISCONNECT. No QoS 2,
no redelivery of unacknowledged PUBLISHes after a reconnect (a benchmark connection that
drops is a failure to report, not to repair).

Incoming PUBLISHes go to ``on_message(topic, payload, qos, packet_id)``; with
``auto_ack`` a QoS 1 PUBLISH is acknowledged right after the callback, otherwise the owner
calls :meth:`RawMqttClient.puback` itself (the echo acknowledges a request only once the
broker has accepted its response, as the CSE's binding does). ``on_puback(packet_id)``
reports the broker's PUBACK of our own QoS 1 PUBLISH.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

MessageHandler = Callable[[str, bytes, int, int], None]


class MqttProtocolError(Exception):
    """The broker refused us or sent something this client cannot read."""


def encode_length(length: int) -> bytes:
    """The Remaining Length varint (MQTT 3.1.1 §2.2.3)."""
    if not 0 <= length <= 268_435_455:
        raise ValueError(f"remaining length {length} out of range")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def encode_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_length(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    clean_session: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    if password is not None and username is None:
        raise ValueError("MQTT 3.1.1 sends a password only with a user name")
    flags = (0x02 if clean_session else 0) | (0x80 if username is not None else 0)
    flags |= 0x40 if password is not None else 0
    body = encode_string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body += encode_string(client_id)
    if username is not None:
        body += encode_string(username)
    if password is not None:
        body += encode_string(password)
    return packet(CONNECT << 4, body)


def subscribe_packet(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id)
    for name, qos in filters:
        body += encode_string(name) + bytes([qos])
    return packet((SUBSCRIBE << 4) | 0x02, body)


def publish_packet(topic: str | bytes, payload: bytes, qos: int = 1, packet_id: int = 0) -> bytes:
    if qos not in (0, 1):
        raise ValueError("only QoS 0 and 1")
    body = encode_string(topic)
    if qos:
        if not 1 <= packet_id <= 0xFFFF:
            raise ValueError("a QoS 1 PUBLISH needs a packet ID 1..65535")
        body += struct.pack("!H", packet_id)
    return packet((PUBLISH << 4) | (qos << 1), body + payload)


def puback_packet(packet_id: int) -> bytes:
    return bytes([PUBACK << 4, 2, packet_id >> 8, packet_id & 0xFF])


PINGREQ_PACKET = bytes([PINGREQ << 4, 0])
DISCONNECT_PACKET = bytes([DISCONNECT << 4, 0])


def split_packets(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete packet (first byte, body) off the front of `buffer`."""
    packets = []
    position = 0
    size = len(buffer)
    while size - position >= 2:
        length = 0
        multiplier = 1
        index = position + 1
        complete = False
        while index < size:
            byte = buffer[index]
            index += 1
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                complete = True
                break
            multiplier <<= 7
            if multiplier > 1 << 21:
                raise MqttProtocolError("malformed remaining length")
        if not complete:
            break  # the length itself is not all there yet
        end = index + length
        if end > size:
            break
        packets.append((buffer[position], bytes(buffer[index:end])))
        position = end
    if position:
        del buffer[:position]
    return packets


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, int]:
    """Topic, payload, QoS and packet ID (0 at QoS 0) of a PUBLISH body."""
    qos = (first >> 1) & 3
    topic_length = (body[0] << 8) | body[1]
    position = 2 + topic_length
    topic = body[2:position].decode()
    packet_id = 0
    if qos:
        packet_id = (body[position] << 8) | body[position + 1]
        position += 2
    return topic, body[position:], qos, packet_id


class RawMqttClient:
    """One MQTT connection; `connect()`, `subscribe()`, `publish()`, `close()`."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        clean_session: bool = True,
        keepalive: int = 60,
        username: str | None = None,
        on_message: MessageHandler | None = None,
        on_puback: Callable[[int], None] | None = None,
        auto_ack: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.username = username
        self.on_message = on_message
        self.on_puback = on_puback
        self.auto_ack = auto_ack
        self.session_present = False
        self.published = 0
        self.pubacks = 0
        self.received = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._next_id = 0
        self._waiting: dict[tuple[int, int], asyncio.Future[bytes]] = {}
        self.closed: asyncio.Future[None] | None = None
        self._closing = False
        self._pinger: asyncio.Task[None] | None = None
        self._last_write = 0.0

    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 0xFFFF + 1
        return self._next_id

    async def connect(self, timeout: float = 10.0) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer = writer
        self.closed = asyncio.get_running_loop().create_future()
        connack = self._expect(CONNACK, 0)
        self._reader_task = asyncio.create_task(self._read(reader), name=f"mqtt {self.client_id}")
        writer.write(
            connect_packet(
                self.client_id,
                clean_session=self.clean_session,
                keepalive=self.keepalive,
                username=self.username,
            )
        )
        body = await asyncio.wait_for(connack, timeout)
        if len(body) != 2 or body[1] != 0:
            await self.close()
            raise MqttProtocolError(f"CONNACK refused the connection: {body!r}")
        self.session_present = bool(body[0] & 1)
        if self.keepalive:
            self._pinger = asyncio.create_task(self._keep_alive(), name=f"ping {self.client_id}")

    async def _keep_alive(self) -> None:
        """PINGREQ when nothing was sent for half the keep-alive (the broker drops a client
        that is silent for 1.5 keep-alive periods)."""
        interval = self.keepalive / 2
        while self._writer is not None:
            await asyncio.sleep(interval)
            if self._writer is not None and time.monotonic() - self._last_write >= interval:
                self.ping()

    async def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> bytes:
        """Subscribe; returns the granted QoS bytes (0x80 = refused) of the SUBACK."""
        packet_id = self.next_packet_id()
        suback = self._expect(SUBACK, packet_id)
        self._write(subscribe_packet(packet_id, filters))
        body = await asyncio.wait_for(suback, timeout)
        granted = body[2:]
        if any(code == 0x80 for code in granted):
            raise MqttProtocolError(f"the broker refused a subscription in {filters}")
        return granted

    def publish(self, topic: str | bytes, payload: bytes, qos: int = 1) -> int:
        """Write a PUBLISH (not waiting for its PUBACK); returns its packet ID (0 at QoS 0)."""
        packet_id = self.next_packet_id() if qos else 0
        self._write(publish_packet(topic, payload, qos, packet_id))
        self.published += 1
        return packet_id

    def write_raw(self, data: bytes) -> None:
        """Write bytes already encoded (e.g. a PUBLISH built ahead)."""
        self._write(data)

    def puback(self, packet_id: int) -> None:
        self._write(puback_packet(packet_id))

    def ping(self) -> None:
        self._write(PINGREQ_PACKET)

    def _write(self, data: bytes) -> None:
        if self._writer is None:
            raise MqttProtocolError("not connected")
        self._writer.write(data)
        self._last_write = time.monotonic()

    def _expect(self, kind: int, packet_id: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[(kind, packet_id)] = future
        return future

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = bytearray()
        error: BaseException | None = None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    if self._closing:
                        return
                    raise MqttProtocolError("the broker closed the connection")
                buffer += data
                for first, body in split_packets(buffer):
                    self._dispatch(first, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported through `closed`
            error = None if self._closing else exc
        finally:
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(error or MqttProtocolError("connection closed"))
            self._waiting.clear()
            if self.closed is not None and not self.closed.done():
                if error is None:
                    self.closed.set_result(None)
                else:
                    self.closed.set_exception(error)

    def _dispatch(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            topic, payload, qos, packet_id = parse_publish(first, body)
            self.received += 1
            if self.on_message is not None:
                self.on_message(topic, payload, qos, packet_id)
            if qos == 1 and self.auto_ack:
                self.puback(packet_id)
        elif kind == PUBACK:
            self.pubacks += 1
            if self.on_puback is not None:
                self.on_puback((body[0] << 8) | body[1])
        elif kind in (CONNACK, SUBACK):
            key = (kind, 0 if kind == CONNACK else (body[0] << 8) | body[1])
            future = self._waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(body)
        elif kind == PINGRESP:
            pass
        else:
            raise MqttProtocolError(f"unexpected packet type {kind}")

    async def close(self, *, disconnect: bool = True) -> None:
        self._closing = True
        if self._pinger is not None:
            self._pinger.cancel()
            await asyncio.gather(self._pinger, return_exceptions=True)
            self._pinger = None
        writer, self._writer = self._writer, None
        if writer is not None:
            if disconnect:
                with contextlib.suppress(OSError):
                    writer.write(DISCONNECT_PACKET)
                    await writer.drain()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
            self._reader_task = None

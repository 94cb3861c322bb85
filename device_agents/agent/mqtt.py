"""A small MQTT 3.1.1 client for the meter agent, on asyncio streams.

- `connect()`: TCP (TCP_NODELAY where the port allows), with `tls` (from mqtt_tls.py: the
  `ssl` and `server_hostname` of asyncio's open_connection) TLS that verifies the broker's
  certificate against the CA and its name; CONNECT with user name and password, clean
  session false by default (the broker keeps the subscriptions and queues QoS 1 messages
  while the meter is away), CONNACK within `timeout_ms`; then one reader task owns the
  socket's input.
- `publish()`: QoS 1. With `wait` it returns once the broker's PUBACK is in; without an answer
  within `timeout_ms` it sends again with DUP, `retries` times, then raises LinkError.
- incoming PUBLISH: `await on_message(topic, payload)` runs first, the PUBACK goes after it,
  so a message whose handling was cut off is delivered again (MQTT's at-least-once).
- keepalive: after keepalive/2 without input the reader sends PINGREQ; no answer by the next
  keepalive/2 means the link is dead. Every read and write has a timeout: nothing waits
  forever. Any failure closes the connection, fails the waiting publishers with LinkError and
  ends `wait_closed()`; `connect()` again starts a clean new connection.

`MqttLink` is the Dap's transport on top of it (TS-0010 topics, responses matched by rqi).
"""

import asyncio

try:
    from . import compat
except ImportError:
    import compat

const = compat.const
LinkError = compat.LinkError

CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)  # with the flags 3.1.1 requires
SUBACK = const(0x90)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)
_QOS1 = const(0x02)
_DUP = const(0x08)


def _string(text):
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(2, "big") + data


class Waiter:
    """One value (or error) handed from one task to another, awaited with a timeout."""

    def __init__(self):
        self._event = asyncio.Event()
        self.value = None
        self.error = None

    def set(self, value):
        self.value = value
        self._event.set()

    def fail(self, error):
        self.error = error
        self._event.set()

    async def wait(self, ms):
        """The value; raises the error it failed with, or TimeoutError after `ms`."""
        if not self._event.is_set():
            await compat.wait_for_ms(self._event.wait(), ms)
        if self.error is not None:
            raise self.error
        return self.value


def topic_id(entity_id):
    """An ID as it appears in a TS-0010 topic: '/id-in' -> 'id-in', '/a/b' -> 'a:b'."""
    return entity_id.lstrip("/").replace("/", ":")


def _remaining_length(size):
    out = bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        out.append(byte | 0x80 if size else byte)
        if not size:
            return out


class MqttClient:
    """One connection to one broker for one client ID."""

    def __init__(
        self,
        client_id,
        host,
        port=1883,
        keepalive_s=60,
        timeout_ms=10000,
        username=None,
        password=None,
        clean_session=False,
        retries=1,
        tls=None,
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive_s = keepalive_s
        self.timeout_ms = timeout_ms
        self.username = username
        self.password = password
        self.clean_session = clean_session
        self.retries = retries
        self.tls = tls or {}
        self.on_message = None  # async on_message(topic: str, payload: bytes)
        self.connected = False
        self.session_present = False
        self._reader = None
        self._writer = None
        self._task = None
        self._closed = asyncio.Event()
        self._closed.set()
        self._write_lock = asyncio.Lock()
        self._pending = {}  # packet id -> Waiter for PUBACK / SUBACK
        self._pid = 0
        self._ping_sent = False
        # Packets go out through this one buffer, 512 B at a time: few segments even with
        # TCP_NODELAY, and no fresh block per piece on a board's small heap.
        self._out = bytearray(512)

    async def connect(self):
        """Open a new connection; returns whether the broker kept our session."""
        await self.disconnect()
        try:
            opening = asyncio.open_connection(self.host, self.port, **self.tls)
            self._reader, self._writer = await compat.wait_for_ms(opening, self.timeout_ms)
        except (OSError, ValueError, compat.TimeoutError) as error:
            raise LinkError(f"cannot connect to {self.host}:{self.port}: {error!r}") from None
        compat.set_nodelay(self._writer)
        self._closed = asyncio.Event()
        flags = 0 if not self.clean_session else 0x02
        payload = _string(self.client_id)
        if self.username is not None:
            flags |= 0x80
            payload += _string(self.username)
            if self.password is not None:
                flags |= 0x40
                payload += _string(self.password)
        header = b"\x00\x04MQTT\x04" + bytes((flags,)) + self.keepalive_s.to_bytes(2, "big")
        try:
            await self._send(CONNECT, header, payload)
            ack = await compat.wait_for_ms(self._reader.readexactly(4), self.timeout_ms)
        except (EOFError, compat.TimeoutError, LinkError) as error:  # CPython: not OSError
            self._shutdown()
            raise LinkError(f"no CONNACK from {self.host}:{self.port}: {error!r}") from None
        except (OSError, ValueError) as error:  # MicroPython reports a refused connection,
            # or a failed TLS handshake (it runs with the first write), only now
            self._shutdown()
            raise LinkError(f"cannot connect to {self.host}:{self.port}: {error!r}") from None
        if ack[0] != CONNACK or ack[3] != 0:
            self._shutdown()
            raise LinkError(f"the broker refused the connection (code {ack[3]})")
        self.session_present = bool(ack[2] & 1)
        self.connected = True
        self._ping_sent = False
        self._task = asyncio.create_task(self._read_loop())
        return self.session_present

    async def subscribe(self, topics):
        """Subscribe at QoS 1; raises LinkError if the broker refuses any of them."""
        pid = self._next_pid()
        body = bytearray(pid.to_bytes(2, "big"))
        for topic in topics:
            body.extend(_string(topic))
            body.append(1)
        waiter = Waiter()
        self._pending[pid] = waiter
        try:
            await self._send(SUBSCRIBE, body)
            codes = await self._wait(waiter)
        finally:
            self._pending.pop(pid, None)
        if 0x80 in codes:
            raise LinkError(f"the broker refused a subscription: {bytes(codes)}")

    async def publish(self, topic, payload, wait=True):
        """QoS 1 publish; with `wait`, returns once the broker has acknowledged it. `payload`:
        bytes, or a list of bytes-like parts (written one after the other)."""
        parts = payload if isinstance(payload, list) else [payload]
        pid = self._next_pid()
        header = _string(topic) + pid.to_bytes(2, "big")
        waiter = Waiter() if wait else None
        if waiter is not None:
            self._pending[pid] = waiter
        try:
            for attempt in range(self.retries + 1):
                await self._send(PUBLISH | _QOS1 | (_DUP if attempt else 0), header, *parts)
                if waiter is None:
                    return
                try:
                    await waiter.wait(self.timeout_ms)
                    return
                except compat.TimeoutError:
                    pass
            raise LinkError(f"no PUBACK for {topic}")
        finally:
            self._pending.pop(pid, None)

    async def wait_closed(self):
        await self._closed.wait()

    async def disconnect(self):
        """Say goodbye (if connected) and close; safe to call at any time."""
        if self.connected:
            self.connected = False  # what the reader sees next is our own goodbye
            try:
                await self._send(DISCONNECT)
            except LinkError:
                pass
        self._shutdown()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass  # the reader ends with whatever the cancellation made of it

    # ---- internals -----------------------------------------------------------------------

    def _next_pid(self):
        while True:
            self._pid = self._pid % 0xFFFF + 1
            if self._pid not in self._pending:
                return self._pid

    async def _wait(self, waiter):
        try:
            return await waiter.wait(self.timeout_ms)
        except compat.TimeoutError:
            raise LinkError("the broker did not answer in time") from None

    async def _send(self, first, *parts):
        """One packet; any failure breaks the connection (half a packet cannot be taken back).

        Written in pieces of at most 512 B: the parts may be many small ones (jsonparts.dump_parts)
        and TCP_NODELAY would turn each into a segment of its own."""
        async with self._write_lock:
            writer = self._writer
            if writer is None:
                raise LinkError("not connected")
            parts = (bytes((first,)) + _remaining_length(compat.parts_size(parts)),) + parts
            total = compat.parts_size(parts)
            out = self._out
            offset = 0
            while offset < total:
                size = compat.take_into(parts, offset, out)
                writer.write(out if size == len(out) else memoryview(out)[:size])  # copied
                offset += size
            try:
                await compat.wait_for_ms(writer.drain(), self.timeout_ms)
            except (OSError, ValueError, compat.TimeoutError) as error:
                self._shutdown()
                raise LinkError(f"send failed: {error!r}") from None

    def _shutdown(self):
        """Close the connection and fail whoever waits on it (idempotent)."""
        self.connected = False
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.fail(LinkError("connection lost"))
        self._closed.set()

    async def _read_loop(self):
        try:
            while self._reader is not None:
                first = await self._read_first()
                size = 0
                shift = 0
                while True:
                    byte = (await self._read(1))[0]
                    size |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise LinkError("bad remaining length")
                body = await self._read(size) if size else b""
                self._ping_sent = False
                await self._dispatch(first, body)
        except (EOFError, OSError, ValueError, LinkError, compat.TimeoutError) as error:
            if self.connected:
                print("mqtt: connection lost:", repr(error))
        except Exception as error:  # a malformed packet (or a bug): start over
            print("mqtt: closing after", repr(error))
        finally:
            self._shutdown()

    async def _read(self, size):
        reader = self._reader
        if reader is None:
            raise LinkError("closed")
        return await compat.wait_for_ms(reader.readexactly(size), self.timeout_ms)

    async def _read_first(self):
        """The first byte of the next packet, pinging the broker while the line is quiet."""
        quiet_ms = self.keepalive_s * 500
        while True:
            reader = self._reader
            if reader is None:
                raise LinkError("closed")
            try:
                return (await compat.wait_for_ms(reader.readexactly(1), quiet_ms))[0]
            except compat.TimeoutError:
                if self._ping_sent:
                    raise LinkError("no answer to PINGREQ") from None
                self._ping_sent = True
                await self._send(PINGREQ)

    async def _dispatch(self, first, body):
        kind = first & 0xF0
        if kind == PUBLISH:
            qos = (first >> 1) & 3
            end = 2 + (body[0] << 8 | body[1])
            topic = bytes(body[2:end]).decode()
            pid = 0
            if qos:
                pid = body[end] << 8 | body[end + 1]
                end += 2
            if self.on_message is not None:
                try:
                    await self.on_message(topic, body[end:])
                except LinkError:
                    raise
                except Exception as error:  # a bug in the handler must not stop the reader
                    print("mqtt: message handler failed:", repr(error))
            if qos == 1:
                await self._send(PUBACK, pid.to_bytes(2, "big"))
        elif kind in (PUBACK, SUBACK):
            waiter = self._pending.pop(body[0] << 8 | body[1], None)
            if waiter is not None:
                waiter.set(body[2:])


# ---- the Dap's MQTT transport ----------------------------------------------------------------


class MqttLink:
    """The Dap's transport over MQTT (TS-0010): request primitives published on
    /oneM2M/req/<ae-id>/<cse-id>/<fmt> (reg_req for the registration) and matched by rqi to the
    responses on resp/reg_resp; NOTIFYs for the AE answered on /oneM2M/resp/<cse>/<ae>/<fmt>.
    The poa is mqtts://<broker host>:<port> with TLS, else mqtt:// (?ct=cbor for a CBOR
    meter). serve() reconnects with backoff.

    TLS (mqtt_tls.py, loaded only then): config["mqtt_ca"] names the broker's CA certificate
    (a DER file beside the agent); the broker's certificate must name config["mqtt_server_name"]
    (default dap_host)."""

    def __init__(self, dap, config):
        self.dap = dap
        self.host = config["dap_host"]
        tls = None
        if config.get("mqtt_ca") or config.get("mqtt_tls"):
            try:
                from .mqtt_tls import client_context
            except ImportError:
                from mqtt_tls import client_context
            tls = client_context(config)
        self.scheme = "mqtts" if tls else "mqtt"
        self.port = config.get("dap_port") or (8883 if tls else 1883)
        self.client = MqttClient(
            dap.ae_id,
            self.host,
            self.port,
            config.get("mqtt_keepalive_s") or 60,
            dap.timeout_ms,
            config.get("mqtt_username"),
            config.get("mqtt_password"),
            tls=tls,
        )
        self.client.on_message = self.on_message
        own = topic_id(dap.ae_id)
        cse = topic_id(dap.cse_id)
        fmt = "/cbor" if dap.cbor else "/json"
        self.request_topic = "/oneM2M/req/" + own + "/" + cse + fmt
        self.registration_topic = "/oneM2M/reg_req/" + own + "/" + cse + fmt
        self.subscriptions = (
            "/oneM2M/resp/" + own + "/+/#",
            "/oneM2M/reg_resp/" + own + "/+/#",
            "/oneM2M/req/+/" + own + "/#",
        )
        self.own = own
        self.own_names = (own, cse + ":" + own)  # the bare stem, or SP-relative
        self._waiting = {}  # rqi -> Waiter
        self._connecting = asyncio.Lock()

    def poa(self):
        # ?ct=cbor: the DAP notifies a CBOR meter in CBOR (it never loads the JSON code).
        return f"{self.scheme}://{self.host}:{self.port}" + ("?ct=cbor" if self.dap.cbor else "")

    async def open(self):
        async with self._connecting:
            if not self.client.connected:
                await self.client.connect()
                try:
                    await self.client.subscribe(self.subscriptions)
                except LinkError:
                    await self.client.disconnect()
                    raise

    async def request(self, primitive, registration):
        if not self.client.connected:
            await self.open()
        rqi = primitive["rqi"]
        waiter = Waiter()
        self._waiting[rqi] = waiter
        try:
            topic = self.registration_topic if registration else self.request_topic
            await self.client.publish(topic, self.dap.encode(primitive))
            return await waiter.wait(self.dap.timeout_ms)
        except compat.TimeoutError:
            raise LinkError(f"no response to {rqi}") from None
        finally:
            self._waiting.pop(rqi, None)

    async def on_message(self, topic, payload):
        parts = topic.split("/")
        if len(parts) != 6 or parts[1] != "oneM2M":
            return
        kind = parts[2]
        try:
            message = self.dap.decode(payload, parts[5] == "cbor")
        except (ValueError, UnicodeError):
            print("dap: unreadable message on", topic)
            return
        if not isinstance(message, dict):
            return
        if kind == "resp" or kind == "reg_resp":
            message = message.get("m2m:rsp", message)
            waiter = self._waiting.pop(message.get("rqi"), None)
            if waiter is not None:
                waiter.set(message)
        elif kind == "req" and parts[4] in self.own_names:
            message = message.get("m2m:rqp", message)
            rsc = self.dap.notified_with(message)
            answer = {"rsc": rsc, "rqi": message.get("rqi"), "rvi": "3", "fr": self.dap.ae_id}
            if message.get("fr"):
                answer["to"] = message["fr"]
            # Answered in the request's serialization, before the PUBACK of the request and
            # without waiting for the PUBACK of the answer (the reader is what would read it).
            data = self.dap.encode(answer, parts[5] == "cbor")
            response_topic = "/oneM2M/resp/" + parts[3] + "/" + parts[4] + "/" + parts[5]
            await self.client.publish(response_topic, data, wait=False)

    async def serve(self, closing):
        delay = 500
        while not closing.is_set():
            if self.client.connected:
                delay = 500
                await self.client.wait_closed()
                continue
            try:
                await self.open()
                continue
            except LinkError as error:
                print("dap: reconnect failed:", repr(error))
            try:
                await compat.wait_for_ms(closing.wait(), delay)  # backoff, cut short by close()
            except compat.TimeoutError:
                pass
            delay = min(delay * 2, 60000)

    async def close(self):
        for waiter in self._waiting.values():
            waiter.fail(LinkError("closed"))
        await self.client.disconnect()

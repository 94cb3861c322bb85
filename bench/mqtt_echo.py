"""The bare MQTT round trip for bench_coap_mqtt: a responder with no CSE behind it.

    python -m bench.mqtt_echo --url mqtt://127.0.0.1:PORT [--receiver id-echo]

Connects as ``C::<receiver>`` (clean session false, as the CSE's binding), subscribes at QoS 1
to ``/oneM2M/req/+/<receiver>/+`` and republishes each request payload unchanged at QoS 1 on
the matching ``/oneM2M/resp/...`` topic. Like the CSE's binding it acknowledges (PUBACK) a
request only once the broker has acknowledged its response, in arrival order. Prints
``mqtt echo ready`` once subscribed; serves until SIGTERM/SIGINT.

It runs on bench.rawmqtt (raw asyncio streams, uvloop when installed), not aiomqtt/paho: the
echo's own cost is part of the "bare transport" figure, and this keeps it to the broker round
trip plus a few microseconds of Python per message. The CSE's binding is heavier by design
(aiomqtt/paho, one task per request); that difference is counted as CSE cost.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any
from urllib.parse import urlsplit

from bench.rawmqtt import RawMqttClient

REQUEST_PREFIX = "/oneM2M/req/"
RESPONSE_PREFIX = "/oneM2M/resp/"


class Echo:
    def __init__(self, host: str, port: int, receiver: str) -> None:
        self.receiver = receiver
        self.client = RawMqttClient(
            host,
            port,
            f"C::{receiver}",
            clean_session=False,
            on_message=self._request,
            on_puback=self._response_accepted,
            auto_ack=False,
        )
        self._requests: dict[int, int] = {}  # our response's packet ID -> the request's
        self.answered = 0

    def _request(self, topic: str, payload: bytes, qos: int, packet_id: int) -> None:
        if not topic.startswith(REQUEST_PREFIX):
            if qos:
                self.client.puback(packet_id)
            return
        answer = RESPONSE_PREFIX + topic[len(REQUEST_PREFIX) :]
        sent = self.client.publish(answer, payload, 1)
        if qos:
            self._requests[sent] = packet_id
        self.answered += 1

    def _response_accepted(self, packet_id: int) -> None:
        request = self._requests.pop(packet_id, 0)
        if request:
            self.client.puback(request)

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe([(f"{REQUEST_PREFIX}+/{self.receiver}/+", 1)])


async def serve(url: str, receiver: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parts = urlsplit(url)
    echo = Echo(parts.hostname or "127.0.0.1", parts.port or 1883, receiver)
    await echo.start()
    print(f"mqtt echo ready ({receiver} at {url})", flush=True)
    closed = echo.client.closed
    assert closed is not None
    stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    await asyncio.wait({stopping, closed}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await echo.client.close()
    if closed.done() and closed.exception() is not None:
        raise SystemExit(f"mqtt echo: {closed.exception()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="mqtt://host:port of the broker")
    parser.add_argument("--receiver", default="id-echo", help="the ID requests are addressed to")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.url, args.receiver))
    else:
        uvloop.run(serve(args.url, args.receiver))


if __name__ == "__main__":
    main()

"""The bare CoAP transport for bench_coap_mqtt: aiocoap answering every POST with 2.01, no CSE.

    python -m bench.coap_echo [--host 127.0.0.1] [--port 0]

Prints ``coap echo listening on coap://HOST:PORT`` and serves until SIGTERM/SIGINT. It is built
like GridM2M's CoAP server minus the CSE: the same aiocoap server context (udp6 transport,
uvloop when installed, as ``gridm2m cse`` uses), one path-capable resource as the whole site,
aiocoap's Block1 reassembly and Block2 for large answers. A POST is answered 2.01 with the
request body as payload (about the size of the contentInstance a CSE sends back) and the
oneM2M-RSC 2001, RQI and RVI options a CSE sets.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import aiocoap  # type: ignore[import-untyped]
from aiocoap import resource
from aiocoap.numbers.optionnumbers import OptionNumber  # type: ignore[import-untyped]
from aiocoap.optiontypes import OpaqueOption  # type: ignore[import-untyped]

RSC, RQI, RVI = 307, 283, 271
_RSC_CREATED = (2001).to_bytes(2, "big")


class EchoResource(resource.Resource, resource.PathCapable):  # type: ignore[misc]
    """Every path: POST → 2.01 echoing the body; other methods → 4.05 (aiocoap's default)."""

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        reply = aiocoap.Message(code=aiocoap.CREATED, payload=request.payload)
        reply.opt.content_format = 50
        echoed = {int(o.number): o.encode() for o in request.opt.option_list()}
        reply.opt.add_option(OpaqueOption(OptionNumber(RSC), _RSC_CREATED))
        for number in (RQI, RVI):
            if number in echoed:
                reply.opt.add_option(OpaqueOption(OptionNumber(number), echoed[number]))
        return reply


def _port(context: Any) -> int:
    for interface in context.request_interfaces:
        endpoint = getattr(getattr(interface, "token_interface", None), "message_interface", None)
        if endpoint is not None:
            return int(endpoint.transport.get_extra_info("socket").getsockname()[1])
    raise RuntimeError("aiocoap opened no UDP endpoint")


async def serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    context = await aiocoap.Context.create_server_context(
        EchoResource(), bind=(host, port), transports=["udp6"]
    )
    print(f"coap echo listening on coap://{host}:{_port(context)}", flush=True)
    try:
        await stop.wait()
    finally:
        await context.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

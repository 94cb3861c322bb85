"""A CSE on SQLite served over MQTT only, as a process that tests can SIGKILL and restart.

    python -m tests.run_cse_mqtt --db PATH --mqtt-url mqtt://127.0.0.1:PORT [--mqtt-username U]

Prints `ready <client-id>` once its session is subscribed, then serves until SIGTERM/SIGINT.
(`gridm2m cse` has no MQTT flags yet; this composes the same parts by hand.)
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from cse.bindings.mqtt import MqttBinding, MqttSender, MqttSettings
from cse.core.config import CSESettings
from cse.core.handler import CommonServicesEntity
from cse.core.identity import Trust
from cse.storage.sqlite import SQLiteStorage


async def serve(db: str, url: str, username: str | None, cse_id: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    settings = MqttSettings(url, username=username)
    async with MqttSender(settings) as sender:
        cse = CommonServicesEntity(
            SQLiteStorage(db), CSESettings(cse_id=cse_id), senders={"mqtt": sender}
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
    parser.add_argument("--cse-id", default="/id-in")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.db, arguments.mqtt_url, arguments.mqtt_username, arguments.cse_id))


if __name__ == "__main__":
    main()

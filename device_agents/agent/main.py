"""Board entry point: read config.json, bring up Wi-Fi (boards only), run the meter agent.

A board runs this file at boot; on the unix port `micropython main.py [config.json]` from
inside a bundle folder runs the same thing (no Wi-Fi there: the host's network is used). A
bundle holds the other modules only as `.mpy` files, which CPython cannot load: there it is
MicroPython or nothing. CPython runs the agent from the source tree instead, as
`python -m device_agents.agent.main [config.json]`. If the agent dies, a board resets after
ten seconds (a meter must come back by itself); elsewhere the error propagates.
"""

import asyncio
import json
import sys
import time

try:
    from . import compat
    from .agent import Agent
except (ImportError, KeyError):  # MicroPython raises KeyError for a relative import in __main__
    import compat
    from agent import Agent

WIFI_TIMEOUT_MS = 30000


def load_config(path="config.json"):
    with open(path) as f:
        return json.load(f)


def wifi_up(config):
    """Join the configured Wi-Fi network (boards with `network` only); the WLAN or None."""
    wifi = config.get("wifi")
    if not compat.IS_BOARD or not wifi:
        return None
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(wifi["ssid"], wifi.get("password") or "")
        waited = 0
        while not wlan.isconnected() and waited < WIFI_TIMEOUT_MS:
            time.sleep_ms(250)
            waited += 250
    if not wlan.isconnected():
        raise OSError("Wi-Fi " + wifi["ssid"] + " not joined")
    print("wifi", wlan.ifconfig()[0])
    try:
        import ntptime  # boards start in 2000 without it; meter time would be wrong

        ntptime.settime()
    except (ImportError, OSError):
        print("no NTP: meter time starts from the board's clock")
    return wlan


async def main(path="config.json"):
    config = load_config(path)
    wifi_up(config)
    agent = Agent(config)
    print("meter", agent.meter_id, agent.kind, "->", config.get("dap_host"))
    await agent.run()


def run():
    path = sys.argv[1] if len(sys.argv) > 1 else "config.json"
    if not compat.IS_BOARD:
        asyncio.run(main(path))
        return
    try:
        asyncio.run(main(path))
    except Exception as error:  # whatever it was, the meter restarts
        print("agent failed:", repr(error))
        import machine

        time.sleep(10)
        machine.reset()


if __name__ == "__main__":
    run()

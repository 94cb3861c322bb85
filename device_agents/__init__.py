"""Smart-meter agents: `agent/` is the meter itself as MicroPython code (a oneM2M AE that
speaks CoAP with OSCORE or MQTT over TLS to its DAP, generates the flows of an electricity or
gas meter and answers the head-end's commands, within a 96 KB heap); `fleet/` runs many of
them in one CPython process for the demo, tests and benchmarks; `build.py` compiles a
flashable bundle for one board and `provisioning.py` gives it its identity and keys. See
docs/agents.md.
"""

"""The fleet emulator: thousands of meter agents in one CPython process (`gridm2m fleet`).

`emulator` runs them, `config` reads configs/fleet.toml, `summary` adds up what they did.
The agents are device_agents/agent unchanged; see docs/agents.md.
"""

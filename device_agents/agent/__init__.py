"""The meter agent: oneM2M ADN-AE code for MicroPython boards, the unix port and CPython.

On a board (and under `micropython` with this folder on MICROPYPATH) the modules are flat:
`import onem2m`. Under CPython they form this package: `from device_agents.agent import
onem2m`. Each module imports its siblings relatively first and falls back to the flat name,
so both work with the same files. See docs/agents.md for the design and the contracts.
"""

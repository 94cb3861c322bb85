"""The benches measure throughput and latency, not the limits a meter LAN needs.

They switch off the per-client limits (docs/gateway.md, "Limits") in every `gridm2m` process
they start, through the environment those processes inherit: one load generator speaks for
thousands of meters as one originator, one address, and registers them all at once.
"""

from __future__ import annotations

import os

LIMITS_OFF = (
    "REQUESTS_PER_SECOND",
    "REGISTRATIONS_PER_MINUTE",
    "REGISTRATIONS_PER_MINUTE_PER_SOURCE",
    "MAX_AES",
    "MAX_RESOURCES_PER_AE",
    "MAX_SUBSCRIPTIONS_PER_RESOURCE",
    # A bulk upload of hundreds of reads into one meter's container, as the storm phase of
    # bench_gateway sends it, is kept whole (the gateway's default keeps 32).
    "DEFAULT_MAX_INSTANCES",
    "DEFAULT_MAX_BYTE_SIZE",
)
_SECTIONS = (
    "GRIDM2M_CSE__LIMITS__",
    "GRIDM2M_GATEWAY__CSE__LIMITS__",
    "GRIDM2M_HEADEND__CSE__LIMITS__",
)


def switch_limits_off() -> None:
    """Set the environment so that child processes run without per-client limits (a value
    the caller set already wins)."""
    for section in _SECTIONS:
        for name in LIMITS_OFF:
            os.environ.setdefault(section + name, "0")

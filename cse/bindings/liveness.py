"""What the last round trip through a listener found, for health checks and metrics.

A listener is alive when a request sent to it the way a client sends one (through its socket,
or through the broker) comes back answered by the CSE. The CoAP server keeps the same record
in its own `Liveness` (cse/bindings/coap/server.py), with the restarts its watchdog made.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

from cse.core.primitives import Request
from cse.core.types import Operation

_probe_ids = itertools.count(1)
_stem = os.urandom(3).hex()


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    alive: bool | None = None  # None before the first probe
    checked_at: float | None = None  # time.time() of the last probe
    failures: int = 0  # probes failed in a row

    def after(self, alive: bool) -> ProbeRecord:
        return ProbeRecord(alive, time.time(), 0 if alive else self.failures + 1)

    def as_dict(self) -> dict[str, Any]:
        return {"alive": self.alive, "checked_at": self.checked_at, "failures": self.failures}


def probe_request(cse_id: str, cse_name: str) -> Request:
    """A RETRIEVE of the CSEBase from the CSE itself (its own ID passes every check)."""
    return Request(Operation.RETRIEVE, cse_name, cse_id, f"probe-{_stem}-{next(_probe_ids)}", "3")

"""Acknowledge a QoS 1 request only once it is answered, in the order the requests came.

paho acknowledges a QoS 1 PUBLISH (sends PUBACK) as soon as it has read it; a CSE that then
crashed would lose a request the broker considers delivered. The binding switches that off
(paho 2's manual_ack, reached in internals.py) and sends each PUBACK itself, after the core
has made the result durable and the broker has accepted the response. MQTT 3.1.1 §4.6 (and
MQTT 5 §4.6) wants PUBACKs in the order the PUBLISHes arrived, so a finished request waits for
those received before it.

Anything not acknowledged when a connection ends is delivered again on the next one (clean
session false); the core's request record answers a repeated CREATE without creating twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class PendingAck:
    """One received QoS 1 PUBLISH waiting for its PUBACK."""

    __slots__ = ("done", "mid")

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.done = False


class AckSequence:
    """PUBACKs for one connection, sent in arrival order as requests finish."""

    def __init__(self, send: Callable[[int], object]) -> None:
        self._send = send
        self._waiting: deque[PendingAck] = deque()
        self._open = True
        self.sent = 0

    def expect(self, mid: int) -> PendingAck:
        pending = PendingAck(mid)
        self._waiting.append(pending)
        return pending

    def finish(self, pending: PendingAck | None) -> None:
        """The request is answered (or dropped for good): acknowledge what may be."""
        if pending is None or not self._open:
            return
        pending.done = True
        while self._waiting and self._waiting[0].done:
            self._send(self._waiting.popleft().mid)
            self.sent += 1

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        """The connection is gone: its message IDs mean nothing on the next one."""
        self._open = False
        self._waiting.clear()

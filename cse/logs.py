"""Log lines that repeat are let through a few at a time, with a count of the rest.

A gateway on an SD card must not log itself full because someone on the meter LAN sends junk
datagrams or forged requests: every such event would otherwise be one line. `RepeatFilter`
keys each record by where it comes from (logger, level and the message template, not its
arguments), lets `burst` records of a key through per `window` seconds, drops the rest, and
adds to the first record after the window a note of how many it dropped:
"... (1,234 more like this in the last 60 s)".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Tally:
    window_start: float
    passed: int = 0
    dropped: int = 0


class RepeatFilter(logging.Filter):
    def __init__(
        self,
        *,
        burst: int = 5,
        window: float = 60.0,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._tallies: OrderedDict[tuple[str, int, str], _Tally] = OrderedDict()
        self._lock = threading.Lock()  # log records may come from worker threads

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(now)
                if len(self._tallies) > self.max_keys:
                    self._tallies.popitem(last=False)
            else:
                self._tallies.move_to_end(key)
            dropped = 0
            if now - tally.window_start >= self.window:
                dropped = tally.dropped
                tally.window_start, tally.passed, tally.dropped = now, 0, 0
            if tally.passed >= self.burst:
                tally.dropped += 1
                return False
            tally.passed += 1
        if dropped:
            record.msg = (
                f"{record.getMessage()} ({dropped:,} more like this in the last "
                f"{self.window:.0f} s)"
            )
            record.args = None
        return True

"""Repeated log lines are let through a few at a time and counted."""

from __future__ import annotations

import logging

import pytest

from cse.logs import RepeatFilter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_one_line_is_cut_to_a_burst_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = logging.getLogger("tests.flood")
    repeat = RepeatFilter(burst=3, window=60, clock=clock)
    caplog.handler.addFilter(repeat)
    caplog.set_level(logging.WARNING)
    try:
        for n in range(1000):
            log.warning("ignoring a junk datagram from %s", f"10.0.0.{n % 250}")
        log.warning("another kind of line")
        assert len(caplog.records) == 4
        clock.now = 61
        log.warning("ignoring a junk datagram from %s", "10.0.0.9")
    finally:
        caplog.handler.removeFilter(repeat)
    assert caplog.records[-1].getMessage() == (
        "ignoring a junk datagram from 10.0.0.9 (997 more like this in the last 60 s)"
    )


def test_the_filter_forgets_the_oldest_keys() -> None:
    repeat = RepeatFilter(burst=1, max_keys=10)
    for n in range(100):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, f"line {n}", None, None)
        assert repeat.filter(record)
    assert len(repeat._tallies) == 10

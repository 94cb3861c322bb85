"""The supervisor: a task that fails is logged, counted, reported down, and started again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cse.supervision import Supervisor


async def test_a_failing_task_is_logged_counted_reported_down_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = Supervisor(backoff_min=0.01, backoff_max=0.02)
    runs: list[int] = []
    second_run = asyncio.Event()

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise ValueError("disk on fire")
        second_run.set()
        await asyncio.Event().wait()  # runs for good now

    with caplog.at_level(logging.ERROR):
        task = supervisor.start("worker", work)
        async with asyncio.timeout(10):
            await second_run.wait()
    assert supervisor.failures["worker"] == 1
    assert supervisor.down() == []  # restarted: up again
    assert "task 'worker' failed" in caplog.text and "disk on fire" in caplog.text
    task.cancel()
    await supervisor.stop()


async def test_a_task_is_down_with_its_reason_until_it_is_restarted() -> None:
    supervisor = Supervisor(backoff_min=3600, backoff_max=3600)

    async def work() -> None:
        raise RuntimeError("outbox is not open")

    supervisor.start("uplink sender", work)
    async with asyncio.timeout(10):
        while not supervisor.down():
            await supervisor.wait_for_change()
    [outage] = supervisor.down()
    assert outage.name == "uplink sender"
    assert outage.reason == "RuntimeError: outbox is not open"
    await supervisor.stop()
    assert supervisor.down() == []


async def test_a_forever_task_that_returns_counts_as_a_failure() -> None:
    supervisor = Supervisor(backoff_min=3600, backoff_max=3600)

    async def work() -> None:
        return

    supervisor.start("committer", work)
    async with asyncio.timeout(10):
        while not supervisor.down():
            await supervisor.wait_for_change()
    assert "returned" in supervisor.down()[0].reason
    await supervisor.stop()


async def test_a_one_shot_task_that_returns_is_simply_done() -> None:
    supervisor = Supervisor()
    done = asyncio.Event()

    async def work() -> None:
        done.set()

    task = supervisor.start("delivery", work, forever=False)
    await task
    assert done.is_set() and supervisor.failures["delivery"] == 0 and supervisor.down() == []

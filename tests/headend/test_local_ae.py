"""The in-process sender of `local://` notifications (headend/local_ae.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cse.core.notifications import DeliveryError
from headend.local_ae import InProcessNotifications
from headend.store.records import StoreError

NOTIFY = {"op": 5, "pc": {"m2m:sgn": {"sur": "/id-in/sub"}}}


async def test_a_receiver_that_takes_a_notification_answers_its_status() -> None:
    heard: list[Any] = []

    async def receiver(content: Any) -> int:
        heard.append(content)
        return 2000

    local = InProcessNotifications()
    local.register("mdms", receiver)
    assert await local.send("local://mdms", NOTIFY) == 2000
    assert heard == [NOTIFY["pc"]]


@pytest.mark.parametrize("failure", [StoreError("MDMS database error"), ValueError("a bug")])
async def test_a_receiver_that_cannot_take_it_means_not_delivered(failure: Exception) -> None:
    """Its database down (or a bug): the notifier must keep the notification and send it
    again after its backoff, which it does for a DeliveryError. Any other exception would
    end the delivery task."""

    async def receiver(content: Any) -> int:
        raise failure

    local = InProcessNotifications()
    local.register("mdms", receiver)
    with pytest.raises(DeliveryError, match="mdms could not take it"):
        await local.send("local://mdms", NOTIFY)


async def test_no_receiver_of_that_name_is_not_delivered() -> None:
    with pytest.raises(DeliveryError, match="no application"):
        await InProcessNotifications().send("local://billing", NOTIFY)

"""An application that lives in the head-end's process and talks to its IN-CSE as an AE.

Its requests are ordinary request primitives handed to `CommonServicesEntity.handle()`
(no transport in between), with its AE-ID as originator and request IDs of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from cse.core.handler import CommonServicesEntity
from cse.core.notifications import DeliveryError
from cse.core.primitives import FilterCriteria, Request, Response
from cse.core.types import Operation, ResourceType, ResultContent
from headend.store.records import StoreError

logger = logging.getLogger(__name__)


class LocalAe:
    def __init__(self, cse: CommonServicesEntity, ae_id: str) -> None:
        self.cse = cse
        self.ae_id = ae_id
        self._request_ids = itertools.count(1)
        self._request_stem = f"{ae_id}-{os.urandom(2).hex()}"

    async def request(
        self,
        operation: Operation,
        to: str,
        *,
        resource_type: ResourceType | None = None,
        content: Any = None,
        result_content: ResultContent | None = None,
        filter_criteria: FilterCriteria | None = None,
    ) -> Response:
        return await self.cse.handle(
            Request(
                operation,
                to,
                self.ae_id,
                f"{self._request_stem}-{next(self._request_ids)}",
                "3",
                resource_type=resource_type,
                content=content,
                result_content=result_content,
                filter_criteria=filter_criteria,
            )
        )


NotificationReceiver = Callable[[Any], Awaitable[int]]
LOCAL_SCHEME = "local"


class InProcessNotifications:
    """The IN-CSE's sender for `local://NAME` points of access: a NOTIFY's content handed to
    the receiver registered under NAME, in this process. Nothing outside the process can send
    one, so a receiver here hears from its IN-CSE only (no HTTP endpoint to forge)."""

    def __init__(self) -> None:
        self._receivers: dict[str, NotificationReceiver] = {}

    @staticmethod
    def point_of_access(name: str) -> str:
        """What an application registered as NAME announces as its poa."""
        return f"{LOCAL_SCHEME}://{name}"

    def register(self, name: str, receiver: NotificationReceiver) -> None:
        self._receivers[name] = receiver

    async def send(self, url: str, primitive: dict[str, Any]) -> int:
        name = url.split("://", 1)[-1].split("/", 1)[0].split("?", 1)[0]
        receiver = self._receivers.get(name)
        if receiver is None:
            raise DeliveryError(f"{url}: no application {name!r} in this process")
        # A notifier that gives up waiting must not cut the receiver off halfway through
        # storing a batch: it finishes, and a retried copy is recognised as known.
        try:
            return int(await asyncio.shield(receiver(primitive.get("pc"))))
        except DeliveryError:
            raise
        except Exception as error:
            # Not taken (its database is down, say): not delivered, like a target that did
            # not answer. The notifier keeps it queued and sends it again after its backoff;
            # an exception out of here would end the delivery task instead.
            if not isinstance(error, StoreError):
                logger.exception("application %r failed on a notification", name)
            raise DeliveryError(f"{url}: {name} could not take it ({error})") from error

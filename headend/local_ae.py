"""An application that lives in the head-end's process and talks to its IN-CSE as an AE.

Its requests are ordinary request primitives handed to `CommonServicesEntity.handle()`
(no transport in between), with its AE-ID as originator and request IDs of its own.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from cse.core.handler import CommonServicesEntity
from cse.core.primitives import FilterCriteria, Request, Response
from cse.core.types import Operation, ResourceType, ResultContent


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

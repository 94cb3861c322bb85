"""The gateway's link to the upstream IN-CSE: plain oneM2M requests over HTTP(S) or MQTT.

Over HTTPS the head-end's certificate is checked against `ca_file` and the gateway presents
`cert_file` (mutual TLS: the head-end knows the gateway by it); `token` is sent as a bearer
token to an IN-CSE that takes those instead.

Only standard request primitives go up, so any oneM2M IN-CSE can be the head-end.
`send()` returns the upstream CSE's response, whatever its status; it raises
`UpstreamUnavailable` only when the request may not have arrived (no connection, timeout).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

from cse.bindings.http.client import HttpClient
from cse.bindings.mqtt.client import MqttClient, MqttClientError
from cse.core.notifications import DeliveryError
from cse.core.primitives import Request, Response
from cse.core.types import Operation, ResourceType
from gateway.config import UpstreamConfig

RELEASE = "3"


class UpstreamUnavailable(Exception):
    """The upstream CSE could not be reached; the request may or may not have arrived."""


class UpstreamLink:
    def __init__(self, config: UpstreamConfig, originator: str) -> None:
        self.config = config
        self.originator = originator  # our CSE-ID, e.g. /id-dap1
        self._http: HttpClient | None = None
        self._mqtt: MqttClient | None = None
        self._ids = itertools.count(1)
        self._stem = os.urandom(3).hex()
        # Called whenever the upstream CSE answered a request, whatever the answer: it is
        # reachable. The uplink listens, to end its backoff at once.
        self.answer_listeners: list[Callable[[], None]] = []

    async def __aenter__(self) -> UpstreamLink:
        if self.config.uses_mqtt:
            client_id = f"{self.originator.strip('/')}-uplink"
            self._mqtt = MqttClient(
                self.config.mqtt_settings(client_id),
                self.originator,
                timeout=self.config.timeout,
            )
        else:
            self._http = HttpClient(
                timeout=self.config.timeout,
                tls=self.config.tls_context(),
                token=self.config.token,
            )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._http is not None:
            await self._http.close()
        if self._mqtt is not None:
            await self._mqtt.close()

    def request_id(self) -> str:
        return f"up-{self._stem}-{next(self._ids)}"

    async def send(self, request: Request) -> Response:
        try:
            if self._mqtt is not None:
                reply = await self._mqtt.send(self.config.cse_id, request)
            else:
                assert self._http is not None
                reply = await self._http.send(self.config.url, request)
        except (DeliveryError, MqttClientError, OSError) as error:
            raise UpstreamUnavailable(str(error)) from error
        for listener in self.answer_listeners:
            listener()
        return reply

    # ---- request builders ----------------------------------------------------------------

    def create(self, to: str, resource_type: ResourceType, content: dict[str, Any]) -> Request:
        return Request(
            Operation.CREATE,
            to,
            self.originator,
            self.request_id(),
            RELEASE,
            resource_type=resource_type,
            content=content,
        )

    def retrieve(self, to: str) -> Request:
        return Request(Operation.RETRIEVE, to, self.originator, self.request_id(), RELEASE)

    def update(self, to: str, content: dict[str, Any]) -> Request:
        return Request(
            Operation.UPDATE, to, self.originator, self.request_id(), RELEASE, content=content
        )

    @property
    def base(self) -> str:
        """SP-relative address of the upstream CSEBase, e.g. /id-in/cse-in."""
        return f"{self.config.cse_id}/{self.config.cse_name}"

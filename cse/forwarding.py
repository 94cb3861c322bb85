"""Retargeting: sending a request addressed to another CSE on to that CSE.

A request whose target starts with another CSE-ID (`/id-dap1/dap1/meter/command`) reaches
`CommonServicesEntity._forward`, which finds the registered remoteCSE and hands it here. The
request goes out unchanged over the first point of access (`poa`) of the remoteCSE that a
client exists for, HTTP first, then MQTT, then CoAP; the remote CSE's answer comes back as it
is. An unqualified originator (`Cmdms`) is made SP-relative (`/id-in/Cmdms`) so the remote
CSE can tell it from one of its own AEs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from urllib.parse import urlsplit

from cse.bindings.coap.client import CoapClient
from cse.bindings.http.client import HttpClient
from cse.bindings.mqtt.client import MqttClient, MqttClientError
from cse.bindings.mqtt.settings import MqttSettings
from cse.core.errors import TargetNotReachable
from cse.core.handler import Forwarder
from cse.core.notifications import DeliveryError
from cse.core.primitives import Request, Response
from cse.storage.base import Resource

logger = logging.getLogger(__name__)

_SCHEME_ORDER = {"http": 0, "https": 0, "mqtt": 1, "mqtts": 1, "coap": 2}


class PointOfAccessForwarder(Forwarder):
    def __init__(
        self,
        cse_id: str,
        http: HttpClient,
        coap: CoapClient,
        mqtt_settings: MqttSettings | None = None,
    ) -> None:
        self._cse_id = cse_id
        self._http = http
        self._coap = coap
        # Broker credentials and TLS come from our own MQTT settings; only the URL differs.
        self._mqtt_settings = mqtt_settings
        self._mqtt: dict[str, MqttClient] = {}

    async def close(self) -> None:
        clients, self._mqtt = list(self._mqtt.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    async def forward(self, remote_cse: Resource, request: Request) -> Response:
        csi = str(remote_cse.attributes.get("csi", remote_cse.ri))
        originator = request.originator or ""
        if originator and not originator.startswith("/"):
            request = dataclasses.replace(request, originator=f"{self._cse_id}/{originator}")
        points = [str(p) for p in remote_cse.attributes.get("poa") or []]
        points.sort(key=lambda url: _SCHEME_ORDER.get(urlsplit(url).scheme, 9))
        failures: list[str] = []
        for url in points:
            scheme = urlsplit(url).scheme
            try:
                if scheme in ("http", "https"):
                    return await self._http.send(url, request)
                if scheme in ("mqtt", "mqtts"):
                    return await self._mqtt_client(url).send(csi, request)
                if scheme == "coap":
                    return await self._coap.send(url, request)
            except (DeliveryError, MqttClientError, OSError, ValueError) as error:
                failures.append(str(error))
                logger.info("forwarding %s to %s failed: %s", request.request_id, url, error)
        detail = "; ".join(failures) or "it has no usable point of access"
        raise TargetNotReachable(f"CSE {csi} is not reachable: {detail}")

    def _mqtt_client(self, url: str) -> MqttClient:
        client = self._mqtt.get(url)
        if client is None:
            base = self._mqtt_settings or MqttSettings()
            settings = dataclasses.replace(base, url=url)
            client = MqttClient(settings, self._cse_id)
            self._mqtt[url] = client
        return client

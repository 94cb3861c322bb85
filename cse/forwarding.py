"""Retargeting: sending a request addressed to another CSE on to that CSE.

A request whose target starts with another CSE-ID (`/id-dap1/dap1/meter/command`) reaches
`CommonServicesEntity._forward`, which finds the registered remoteCSE and hands it here. The
request goes out unchanged over the first point of access (`poa`) of the remoteCSE that a
client exists for, HTTP first, then MQTT, then CoAP; the remote CSE's answer comes back as it
is. An unqualified originator (`Cmdms`) is made SP-relative (`/id-in/Cmdms`) so the remote
CSE can tell it from one of its own AEs.

The clients check every poa against the egress policy (cse/core/egress.py); MQTT goes only to
our own broker. An answer that is not a oneM2M response (HTTP without X-M2M-RSC, CoAP without
the oneM2M-RSC option, MQTT without an `m2m:rsp` carrying an rsc) is never passed through: the
poa leads somewhere that is not a CSE, and the requester gets 5103 with a short reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from urllib.parse import urlsplit, urlunsplit

from cse.bindings.coap.client import CoapClient
from cse.bindings.http.client import HttpClient
from cse.bindings.mqtt.client import MqttClient, MqttClientError
from cse.bindings.mqtt.settings import MqttSettings
from cse.core.egress import EgressPolicy, NotOneM2MAnswer
from cse.core.errors import DeliveryError, TargetNotReachable
from cse.core.handler import Forwarder
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
        egress: EgressPolicy | None = None,
    ) -> None:
        self._cse_id = cse_id
        self._http = http
        self._coap = coap
        # Our own broker, the only one a request goes to over MQTT (with our credentials).
        self._mqtt_settings = mqtt_settings
        self._egress = egress or EgressPolicy(
            broker_url=mqtt_settings.url if mqtt_settings else None
        )
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
                    return await self._http.send(url, request, require_rsc=True)
                if scheme in ("mqtt", "mqtts"):
                    await self._egress.destination(url)  # our broker only
                    return await self._mqtt_client(url).send(csi, request)
                if scheme == "coap":
                    return await self._coap.send(url, request, require_rsc=True)
            except NotOneM2MAnswer as error:
                self._egress.count("not-onem2m")
                failures.append(str(error))
                logger.warning("forwarding %s: %s", request.request_id, error)
            except (DeliveryError, MqttClientError, OSError, ValueError) as error:
                failures.append(str(error))
                logger.info("forwarding %s to %s failed: %s", request.request_id, url, error)
        detail = "; ".join(failures) or "it has no usable point of access"
        raise TargetNotReachable(f"CSE {csi} is not reachable: {detail}")

    def _mqtt_client(self, url: str) -> MqttClient:
        """A client of our own broker, with the topic prefix (path) of the poa `url`."""
        assert self._mqtt_settings is not None  # the egress policy refuses MQTT without one
        prefix = urlsplit(url).path.rstrip("/")
        client = self._mqtt.get(prefix)
        if client is None:
            own = urlsplit(self._mqtt_settings.url)
            own_url = urlunsplit((own.scheme, own.netloc, prefix, "", ""))
            settings = dataclasses.replace(self._mqtt_settings, url=own_url)
            client = MqttClient(settings, self._cse_id)
            self._mqtt[prefix] = client
        return client

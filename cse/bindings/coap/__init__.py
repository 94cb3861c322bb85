"""The CoAP binding (TS-0008) on aiocoap: server, client and notification sender."""

from cse.bindings.coap.client import CoapClient, CoapSender
from cse.bindings.coap.server import CoapServer

__all__ = ["CoapClient", "CoapSender", "CoapServer"]

"""The HTTP binding (TS-0009)."""

from cse.bindings.http.client import HttpClient, HttpSender
from cse.bindings.http.server import HttpServer

__all__ = ["HttpClient", "HttpSender", "HttpServer"]

"""Everything the MQTT binding takes from aiomqtt beyond its public API, in one place.

aiomqtt 2.x wraps a paho-mqtt client and acknowledges every QoS 1 message as soon as paho has
read it; the binding needs two things it does not offer:

- manual acknowledgement (a PUBACK only once a request is answered, acks.py): paho 2 has it
  (`manual_ack_set`, `ack`), reached here through aiomqtt's `_client`;
- the messages already received, without waiting, so that a burst of requests is applied
  together and shares one group commit: aiomqtt keeps them in its `_queue`.

pyproject.toml pins aiomqtt to the minor version these were checked against (2.5). Both work
the same with MQTT 3.1.1 and MQTT 5: paho sends a PUBACK without a reason code, which MQTT 5
(3.4.2.1) reads as 0x00 Success, and the checks in tests/cse/bindings/test_mqtt_workers.py run
the binding on both versions against a real Mosquitto.

Moving to aiomqtt 3 (MQTT 5 only, no paho): the client there does not acknowledge by itself;
`acknowledge_manually` becomes a function that returns `client.puback` (awaited, so
AckSequence would hand the PUBACK to a task), and `open_client` passes `clean_start`,
`session_expiry_interval` and `will` as the constructor's own arguments instead of paho
properties. `queued_message` has no public counterpart there either: use one if the new
`messages` API grows one, else take one message per loop turn (the storage still groups the
requests that arrive while a commit runs). Nothing outside this module and settings.py needs
to change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiomqtt


def acknowledge_manually(client: aiomqtt.Client) -> Callable[[int], object]:
    """Turn off paho's acknowledge-on-receipt; return the function that sends one PUBACK.

    It must run before the client connects: a persistent session's queued messages arrive
    right after CONNACK, before any subscription is made.
    """
    paho = client._client
    paho.manual_ack_set(True)
    return lambda mid: paho.ack(mid, 1)


def queued_message(client: aiomqtt.Client) -> aiomqtt.Message | None:
    """A message aiomqtt has already received, without waiting (None if there is none)."""
    queue = getattr(client, "_queue", None)
    if queue is None:
        return None
    try:
        message = queue.get_nowait()
    except asyncio.QueueEmpty:
        return None
    return message if isinstance(message, aiomqtt.Message) else None

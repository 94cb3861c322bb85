"""The DAP gateway (`gridm2m gateway`): an MN-CSE that meters register with over CoAP
(OSCORE) or MQTT, which registers itself with the head-end's IN-CSE and mirrors every meter
message upstream through a durable, prioritised outbox (alarms first, bulk interval reads
last, shed least urgent first when its disk budget is full), and carries the head-end's
commands down to the meters. It reports its own state to the head-end and serves /health
and Prometheus /metrics on an operations port. See docs/gateway.md.
"""

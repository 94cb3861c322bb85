"""The head-end stub (`gridm2m headend`): the utility's IN-CSE that gateways register with,
an MDMS that subscribes to what they mirror and keeps it in SQLite (meters, messages,
registers, latency against each flow's budget), the applications that issue commands
(reads, demand response, pre-pay switching, prices, firmware updates through device
management) and a web dashboard and API over the store. See docs/gateway.md.
"""

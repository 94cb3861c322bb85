"""Protocol bindings: thin adapters between a transport and the core's request primitives."""

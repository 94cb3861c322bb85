"""The transport-free core: primitives in, primitives out."""

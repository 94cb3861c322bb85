"""Interoperability testing: the flow catalogue of the seed document's tables."""

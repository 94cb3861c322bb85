"""Credentials and transport security: who may use a CSE's listeners, and how they prove it."""

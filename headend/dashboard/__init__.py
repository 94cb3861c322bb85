"""The head-end's web dashboard: one page and a JSON API over the MDMS store."""

from headend.dashboard.app import dashboard_app

__all__ = ["dashboard_app"]

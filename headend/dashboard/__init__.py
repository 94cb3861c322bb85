"""The head-end's web dashboard: one page and a JSON API over the MDMS store."""

from headend.dashboard.app import dashboard_app
from headend.dashboard.login import WebLogin

__all__ = ["WebLogin", "dashboard_app"]

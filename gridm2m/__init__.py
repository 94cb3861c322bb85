"""GridM2M: oneM2M middleware for smart-grid data aggregation points."""

__version__ = "0.1.0"

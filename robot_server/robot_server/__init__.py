"""Robot server for OT-2-class liquid handlers (Smoothieware motor board + GPIO)."""
__version__ = "0.1.0"

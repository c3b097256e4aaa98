"""Command-line client for OT-2 robots (``ot2``).

Talks to the update server's HTTP API (port 34000) of one robot or a fleet, and flashes
SD-card images with first-boot provisioning.  Validation rules (bundle format and
signature, robot names, SSH keys, ``robot.toml``) are imported from ``update_server`` so
that the client refuses exactly what a robot would refuse.
"""

__version__ = "0.1.0"

"""Update server of the OT-2 system image.

Receives signed bundles over HTTP, streams them into the inactive A/B root slot, switches
the bootloader's slot selection with boot counting, and manages SSH keys and the robot name.
See ``docs/architecture.md`` of the repository for the contract with the image.
"""

__version__ = "0.1.0"

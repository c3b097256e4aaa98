"""``python -m robot_server.deck_configuration.cli --persistence-directory DIR``.

On a robot (``RUNNING_ON_PI`` set and ``/etc/VERSION.json`` present), ``opentrons.execute``
and ``opentrons_execute`` ask the robot server for the deck configuration by running this
module and reading what it prints (Opentrons/opentrons,
api/src/opentrons/util/entrypoint_util.py, ``get_deck_configuration``). An OT-2 has
nothing to configure, so the directory is accepted and not read.
"""
from __future__ import annotations

import argparse

from . import serialized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persistence-directory", help="accepted for the engine's call; an OT-2 deck is fixed")
    parser.parse_args()
    print(serialized())


if __name__ == "__main__":
    main()

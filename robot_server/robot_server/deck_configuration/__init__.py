"""The OT-2's deck configuration: what each cutout of the deck holds.

An OT-2's deck has no configurable fixtures: cutouts 1-11 hold standard slots and cutout
12 the fixed trash. This is derived from the deck definition the engine itself uses
(opentrons_shared_data, ``deck/definitions/5/ot2_standard.json``, ``cutoutFixtures``: each
cutout gets the most specific fixture that may mount to it), so it follows the engine's
version. Opentrons/opentrons' robot-server keeps the same default for an OT-2
(robot-server/robot_server/deck_configuration/defaults.py).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources

DECK = "ot2_standard"


def ot2_deck_configuration() -> list[tuple[str, str, None]]:
    """``[(cutoutId, cutoutFixtureId, moduleSerialNumber)]`` for every cutout of the OT-2 deck,
    the shape ``opentrons``' protocol engine takes as ``deck_configuration``."""
    definition = json.loads(resources.files("opentrons_shared_data").joinpath(
        f"data/deck/definitions/5/{DECK}.json").read_text())
    cutouts = [c["id"] for c in definition["locations"]["cutouts"]]
    fixtures = sorted(definition["cutoutFixtures"], key=lambda f: len(f["mayMountTo"]))
    return [(cutout, next(f["id"] for f in fixtures if cutout in f["mayMountTo"]), None)
            for cutout in cutouts]


def serialized() -> str:
    """The deck configuration as JSON in the form ``opentrons`` reads from a robot server
    (``{"cutoutFixtures": [{"cutoutId", "cutoutFixtureId", "opentronsModuleSerialNumber"}],
    "lastModified"}``; Opentrons/opentrons, api/src/opentrons/calibration_storage/deck_configuration.py)."""
    return json.dumps({
        "cutoutFixtures": [{"cutoutId": cutout, "cutoutFixtureId": fixture, "opentronsModuleSerialNumber": serial}
                           for cutout, fixture, serial in ot2_deck_configuration()],
        "lastModified": datetime(1970, 1, 1, tzinfo=timezone.utc).isoformat(),
    })

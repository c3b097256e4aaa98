"""The deck configuration the engine reads from us on a robot, parsed by the engine itself."""
from __future__ import annotations

import subprocess
import sys

from opentrons.calibration_storage.deck_configuration import deserialize_deck_configuration


def test_cli_prints_the_ot2_deck_as_the_engine_reads_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "robot_server.deck_configuration.cli",
                          "--persistence-directory", str(tmp_path)], check=True, capture_output=True).stdout
    placements, _ = deserialize_deck_configuration(out)
    fixtures = {p.cutout_id: p.cutout_fixture_id for p in placements}
    assert fixtures == {**{f"cutout{n}": "singleStandardSlot" for n in range(1, 12)},
                        "cutout12": "fixedTrashSlot"}
    assert all(p.opentrons_module_serial_number is None for p in placements)
    assert list(tmp_path.iterdir()) == []   # nothing to persist on an OT-2

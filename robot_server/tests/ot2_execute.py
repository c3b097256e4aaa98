"""Execute an OT-2 protocol with the real ``opentrons`` package on a motor board given as
a pyserial URL (``OT_SMOOTHIE_EMULATOR_URI``), in a child process. Shared by
``test_channel.py`` and ``bench/bench_channel.py``.

Off the robot ``opentrons.execute`` takes the deck configuration to be empty (it asks the
OT-2's robot server for it only on the robot: ``get_deck_configuration`` in
Opentrons/opentrons, ``api/src/opentrons/util/entrypoint_util.py``), so the runner gives
it the OT-2's standard deck as ``robot-execute`` does (``ot2_deck_configuration``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: Our own protocol: both default pipettes, a transfer, single aspirate/dispense steps.
PROTOCOL = '''from opentrons import protocol_api

requirements = {"robotType": "OT-2", "apiLevel": "2.19"}


def run(protocol: protocol_api.ProtocolContext):
    tips20 = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    tips300 = protocol.load_labware("opentrons_96_tiprack_300ul", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 4)
    p20 = protocol.load_instrument("p20_single_gen2", "left", tip_racks=[tips20])
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips300])
    protocol.home()
    p300.transfer(120, reservoir["A1"], plate.columns()[0][:WELLS])
    p20.pick_up_tip()
    for well in plate.rows()[1][:WELLS]:
        p20.aspirate(15, reservoir["A2"])
        p20.dispense(15, well.top(-2))
        p20.blow_out()
    p20.drop_tip()
'''

RUNNER = '''import sys
from opentrons.util import entrypoint_util

from robot_server.protocol.cli import ot2_deck_configuration

entrypoint_util.get_deck_configuration = ot2_deck_configuration

from opentrons import execute

with open(sys.argv[1]) as fh:
    execute.execute(fh, sys.argv[1])
'''


def write_files(workdir: Path, wells: int = 3) -> tuple[Path, Path]:
    """Write the protocol (``wells`` wells per step, 1..8) and the runner into ``workdir``."""
    protocol = workdir / "channel_protocol.py"
    protocol.write_text(PROTOCOL.replace("WELLS", str(wells)))
    runner = workdir / "run_opentrons.py"
    runner.write_text(RUNNER)
    return protocol, runner


def env_for(url: str, workdir: Path) -> dict:
    """The child's environment: the board at ``url``, its own ``HOME`` (opentrons keeps
    its settings there), never ``RUNNING_ON_PI`` (opentrons would take real GPIO)."""
    env = {k: v for k, v in os.environ.items() if k != "RUNNING_ON_PI"}
    env.update(OT_SMOOTHIE_EMULATOR_URI=url, HOME=str(workdir), PYTHONUNBUFFERED="1")
    return env


def start(url: str, workdir: Path, wells: int = 3) -> subprocess.Popen:
    """Start executing the protocol against the board at ``url``; returns the process."""
    protocol, runner = write_files(workdir, wells)
    return subprocess.Popen([sys.executable, str(runner), str(protocol)], cwd=workdir, env=env_for(url, workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def execute(url: str, workdir: Path, wells: int = 3, timeout: float = 300) -> tuple[float, str]:
    """Execute the protocol; returns ``(wall seconds, stdout)``. Raises ``RuntimeError``
    with the end of stderr if it fails."""
    t0 = time.perf_counter()
    proc = start(url, workdir, wells)
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"opentrons execute failed ({proc.returncode}): {err[-3000:]}")
    return time.perf_counter() - t0, out

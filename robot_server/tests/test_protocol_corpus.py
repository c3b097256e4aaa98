"""Our protocol corpus (tests/protocols/, written for this project) through ``robot-simulate``
and through the OT-2's own ``opentrons_simulate`` (opentrons 8.8.2): the run logs must be
equal line for line.

Module protocols below API level 2.14 make ``opentrons_simulate`` fail unless it is given a
hardware simulator file naming the attached modules (tests/protocols/hardware/<name>.json);
``robot-simulate`` gets none and must still print the same run log.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from opentrons.protocols.api_support.definitions import MAX_SUPPORTED_VERSION, MIN_SUPPORTED_VERSION

PROTOCOLS = Path(__file__).parent / "protocols"
LABWARE = PROTOCOLS / "labware"
HARDWARE = PROTOCOLS / "hardware"
CORPUS = sorted(PROTOCOLS.glob("*.py"))
BIN = Path(sys.executable).parent
TIMEOUT_S = 300


def start(command: list, home: Path) -> subprocess.Popen:
    """Start a command with its own HOME (opentrons writes its config there)."""
    home.mkdir()
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home,
                            env=dict(os.environ, HOME=str(home)))


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out, err


def api_level(path: Path) -> tuple[int, int]:
    major, minor = re.search(r'"apiLevel":\s*"(\d+)\.(\d+)"', path.read_text()).groups()
    return int(major), int(minor)


def test_corpus_covers_the_api():
    assert len(CORPUS) >= 30
    levels = {api_level(p) for p in CORPUS}
    every = {(2, minor) for minor in range(MIN_SUPPORTED_VERSION.minor, MAX_SUPPORTED_VERSION.minor + 1)}
    assert every <= levels, sorted(every - levels)
    text = "\n".join(p.read_text() for p in CORPUS)
    for feature in ("load_module", "thermocycler", "heaterShakerModuleV1", "magnetic module", "_multi_gen2",
                    ".distribute(", ".consolidate(", "add_parameters", "import numpy", "configure_nozzle_layout",
                    ".mix(", ".blow_out(", ".touch_tip(", ".air_gap(", ".pause(", ".delay(", ".comment(",
                    "set_offset", "load_labware_from_definition", "ot2edge_6_vialrack_4000ul"):
        assert feature in text, feature


@pytest.mark.parametrize("protocol", CORPUS, ids=lambda p: p.stem)
def test_robot_simulate_prints_opentrons_simulate_run_log(protocol, tmp_path):
    hardware = HARDWARE / f"{protocol.stem}.json"
    theirs_cmd = [str(BIN / "opentrons_simulate"), "-L", str(LABWARE), str(protocol)]
    if hardware.exists():
        theirs_cmd[1:1] = ["-s", str(hardware)]
    theirs = start(theirs_cmd, tmp_path / "theirs")
    ours = start([str(BIN / "robot-simulate"), "-L", str(LABWARE), str(protocol)], tmp_path / "ours")
    their_code, their_log, their_err = finish(theirs)
    our_code, our_log, our_err = finish(ours)
    assert their_code == 0, their_err[-2000:]
    assert our_code == 0, our_err[-2000:]
    assert len(our_log.splitlines()) >= 5
    assert our_log.splitlines() == their_log.splitlines()


def test_opentrons_simulate_needs_a_hardware_file_below_2_14(tmp_path):
    """What robot-simulate does better: the same module protocol without a hardware file."""
    protocol = PROTOCOLS / "v2_01_tempdeck_distribute.py"
    theirs = start([str(BIN / "opentrons_simulate"), str(protocol)], tmp_path / "theirs")
    ours = start([str(BIN / "robot-simulate"), str(protocol)], tmp_path / "ours")
    their_code, _, their_err = finish(theirs)
    our_code, our_log, _ = finish(ours)
    assert their_code != 0 and "NoSuchModuleError" in their_err
    assert our_code == 0 and our_log.startswith("Setting Temperature Module temperature to 4.0 °C")


def test_robot_simulate_reports_a_protocol_error(tmp_path):
    protocol = tmp_path / "bad.py"
    protocol.write_text('metadata = {"apiLevel": "2.15"}\n\ndef run(protocol):\n'
                        '    protocol.load_labware("no_such_labware", 1)\n')
    code, out, err = finish(start([str(BIN / "robot-simulate"), str(protocol)], tmp_path / "home"))
    assert code == 1 and out == ""
    assert err.splitlines()[-1].startswith("robot-simulate: ") and "no_such_labware" in err

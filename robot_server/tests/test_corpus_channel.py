"""Corpus protocols executed with ``robot-execute`` through a robot server's G-code channel:
the board (our Smoothieware emulator) receives exactly the G-code ``opentrons`` sends when
connected to an emulator directly, and the run logs are the same.

Protocols that delay, pause or load modules are left out (executing waits for real and a
pause waits for a resume); the emulators carry the pipettes each protocol loads.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import start_robot, stop_robot
from robot_server.emulator import SmoothieEmulator, TcpServer

PROTOCOLS = Path(__file__).parent / "protocols"
BIN = Path(sys.executable).parent
LOAD_INSTRUMENT = re.compile(r'load_instrument\("(p\d+_(?:single|multi))_gen2", "(left|right)"')
#: Those that run without waiting and name their pipettes literally.
SELECTED = [p.stem for p in sorted(PROTOCOLS.glob("*.py"))
            if not re.search(r"\.(delay|pause|load_module|move_labware)\(", p.read_text())
            and LOAD_INSTRUMENT.search(p.read_text())]


def pipettes_of(protocol: Path) -> dict[str, str]:
    """``{mount: model}`` for the GEN2 pipettes the protocol loads by literal name; the
    model is what a GEN2 pipette's memory holds (``p300_single_gen2`` -> ``p300_single_v2.0``)."""
    return {mount: f"{name}_v2.0" for name, mount in LOAD_INSTRUMENT.findall(protocol.read_text())}


def run_log_of(stdout: str) -> list[str]:
    """opentrons_execute's run-log lines (tabs for nesting, then a space) without its logs."""
    return [line for line in stdout.splitlines() if re.match(r"\t* \S", line)]


def execute(protocol: Path, workdir: Path, **env) -> subprocess.CompletedProcess:
    workdir.mkdir()
    return subprocess.run([str(BIN / "robot-execute"), "-L", str(PROTOCOLS / "labware"), str(protocol)],
                          capture_output=True, text=True, timeout=600, cwd=workdir,
                          env=dict(os.environ, HOME=str(workdir), **env))


@pytest.mark.parametrize("name", SELECTED)
def test_through_the_channel_the_board_gets_what_opentrons_sends_directly(name, tmp_path):
    protocol = PROTOCOLS / f"{name}.py"
    pipettes = pipettes_of(protocol)
    direct_emu = SmoothieEmulator(pipettes=pipettes)
    direct = TcpServer(direct_emu).start()
    board_emu = SmoothieEmulator(pipettes=pipettes)
    board = TcpServer(board_emu).start()
    (tmp_path / "srv").mkdir()
    robot = start_robot(tmp_path / "srv", board_emu, serial_port=board.url)
    try:
        robot.wait_connected()
        straight = execute(protocol, tmp_path / "direct", OT_SMOOTHIE_EMULATOR_URI=direct.url)
        assert straight.returncode == 0, straight.stderr[-3000:]
        start = len(board_emu.log)
        channel = execute(protocol, tmp_path / "channel", OT_SMOOTHIE_EMULATOR_URI=robot.service.channel.url)
        assert channel.returncode == 0, channel.stderr[-3000:]
        run_log = run_log_of(straight.stdout)
        assert len(run_log) >= 5
        assert run_log_of(channel.stdout) == run_log
        assert len(direct_emu.log) > 100
        assert board_emu.log[start:start + len(direct_emu.log)] == direct_emu.log
        assert any(line.startswith("G28.2") for line in direct_emu.log)
    finally:
        stop_robot(robot)
        board.close()
        direct.close()

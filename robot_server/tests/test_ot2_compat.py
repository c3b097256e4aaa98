"""Opt-in: the OT-2's own driver (``opentrons`` 8.x ``SmoothieDriver``) against the emulator.

Set ``OT2_OPENTRONS_PYTHON`` to a Python that has ``opentrons`` 8.x installed (it needs
Python 3.11 and ~110 MB, so it is not part of the project's test dependencies).
"""
import os
import sys
from pathlib import Path
import subprocess
import textwrap

import pytest

from robot_server.emulator import SmoothieEmulator, TcpServer

OT2_PYTHON = os.environ.get("OT2_OPENTRONS_PYTHON")

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from opentrons.config import robot_configs
    from opentrons.drivers.smoothie_drivers.driver_3_0 import SmoothieDriver

    async def main(port):
        d = await SmoothieDriver.build(port=port, config=robot_configs.load_ot2())
        await d.home()
        assert all(d.homed_flags.values()), d.homed_flags
        await d.move({"X": 100.0, "Y": 120.0, "Z": 150.0})
        await d.update_position()
        assert (d.position["X"], d.position["Y"], d.position["Z"]) == (100.0, 120.0, 150.0), d.position
        await d.switch_state()
        try:
            await d.move({"X": 500.0})
        except Exception as e:
            assert "Hard limit" in str(e)
        else:
            raise AssertionError("no alarm")
        print("OK")

    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 60))
""")


@pytest.mark.skipif(not OT2_PYTHON, reason="OT2_OPENTRONS_PYTHON not set")
def test_opentrons_smoothie_driver_drives_emulator(tmp_path):
    emu = SmoothieEmulator()
    srv = TcpServer(emu).start()
    try:
        r = subprocess.run([OT2_PYTHON, "-c", SCRIPT, srv.url], capture_output=True, text=True, timeout=90,
                           cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)))
        assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
        assert any(ln.startswith("G28.2") for ln in emu.log)
        assert emu.log.count("M999") >= 2        # set-up, and recovery after the alarm
    finally:
        srv.close()


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.skipif(not OT2_PYTHON, reason="OT2_OPENTRONS_PYTHON not set")
@pytest.mark.parametrize("protocol", ["serial_dilution.py", "lab_pc/protocol_with_lab_pc.py",
                                      "balance/protocol_with_balance.py"])
def test_simulation_log_matches_opentrons_simulate(protocol, tmp_path):
    """The same file, unchanged, gives the same run log in `opentrons_simulate` and ours."""
    path = EXAMPLES / protocol
    env = dict(os.environ, HOME=str(tmp_path))
    theirs = subprocess.run([OT2_PYTHON, "-m", "opentrons.simulate", str(path)], capture_output=True,
                            text=True, timeout=180, cwd=tmp_path, env=env)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    ours = subprocess.run([sys.executable, "-m", "robot_server.protocol.cli", "simulate", "--plain", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr[-2000:]
    our_lines = [ln for ln in ours.stdout.splitlines() if not ln.startswith("Summary:")]
    assert our_lines == theirs.stdout.splitlines()

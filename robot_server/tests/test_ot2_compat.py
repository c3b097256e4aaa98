"""The OT-2's own driver (``opentrons`` 8.8.2 ``SmoothieDriver``, a dependency of the robot
server) against our Smoothieware emulator, in a process of its own."""
import os
import subprocess
import sys
import textwrap

from robot_server.emulator import SmoothieEmulator, TcpServer

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


def test_opentrons_smoothie_driver_drives_emulator(tmp_path):
    emu = SmoothieEmulator()
    srv = TcpServer(emu).start()
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, srv.url], capture_output=True, text=True, timeout=90,
                           cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path)))
        assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]
        assert any(ln.startswith("G28.2") for ln in emu.log)
        assert emu.log.count("M999") >= 2        # set-up, and recovery after the alarm
    finally:
        srv.close()


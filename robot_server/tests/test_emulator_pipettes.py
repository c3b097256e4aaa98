"""The emulator's pipette memories (``M369``-``M372``), on the wire and read by the real
``opentrons`` package (its hardware controller, in a subprocess, over TCP)."""
import json
import subprocess
import textwrap

from conftest import ENV, PROJECT_DIR, PYTHON
from robot_server.emulator import SmoothieEmulator, TcpServer


def talk(emu: SmoothieEmulator, line: str) -> str:
    return emu.handle_line(line) + emu.handle_line("")


def test_reads_default_pipettes_as_hex():
    emu = SmoothieEmulator()
    reply = talk(emu, "M371 L ")
    assert reply.endswith("\r\nok\r\nok\r\n")
    mount, _, data = reply.split("\r\n")[0].partition(":")
    assert mount == "L" and len(data) == 64
    assert bytes.fromhex(data).rstrip(b"\0") == b"p20_single_v2.0"
    model_r = talk(emu, "M371 R").split("\r\n")[0]
    assert bytes.fromhex(model_r[2:]).rstrip(b"\0") == b"p300_single_v2.0"
    assert talk(emu, "M369 R").startswith("R:")


def test_writes_are_kept_and_empty_mount_errors():
    emu = SmoothieEmulator(pipettes={"left": None})
    assert talk(emu, "M371 L").startswith("Error: no L instrument found\r\nok")
    assert talk(emu, "M372 R " + b"p1000_single_v2.0".hex()) == "ok\r\nok\r\n"
    assert bytes.fromhex(talk(emu, "M371 R").split("\r\n")[0][2:]).rstrip(b"\0") == b"p1000_single_v2.0"
    assert talk(emu, "M370 R 4142").startswith("ok")
    assert talk(emu, "M369 R").startswith("R:4142000000")
    assert talk(emu, "M372 R xyz").startswith("Error: M372 data must be hexadecimal")
    emu.alarm_next = "Hard limit +X"
    talk(emu, "G0 X1")
    assert talk(emu, "M371 R") == "!!\r\nok\r\n"        # halted: refused like any command


ATTACHED = textwrap.dedent("""
    import asyncio, json
    from opentrons.hardware_control import API
    from opentrons.types import Mount

    async def main():
        hw = await API.build_hardware_controller()
        await hw.cache_instruments()
        found = {m.name.lower(): (d or {}).get("model") for m, d in hw.attached_instruments.items()}
        print(json.dumps(found))
        await hw.clean_up()

    asyncio.run(main())
""")


def attached_by_opentrons(url: str, home: str) -> dict:
    env = dict(ENV, OT_SMOOTHIE_EMULATOR_URI=url, HOME=home)
    env.pop("RUNNING_ON_PI", None)
    r = subprocess.run([PYTHON, "-c", ATTACHED], capture_output=True, text=True, timeout=120,
                       cwd=home, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_opentrons_finds_the_default_pipettes(tmp_path):
    emu = SmoothieEmulator()
    srv = TcpServer(emu).start()
    try:
        assert attached_by_opentrons(srv.url, str(tmp_path)) == {
            "left": "p20_single_v2.0", "right": "p300_single_v2.0"}
        assert "M369 L" in emu.log and "M371 R" in emu.log
    finally:
        srv.close()


def test_cli_mount_options(tmp_path):
    proc = subprocess.Popen([PYTHON, "-m", "robot_server.emulator", "--tcp", "127.0.0.1:0",
                             "--left", "none", "--right", "p1000_single_v2.0"],
                            cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    try:
        addr = proc.stdout.readline().strip()
        assert attached_by_opentrons(f"socket://{addr}", str(tmp_path)) == {
            "left": None, "right": "p1000_single_v2.0"}
    finally:
        proc.terminate()
        proc.wait(10)

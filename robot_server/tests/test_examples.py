"""The examples under examples/, on the opentrons engine: simulated with ``robot-simulate``
(which must equal ``opentrons_simulate``), and run with ``robot-execute`` against the
Smoothieware emulator: one calls a lab PC's HTTP server between steps, one weighs on a
serial balance (emulated on a pty) and logs to a file."""
import asyncio
import csv
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiohttp import web

from robot_server.emulator import SmoothieEmulator, TcpServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BIN = Path(sys.executable).parent
TIMEOUT_S = 300


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(command: list, tmp_path: Path, name: str, **env) -> subprocess.CompletedProcess:
    """A command with its own HOME (opentrons keeps its config there) and extra env."""
    home = tmp_path / name
    home.mkdir()
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=home,
                          env=dict(os.environ, HOME=str(home), **env))


@pytest.fixture
def board():
    """The Smoothieware emulator on a loopback TCP port (what robot-execute's channel reaches)."""
    srv = TcpServer(SmoothieEmulator()).start()
    yield srv
    srv.close()


@pytest.fixture
def lab_pc():
    """The example lab PC server on a loopback port, in its own thread and loop."""
    steps = []
    app = _module(EXAMPLES / "lab_pc" / "lab_pc_server.py").make_app(steps=steps)
    loop = asyncio.new_event_loop()
    sock = socket.create_server(("127.0.0.1", 0))
    runner = web.AppRunner(app)

    async def start():
        await runner.setup()
        await web.SockSite(runner, sock).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", steps
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.mark.parametrize("example", ["serial_dilution.py", "lab_pc/protocol_with_lab_pc.py",
                                     "balance/protocol_with_balance.py"])
def test_robot_simulate_equals_opentrons_simulate(example, tmp_path):
    path = str(EXAMPLES / example)
    theirs = run([str(BIN / "opentrons_simulate"), path], tmp_path, "theirs")
    ours = run([str(BIN / "robot-simulate"), path], tmp_path, "ours")
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.count("Picking up tip") >= 1
    assert ours.stdout.splitlines() == theirs.stdout.splitlines()


def test_lab_pc_protocol(lab_pc, board, tmp_path):
    url, steps = lab_pc
    path = str(EXAMPLES / "lab_pc" / "protocol_with_lab_pc.py")
    sim = run([str(BIN / "robot-simulate"), path], tmp_path, "sim", LAB_PC_URL=url)
    assert sim.returncode == 0 and sim.stdout.count("Picking up tip") == 3
    assert steps == []                                     # simulating: no calls to the lab PC
    done = run([str(BIN / "robot-execute"), path], tmp_path, "run", LAB_PC_URL=url,
               OT_SMOOTHIE_EMULATOR_URI=board.url)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [s["step"] for s in steps] == ["done-aspirating", "done-dispensing"] * 3 + ["finished"]
    assert steps[0]["data"] == {"well": "A1", "index": 0}
    assert any(line.startswith("G28.2") for line in board.emulator.log)


def test_balance_protocol(board, tmp_path):
    emu = _module(EXAMPLES / "balance" / "balance_emulator.py").BalanceEmulator(start_g=5.0, increment_g=0.1).start()
    try:
        out = tmp_path / "user" / "balance-weights.csv"
        env = {"BALANCE_PORT": emu.path, "BALANCE_LOG": str(out)}
        path = str(EXAMPLES / "balance" / "protocol_with_balance.py")
        sim = run([str(BIN / "robot-simulate"), path], tmp_path, "sim", **env)
        assert sim.returncode == 0, sim.stderr[-2000:]
        assert emu.requests == 0 and not out.exists()        # simulation never opens the balance
        done = run([str(BIN / "robot-execute"), path], tmp_path, "run", OT_SMOOTHIE_EMULATOR_URI=board.url, **env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert emu.requests == 4                               # tare + three weighings
        rows = list(csv.DictReader(out.open()))
        assert [int(r["volume_ul"]) for r in rows] == [50, 100, 200]
        assert [round(float(r["grams"]), 4) for r in rows] == [0.1, 0.2, 0.3]
        assert "100 uL weighed 0.2000 g" in done.stdout
    finally:
        emu.close()

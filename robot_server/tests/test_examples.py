"""The examples under examples/: a protocol that calls a lab PC's HTTP server between
steps, and one that weighs on a serial balance (emulated on a pty) and logs to a file."""
import asyncio
import csv
import importlib.util
import socket
import sys
import threading

import pytest
from aiohttp import web

from test_protocol import EXAMPLES, FastControl
from robot_server.protocol.hardware import DriverHardware
from robot_server.protocol.loader import load_protocol, make_context, run_protocol, simulate


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_lab_pc_protocol(lab_pc, driver, monkeypatch):
    url, steps = lab_pc
    monkeypatch.setenv("LAB_PC_URL", url)
    path = EXAMPLES / "lab_pc" / "protocol_with_lab_pc.py"
    _, ctx = simulate(path.read_text(), str(path))          # simulating: no calls to the lab PC
    assert steps == [] and ctx.summary()["tips_used"] == 3
    proto = load_protocol(path.read_text(), str(path))
    run_protocol(proto, make_context(proto, DriverHardware(driver), control=FastControl()))
    assert [s["step"] for s in steps] == ["done-aspirating", "done-dispensing"] * 3 + ["finished"]
    assert steps[0]["data"] == {"well": "A1", "index": 0}


def test_balance_protocol(driver, tmp_path, monkeypatch):
    emu = _module(EXAMPLES / "balance" / "balance_emulator.py").BalanceEmulator(start_g=5.0, increment_g=0.1).start()
    try:
        out = tmp_path / "user" / "balance-weights.csv"
        monkeypatch.setenv("BALANCE_PORT", emu.path)
        monkeypatch.setenv("BALANCE_LOG", str(out))
        path = EXAMPLES / "balance" / "protocol_with_balance.py"
        simulate(path.read_text(), str(path))
        assert emu.requests == 0 and not out.exists()        # simulation never opens the balance
        proto = load_protocol(path.read_text(), str(path))
        ctx = make_context(proto, DriverHardware(driver), control=FastControl())
        run_protocol(proto, ctx)
        assert emu.requests == 4                               # tare + three weighings
        rows = list(csv.DictReader(out.open()))
        assert [int(r["volume_ul"]) for r in rows] == [50, 100, 200]
        assert [round(float(r["grams"]), 4) for r in rows] == [0.1, 0.2, 0.3]
        assert any(c["text"] == "100 uL weighed 0.2000 g" for c in ctx.commands)
    finally:
        emu.close()

"""``labmcp-opentrons`` 0.1.3 (PyPI), a second third-party client of the OT-2 HTTP API,
used unchanged as a library against our robot server and emulator over real HTTP on
loopback: one of our corpus protocols with our custom labware is uploaded, analysed,
run to ``succeeded`` and its commands paged; lights, stateless home, instruments,
modules and the door on the way (:mod:`labmcp_flow`).

The client lives in ``.venv-labmcp`` (its ``fastmcp`` and the ``opentrons`` package
cannot share an environment: see labmcp_flow.py), so the flow runs in that interpreter
while the server runs here, where the test also checks what the robot did.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import start_robot, stop_robot
from robot_server.emulator import SmoothieEmulator

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parents[1]
LABMCP_PYTHON = Path(os.environ.get("LABMCP_PYTHON", REPO / ".venv-labmcp" / "bin" / "python"))
PROTOCOL = TESTS / "protocols" / "v2_06_custom_labware_path.py"
LABWARE = sorted((TESTS / "protocols" / "labware").glob("*.json"))


def run_flow(base_url: str, files: list[Path], *extra: str) -> subprocess.CompletedProcess:
    if not LABMCP_PYTHON.exists():
        pytest.fail(f"{LABMCP_PYTHON} is missing: `make venv` makes it (ci/requirements-labmcp.txt)")
    return subprocess.run([str(LABMCP_PYTHON), str(TESTS / "labmcp_flow.py"), base_url, *map(str, files), *extra],
                          capture_output=True, text=True, timeout=900)


def test_labmcp_client_full_flow(tmp_path):
    # The protocol's pipette: a P1000 Single GEN2 on the right mount.
    r = start_robot(tmp_path, SmoothieEmulator(pipettes={"right": "p1000_single_v2.0"}))
    try:
        r.wait_connected()
        r.gpio.set_lights(True)
        proc = run_flow(f"http://127.0.0.1:{r.port}", [PROTOCOL, *LABWARE])
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout)
        # What the robot did, seen from our side.
        assert not r.gpio.lights_on()                         # toggled on, then off
        assert all(r.service.driver.homed.values())           # stateless home
        assert {i["mount"]: i["instrumentName"] for i in report["instruments"]} == {
            "left": "p20_single_gen2", "right": "p1000_single_gen2"}
        assert report["modules"] == [] and report["door"]["status"] == "closed"
        protocol = report["protocol"]
        assert protocol["protocolType"] == "python" and protocol["metadata"]["apiLevel"] == "2.6"
        assert r.get(f"/protocols/{protocol['id']}")[1]["data"]["id"] == protocol["id"]
        commands = report["commands"]
        # 6 vials x 2 troughs with a new tip each, then one more tip.
        assert commands.count("pickUpTip") == 13 and commands.count("dropTip") == 13
        assert commands.count("aspirate") == 13 and "blowout" in commands
        assert len(commands) == report["analysisCommands"]
        status, run = r.get(f"/runs/{report['run']['id']}")
        assert status == 200 and run["data"]["status"] == "succeeded"
    finally:
        stop_robot(r)


def test_labmcp_client_reports_a_failed_analysis(tmp_path):
    """Without its labware the protocol's analysis fails: the client sees no 'ok' result."""
    r = start_robot(tmp_path)
    try:
        r.wait_connected()
        proc = run_flow(f"http://127.0.0.1:{r.port}", [PROTOCOL])
        assert proc.returncode == 1 and "analysis completed/not-ok" in proc.stderr, proc.stderr[-2000:]
    finally:
        stop_robot(r)

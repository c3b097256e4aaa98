"""``GET /modules`` with live data: ``opentrons``' own module emulators (temperature module
GEN2, magnetic module GEN2), speaking their serial protocol on real ptys named as the udev
rules name USB modules, read by the robot server's module reader over real HTTP on
loopback; the shape validated against a schema written from the OT-2's documented models
(tests/schemas/modules.json). While a run or the G-code channel's lease holder may use the
modules, their ports are left alone and the last data read is answered."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest
from opentrons.hardware_control.emulation.magdeck import MagDeckEmulator
from opentrons.hardware_control.emulation.parser import Parser
from opentrons.hardware_control.emulation.settings import Settings
from opentrons.hardware_control.emulation.tempdeck import TempDeckEmulator
from opentrons.hardware_control.modules.magdeck import OFFSET_TO_LABWARE_BOTTOM

from conftest import start_robot, stop_robot
from test_engine_runs import SANDBOX_USER, world_readable_dir
from test_modules import BIN, PROTOCOL, PtyModule, Recording, free_port
from test_ot2_api import validate


@pytest.fixture
def rig():
    """A robot whose module directory holds a temperature module, a magnetic module (each
    an emulator on a pty) and a bootloader's device (not a module)."""
    data_dir = world_readable_dir()
    dev = data_dir / "dev"
    dev.mkdir()
    settings = Settings()
    tempdeck = Recording(TempDeckEmulator(Parser(), settings.tempdeck))
    magdeck = Recording(MagDeckEmulator(Parser(), settings.magdeck))
    ptys = [PtyModule(tempdeck, dev / "ot_module_tempdeck0"), PtyModule(magdeck, dev / "ot_module_magdeck1")]
    (dev / "ot_module_samba_bootloader0").symlink_to("/dev/null")
    robot = start_robot(data_dir, module_dir=str(dev), sandbox_user=SANDBOX_USER)
    robot.wait_connected()
    yield robot, tempdeck, magdeck, dev
    stop_robot(robot)
    for p in ptys:
        p.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def modules(robot) -> dict:
    """``GET /modules``, validated; ``{moduleType: module}``."""
    status, body = robot.get("/modules", timeout=90)
    assert status == 200, body
    validate("modules", body)
    assert body["meta"] == {"cursor": 0, "totalLength": len(body["data"])}
    return {m["moduleType"]: m for m in body["data"]}


def test_modules_report_live_data_from_the_modules(rig):
    robot, tempdeck, magdeck, dev = rig
    found = modules(robot)
    assert set(found) == {"temperatureModuleType", "magneticModuleType"}
    temp = found["temperatureModuleType"]
    assert temp["moduleModel"] == "temperatureModuleV2" and temp["serialNumber"] == "temperature_emulator"
    assert temp["usbPort"]["path"] == str(dev / "ot_module_tempdeck0")
    assert temp["data"]["targetTemperature"] is None and temp["data"]["status"] == "idle"
    assert found["magneticModuleType"]["data"]["engaged"] is False
    assert "M105" in tempdeck.lines                      # read from the module itself

    tempdeck.handle("M104 S40")                          # a target set on the module: 40 °C
    again = modules(robot)["temperatureModuleType"]
    assert again["id"] == temp["id"]
    assert again["data"]["targetTemperature"] == 40.0 and again["data"]["status"] == "heating"


def test_module_gone_is_no_longer_reported(rig):
    robot, _, _, dev = rig
    assert len(modules(robot)) == 2
    (dev / "ot_module_magdeck1").unlink()
    assert set(modules(robot)) == {"temperatureModuleType"}


def test_lease_holder_has_the_ports_last_data_is_answered(rig):
    """While a client holds the G-code channel (``robot-execute``, a notebook), the modules
    are not opened: the last data read is answered, and live data again once it lets go."""
    robot, tempdeck, _, _ = rig
    assert modules(robot)["temperatureModuleType"]["data"]["targetTemperature"] is None
    url = urlsplit(robot.server.channel_url)
    with socket.create_connection((url.hostname, url.port)):
        deadline = time.monotonic() + 5
        while robot.service.channel.lease is None:
            assert time.monotonic() < deadline, "no lease"
            time.sleep(0.02)
        tempdeck.handle("M104 S25")
        read_before = len(tempdeck.lines)
        held = modules(robot)["temperatureModuleType"]
        assert held["data"]["targetTemperature"] is None       # the last data read
        refused = command(robot, "temperatureModule/deactivate", {"moduleId": held["id"]})
        assert refused["status"] == "failed" and refused["error"]["errorType"] == "RobotInUse", refused
        assert len(tempdeck.lines) == read_before               # the module's port was left alone
    deadline = time.monotonic() + 5
    while robot.service.channel.lease is not None:
        assert time.monotonic() < deadline, "lease not ended"
        time.sleep(0.02)
    assert modules(robot)["temperatureModuleType"]["data"]["targetTemperature"] == 25.0


def test_active_run_has_the_ports(rig):
    """A run (here one without a protocol, driven by commands) is active from its creation:
    the modules' ports are left to it until it is deleted."""
    robot, tempdeck, _, _ = rig
    assert modules(robot)["temperatureModuleType"]["data"]["targetTemperature"] is None
    status, body = robot.post("/runs", {"data": {}})
    assert status == 201, body
    run_id = body["data"]["id"]
    tempdeck.handle("M104 S30")
    read_before = len(tempdeck.lines)
    assert modules(robot)["temperatureModuleType"]["data"]["targetTemperature"] is None
    assert len(tempdeck.lines) == read_before
    status, body = robot.request("DELETE", f"/runs/{run_id}", timeout=60)
    assert status == 200, body
    assert modules(robot)["temperatureModuleType"]["data"]["targetTemperature"] == 30.0


def command(robot, command_type: str, params: dict) -> dict:
    status, body = robot.post("/commands?waitUntilComplete=true&timeout=60000",
                              {"data": {"commandType": command_type, "params": params}}, timeout=90)
    assert status == 201, body
    assert body["data"]["status"] in ("succeeded", "failed"), body
    return body["data"]


def test_stateless_module_commands_act_on_the_attached_modules(rig):
    """``POST /commands`` module commands reach the module named by its ``GET /modules``
    id, with the engine's units (°C; magnet height in mm above the labware bottom) and
    checks; the live data shows the change."""
    robot, tempdeck, magdeck, _ = rig
    found = modules(robot)
    temp_id, mag_id = found["temperatureModuleType"]["id"], found["magneticModuleType"]["id"]

    done = command(robot, "temperatureModule/setTargetTemperature", {"moduleId": temp_id, "celsius": 40})
    assert done["status"] == "succeeded" and done["result"] == {"targetTemperature": 40}, done
    assert "M104 S40" in tempdeck.lines
    done = command(robot, "magneticModule/engage", {"moduleId": mag_id, "height": 10})
    assert done["status"] == "succeeded", done
    assert magdeck.position == 10 + OFFSET_TO_LABWARE_BOTTOM["magneticModuleV2"]     # mm above home
    now = modules(robot)
    assert now["temperatureModuleType"]["data"]["targetTemperature"] == 40.0
    assert now["magneticModuleType"]["data"] == {"status": "engaged", "engaged": True, "height": 10.0}

    too_hot = command(robot, "temperatureModule/setTargetTemperature", {"moduleId": temp_id, "celsius": 150})
    assert too_hot["status"] == "failed" and too_hot["error"]["errorType"] == "InvalidTargetTemperatureError"
    wrong = command(robot, "magneticModule/disengage", {"moduleId": temp_id})
    assert wrong["status"] == "failed" and wrong["error"]["errorType"] == "WrongModuleTypeError", wrong
    unknown = command(robot, "temperatureModule/deactivate", {"moduleId": "no-such-module"})
    assert unknown["error"]["errorType"] == "ModuleNotLoadedError"
    assert command(robot, "magneticModule/disengage", {"moduleId": mag_id})["status"] == "succeeded"
    assert magdeck.position == 0
    assert validate_commands(robot)


def validate_commands(robot) -> bool:
    status, body = robot.get("/commands")
    assert status == 200, body
    for c in body["data"]:
        validate("command_summary", c)
    return len(body["data"]) == 6


def test_protocol_using_the_modules_runs_while_the_server_reports_them(rig, tmp_path):
    """``robot-execute`` (``opentrons.execute``) runs a protocol that loads both modules
    through the server's G-code channel, opening the same module ports (announced by
    ``ot2-modules``) as on the OT-2; meanwhile ``GET /modules`` answers without touching
    them, and afterwards it shows what the protocol left: 6 °C, magnets down."""
    robot, tempdeck, magdeck, dev = rig
    assert modules(robot)["temperatureModuleType"]["data"]["targetTemperature"] is None
    port = free_port()
    announcer = subprocess.Popen([str(BIN / "ot2-modules"), "--dev", str(dev), "--port", str(port),
                                  "--interval", "0.2"], stderr=subprocess.PIPE, text=True)
    try:
        for line in announcer.stderr:
            if "magdeck at" in line:
                break
        protocol = tmp_path / "cold_beads.py"
        protocol.write_text(PROTOCOL)
        env = dict(os.environ, HOME=str(tmp_path), OT_SMOOTHIE_EMULATOR_URI=robot.server.channel_url,
                   OT_EMULATOR_module_server=json.dumps({"host": "127.0.0.1", "port": port}))
        run = subprocess.Popen([str(BIN / "robot-execute"), str(protocol)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
        answered_during_run = 0
        while run.poll() is None:
            if robot.service.channel.lease is not None:             # the protocol has the robot
                assert set(modules(robot)) == {"temperatureModuleType", "magneticModuleType"}
                answered_during_run += 1
            time.sleep(0.2)
        out, err = run.communicate()
        assert run.returncode == 0, out[-3000:] + err[-6000:]
        assert answered_during_run > 0
    finally:
        announcer.terminate()
        announcer.wait(10)
    assert "M104 S6" in tempdeck.lines and magdeck.position == 0
    deadline = time.monotonic() + 10
    while robot.service.channel.lease is not None:
        assert time.monotonic() < deadline, "lease not ended"
        time.sleep(0.05)
    after = modules(robot)
    assert after["temperatureModuleType"]["data"]["targetTemperature"] == 6.0
    assert after["magneticModuleType"]["data"]["engaged"] is False

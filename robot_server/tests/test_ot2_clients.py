"""Third-party Python clients of the OT-2 HTTP API, from PyPI and used unchanged as
libraries, against our robot server (with the emulator) over real HTTP on loopback:

* ``opentrons-http-api`` 1.5.0 (package ``opentrons_http_api``: ``RobotClient`` and its
  raw ``API``); it always talks to port 31950, so its server listens on 31950 of a loopback
  address of its own (127.x.y.z) to stay clear of anything on 127.0.0.1.
* ``opentrons-http-api-client`` 0.2.1 (package ``ot_api``; the client PyLabRobot's OT-2
  backend uses): module-level host and port.

The protocol -> analysis -> run -> play -> commands flow needs the OT-2's ``/protocols``
and ``/runs`` resources; those tests skip while the server still answers the older shapes.

The robots run in the open compatibility mode (``open_access``; ``docs/security.md``) with
loopback *not* trusted: the clients get in as any network host of an OT-2 would.  In the
default mode the same clients, sending no token, are refused cleanly (401, the OT-2's
error shape).
"""
from __future__ import annotations

import errno
import json
import random
import time
from pathlib import Path

import pytest
import requests

import ot_api
import ot_api.modules
import ot_api.requestor
import ot_api.runs
from conftest import start_robot, stop_robot
from opentrons_http_api.api import API
from opentrons_http_api.robot_client import RobotClient

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROTOCOL = EXAMPLES / "serial_dilution.py"
#: The OT-2's behaviour, with loopback standing for the lab network.
OPEN_MODE = {"open_access": True, "trusted_interfaces": ["usb*"]}


def _start_on_31950(tmp_path, **config):
    """A robot whose HTTP API is on port 31950 of a free loopback address (open mode
    unless ``config`` says otherwise)."""
    for _ in range(20):
        host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            return start_robot(tmp_path, host=host, port=API._PORT, **{**OPEN_MODE, **config})
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    pytest.skip("no free loopback address with port 31950")


@pytest.fixture(scope="module")
def robot_31950(tmp_path_factory):
    r = _start_on_31950(tmp_path_factory.mktemp("ot2-client"))
    r.wait_connected()
    yield r
    stop_robot(r)


@pytest.fixture(scope="module")
def open_robot(tmp_path_factory):
    r = start_robot(tmp_path_factory.mktemp("ot-api"), **OPEN_MODE)
    r.wait_connected()
    yield r
    stop_robot(r)


@pytest.fixture
def ot_api_robot(open_robot):
    ot_api.set_host("127.0.0.1")
    ot_api.set_port(open_robot.port)
    yield open_robot
    ot_api.set_host(None)


def test_clients_without_token_refused_cleanly_by_default(tmp_path):
    """Default mode, a network peer without a token: each client raises on a 401 in the
    OT-2's error shape, and nothing moved."""
    r = _start_on_31950(tmp_path, open_access=False)
    try:
        r.wait_connected()
        assert RobotClient(r.host).health().robot_model == "OT-2 Standard"    # status stays open
        with pytest.raises(requests.HTTPError) as refused:
            API(r.host).post_robot_lights(True)
        assert refused.value.response.status_code == 401
        assert refused.value.response.json()["error"] == "unauthorized" and not r.gpio.lights_on()
        ot_api.set_host(r.host)
        ot_api.set_port(r.port)
        with pytest.raises(Exception, match="Unauthorized") as refused:
            ot_api.runs.create()
        assert json.loads(str(refused.value))["errors"][0]["id"] == "Unauthorized"
        with pytest.raises(Exception, match="unauthorized"):
            ot_api.health.home()
        assert not any(r.service.driver.homed.values()) and r.get("/runs")[1]["data"] == []
    finally:
        ot_api.set_host(None)
        stop_robot(r)


def _runs_resources_ready(robot) -> bool:
    """True once ``/runs`` answers the OT-2's collection shape (``data``, ``links``, ``meta``)."""
    status, body = robot.get("/runs")
    return status == 200 and isinstance(body, dict) and "meta" in body and "links" in body


# ---------------------------------------------------------------- opentrons-http-api
def test_robot_client_health(robot_31950):
    client = RobotClient(robot_31950.host)
    health = client.health()              # builds a dataclass from exactly the OT-2's fields
    assert health.robot_model == "OT-2 Standard"
    assert health.minimum_protocol_api_version == [2, 0]
    assert health.maximum_protocol_api_version[0] == 2 and health.maximum_protocol_api_version[1] >= 15
    assert health.fw_version.startswith("edge-ot2emu")
    assert health.links["apiSpec"] == "/openapi.json"


def test_robot_client_lights_and_identify(robot_31950):
    client = RobotClient(robot_31950.host)
    client.set_lights(True)
    assert client.lights() is True and robot_31950.gpio.lights_on()
    client.set_lights(False)
    assert client.lights() is False and not robot_31950.gpio.lights_on()
    client.identify(1)
    seen = set()
    for _ in range(30):                      # blinks for 1 s, then as it was (off)
        seen.add(robot_31950.gpio.lights_on())
        time.sleep(0.05)
    time.sleep(0.6)
    assert seen == {True, False} and not robot_31950.gpio.lights_on()


def test_robot_client_settings_persist(tmp_path):
    r = _start_on_31950(tmp_path)
    try:
        client = RobotClient(r.host)
        ids = {s.id for s in client.settings()}
        assert {"shortFixedTrash", "disableHomeOnBoot", "enableDoorSafetySwitch"} <= ids
        client.set_setting("enableDoorSafetySwitch", True)
        assert {s.id: s.value for s in client.settings()}["enableDoorSafetySwitch"] is True
        config = client.robot_settings()
        assert config.model == "OT-2 Standard" and config.left_mount_offset == [-34.0, 0.0, 0.0]
    finally:
        stop_robot(r)
    r = _start_on_31950(tmp_path)            # same data directory: the flag survived
    try:
        client = RobotClient(r.host)
        assert {s.id: s.value for s in client.settings()}["enableDoorSafetySwitch"] is True
        assert r.get("/robot/door/status")[1]["data"]["doorRequiredClosedForProtocol"] is True
    finally:
        stop_robot(r)


def test_api_motors_and_calibration(robot_31950):
    api = API(robot_31950.host)
    robot_31950.post("/robot/home", {"target": "robot"})
    assert api.get_motors_engaged()["x"] == {"enabled": True}
    reply = api.post_motors_disengage(["x", "y"])
    assert "x" in reply["message"]
    engaged = api.get_motors_engaged()
    assert engaged["x"]["enabled"] is False and engaged["z_l"]["enabled"] is True
    assert not robot_31950.emulator.state.engaged["X"]
    assert api.get_calibration_status()["deckCalibration"]["status"] == "IDENTITY"


def test_robot_client_protocol_run_flow(robot_31950):
    """Upload -> analysis -> run -> play -> succeeded -> commands, with the raw ``API``
    (``RobotClient`` builds dataclasses that refuse the fields OT-2 software 8 added to
    runs, such as ``ok`` and ``hasEverEnteredErrorRecovery``)."""
    if not _runs_resources_ready(robot_31950):
        pytest.skip("the OT-2's /protocols and /runs resources (branch 'runs') are not in this server yet")
    api = API(robot_31950.host)
    with PROTOCOL.open("rb") as fh:
        protocol = api.post_protocols([fh])["data"]
    deadline = time.monotonic() + 120
    while api.get_protocols_protocol_id(protocol["id"])["data"]["analysisSummaries"][-1]["status"] != "completed":
        assert time.monotonic() < deadline, "analysis did not complete"
        time.sleep(0.5)
    robot_31950.post("/robot/home", {"target": "robot"})
    run = api.post_runs({"protocolId": protocol["id"], "labwareOffsets": []})["data"]
    api.post_runs_run_id_actions(run["id"], {"actionType": "play"})
    deadline = time.monotonic() + 300
    while (status := api.get_runs_run_id(run["id"])["data"]["status"]) not in ("succeeded", "failed", "stopped"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status == "succeeded"
    commands = api.get_runs_run_id_commands(run["id"])
    assert commands["data"] and commands["meta"]["totalLength"] >= len(commands["data"])
    one = api.get_runs_run_id_commands_command_id(run["id"], commands["data"][0]["id"])["data"]
    assert one["id"] == commands["data"][0]["id"] and one["status"] == "succeeded"


# ---------------------------------------------------------------- opentrons-http-api-client (ot_api)
def test_ot_api_health_home_modules(ot_api_robot):
    health = ot_api.health.get()
    assert health["robot_model"] == "OT-2 Standard" and set(health) >= {"api_version", "fw_version"}
    assert "motor_board" not in health        # it sends Opentrons-Version: the OT-2's fields only
    reply = ot_api.health.home()
    assert reply["message"] == "Homing robot."
    assert all(ot_api_robot.service.driver.homed.values())
    assert ot_api.modules.list_connected_modules() == []


def test_ot_api_pipettes(ot_api_robot):
    pipettes = ot_api.requestor.get("/pipettes")    # what ot_api.lh.add_mounted_pipettes reads
    for mount, axes in (("left", ("z", "b")), ("right", ("a", "c"))):
        assert (pipettes[mount]["mount_axis"], pipettes[mount]["plunger_axis"]) == axes
        assert set(pipettes[mount]) >= {"model", "name", "id"}


def test_ot_api_errors_are_raised(ot_api_robot):
    with pytest.raises(Exception, match="errors"):
        ot_api.runs.get_run("no-such-run") if _runs_resources_ready(ot_api_robot) \
            else ot_api.requestor.get("/commands/no-such-command")


def test_ot_api_run_with_commands(ot_api_robot):
    """ot_api's own flow: an empty run, then commands enqueued into it (``/runs/{id}/commands``)."""
    if not _runs_resources_ready(ot_api_robot):
        pytest.skip("the OT-2's /runs resources (branch 'runs') are not in this server yet")
    run_id = ot_api.runs.create()
    ot_api.set_run(run_id)
    try:
        assert ot_api.runs.get_run(run_id)["id"] == run_id
        assert any(r["id"] == run_id for r in ot_api.runs.get_all())
        command_id = ot_api.runs.enqueue_command("home", {}, intent="setup", run_id=run_id)
        deadline = time.monotonic() + 60
        while (c := ot_api.runs.get_command(command_id, run_id=run_id)["data"])["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert c["status"] == "succeeded", c
    finally:
        ot_api.set_run(None)

"""The OT-2's resources and versioning over real loopback HTTP (emulator on a pty), and
our responses validated against JSON schemas written from the OT-2's documented models
(tests/schemas/)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jsonschema
import pytest

from robot_server import versioning
from robot_server.ot2_api import HEALTH_FIELDS

SCHEMAS = Path(__file__).parent / "schemas"
NO_VERSION = {"Opentrons-Version": None}


def validate(name: str, instance) -> None:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    resolver = jsonschema.RefResolver(base_uri=SCHEMAS.as_uri() + "/", referrer=schema)
    jsonschema.Draft202012Validator(schema, resolver=resolver,
                                    format_checker=jsonschema.FormatChecker()).validate(instance)


def request_raw(robot, method, path, headers=None, body=None):
    """(status, headers, parsed body) with full control of the headers."""
    import http.client
    conn = http.client.HTTPConnection(robot.host, robot.port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={**({"Content-Type": "application/json"} if data else {}),
                                                       **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        is_json = resp.getheader("Content-Type", "").startswith("application/json")
        return resp.status, dict(resp.getheaders()), json.loads(raw) if raw and is_json else raw
    finally:
        conn.close()


# ---------------------------------------------------------------- versioning
@pytest.mark.parametrize("value, served", [("*", "4"), ("4", "4"), ("3", "3"), ("2", "2"), ("99", "4"),
                                           (" 3 ", "3")])
def test_version_header_echoed(shared_robot, value, served):
    status, headers, body = request_raw(shared_robot, "GET", "/robot/lights", {"Opentrons-Version": value})
    assert status == 200 and "on" in body
    assert headers["Opentrons-Version"] == served and headers["Opentrons-Min-Version"] == "2"


def test_version_constants():
    assert (versioning.API_VERSION, versioning.MIN_API_VERSION) == (4, 2)


@pytest.mark.parametrize("path, method, kind", [
    ("/robot/lights", "GET", "legacy"), ("/settings", "GET", "legacy"), ("/motors/engaged", "GET", "legacy"),
    ("/pipettes", "GET", "legacy"), ("/modules", "GET", "errors"), ("/instruments", "GET", "errors"),
    ("/robot/door/status", "GET", "errors"), ("/commands", "GET", "errors"), ("/robot/home", "POST", "legacy"),
])
def test_missing_or_bad_version_refused(shared_robot, path, method, kind):
    n = len(shared_robot.emulator.log)
    for headers, status, code in (({}, 422, "missing-version-header"),
                                  ({"Opentrons-Version": "latest"}, 422, "invalid-version-header"),
                                  ({"Opentrons-Version": "1"}, 400, "OutdatedAPIVersion")):
        got, resp_headers, body = request_raw(shared_robot, method, path, headers, {"target": "robot"})
        assert got == status, (path, headers, body)
        assert resp_headers["Opentrons-Version"] == "4" and resp_headers["Opentrons-Min-Version"] == "2"
        if kind == "legacy":
            validate("legacy_error", body)
            assert body["error"] == ("OutdatedAPIVersion" if status == 400 else code)
        else:
            validate("error", body)
            assert body["errors"][0]["id"] in ("OutdatedAPIVersion", "MissingVersionHeader", "InvalidVersionHeader")
    assert not any(ln.startswith("G28") for ln in shared_robot.emulator.log[n:])   # nothing moved


def test_our_endpoints_need_no_version(shared_robot):
    for path in ("/robot/door", "/robot/endstops", "/openapi.json"):
        status, headers, body = request_raw(shared_robot, "GET", path)
        assert status == 200 and "Opentrons-Version" not in headers, path
    status, _, body = request_raw(shared_robot, "POST", "/robot/sim/gpio", body={"door_open": "maybe"})
    assert status == 422 and set(body) == {"error", "message"}


def test_logs_need_no_version(shared_robot):
    status, headers, _ = request_raw(shared_robot, "GET", "/logs/api.log?records=5")
    assert status == 200 and headers["Opentrons-Version"] == "4"


# ---------------------------------------------------------------- health
def test_health_with_version_is_exactly_the_ot2s(shared_robot):
    status, health = shared_robot.get("/health")
    assert status == 200
    validate("health", health)
    assert health["robot_model"] == "OT-2 Standard"
    assert health["api_version"] == "8.8.2"          # the robot software our resources match
    assert health["minimum_protocol_api_version"] == [2, 0]
    assert health["maximum_protocol_api_version"] == [2, 27]
    assert health["fw_version"].startswith("edge-ot2emu") and health["board_revision"] == "C"
    assert health["logs"] == ["/logs/serial.log", "/logs/api.log", "/logs/server.log", "/logs/update_server.log"]


def test_health_without_version_keeps_our_fields(shared_robot):
    status, health = shared_robot.health()
    assert status == 200 and health["motor_board"]["connected"] and health["gpio_backend"] == "sim"
    validate("health", {k: v for k, v in health.items() if k in HEALTH_FIELDS})


def test_health_names_the_robot(tmp_path):
    from conftest import start_robot, stop_robot
    (tmp_path / "update-server").mkdir()
    (tmp_path / "update-server" / "name").write_text("Lab robot 7\n")
    r = start_robot(tmp_path)
    try:
        assert r.get("/health")[1]["name"] == "Lab robot 7"
    finally:
        stop_robot(r)


def test_protocol_api_versions_from_the_opentrons_package(shared_robot):
    from opentrons.protocols.api_support.definitions import MAX_SUPPORTED_VERSION, MIN_SUPPORTED_VERSION
    health = shared_robot.get("/health")[1]
    assert health["maximum_protocol_api_version"] == list(MAX_SUPPORTED_VERSION)
    assert health["minimum_protocol_api_version"] == list(MIN_SUPPORTED_VERSION)


# ---------------------------------------------------------------- robot, motors
def test_home_shapes(homed):
    status, body = homed.post("/robot/home", {"target": "robot"})
    assert status == 200 and body["message"] == "Homing robot."
    status, body = homed.post("/robot/home", {"target": "pipette", "mount": "left"})
    assert status == 200 and body["message"] == "Pipette on left homed successfully" and body["axes"] == "ZB"
    status, body = homed.post("/robot/home", {"target": "pipette"})
    assert status == 422 and body["errorCode"] == "4000" and "mount" in body["message"]
    status, body = homed.post("/robot/home", {"target": "gantry"})
    assert status == 422 and body["message"]


def test_positions_identify_move(homed):
    status, body = homed.get("/robot/positions")
    assert body["positions"]["change_pipette"] == {"target": "mount", "left": [300, 40, 30], "right": [95, 40, 30]}
    assert body["positions"]["attach_tip"] == {"target": "pipette", "point": [200, 90, 150]}
    assert homed.post("/identify?seconds=1")[1]["message"] == "identifying"
    status, body = homed.post("/robot/move", {"target": "mount", "mount": "right", "point": [200, 90, 150]})
    assert status == 200 and body["message"].startswith("Move complete. New position:")


def test_disengage_bad_input(homed):
    for body in ({}, {"axes": "x"}, {"axes": [1]}, {"axes": ["w"]}, [1]):
        status, reply = homed.post("/motors/disengage", body)
        assert status == 422 and reply["errorCode"] == "4000", (body, reply)


def test_estop_not_on_ot2(shared_robot):
    status, body = shared_robot.get("/robot/control/estopStatus")
    assert status == 403 and body["errors"][0]["id"] == "NotSupportedOnOT2"
    validate("error", body)


# ---------------------------------------------------------------- instruments, modules, settings
def test_pipettes_read_from_the_board_and_no_modules(shared_robot):
    # The emulator carries the default pipettes: P20 Single GEN2 left, P300 Single GEN2 right.
    pipettes = shared_robot.get("/pipettes?refresh=true")[1]
    assert pipettes["left"]["mount_axis"] == "z" and pipettes["right"]["plunger_axis"] == "c"
    assert (pipettes["left"]["model"], pipettes["left"]["name"]) == ("p20_single_v2.0", "p20_single_gen2")
    assert (pipettes["right"]["model"], pipettes["right"]["name"]) == ("p300_single_v2.0", "p300_single_gen2")
    instruments = shared_robot.get("/instruments")[1]
    assert {(i["mount"], i["instrumentName"]) for i in instruments["data"]} == {
        ("left", "p20_single_gen2"), ("right", "p300_single_gen2")}
    assert shared_robot.get("/modules")[1] == {"data": [], "meta": {"cursor": 0, "totalLength": 0}}


def test_pipette_names():
    from robot_server.ot2_api import pipette_name
    assert pipette_name("p300_single_v2.1") == "p300_single_gen2"
    assert pipette_name("p20_multi_v2.0") == "p20_multi_gen2"
    assert pipette_name("p10_single_v1.5") == "p10_single"


def test_settings(robot):
    status, body = robot.get("/settings")
    assert status == 200 and body["links"] == {}
    assert all(set(s) == {"id", "old_id", "title", "description", "restart_required", "value"}
               for s in body["settings"])
    status, body = robot.post("/settings", {"id": "shortFixedTrash", "value": True})
    assert status == 200 and {s["id"]: s["value"] for s in body["settings"]}["shortFixedTrash"] is True
    stored = json.loads((Path(robot.service.config.state_dir) / "feature_flags.json").read_text())
    assert stored == {"shortFixedTrash": True}
    assert robot.post("/settings", {"id": "shortFixedTrash", "value": None})[0] == 200
    for body, status in (({"id": "noSuchFlag", "value": True}, 400), ({"value": True}, 422),
                         ({"id": "shortFixedTrash", "value": "yes"}, 422), ({"id": 3}, 422)):
        got, reply = robot.post("/settings", body)
        assert got == status and reply["errorCode"] == "4000", (body, reply)
        validate("legacy_error", reply)
    options = {o["id"]: o["name"] for o in robot.get("/settings/reset/options")[1]["options"]}
    assert options["runsHistory"] == "Clear Robot Server Data" and "deckCalibration" in options
    config = robot.get("/settings/robot")[1]
    assert config["model"] == "OT-2 Standard" and config["gantry_steps_per_mm"]["X"] == 80


def test_calibration_networking_wifi_time(shared_robot):
    cal = shared_robot.get("/calibration/status")[1]
    assert cal["deckCalibration"]["status"] == "IDENTITY"
    assert cal["deckCalibration"]["data"]["matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    net = shared_robot.get("/networking/status")[1]
    assert net["status"] in ("full", "limited", "none") and isinstance(net["interfaces"], dict)
    for iface in net["interfaces"].values():
        assert iface["type"] in ("wifi", "ethernet") and iface["state"] in ("connected", "disconnected")
    assert shared_robot.get("/wifi/list")[1] == {"list": []}
    t = shared_robot.get("/system/time")[1]["data"]
    assert t["id"] == "time" and abs(time.time() - _iso(t["systemTime"])) < 60


def _iso(text: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(text).timestamp()


def test_logs(shared_robot):
    status, body = shared_robot.get("/logs/serial.log?records=3")
    assert status == 200 and isinstance(body, (bytes, str, type(None)))
    if shutil.which("journalctl") is None:
        assert body is None                       # no journal: an empty text body
    status, body = shared_robot.get("/logs/api.log?format=json&records=2")
    assert status == 200 and isinstance(body, list) and len(body) <= 2
    assert shared_robot.get("/logs/nope.log")[0] == 404
    status, body = shared_robot.get("/logs/%7B")           # any name, braces too: the route's own 404
    assert status == 404 and "errorCode" in body, body
    assert shared_robot.get("/logs/api.log?records=0")[0] == 422
    assert shared_robot.get("/logs/api.log?format=xml")[0] == 422


# ---------------------------------------------------------------- stateless commands
def test_stateless_home_command(homed):
    homed.post("/motors/disengage", {"axes": ["x"]})
    status, body = homed.post("/commands?waitUntilComplete=true&timeout=30000",
                              {"data": {"commandType": "home", "params": {}}})
    assert status == 201, body
    command = body["data"]
    validate("command_summary", command)
    assert command["status"] == "succeeded" and command["commandType"] == "home"
    assert homed.service.driver.engaged["X"] and all(homed.service.driver.homed.values())
    assert homed.get(f"/commands/{command['id']}")[1]["data"]["status"] == "succeeded"
    listed = homed.get("/commands")[1]
    assert listed["data"][-1]["id"] == command["id"] and listed["meta"]["totalLength"] >= 1
    for c in listed["data"]:
        validate("command_summary", c)
    first = homed.get("/commands?cursor=0&pageLength=1")[1]
    assert len(first["data"]) == 1 and first["meta"]["cursor"] == 0
    assert homed.get("/commands?pageLength=0")[0] == 422


def test_stateless_command_without_waiting(homed):
    status, body = homed.post("/commands", {"data": {"commandType": "home", "params": {"axes": ["leftZ"]}}})
    assert status == 201 and body["data"]["status"] in ("queued", "running", "succeeded")
    deadline = time.monotonic() + 30
    while homed.get(f"/commands/{body['data']['id']}")[1]["data"]["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize("body", [
    {}, {"data": None}, {"data": {}}, {"data": {"commandType": "aspirate", "params": {}}},
    {"data": {"commandType": "home", "params": {"axes": ["w"]}}}, {"data": {"commandType": "home", "bogus": 1}},
    [1, 2], "home",
])
def test_stateless_command_bad_input(shared_robot, body):
    status, reply = shared_robot.post("/commands", body)
    assert status == 422, reply
    validate("error", reply)
    assert reply["errors"][0]["id"] == "InvalidRequest"


@pytest.mark.parametrize("command_type, params", [
    ("temperatureModule/setTargetTemperature", {"moduleId": "tempdeck-1", "celsius": 40}),
    ("magneticModule/engage", {"moduleId": "magdeck-1", "height": 10}),
    ("thermocycler/openLid", {"moduleId": "tc-1"}),
    ("heaterShaker/setAndWaitForShakeSpeed", {"moduleId": "hs-1", "rpm": 500}),
])
def test_module_command_without_the_module(shared_robot, command_type, params):
    """No module attached (GET /modules is empty): the command is created and fails as the
    OT-2's engine fails it for an unknown module id."""
    assert shared_robot.get("/modules")[1]["data"] == []
    status, body = shared_robot.post("/commands?waitUntilComplete=true",
                                     {"data": {"commandType": command_type, "params": params}})
    assert status == 201, body
    command = body["data"]
    validate("command_summary", command)
    assert (command["status"], command["commandType"], command["params"]) == ("failed", command_type, params)
    assert command["error"]["errorType"] == "ModuleNotLoadedError"
    assert command["error"]["detail"] == f"Module {params['moduleId']} not found."
    assert shared_robot.get(f"/commands/{command['id']}")[1]["data"]["status"] == "failed"


@pytest.mark.parametrize("data, text", [
    ({"commandType": "temperatureModule/setTargetTemperature", "params": {"celsius": 40}}, "moduleId: field required"),
    ({"commandType": "magneticModule/engage", "params": {"moduleId": "m", "height": "high"}}, "height: must be of type number"),
    ({"commandType": "setRailLights", "params": {"on": 1}}, "on: must be of type boolean"),
    ({"commandType": "home", "params": {"axes": ["extensionZ"]}}, "an OT-2 has only"),
    ({"commandType": "vacuumModule/openVent", "params": {}}, "unsupported command type"),
    ({"commandType": [], "params": {}}, "unsupported command type"),     # found by test_fuzz
])
def test_stateless_command_bad_params(shared_robot, data, text):
    status, reply = shared_robot.post("/commands", {"data": data})
    assert status == 422 and text in reply["errors"][0]["detail"], reply
    validate("error", reply)


def test_stateless_rail_lights(shared_robot):
    for on in (True, False):
        status, body = shared_robot.post("/commands?waitUntilComplete=true",
                                         {"data": {"commandType": "setRailLights", "params": {"on": on}}})
        assert status == 201 and body["data"]["status"] == "succeeded", body
        assert shared_robot.gpio.lights_on() is on


def test_no_stateless_commands_while_a_run_is_open(robot):
    status, body = robot.post("/runs", {"data": {}})
    assert status == 201, body
    run_id = body["data"]["id"]
    home = {"data": {"commandType": "home", "params": {}}}
    status, reply = robot.post("/commands", home)
    assert status == 409 and reply["errors"][0]["id"] == "RunActive" and reply["errors"][0]["errorCode"] == "4001"
    validate("error", reply)
    assert robot.request("DELETE", f"/runs/{run_id}")[0] == 200
    assert robot.post("/commands?waitUntilComplete=true", home)[0] == 201


def test_unknown_command_id(shared_robot):
    status, reply = shared_robot.get("/commands/nope")
    assert status == 404 and reply["errors"][0]["id"] == "StatelessCommandNotFound"
    validate("error", reply)


def test_malformed_json_on_jsonapi_endpoint(shared_robot):
    status, reply = shared_robot.request("POST", "/commands", raw=b'{"data": ')
    assert status == 422 and reply["errors"][0]["id"] == "InvalidJson"
    validate("error", reply)


# ---------------------------------------------------------------- protocols and runs (branch 'runs')
def _runs_ready(robot) -> bool:
    status, body = robot.get("/runs")
    return status == 200 and isinstance(body, dict) and "meta" in body and "links" in body


def test_protocol_run_command_schemas(shared_robot):
    if not _runs_ready(shared_robot):
        pytest.skip("the OT-2's /protocols and /runs resources (branch 'runs') are not in this server yet")
    source = (Path(__file__).resolve().parents[2] / "examples" / "serial_dilution.py").read_bytes()
    import http.client
    import uuid
    boundary = uuid.uuid4().hex
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"dilution.py\"\r\n"
               f"Content-Type: text/x-python\r\n\r\n").encode() + source + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(shared_robot.host, shared_robot.port, timeout=60)
    conn.request("POST", "/protocols", body=payload, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}", "Opentrons-Version": "*"})
    resp = conn.getresponse()
    protocol = json.loads(resp.read())["data"]
    conn.close()
    assert resp.status == 201
    validate("protocol", protocol)
    for summary in protocol["analysisSummaries"]:
        validate("analysis_summary", summary)
    status, body = shared_robot.post("/runs", {"data": {"protocolId": protocol["id"]}})
    assert status == 201
    validate("run", body["data"])
    status, body = shared_robot.get(f"/runs/{body['data']['id']}/commands")
    for c in body["data"]:
        validate("command_summary", c)
    status, body = shared_robot.get("/runs/no-such-run")
    assert status == 404
    validate("error", body)


# ---------------------------------------------------------------- openapi
def test_openapi_describes_the_ot2_resources(shared_robot):
    doc = shared_robot.get("/openapi.json")[1]
    for path in ("/pipettes", "/instruments", "/modules", "/settings", "/settings/robot", "/settings/reset/options",
                 "/settings/reset", "/wifi/configure", "/camera/picture",
                 "/calibration/status", "/networking/status", "/wifi/list", "/logs/{log}", "/commands",
                 "/commands/{id}", "/robot/door/status", "/system/time"):
        assert path in doc["paths"], path
    lights = doc["paths"]["/robot/lights"]["get"]
    header = [p for p in lights["parameters"] if p["in"] == "header"]
    assert header and header[0]["name"] == "Opentrons-Version" and header[0]["required"] is True
    logs = doc["paths"]["/logs/{log}"]["get"]
    assert [p["required"] for p in logs["parameters"] if p["in"] == "header"] == [False]
    assert doc["paths"]["/commands"]["post"]["responses"]["422"]["content"]["application/json"]["schema"][
        "required"] == ["errors"]
    assert "201" in doc["paths"]["/commands"]["post"]["responses"]
    assert "tags" not in doc["paths"]["/robot/endstops"]["get"]


# ---------------------------------------------------------------- the opentrons package stays out of the server
def test_server_process_does_not_import_opentrons(tmp_path, pty):
    """The OT-2 facts come from a child process: the server itself never loads opentrons
    (nor numpy), and its second start reads them from the cache in the data directory."""
    import re
    import signal
    import urllib.request
    from test_cli import _start_server

    for attempt in ("first", "cached"):
        server = _start_server(tmp_path, pty.slave_path, attempt)
        try:
            line = ""
            while "HTTP on" not in line:
                line = server.stderr.readline()
                assert line, "the server exited"
            port = int(re.search(r"HTTP on [\d.]+:(\d+)", line).group(1))
            req = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Opentrons-Version": "*"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                assert json.load(resp)["maximum_protocol_api_version"] == [2, 27]
            maps = Path(f"/proc/{server.pid}/maps").read_text()
            assert "numpy" not in maps and "pydantic_core" not in maps
            modules = {m for m in re.findall(r"(\S+\.so)", maps)}
            assert not any("opentrons" in m for m in modules)
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(15) == 0
        assert (tmp_path / "robot-server" / "ot2-facts.json").exists()


def test_robot_serial_from_the_kernel_cmdline(tmp_path):
    from robot_server.ot2_api import Ot2Resources
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/vda2 ot2.slot=A ot2.serial=qemu-0123abcd quiet\n")
    assert Ot2Resources.robot_serial(str(cmdline)) == "qemu-0123abcd"
    cmdline.write_text("root=/dev/vda2 ot2.slot=A ot2.serial= quiet\n")   # no serial to give
    assert Ot2Resources.robot_serial(str(cmdline)) is None
    assert Ot2Resources.robot_serial(str(tmp_path / "absent")) is None

"""Protocols, analyses and runs over real HTTP on loopback, with the real engine in
sandboxed processes. The run processes reach the robot server's board emulator (on a
pty) through the server's G-code channel.

Tests that need another user for the sandbox (switching users needs root) skip when not
root; all need the interpreter executable by that user (a Python under ``/root`` is not).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from robot_server.emulator import PtyServer, SmoothieEmulator
from robot_server.sandbox import resolve_user, user_processes

from conftest import BridgeClient, start_robot, stop_robot

IS_ROOT = os.geteuid() == 0
SANDBOX_USER = "ot2-run"


def _interpreter_usable() -> str | None:
    ident = resolve_user(SANDBOX_USER) if IS_ROOT else None
    if ident is None:
        return None
    try:
        probe = subprocess.run([sys.executable, "-c", "import robot_server.run_worker"], capture_output=True,
                               user=ident.uid, group=ident.gid, extra_groups=[], cwd="/", timeout=60)
    except PermissionError:
        return f"{ident.name} cannot run {sys.executable}"
    return None if probe.returncode == 0 else f"{ident.name} cannot run {sys.executable}"


needs_root = pytest.mark.skipif(not IS_ROOT, reason="switching to the sandbox user needs root")
SKIP = _interpreter_usable()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

ANALYSIS_WAIT_S = 120
RUN_WAIT_S = 90

SIMPLE = b'''
metadata = {"apiLevel": "2.15", "protocolName": "move and wait"}
def run(ctx):
    ctx.load_labware("corning_96_wellplate_360ul_flat", 2)
    ctx.comment("start")
    ctx.home()
    ctx.delay(seconds=0.1)
    ctx.comment("end")
'''

TRANSFER = b'''
metadata = {"apiLevel": "2.20", "protocolName": "transfer to custom plate"}
def run(ctx):
    tips = ctx.load_labware("opentrons_96_tiprack_300ul", 1)
    plate = ctx.load_labware("test_custom_plate", 2, namespace="custom_beta")
    pipette = ctx.load_instrument("p300_single_gen2", "right", tip_racks=[tips])
    pipette.transfer(50, plate["A1"], plate["B1"])
'''

FAILS = b'''
metadata = {"apiLevel": "2.15"}
def run(ctx):
    ctx.comment("about to fail")
    raise RuntimeError("deliberate failure at step 2")
'''

LONG = b'''
metadata = {"apiLevel": "2.15", "protocolName": "never ends"}
def run(ctx):
    ctx.home()
    for _ in range(10000):
        ctx.delay(seconds=30)
'''

HOMES = b'''
metadata = {"apiLevel": "2.15", "protocolName": "homes forever"}
def run(ctx):
    for _ in range(10000):
        ctx.home()
        ctx.delay(seconds=0.2)
'''

FORKS = b'''
import subprocess
metadata = {"apiLevel": "2.15", "protocolName": "forks"}
def run(ctx):
    if not ctx.is_simulating():
        for _ in range(3):
            subprocess.Popen(["sleep", "3600"], start_new_session=True)
    for _ in range(10000):
        ctx.delay(seconds=30)
'''

ALLOCATES = b'''
metadata = {"apiLevel": "2.15", "protocolName": "allocates 1 GiB"}
def run(ctx):
    ctx.comment("allocating")
    if not ctx.is_simulating():
        block = bytearray(1 << 30)
        ctx.comment(str(len(block)))
'''

ALLOCATES_AT_IMPORT = b'''
block = bytearray(1 << 30)
metadata = {"apiLevel": "2.15"}
def run(ctx):
    ctx.comment(str(len(block)))
'''

READS_TEMPLATE = '''
metadata = {{"apiLevel": "2.15"}}
def run(ctx):
    with open({path!r}) as fh:
        ctx.comment(fh.read())
'''


def custom_plate() -> bytes:
    """A custom labware definition: the package's 96-well plate under our own load name."""
    from opentrons_shared_data.labware import load_definition

    definition = json.loads(json.dumps(load_definition("corning_96_wellplate_360ul_flat", 2)))
    definition["parameters"]["loadName"] = "test_custom_plate"
    definition["namespace"] = "custom_beta"
    definition["metadata"]["displayName"] = "Test custom plate"
    return json.dumps(definition).encode()


def multipart(files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b""
    for name, content in files.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Engine:
    """HTTP helpers for the engine resources of a running robot server."""

    def __init__(self, robot, board: SmoothieEmulator, pty: PtyServer, data_dir: Path) -> None:
        self.robot = robot
        self.board = board
        self.pty = pty
        self.data_dir = data_dir
        self.host = robot.server.server.engine

    @property
    def board_link(self) -> str:
        return str(self.data_dir / "board")

    def replug(self) -> None:
        """A new cable to the same board (the server reconnects to the same path)."""
        self.pty = PtyServer(self.board, link=self.board_link).start()
        self.robot.wait_connected(True, timeout=10)

    def upload(self, files: dict[str, bytes]):
        body, ctype = multipart(files)
        return self.robot.request("POST", "/protocols", raw=body, headers={"Content-Type": ctype}, timeout=120)

    def analysed(self, files: dict[str, bytes]) -> tuple[dict, dict]:
        """Upload, wait for the analysis; ``(protocol, analysis)``."""
        status, body = self.upload(files)
        assert status == 201, body
        protocol = body["data"]
        assert protocol["analysisSummaries"][0]["status"] in ("pending", "completed")
        deadline = time.monotonic() + ANALYSIS_WAIT_S
        while True:
            status, body = self.robot.get(f"/protocols/{protocol['id']}")
            assert status == 200, body
            if body["data"]["analysisSummaries"][0]["status"] == "completed":
                break
            assert time.monotonic() < deadline, "analysis did not complete"
            time.sleep(0.2)
        aid = body["data"]["analysisSummaries"][0]["id"]
        status, analysis = self.robot.get(f"/protocols/{protocol['id']}/analyses/{aid}")
        assert status == 200, analysis
        return body["data"], analysis["data"]

    def create_run(self, protocol_id: str, **data):
        return self.robot.post("/runs", {"data": {"protocolId": protocol_id, **data}})

    def action(self, run_id: str, action_type: str):
        return self.robot.post(f"/runs/{run_id}/actions", {"data": {"actionType": action_type}})

    def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout: float = RUN_WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.robot.get(f"/runs/{run_id}")
            assert status == 200, body
            if body["data"]["status"] in statuses:
                return body["data"]
            assert time.monotonic() < deadline, f"run stayed {body['data']['status']}: {body['data'].get('errors')}"
            time.sleep(0.1)

    def started_run(self, source: bytes) -> str:
        """A run of ``source`` played until it is running."""
        status, body = self.upload({"protocol.py": source})
        assert status == 201, body
        status, body = self.create_run(body["data"]["id"])
        assert status == 201, body
        run_id = body["data"]["id"]
        assert self.action(run_id, "play")[0] == 201
        self.wait_status(run_id, ("running",))
        return run_id

    def finish(self, run_id: str) -> dict:
        """Stop the run if it is active and wait until it has ended."""
        status, body = self.robot.get(f"/runs/{run_id}")
        if body["data"]["status"] not in ("stopped", "failed", "succeeded"):
            self.action(run_id, "stop")
        return self.wait_status(run_id, ("stopped", "failed", "succeeded"))


def world_readable_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="ot2-engine-test-"))
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def engine():
    data_dir = world_readable_dir()
    board = SmoothieEmulator()
    pty = PtyServer(board, link=str(data_dir / "board")).start()
    robot = start_robot(data_dir, board, serial_port=str(data_dir / "board"), analysis_prewarm=True,
                        sandbox_user=SANDBOX_USER, protocol_analysis_timeout=90.0)
    robot.wait_connected()
    engine = Engine(robot, board, pty, data_dir)
    yield engine
    stop_robot(robot)
    engine.pty.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def assert_error(reply, status: int, error_id: str) -> dict:
    code, body = reply
    assert code == status, body
    assert body["errors"][0]["id"] == error_id, body
    assert {"id", "title", "detail", "errorCode"} <= set(body["errors"][0])
    return body["errors"][0]


# ---------------------------------------------------------------- analysis
def test_upload_is_analysed_by_the_engine(engine):
    protocol, analysis = engine.analysed({"transfer.py": TRANSFER, "plate.json": custom_plate()})
    assert protocol["protocolType"] == "python" and protocol["robotType"] == "OT-2 Standard"
    assert sorted((f["name"], f["role"]) for f in protocol["files"]) == [("plate.json", "labware"),
                                                                       ("transfer.py", "main")]
    assert analysis["status"] == "completed" and analysis["result"] == "ok", analysis["errors"]
    kinds = [c["commandType"] for c in analysis["commands"]]
    assert kinds.count("aspirate") == 1 and kinds.count("dispense") == 1 and "pickUpTip" in kinds
    assert any(lw["loadName"] == "test_custom_plate" for lw in analysis["labware"])
    assert analysis["pipettes"][0]["pipetteName"] == "p300_single_gen2"
    status, listing = engine.robot.get("/protocols")
    assert status == 200 and protocol["id"] in [p["id"] for p in listing["data"]]
    assert listing["meta"]["totalLength"] == len(listing["data"])
    status, analyses = engine.robot.get(f"/protocols/{protocol['id']}/analyses")
    assert status == 200 and [a["id"] for a in analyses["data"]] == [analysis["id"]]


def test_a_protocol_that_fails_analysis_is_stored_with_a_failed_analysis(engine):
    protocol, analysis = engine.analysed({"fails.py": FAILS})
    assert analysis["result"] == "not-ok"
    text = json.dumps(analysis)
    assert "deliberate failure at step 2" in text
    assert "traceback" not in text.lower() and "site-packages" not in text
    assert engine.robot.get(f"/protocols/{protocol['id']}")[0] == 200


def test_files_the_engine_refuses_are_not_stored(engine):
    before = engine.robot.get("/protocols")[1]["meta"]["totalLength"]
    error = assert_error(engine.upload({"notes.txt": b"not a protocol"}), 422, "ProtocolFilesInvalid")
    assert "Traceback" not in error["detail"]
    assert_error(engine.upload({"run.sh": SIMPLE}), 422, "InvalidRequest")
    assert_error(engine.upload({".hidden.py": SIMPLE}), 422, "InvalidRequest")
    assert_error(engine.robot.post("/protocols", {"data": {}}), 415, "UnsupportedMediaType")  # multipart only
    assert engine.robot.get("/protocols")[1]["meta"]["totalLength"] == before
    status, body = engine.upload({"../../evil.py": SIMPLE})          # a path is reduced to its name
    assert status == 201 and body["data"]["files"] == [{"name": "evil.py", "role": "main"}]
    assert (engine.data_dir / "robot-server" / "engine" / "protocols" / body["data"]["id"] / "files"
            / "evil.py").is_file()


def test_unknown_ids_and_malformed_envelopes(engine):
    missing = str(uuid.uuid4())
    assert_error(engine.robot.get(f"/protocols/{missing}"), 404, "ProtocolNotFound")
    assert_error(engine.robot.get(f"/protocols/{missing}/analyses"), 404, "ProtocolNotFound")
    assert_error(engine.robot.request("DELETE", f"/protocols/{missing}"), 404, "ProtocolNotFound")
    assert_error(engine.robot.get(f"/runs/{missing}"), 404, "RunNotFound")
    assert_error(engine.robot.get(f"/runs/{missing}/commands"), 404, "RunNotFound")
    assert_error(engine.robot.get("/protocols/%7B"), 404, "ProtocolNotFound")    # any id: the OT-2's 404
    assert_error(engine.action(missing, "play"), 404, "RunNotFound")
    assert_error(engine.create_run(missing), 404, "ProtocolNotFound")
    for body in ([], {"data": 1}, {"protocolId": "x"}, {"data": {"protocolId": 5}},
                 {"data": {"protocolId": "x", "labwareOffsets": [{"definitionUri": "a"}]}}):
        assert_error(engine.robot.post("/runs", body), 422, "InvalidRequest")
    assert_error(engine.robot.post("/runs", raw=b"{nope"), 422, "InvalidRequest")
    protocol, _ = engine.analysed({"simple.py": SIMPLE})
    assert_error(engine.robot.get(f"/protocols/{protocol['id']}/analyses/{missing}"), 404, "AnalysisNotFound")


# ---------------------------------------------------------------- runs
def test_run_plays_to_succeeded_and_its_commands_page_from_disk(engine):
    protocol, analysis = engine.analysed({"simple.py": SIMPLE})
    offset = {"definitionUri": "opentrons/corning_96_wellplate_360ul_flat/2", "location": {"slotName": "2"},
              "vector": {"x": 0.5, "y": -0.25, "z": 1.0}}
    homes_before = engine.board.lines_received
    status, body = engine.create_run(protocol["id"], labwareOffsets=[offset])
    assert status == 201, body
    run = body["data"]
    assert run["status"] == "idle" and run["current"] is True and run["protocolId"] == protocol["id"]
    links = engine.robot.get("/runs")[1]["links"]
    assert links["current"]["href"] == f"/runs/{run['id']}"
    assert engine.action(run["id"], "play")[0] == 201
    done = engine.wait_status(run["id"], ("succeeded", "failed", "stopped"))
    assert done["status"] == "succeeded", done["errors"]
    output = (engine.host.runs.get(run["id"]).directory / "output.log").read_text()
    assert done["labwareOffsets"][0]["vector"] == {"x": 0.5, "y": -0.25, "z": 1.0}, output[-3000:]
    assert engine.board.lines_received > homes_before
    assert any(line.startswith("G28.2") for line in engine.board.log)     # the run homed the board
    status, page = engine.robot.get(f"/runs/{run['id']}/commands?cursor=0&pageLength=2")
    assert status == 200 and len(page["data"]) == 2 and page["meta"]["cursor"] == 0
    total = page["meta"]["totalLength"]
    status, everything = engine.robot.get(f"/runs/{run['id']}/commands?cursor=0&pageLength=100")
    kinds = [c["commandType"] for c in everything["data"]]
    assert len(kinds) == total and kinds.count("comment") == 2 and "waitForDuration" in kinds
    assert all("result" not in c for c in everything["data"])
    last = engine.robot.get(f"/runs/{run['id']}/commands")[1]
    assert last["data"][-1]["id"] == everything["data"][-1]["id"] == last["links"]["current"]["meta"]["commandId"]
    command_id = everything["data"][1]["id"]
    status, one = engine.robot.get(f"/runs/{run['id']}/commands/{command_id}")
    assert status == 200 and one["data"]["id"] == command_id and "result" in one["data"]
    assert_error(engine.robot.get(f"/runs/{run['id']}/commands/{uuid.uuid4()}"), 404, "CommandNotFound")
    assert_error(engine.robot.get(f"/runs/{run['id']}/commands?pageLength=x"), 422, "InvalidRequest")
    assert (engine.data_dir / "robot-server" / "engine" / "runs" / run["id"] / "commands.jsonl").stat().st_size > 0
    assert engine.host.runs.get(run["id"]).current_command is None


def test_a_transfer_with_custom_labware_runs_through_the_channel(engine):
    protocol, analysis = engine.analysed({"transfer.py": TRANSFER, "plate.json": custom_plate()})
    assert analysis["result"] == "ok"
    status, body = engine.create_run(protocol["id"])
    assert status == 201, body
    assert engine.action(body["data"]["id"], "play")[0] == 201
    done = engine.wait_status(body["data"]["id"], ("succeeded", "failed", "stopped"))
    assert done["status"] == "succeeded", done["errors"]
    assert [p["pipetteName"] for p in done["pipettes"]] == ["p300_single_gen2"]
    ran = engine.robot.get(f"/runs/{done['id']}/commands?cursor=0&pageLength=1000")[1]["data"]
    planned = [c["commandType"] for c in analysis["commands"]]
    assert [c["commandType"] for c in ran][:len(planned)] == planned      # the run did what analysis said


def test_play_on_a_finished_run_and_a_second_run_while_one_is_active(engine):
    run_id = engine.started_run(LONG)
    other = engine.robot.get("/protocols")[1]["data"][0]["id"]
    error = assert_error(engine.create_run(other), 409, "RunAlreadyActive")
    assert error["errorCode"] == "4001"
    assert engine.action(run_id, "pause")[0] == 201
    engine.wait_status(run_id, ("paused",))
    assert_error(engine.action(run_id, "pause"), 409, "RunActionNotAllowed")
    assert engine.action(run_id, "play")[0] == 201
    engine.wait_status(run_id, ("running",))
    assert_error(engine.robot.request("DELETE", f"/runs/{run_id}"), 409, "RunNotIdle")
    assert engine.action(run_id, "stop")[0] == 201
    assert engine.wait_status(run_id, ("stopped", "failed", "succeeded"))["status"] == "stopped"
    assert_error(engine.action(run_id, "play"), 409, "RunStopped")
    status, body = engine.create_run(other)
    assert status == 201, body
    assert engine.robot.get(f"/runs/{run_id}")[1]["data"]["current"] is False
    assert engine.robot.request("DELETE", f"/runs/{body['data']['id']}")[0] == 200
    assert_error(engine.robot.get(f"/runs/{body['data']['id']}"), 404, "RunNotFound")


def test_a_run_without_a_protocol_takes_commands_and_labware_definitions(engine):
    status, body = engine.robot.post("/runs")                      # no body, as ot_api sends it
    assert status == 201, body
    run_id = body["data"]["id"]
    assert body["data"]["status"] == "idle" and body["data"]["protocolId"] is None
    commands = f"/runs/{run_id}/commands"
    status, body = engine.robot.post(f"{commands}?waitUntilComplete=true&timeout=60000",
                                     {"data": {"commandType": "home", "params": {}}}, timeout=90)
    assert status == 201 and body["data"]["status"] == "succeeded", body
    assert body["data"]["intent"] == "setup"                       # the OT-2's default intent
    home_id = body["data"]["id"]
    assert engine.robot.get(f"{commands}/{home_id}")[1]["data"]["status"] == "succeeded"

    definition = json.loads(custom_plate())
    status, body = engine.robot.post(f"/runs/{run_id}/labware_definitions", {"data": definition})
    uri = f"custom_beta/test_custom_plate/{definition['version']}"
    assert status == 201 and body["data"]["definitionUri"] == uri, body
    status, body = engine.robot.post(f"{commands}?waitUntilComplete=true", {"data": {
        "commandType": "loadLabware", "intent": "setup", "params": {
            "location": {"slotName": "2"}, "loadName": "test_custom_plate", "namespace": "custom_beta",
            "version": definition["version"]}}}, timeout=90)
    assert status == 201 and body["data"]["status"] == "succeeded", body

    # a protocol command waits for play: the timeout (ms) answers with it still queued
    status, body = engine.robot.post(f"{commands}?waitUntilComplete=true&timeout=300", {"data": {
        "commandType": "comment", "intent": "protocol", "params": {"message": "after play"}}})
    assert status == 201 and body["data"]["status"] == "queued", body
    assert engine.robot.get(f"{commands}/{body['data']['id']}")[1]["data"]["status"] == "queued"

    for bad in ({"data": {"commandType": "noSuchCommand", "params": {}}},        # unknown command type
                {"data": {"commandType": "home", "params": {"axes": "sideways"}}},
                {"data": {"commandType": "home", "intent": "fixit"}},
                {"data": {"params": {}}}, {"data": []}, {"commandType": "home"}, [], None):
        error = assert_error(engine.robot.post(commands, bad), 422, "InvalidRequest")
        assert "Traceback" not in error["detail"] and "site-packages" not in error["detail"]
    assert_error(engine.robot.post(commands, raw=b"{nope"), 422, "InvalidRequest")
    for query in ("waitUntilComplete=maybe", "timeout=0", "timeout=-5", "timeout=x"):
        assert_error(engine.robot.post(f"{commands}?{query}", {"data": {"commandType": "home"}}),
                     422, "InvalidRequest")
    assert_error(engine.robot.post(f"/runs/{run_id}/labware_definitions", {"data": {"schemaVersion": 2}}),
                 422, "InvalidRequest")

    missing = str(uuid.uuid4())
    assert_error(engine.robot.post(f"/runs/{missing}/commands", {"data": {"commandType": "home"}}),
                 404, "RunNotFound")
    assert_error(engine.robot.post(f"/runs/{missing}/labware_definitions", {"data": definition}),
                 404, "RunNotFound")

    assert engine.finish(run_id)["status"] == "stopped"
    assert_error(engine.robot.post(commands, {"data": {"commandType": "home"}}), 409, "RunStopped")
    assert_error(engine.robot.post(f"/runs/{run_id}/labware_definitions", {"data": definition}),
                 409, "RunStopped")
    logged = (engine.data_dir / "robot-server" / "engine" / "runs" / run_id / "commands.jsonl").read_text()
    assert home_id in logged                                         # the command log on disk
    page = engine.robot.get(f"{commands}?cursor=0&pageLength=100")[1]["data"]
    assert [c["commandType"] for c in page][:2] == ["home", "loadLabware"]


@needs_root
def test_stop_kills_children_that_called_setsid(engine):
    uid = pwd.getpwnam(engine.host.sandbox.identity.name).pw_uid
    run_id = engine.started_run(FORKS)
    deadline = time.monotonic() + 30
    while len(_sleepers(uid)) < 3:
        assert time.monotonic() < deadline, "the protocol's children did not start"
        time.sleep(0.1)
    assert engine.action(run_id, "stop")[0] == 201
    assert engine.wait_status(run_id, ("stopped", "failed"))["status"] == "stopped"
    assert _sleepers(uid) == [] and user_processes(uid) == []
    assert engine.robot.get("/health")[0] == 200


def _sleepers(uid: int) -> list[int]:
    found = []
    for pid in user_processes(uid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
                found.append(pid)
        except OSError:
            pass
    return found


@needs_root
def test_a_protocol_cannot_read_a_root_only_file(engine, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root-only-content-7f3a")
    os.chmod(secret, 0o600)
    os.chmod(tmp_path, 0o755)
    source = READS_TEMPLATE.format(path=str(secret)).encode()
    protocol, analysis = engine.analysed({"reads.py": source})
    assert analysis["result"] == "not-ok"
    assert "PermissionError" in json.dumps(analysis) and "root-only-content" not in json.dumps(analysis)
    status, body = engine.create_run(protocol["id"])
    assert status == 201, body
    assert engine.action(body["data"]["id"], "play")[0] == 201
    done = engine.wait_status(body["data"]["id"], ("failed", "succeeded", "stopped"))
    assert done["status"] == "failed"
    everything = engine.robot.get(f"/runs/{done['id']}/commands?cursor=0&pageLength=1000")[1]
    assert "root-only-content" not in json.dumps(done) + json.dumps(everything)


@needs_root
def test_a_protocol_allocating_1_gib_fails_cleanly(engine):
    protocol, analysis = engine.analysed({"big.py": ALLOCATES_AT_IMPORT})
    assert analysis["result"] == "not-ok"
    protocol, _ = engine.analysed({"allocates.py": ALLOCATES})
    status, body = engine.create_run(protocol["id"])
    assert status == 201, body
    assert engine.action(body["data"]["id"], "play")[0] == 201
    done = engine.wait_status(body["data"]["id"], ("failed", "succeeded", "stopped"))
    assert done["status"] == "failed"
    assert "MemoryError" in json.dumps(done["errors"]) or "limit" in json.dumps(done["errors"])
    assert engine.robot.get("/health")[0] == 200


def test_a_run_process_that_dies_mid_run_fails_the_run(engine):
    run_id = engine.started_run(LONG)
    proc = engine.host.runs.get(run_id).proc
    os.kill(proc.pid, 9)
    done = engine.wait_status(run_id, ("failed", "stopped", "succeeded"))
    assert done["status"] == "failed"
    assert done["errors"][-1]["errorType"] == "RunProcessEnded"
    assert engine.robot.get("/health")[0] == 200


def test_the_board_disconnected_mid_run_fails_the_run(engine):
    run_id = engine.started_run(HOMES)
    engine.pty.unplug()
    try:
        done = engine.wait_status(run_id, ("failed", "stopped", "succeeded"), timeout=60)
        assert done["status"] == "failed"
        assert engine.robot.get("/health")[0] == 200
    finally:
        engine.replug()


def test_stop_from_the_bridge_the_robot_and_the_front_button(engine):
    run_id = engine.started_run(LONG)
    client = BridgeClient(engine.robot.bridge_port)
    try:
        reply = client.call("stopRun")
        assert reply["ok"] is True and reply["result"]["stopped"] == run_id
    finally:
        client.close()
    assert engine.wait_status(run_id, ("stopped", "failed"))["status"] == "stopped"
    run_id = engine.started_run(LONG)
    status, body = engine.robot.post("/robot/stop", {})            # the G-code channel's stop
    assert status == 200 and body["lease"]["name"] == f"run {run_id}", body
    assert engine.wait_status(run_id, ("stopped", "failed"))["status"] == "stopped"
    engine.robot.post("/robot/home", {})
    run_id = engine.started_run(LONG)
    engine.robot.gpio.set_button(True)
    engine.robot.gpio.set_button(False)
    assert engine.wait_status(run_id, ("stopped", "failed"))["status"] == "stopped"


def test_the_door_blocks_the_run_until_closed_and_played(engine):
    run_id = engine.started_run(LONG)
    try:
        engine.robot.post("/robot/sim/gpio", {"door_open": True})
        engine.wait_status(run_id, ("blocked-by-open-door",), timeout=20)
        assert_error(engine.action(run_id, "pause"), 409, "RunActionNotAllowed")
        engine.robot.post("/robot/sim/gpio", {"door_open": False})
        engine.wait_status(run_id, ("paused",), timeout=20)
        assert engine.action(run_id, "play")[0] == 201
        engine.wait_status(run_id, ("running",), timeout=20)
    finally:
        engine.robot.post("/robot/sim/gpio", {"door_open": False})
        assert engine.finish(run_id)["status"] == "stopped"


def test_data_survives_a_restart(engine):
    protocols = {p["id"] for p in engine.robot.get("/protocols")[1]["data"]}
    runs = {r["id"]: r["status"] for r in engine.robot.get("/runs")[1]["data"]}
    assert protocols and runs
    robot = start_robot(engine.data_dir, sandbox_user=SANDBOX_USER, lock_file=str(engine.data_dir / "lock2"))
    try:
        assert {p["id"] for p in robot.get("/protocols")[1]["data"]} == protocols
        assert {r["id"]: r["status"] for r in robot.get("/runs")[1]["data"]} == runs
        for pid in protocols:
            assert robot.get(f"/protocols/{pid}/analyses")[1]["data"][0]["status"] == "completed"
    finally:
        stop_robot(robot)


def test_reset_runs_history_erases_runs_and_protocols(engine):
    """``POST /settings/reset {"runsHistory": true}`` (last here: it erases the module's data):
    refused while a run is in progress, then every run and protocol is gone, on disk too,
    and stays gone after a restart."""
    run_id = engine.started_run(LONG)
    status, body = engine.robot.post("/settings/reset", {"runsHistory": True})
    assert status == 409 and body["errorCode"] == "4000" and run_id in body["message"], body
    assert engine.finish(run_id)["status"] == "stopped"
    assert engine.robot.get("/runs")[1]["data"] and engine.robot.get("/protocols")[1]["data"]
    status, body = engine.robot.post("/settings/reset", {"runsHistory": True, "deckCalibration": False})
    assert (status, body) == (200, {"message": "Options 'runs_history' were reset"})
    assert engine.robot.get("/runs")[1]["data"] == [] and engine.robot.get("/protocols")[1]["data"] == []
    assert engine.robot.get(f"/runs/{run_id}")[0] == 404
    stored = engine.data_dir / "robot-server" / "engine"
    assert not any((stored / "runs").iterdir()) and not any((stored / "protocols").iterdir())
    robot = start_robot(engine.data_dir, sandbox_user=SANDBOX_USER, lock_file=str(engine.data_dir / "lock3"))
    try:
        assert robot.get("/runs")[1]["data"] == [] and robot.get("/protocols")[1]["data"] == []
    finally:
        stop_robot(robot)

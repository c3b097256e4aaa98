"""/protocols and /runs over real loopback HTTP, runs executed in a child process whose
motions come back through the server to the emulator on a real pty."""
import json
import subprocess
import time
import uuid

import pytest

from conftest import ENV, PROJECT_DIR, PYTHON, start_robot, stop_robot
from test_protocol import BAD, DILUTION, HEADER

LOOP = HEADER + """def run(protocol):
    protocol.comment("looping")
    n = 0
    while not protocol.is_simulating():
        n += 1
"""
DELAYS = HEADER + """def run(protocol):
    for i in range(40):
        protocol.delay(seconds=0.05)
    protocol.comment("finished")
"""


def upload(robot, source: str, filename: str = "protocol.py"):
    return robot.post("/protocols", {"filename": filename, "source": source})


def wait_status(robot, run_id: str, statuses, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, info = robot.get(f"/runs/{run_id}")
        assert status == 200, info
        if info["status"] in statuses:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def wait_log(robot, run_id: str, text: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = robot.get(f"/runs/{run_id}")[1]
        if any(e.get("text") == text for e in info["log"]):
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    r = start_robot(tmp_path_factory.mktemp("runs"), protocol_analysis_timeout=3.0)
    r.wait_connected()
    yield r
    stop_robot(r)


def test_upload_run_and_log(runner):
    status, meta = upload(runner, DILUTION.read_text(), "dilution.py")
    assert status == 200, meta
    assert meta["name"] == "Serial dilution" and meta["api_level"] == "2.15"
    assert meta["analysis"]["tips_used"] == 2 and meta["analysis"]["commands"] == 136
    assert any(p["id"] == meta["id"] for p in runner.get("/protocols")[1]["data"])
    assert runner.get(f"/protocols/{meta['id']}")[1]["filename"] == "dilution.py"
    n = len(runner.emulator.log)
    status, run = runner.post("/runs", {"protocol_id": meta["id"]})
    assert status == 200 and run["status"] == "running", run
    info = wait_status(runner, run["id"], ("succeeded", "failed"))
    assert info["status"] == "succeeded", info["error"]
    assert info["summary"]["tips_used"] == 2 and info["commands_done"] == 136
    cmds = [e for e in info["log"] if e.get("kind") == "aspirate"]
    assert cmds[0]["text"].startswith("Aspirating 100.0 uL from A1 of NEST 12 Well Reservoir")
    assert cmds[0]["line"] and cmds[0]["point"] == [146.88, 42.78, 5.55]
    assert "G0 X155.88 Y42.78 F24000" in runner.emulator.log[n:]     # motions reached the board
    assert runner.get("/runs")[1]["data"][-1]["id"] == run["id"]
    since = runner.get(f"/runs/{run['id']}?since={info['log_count'] - 2}")[1]["log"]
    assert [e["seq"] for e in since] == [info["log_count"] - 1, info["log_count"]]


def test_multipart_upload(runner):
    body = DILUTION.read_bytes()
    boundary = uuid.uuid4().hex
    raw = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"dil.py\"\r\n"
           f"Content-Type: text/x-python\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()
    status, meta = runner.request("POST", "/protocols", raw=raw,
                                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200, meta
    assert meta["filename"] == "dil.py" and meta["size"] == len(body)


@pytest.mark.parametrize("name", ["does-not-parse", "no-run", "raises", "unknown-labware", "over-aspirate",
                                  "missing-import"])
def test_bad_uploads_refused_with_line(runner, name):
    body, _, line = BAD[name]
    status, reply = upload(runner, HEADER + body, "bad.py")
    assert status == 422 and reply["error"] == "protocol-invalid", reply
    assert reply["message"].startswith(f"bad.py line {line}:" if line else "bad.py:"), reply
    assert runner.get("/health")[0] == 200


def test_analysis_timeout_names_line(runner):
    source = HEADER + "def run(protocol):\n    while True:\n        pass\n"
    t0 = time.monotonic()
    status, reply = upload(runner, source, "forever.py")
    assert status == 422 and reply["error"] == "protocol-analysis-timeout", reply
    assert "(it was at line 6)" in reply["message"] or "(it was at line 7)" in reply["message"]
    assert time.monotonic() - t0 < 10


def test_run_failure_names_line(runner):
    source = HEADER + ("def run(protocol):\n    protocol.comment('hi')\n"
                       "    if not protocol.is_simulating():\n        raise RuntimeError('only on the robot')\n")
    status, meta = upload(runner, source, "fails.py")
    assert status == 200, meta
    run = runner.post("/runs", {"protocol_id": meta["id"]})[1]
    info = wait_status(runner, run["id"], ("succeeded", "failed"))
    assert info["status"] == "failed"
    assert info["error"]["line"] == 8 and info["error"]["message"] == "fails.py line 8: RuntimeError: only on the robot"


def test_stop_infinite_loop(runner):
    status, meta = upload(runner, LOOP, "loop.py")
    assert status == 200, meta
    run = runner.post("/runs", {"protocol_id": meta["id"]})[1]
    wait_log(runner, run["id"], "looping")
    status, body = runner.post("/runs", {"protocol_id": meta["id"]})
    assert status == 409 and body["error"] == "run-active"
    n = len(runner.emulator.log)
    status, info = runner.post(f"/runs/{run['id']}/actions", {"action": "stop"})
    assert status == 200 and info["status"] in ("stopping", "stopped")
    info = wait_status(runner, run["id"], ("stopped", "failed", "succeeded"), timeout=10)
    assert info["status"] == "stopped"
    assert info["error"]["line"] in (8, 9), info["error"]       # inside the while loop
    assert "M114.2" in runner.emulator.log[n:] and "G28.6" in runner.emulator.log[n:]   # positions re-read
    assert info["log"][-1]["text"].startswith("Motion halted; positions re-read")
    status, body = runner.post(f"/runs/{run['id']}/actions", {"action": "resume"})
    assert status == 409 and body["error"] == "run-not-active"
    assert runner.get("/health")[0] == 200


def test_pause_resume(runner):
    meta = upload(runner, DELAYS, "delays.py")[1]
    run = runner.post("/runs", {"protocol_id": meta["id"]})[1]
    assert runner.post(f"/runs/{run['id']}/actions", {"action": "pause"})[1]["status"] == "paused"
    time.sleep(0.3)
    before = runner.get(f"/runs/{run['id']}")[1]
    time.sleep(0.3)
    after = runner.get(f"/runs/{run['id']}")[1]
    assert after["status"] == "paused" and after["commands_done"] == before["commands_done"] < 40
    status, info = runner.post(f"/runs/{run['id']}/actions", {"actionType": "play"})
    assert status == 200 and info["status"] == "running"
    info = wait_status(runner, run["id"], ("succeeded", "failed"))
    assert info["status"] == "succeeded" and info["commands_done"] == 41


@pytest.mark.parametrize("path,body,status,code", [
    ("/runs", {"protocol_id": "nope"}, 404, "not-found"),
    ("/runs", {"protocol_id": "x", "extra": 1}, 422, "invalid-request"),
    ("/runs/123456789abc/actions", {"action": "stop"}, 404, "not-found"),
    ("/protocols", {"source": 5}, 422, "invalid-request"),
    ("/protocols", {"source": "x", "filename": "../../etc/passwd"}, 422, "invalid-request"),
])
def test_bad_requests(runner, path, body, status, code):
    got, reply = runner.post(path, body)
    assert (got, reply["error"]) == (status, code), reply


def test_protocols_and_runs_survive_restart(tmp_path):
    r = start_robot(tmp_path)
    try:
        r.wait_connected()
        meta = upload(r, HEADER + "def run(protocol):\n    protocol.comment('hello')\n", "hello.py")[1]
        run = r.post("/runs", {"protocol_id": meta["id"]})[1]
        wait_status(r, run["id"], ("succeeded",))
    finally:
        stop_robot(r)
    assert (tmp_path / "robot-server" / "protocols" / meta["id"] / "protocol.py").is_file()
    assert (tmp_path / "robot-server" / "runs" / run["id"] / "log.jsonl").is_file()
    r = start_robot(tmp_path)
    try:
        assert [p["id"] for p in r.get("/protocols")[1]["data"]] == [meta["id"]]
        info = r.get(f"/runs/{run['id']}")[1]
        assert info["status"] == "succeeded" and any(e.get("text") == "hello" for e in info["log"])
        assert r.request("DELETE", f"/protocols/{meta['id']}")[0] == 200
        assert r.get("/protocols")[1]["data"] == []
    finally:
        stop_robot(r)


def test_robot_execute_through_server(runner, tmp_path):
    """``robot-execute`` (the default mode: motions through the running server's HTTP API)."""
    n = len(runner.emulator.log)
    out = subprocess.run([PYTHON, "-m", "robot_server.protocol.cli", "execute", str(DILUTION), "--no-config",
                          "--server", f"http://127.0.0.1:{runner.port}", "--plain"],
                         cwd=PROJECT_DIR, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Aspirating 100.0 uL from A2 of NEST 12 Well Reservoir 15 mL on slot 2 at 92.86 uL/sec" in out.stdout
    assert out.stdout.splitlines()[-1].startswith("Summary: 136 commands, 2 tips used")
    assert "G0 X279.28 Y74.18 F24000" in runner.emulator.log[n:]
    bad = subprocess.run([PYTHON, "-m", "robot_server.protocol.cli", "execute", str(DILUTION), "--no-config",
                          "--server", "http://127.0.0.1:9"], cwd=PROJECT_DIR, env=ENV, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "cannot reach the robot server" in bad.stderr
    assert json.loads(json.dumps(runner.health()[1]))["motor_board"]["connected"]

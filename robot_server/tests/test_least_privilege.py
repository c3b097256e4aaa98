"""The robot server as the image runs it: a non-root user holding only the capabilities
of ``ot2-robot-server.service`` (``AmbientCapabilities=CAP_SETUID CAP_SETGID CAP_CHOWN
CAP_KILL``), given by ``setpriv`` to a real ``python -m robot_server`` over real HTTP on
loopback, with the board emulator on a pty of the ``dialout`` group (as a UART is) and a
data directory laid out as ``ot2-persist`` lays out ``/data``. Protocol code must then run
as the sandbox user with no capability left, unable to read or write the server's files,
while ordinary protocols analyse and run.

Needs root (to hand out the user and the capabilities) and ``setpriv`` (util-linux).
The sandbox user is ``uucp``, one no other test uses: ending a sandbox kills every
process of its user, and tests running beside these must not meet them.
"""
from __future__ import annotations

import grp
import http.client
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from robot_server.emulator import PtyServer, SmoothieEmulator

from conftest import PROJECT_DIR, VERSION_HEADER
from test_engine_runs import SIMPLE, multipart

#: The server's user and group: ids without a passwd entry, like nothing else on the host.
SERVER_UID = SERVER_GID = 60123
SANDBOX_USER = "uucp"
#: What the unit gives the server (overlay/usr/lib/systemd/system/ot2-robot-server.service).
CAPS = "+setuid,+setgid,+chown,+kill"
WAIT_S = 120


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "handing the server another user and capabilities needs root"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is missing"
    try:
        pwd.getpwnam(SANDBOX_USER)
        grp.getgrnam("dialout")
    except KeyError:
        return f"the user {SANDBOX_USER} or the group dialout is missing"
    try:
        pwd.getpwuid(SERVER_UID)
        return f"uid {SERVER_UID} is taken"
    except KeyError:
        return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")

SECRET = "server-only-content-5c1e"
PROBE = '''
import json, os
metadata = {{"apiLevel": "2.15", "protocolName": "probe"}}

def attempt(action):
    try:
        action()
        return "allowed"
    except OSError as exc:
        return "refused " + type(exc).__name__

def write(path):
    with open(path, "w") as fh:
        fh.write("planted")

def run(ctx):
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    ctx.comment("uid " + str(os.getuid()) + " groups " + str(os.getgroups()))
    ctx.comment("caps " + json.dumps({{k: status[k].strip() for k in ("CapEff", "CapPrm", "CapAmb", "NoNewPrivs")}}))
    ctx.comment("oom_score_adj " + open("/proc/self/oom_score_adj").read().strip())
    ctx.comment("read-secret " + attempt(lambda: open({secret!r}).read()))
    ctx.comment("read-tokens " + attempt(lambda: open({tokens!r}).read()))
    ctx.comment("write-state " + attempt(lambda: write({state!r} + "/planted")))
    ctx.comment("write-tokens " + attempt(lambda: write({token_dir!r} + "/planted")))
    ctx.comment("setuid-root " + attempt(lambda: os.setuid(0)))
    ctx.comment("setuid-server " + attempt(lambda: os.setuid({server_uid})))
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m robot_server`` as ``SERVER_UID`` with the unit's capabilities."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.state = self.data / "robot-server"
        self.tokens = self.data / "ot2"
        self.board = SmoothieEmulator()
        self.pty = PtyServer(self.board, link=str(root / "board")).start()
        self.port = _free_port()
        self.scratch_before = run_scratch()
        self._lay_out()
        config = root / "robot-server.toml"
        config.write_text(
            f'listen = "127.0.0.1"\nport = {self.port}\nbridge_enabled = false\nchannel_port = 0\n'
            f'serial_port = "{root / "board"}"\ngpio_backend = "sim"\ndata_dir = "{self.data}"\n'
            f'lock_file = "{root / "run" / "robot-server.lock"}"\nsandbox_user = "{SANDBOX_USER}"\n'
            f'reconnect_interval = 0.05\nanalysis_prewarm = true\nprotocol_analysis_timeout = 90.0\n')
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.state),
               "OT_API_CONFIG_DIR": str(self.data / "opentrons"), "PYTHONUNBUFFERED": "1"}
        self.log = open(root / "server.log", "wb")
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={SERVER_UID}", f"--regid={SERVER_GID}",
             f"--groups={grp.getgrnam('dialout').gr_gid}", f"--inh-caps={CAPS}", f"--ambient-caps={CAPS}",
             "--", sys.executable, "-m", "robot_server", "--config", str(config)],
            cwd=PROJECT_DIR, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_healthy()

    def _lay_out(self) -> None:
        """What ``overlay/usr/libexec/ot2/persist`` makes: the server's own state, the
        tokens directory of its group (setgid, group-writable), the engine's config; and
        the run directory systemd makes (``RuntimeDirectory=``); the UART in ``dialout``."""
        os.chmod(self.root, 0o755)
        self.data.mkdir(mode=0o755)
        for path, mode in ((self.state, 0o750), (self.data / "opentrons", 0o755), (self.root / "run", 0o755)):
            path.mkdir(mode=mode)
            os.chown(path, SERVER_UID, SERVER_GID)
        self.tokens.mkdir()
        os.chown(self.tokens, 0, SERVER_GID)
        os.chmod(self.tokens, 0o2770)
        for name, mode, text in (("tokens.json", 0o640, '{"format": 1, "tokens": []}\n'), ("tokens.lock", 0o660, "")):
            (self.tokens / name).write_text(text)
            os.chown(self.tokens / name, 0, SERVER_GID)
            os.chmod(self.tokens / name, mode)
        secret = self.state / "secret"
        secret.write_text(SECRET)
        os.chown(secret, SERVER_UID, SERVER_GID)
        os.chmod(secret, 0o600)
        os.chown(self.pty.slave_path, 0, grp.getgrnam("dialout").gr_gid)
        os.chmod(self.pty.slave_path, 0o660)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """One HTTP request (``Opentrons-Version: *`` unless ``headers`` maps it to None);
        ``(status, parsed JSON body)``."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            sent = {**VERSION_HEADER, **(headers or {})}
            conn.request(method, path, body=body, headers={k: v for k, v in sent.items() if v is not None})
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, json.loads(payload) if payload else None
        finally:
            conn.close()

    def post_json(self, path: str, data: dict):
        return self.request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()
            try:
                status, health = self.request("GET", "/health", headers={"Opentrons-Version": None})
                if status == 200 and health["motor_board"]["connected"]:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, (self.root / "server.log").read_text()
            time.sleep(0.1)

    def analysed(self, name: str, source: bytes) -> tuple[dict, dict]:
        """Upload ``source`` as ``name``; ``(protocol, analysis)`` once analysed."""
        body, ctype = multipart({name: source})
        status, reply = self.request("POST", "/protocols", body, {"Content-Type": ctype})
        assert status == 201, reply
        protocol_id = reply["data"]["id"]
        deadline = time.monotonic() + WAIT_S
        while True:
            status, reply = self.request("GET", f"/protocols/{protocol_id}")
            summary = reply["data"]["analysisSummaries"][0]
            if summary["status"] == "completed":
                break
            assert time.monotonic() < deadline, "analysis did not complete"
            time.sleep(0.2)
        status, analysis = self.request("GET", f"/protocols/{protocol_id}/analyses/{summary['id']}")
        assert status == 200, analysis
        return reply["data"], analysis["data"]

    def run_to_end(self, protocol_id: str) -> tuple[dict, list[dict]]:
        """Create and play a run of ``protocol_id``; ``(run, commands)`` once it ended."""
        status, reply = self.post_json("/runs", {"data": {"protocolId": protocol_id}})
        assert status == 201, reply
        run_id = reply["data"]["id"]
        status, reply = self.post_json(f"/runs/{run_id}/actions", {"data": {"actionType": "play"}})
        assert status == 201, reply
        deadline = time.monotonic() + WAIT_S
        while True:
            status, reply = self.request("GET", f"/runs/{run_id}")
            if reply["data"]["status"] in ("succeeded", "failed", "stopped"):
                break
            assert time.monotonic() < deadline, f"run stayed {reply['data']['status']}"
            time.sleep(0.2)
        status, commands = self.request("GET", f"/runs/{run_id}/commands?cursor=0&pageLength=1000")
        assert status == 200, commands
        return reply["data"], commands["data"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.pty.close()


@pytest.fixture(scope="module")
def server():
    root = Path(tempfile.mkdtemp(prefix="ot2-least-privilege-"))
    srv = Server(root)
    yield srv
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)


def comments(commands: list[dict]) -> dict[str, str]:
    """The probe's ``ctx.comment`` lines, by their first word."""
    found = {}
    for command in commands:
        if command["commandType"] == "comment":
            key, _, rest = command["params"]["message"].partition(" ")
            found[key] = rest
    return found


def assert_confined(results: dict[str, str], server: Server) -> None:
    sandbox = pwd.getpwnam(SANDBOX_USER)
    assert results["uid"] == f"{sandbox.pw_uid} groups []", results
    assert json.loads(results["caps"]) == {"CapEff": "0000000000000000", "CapPrm": "0000000000000000",
                                           "CapAmb": "0000000000000000", "NoNewPrivs": "1"}, results
    assert results["oom_score_adj"] == "500", results
    for attempt in ("read-secret", "read-tokens", "write-state", "write-tokens", "setuid-root", "setuid-server"):
        assert results[attempt] == "refused PermissionError", (attempt, results)
    assert not (server.state / "planted").exists() and not (server.tokens / "planted").exists()


def probe(server: Server) -> bytes:
    return PROBE.format(secret=str(server.state / "secret"), tokens=str(server.tokens / "tokens.json"),
                        state=str(server.state), token_dir=str(server.tokens), server_uid=SERVER_UID).encode()


def test_the_server_runs_as_its_own_user_with_only_the_units_capabilities(server):
    status = dict(line.split(":", 1) for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines())
    assert status["Uid"].split() == [str(SERVER_UID)] * 4
    assert int(status["CapEff"], 16) == (1 << 0) | (1 << 5) | (1 << 6) | (1 << 7)   # chown, kill, setgid, setuid


def test_an_ordinary_protocol_analyses_and_runs_moving_the_board(server):
    protocol, analysis = server.analysed("simple.py", SIMPLE)
    assert analysis["result"] == "ok", analysis["errors"]
    assert "home" in [c["commandType"] for c in analysis["commands"]]
    server.board.log.clear()
    run, _ = server.run_to_end(protocol["id"])
    assert run["status"] == "succeeded", run["errors"]
    assert any(line.startswith("G28") for line in server.board.log), server.board.log[-20:]


def test_analysed_protocol_code_cannot_touch_the_servers_files_or_privileges(server):
    protocol, analysis = server.analysed("probe.py", probe(server))
    assert analysis["result"] == "ok", analysis["errors"]
    assert_confined(comments(analysis["commands"]), server)
    assert SECRET not in json.dumps(analysis)


def test_a_run_cannot_touch_the_servers_files_or_privileges(server):
    protocol, _ = server.analysed("probe.py", probe(server))
    run, commands = server.run_to_end(protocol["id"])
    assert run["status"] == "succeeded", run["errors"]
    assert_confined(comments(commands), server)
    assert SECRET not in json.dumps(commands)


def as_server_user(code: str) -> str:
    """Run Python ``code`` as the server's user and group with the unit's capabilities;
    its stdout."""
    done = subprocess.run(
        ["setpriv", f"--reuid={SERVER_UID}", f"--regid={SERVER_GID}", "--clear-groups", f"--inh-caps={CAPS}",
         f"--ambient-caps={CAPS}", "--", sys.executable, "-c", code],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_server_user_and_root_share_the_tokens_file(server):
    """Pairing: the robot server's user issues a token into the tokens directory laid out
    as ot2-persist does, root (the update server) verifies it and issues one the robot
    server verifies; the file stays 0640 in the server's group, out of protocol code's reach."""
    from update_server.tokens import TokenStore
    path = server.tokens / "tokens.json"
    issued = as_server_user(f"from pathlib import Path\nfrom update_server.tokens import TokenStore\n"
                            f"print(TokenStore(Path({str(path)!r})).issue('lab pc', 'button')[0])")
    assert TokenStore(path).verify(issued)["via"] == "button"
    by_root, _ = TokenStore(path).issue("usb laptop", "trusted-interface")
    verified = as_server_user(f"from pathlib import Path\nfrom update_server.tokens import TokenStore\n"
                              f"print(TokenStore(Path({str(path)!r})).verify({by_root!r})['via'])")
    assert verified == "trusted-interface"
    mode = path.stat()
    assert (mode.st_gid, mode.st_mode & 0o7777) == (SERVER_GID, 0o640)


def test_the_sandboxes_leave_no_scratch_behind(server):
    """Scratch trees the sandbox user wrote (which the server's user may not read) are
    removed when a run ends."""
    assert run_scratch() - server.scratch_before == set()


def run_scratch() -> set[Path]:
    """The runs' scratch directories in the temporary directory, of the sandbox user."""
    uid = pwd.getpwnam(SANDBOX_USER).pw_uid
    return {p for p in Path(tempfile.gettempdir()).glob("ot2-run-*") if p.stat().st_uid == uid}

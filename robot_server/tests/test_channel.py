"""The supervised G-code channel: a real server on loopback, the emulator on a real pty or
TCP socket, raw socket clients and the real ``opentrons`` package in a subprocess."""
import os
import signal
import socket
import subprocess
import textwrap
import time

import pytest

import ot2_execute
from conftest import ENV, PYTHON, BridgeClient, start_robot, stop_robot
from robot_server.channel import collapse_retries
from robot_server.emulator import SmoothieEmulator, TcpServer


class ChannelClient:
    """A raw client of the channel writing OT-2 style commands (line + empty line)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode() + b"\r\n\r\n")

    def answer(self, timeout: float = 5.0) -> str:
        """The board's answer to one command: up to the second final line."""
        self.sock.settimeout(timeout)
        while self.buf.count(b"ok\r\n") + self.buf.count(b"!!\r\n") < 2:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"channel closed; got {self.buf!r}")
            self.buf += chunk
        text, self.buf = self.buf.decode(), b""
        return text

    def command(self, line: str, timeout: float = 5.0) -> str:
        self.send(line)
        return self.answer(timeout)

    def read_to_end(self, timeout: float = 10.0) -> bytes:
        self.sock.settimeout(timeout)
        data = self.buf
        while True:
            chunk = self.sock.recv(4096)
            if not chunk:
                return data
            data += chunk

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def lease_of(robot):
    status, health = robot.health()
    assert status == 200
    return health["lease"]


@pytest.fixture
def robot(tmp_path):
    r = start_robot(tmp_path)
    r.wait_connected()
    r.channel_port = r.service.channel.port
    yield r
    stop_robot(r)


def test_second_client_is_refused_naming_the_holder(robot):
    first = ChannelClient(robot.channel_port)
    assert first.command("M114.2").startswith("MCS: X:")
    holder = lease_of(robot)
    assert holder["pid"] == os.getpid() and "python" in holder["program"].lower()
    second = ChannelClient(robot.channel_port)
    second.send("M114.2")                   # sent before reading: still gets the line, not a reset
    refusal = second.read_to_end().decode()
    assert refusal.startswith("Error: the robot is leased to ") and f"(pid {os.getpid()})" in refusal
    assert first.command("G28.6").startswith("X:0 Y:0")      # the holder is undisturbed
    first.close()
    wait_for(lambda: lease_of(robot) is None, what="lease end")
    third = ChannelClient(robot.channel_port)
    assert third.command("M114.2").startswith("MCS:")
    third.close()


def test_a_user_not_allowed_is_refused_and_the_board_stays_free(robot):
    """Only root, the server's user, the protocol-run user and ``channel_users`` may lease
    the motor board: a process of another local user is refused by its socket's uid."""
    stranger = 60125                        # no such user: neither the sandbox's nor a channel user
    client = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(("127.0.0.1", {robot.channel_port}), timeout=5)
        s.sendall(b"G28.2 X\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        print(data.decode())
    """)
    refused = subprocess.run([PYTHON, "-I", "-c", client], user=stranger, group=stranger, capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout.startswith(f"Error: user {stranger} may not use the motor board")
    assert lease_of(robot) is None
    ours = ChannelClient(robot.channel_port)      # root (this test) still may
    assert ours.command("M114.2").startswith("MCS:")
    ours.close()


def test_http_and_bridge_motion_refused_while_reads_work(robot):
    robot.service.channel.set_namer(lambda pid: "run 42" if pid == os.getpid() else None)
    client = ChannelClient(robot.channel_port)
    assert client.command("G28.2 X Y Z A B C", timeout=10) == "ok\r\nok\r\n"
    status, body = robot.post("/robot/move", {"axes": {"X": 100}})
    assert status == 409 and body["error"] == "robot-leased"
    assert f"leased to run 42 (pid {os.getpid()})" in body["message"]
    for path, req in (("/robot/home", {}), ("/motors/disengage", {"axes": ["x"]})):
        status, body = robot.post(path, req)
        assert status == 409 and body["error"] == "robot-leased", path
    status, _ = robot.get("/robot/endstops")
    assert status == 409
    bridge = BridgeClient(robot.bridge_port)
    reply = bridge.call("move", {"axes": {"X": 100}})
    assert not reply["ok"] and reply["error"] == "robot-leased"
    # reads: the model follows the client's traffic
    assert client.command("G0 X100 Y120 F24000") == "ok\r\nok\r\n"
    status, pos = robot.get("/robot/positions?refresh=true")
    assert status == 200 and pos["position"]["X"] == 100 and pos["position"]["Y"] == 120
    assert all(pos["homed"].values())
    status, health = robot.health()
    assert status == 200 and health["lease"]["lines"] >= 2 and health["motor_board"]["connected"]
    assert robot.get("/robot/door")[0] == 200
    client.close()
    wait_for(lambda: lease_of(robot) is None, what="lease end")
    status, body = robot.post("/robot/move", {"axes": {"X": 150}})
    assert status == 200 and body["position"]["X"] == 150     # the driver has the board again
    bridge.close()


def test_door_holds_lines_until_resumed(robot):
    bridge = BridgeClient(robot.bridge_port)
    client = ChannelClient(robot.channel_port)
    client.command("G28.2 X Y Z A B C", timeout=10)
    robot.gpio.set_door(True)
    wait_for(lambda: lease_of(robot)["paused"], what="pause")
    sent = len(robot.emulator.log)
    client.send("G0 X100")
    client.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        client.sock.recv(100)
    client.send("G0 X100")                  # the client's retry of the held command
    time.sleep(0.2)
    assert robot.emulator.log[sent:] == []  # nothing forwarded while paused
    status, body = robot.post("/robot/resume")
    assert status == 409 and body["error"] == "door-open"
    robot.gpio.set_door(False)
    status, body = robot.post("/robot/resume")
    assert status == 200 and not body["lease"]["paused"]
    assert client.answer() == "ok\r\nok\r\n"
    assert robot.emulator.log[sent:] == ["G0 X100"]     # forwarded once
    assert robot.emulator.state.position["X"] == 100
    status, body = robot.post("/robot/resume")
    assert status == 409 and body["error"] == "not-paused"
    names = []
    while "lease-resumed" not in names:
        names.append(bridge.recv()["event"])
    assert names.index("lease-started") < names.index("lease-paused") < names.index("lease-resumed")
    client.close()
    bridge.close()


def test_collapse_retries():
    cmd = [b"G0 X1 \r\n", b"\r\n"]
    assert collapse_retries(cmd * 3) == cmd
    assert collapse_retries(cmd * 2 + [b"M400\r\n"]) == cmd + [b"M400\r\n"]
    assert collapse_retries([]) == []


@pytest.mark.parametrize("how", ["http", "bridge", "button"])
def test_stop_halts_ends_lease_and_unhomes(robot, how):
    client = ChannelClient(robot.channel_port)
    client.command("G28.2 X Y Z A B C", timeout=10)
    client.command("G28.6")
    assert all(robot.service.driver.homed.values())
    halts = robot.gpio.halt_count
    if how == "http":
        status, body = robot.post("/robot/stop")
        assert status == 200 and body["stopped"] and body["lease"]["pid"] == os.getpid()
    elif how == "bridge":
        bridge = BridgeClient(robot.bridge_port)
        reply = bridge.call("stop")
        assert reply["ok"] and reply["result"]["stopped"]
        bridge.close()
    else:
        robot.gpio.set_button(True)
        robot.gpio.set_button(False)
    assert client.read_to_end() == b""          # the client is disconnected
    wait_for(lambda: lease_of(robot) is None, what="lease end")
    assert robot.gpio.halt_count == halts + 1
    status, health = robot.health()
    assert health["motor_board"]["connected"] and not any(health["motor_board"]["homed"].values())
    status, body = robot.post("/robot/move", {"axes": {"X": 100}})
    assert status == 409 and body["error"] == "not-homed"
    assert robot.post("/robot/home", {})[0] == 200


CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"G28.2 X Y Z A B C\\r\\n\\r\\nG0 X10 F600\\r\\n\\r\\nM400\\r\\n\\r\\n")
    print("sent", flush=True)
    s.recv(100)
    sys.stdin.read()
""")


def test_client_killed_mid_move_ends_lease(tmp_path):
    robot = start_robot(tmp_path, SmoothieEmulator(time_scale=0.1))
    try:
        robot.wait_connected()
        proc = subprocess.Popen([PYTHON, "-c", CLIENT, str(robot.service.channel.port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=ENV)
        assert proc.stdout.readline().strip() == "sent"
        holder = wait_for(lambda: lease_of(robot), what="lease")
        assert holder["pid"] == proc.pid
        wait_for(lambda: "M400" in robot.emulator.log, what="M400 forwarded")   # the 4 s move runs
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        wait_for(lambda: lease_of(robot) is None, timeout=15, what="lease end")
        health = robot.wait_connected()
        assert health["motor_board"]["homed"]["X"]
        status, body = robot.post("/robot/move", {"axes": {"X": 200}})
        assert status == 200 and body["position"]["X"] == 200
    finally:
        stop_robot(robot)


def test_a_client_gone_before_the_boards_late_answer_still_ends_its_lease(tmp_path):
    """A client dies (nothing unread: its end sends FIN) with a command outstanding, and the
    board answers before the server has seen it go, as on a loaded machine (a run process
    killed mid-home): the answer is forwarded to the dead client, whose end resets the
    connection, so half-closing it fails (ENOTCONN). The lease must end all the same, and
    the board serve the next client (before the fix the lease stayed held for good and
    stopping the server hung)."""
    robot = start_robot(tmp_path, SmoothieEmulator(time_scale=1.0))
    try:
        robot.wait_connected()
        client = ChannelClient(robot.service.channel.port)
        wait_for(lambda: lease_of(robot), what="lease")
        client.send("G4 P0.3 M400")                  # answered 0.3 s after it is received
        wait_for(lambda: "G4 P0.3 M400" in robot.emulator.log, what="command forwarded")
        robot.server.loop.call_soon_threadsafe(time.sleep, 1.0)    # the server is held up...
        time.sleep(0.1)
        client.close()                               # ...while the client goes and the board answers
        wait_for(lambda: lease_of(robot) is None, timeout=10, what="lease end")
        health = robot.wait_connected()
        assert health["lease"] is None
        following = ChannelClient(robot.service.channel.port)
        assert "MCS:" in following.command("M114.2")
        following.close()
    finally:
        stop_robot(robot)


def test_a_board_that_answers_out_of_step_when_taken_back_still_ends_the_lease(robot):
    """Taking the board back fails in an unexpected way (its homing status cannot be read):
    the lease ends, the board is reported lost, and the server reconnects once the board
    answers properly again."""
    client = ChannelClient(robot.channel_port)
    assert "MCS:" in client.command("M114.2")
    robot.emulator.unknown_commands = {"G28.6"}     # a firmware without the homing status query
    client.close()
    wait_for(lambda: lease_of(robot) is None, what="lease end")
    health = robot.wait_connected(False)
    assert "unexpected reply" in health["motor_board"]["error"], health
    refused = ChannelClient(robot.channel_port).read_to_end().decode()
    assert refused.startswith("Error: the motor board is not connected")
    robot.emulator.unknown_commands = set()
    robot.wait_connected(True)                      # the server kept trying
    following = ChannelClient(robot.channel_port)
    assert "MCS:" in following.command("M114.2")
    following.close()


def test_board_disconnected_mid_lease(robot):
    client = ChannelClient(robot.channel_port)
    client.command("M114.2")
    robot.pty.unplug()
    client.send("G28.6")
    rest = client.read_to_end().decode()
    assert rest.startswith("Error: the motor board was lost (motor board on ")
    wait_for(lambda: lease_of(robot) is None, what="lease end")
    health = robot.wait_connected(False)
    assert health["motor_board"]["error"]
    status, body = robot.post("/robot/home", {})
    assert status == 409 and body["error"] == "board-not-connected"
    refused = ChannelClient(robot.channel_port).read_to_end().decode()
    assert refused.startswith("Error: the motor board is not connected")


def test_child_env_points_at_the_channel(robot, monkeypatch):
    monkeypatch.setenv("OT_SMOOTHIE_EMULATOR_URI", "socket://elsewhere:1")
    env = robot.service.channel.child_env()
    assert env["OT_SMOOTHIE_EMULATOR_URI"] == f"socket://127.0.0.1:{robot.channel_port}"


def events_until(bridge: BridgeClient, name: str) -> list[dict]:
    seen = []
    while True:
        msg = bridge.recv()
        assert msg is not None, "bridge closed"
        if msg.get("type") == "event":
            seen.append(msg)
            if msg["event"] == name:
                return seen


def test_opentrons_through_channel_sends_the_same_gcode_as_direct(tmp_path):
    """The key property: the board sees exactly the G-code opentrons sends to it when
    connected directly, and opentrons finds the pipettes through the channel."""
    direct_emu = SmoothieEmulator()
    direct = TcpServer(direct_emu).start()
    board_emu = SmoothieEmulator()
    board = TcpServer(board_emu).start()
    (tmp_path / "srv").mkdir()
    robot = start_robot(tmp_path / "srv", board_emu, serial_port=board.url)
    try:
        robot.wait_connected()
        (tmp_path / "direct").mkdir()
        (tmp_path / "channel").mkdir()
        ot2_execute.execute(direct.url, tmp_path / "direct")
        bridge = BridgeClient(robot.bridge_port)
        start = len(board_emu.log)
        proc = ot2_execute.start(robot.service.channel.url, tmp_path / "channel")
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        events = events_until(bridge, "lease-ended")
        started = next(e for e in events if e["event"] == "lease-started")
        ended = events[-1]
        assert started["data"]["pid"] == proc.pid
        assert ended["data"]["reason"] == "client disconnected"
        through_channel = board_emu.log[start:start + ended["data"]["lines"]]
        assert len(direct_emu.log) < 10000 and len(direct_emu.log) > 100
        assert through_channel == direct_emu.log
        assert any(ln.startswith("G28.2") for ln in through_channel)
        assert "M371 L" in through_channel and "M371 R" in through_channel
        bridge.close()
    finally:
        stop_robot(robot)
        board.close()
        direct.close()


def test_opentrons_run_paused_by_door_resumed_then_stopped(tmp_path):
    """A protocol executed by opentrons through the channel: the door holds its G-code
    until resume; stop then ends it (opentrons sees the port close) and un-homes."""
    emu = SmoothieEmulator(time_scale=0.02)
    (tmp_path / "srv").mkdir()
    robot = start_robot(tmp_path / "srv", emu)
    robot.wait_connected()
    proc = ot2_execute.start(robot.service.channel.url, tmp_path, wells=8)
    try:
        wait_for(lambda: (lease_of(robot) or {}).get("lines", 0) > 300, timeout=120, what="protocol running")
        robot.gpio.set_door(True)
        wait_for(lambda: lease_of(robot)["paused"], what="pause")
        time.sleep(0.2)
        held_at = len(emu.log)
        time.sleep(3)
        assert len(emu.log) == held_at and proc.poll() is None
        robot.gpio.set_door(False)
        assert robot.post("/robot/resume")[0] == 200
        wait_for(lambda: len(emu.log) > held_at + 20, what="lines after resume")
        status, body = robot.post("/robot/stop")
        assert status == 200 and body["stopped"] and body["lease"]["pid"] == proc.pid
        out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "socket disconnected" in err
        health = robot.health()[1]
        assert health["lease"] is None and not any(health["motor_board"]["homed"].values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stop_robot(robot)

"""The emulator on the wire: framing, errors, alarms, halts, over a real pty and TCP."""
import os
import select
import socket
import subprocess
import time


from conftest import ENV, PROJECT_DIR, PYTHON
from robot_server.driver import MotorDriver
from robot_server.emulator import PtyServer, SmoothieEmulator, TcpServer


def talk(emu: SmoothieEmulator, line: str) -> str:
    """What the board sends back for ``line`` written with the OT-2 terminator."""
    return emu.handle_line(line) + emu.handle_line("")


def test_ack_framing_and_data_first():
    emu = SmoothieEmulator()
    assert talk(emu, "G90") == "ok\r\nok\r\n"
    assert talk(emu, "M114.2") == "MCS: X:0.0000 Y:0.0000 Z:0.0000 A:0.0000 B:0.0000 C:0.0000\r\nok\r\nok\r\n"
    assert talk(emu, "G28.6") == "X:0 Y:0 Z:0 A:0 B:0 C:0\r\nok\r\nok\r\n"
    assert talk(emu, "version").startswith("Build version: ")
    assert talk(emu, "M119").startswith("X_max:0 Y_max:0 Z_max:0 A_max:0 B_max:0 C_max:0 _pins:")


def test_ot2_setup_sequence_and_packed_lines():
    emu = SmoothieEmulator()
    for line in ("M999", "G28.6", "M92 X80.0 Y80.0 Z400 A400", "M92 B768 C768", "G90", "M114.2",
                 "M203.1 X600 Y400 Z125 A125 B40 C40", "G0 F24000", "M204 S10000 X3000 Y2000 Z1500 A1500 B200 C200"):
        assert talk(emu, line).endswith("ok\r\nok\r\n")
    assert talk(emu, "M907 A0.1 B0.05 C0.05 X1.25 Y0.3 Z0.1 G4 P0.005 G28.2 ABCZ") == "ok\r\nok\r\n"
    assert talk(emu, "M907 X1.25 G4 P0.005 G28.2 X") == "ok\r\nok\r\n"
    assert talk(emu, "G28.2 Y") == "ok\r\nok\r\n"
    assert talk(emu, "M907 A0.1 B0.05 C0.05 X1.25 Y0.3 Z0.1 G4 P0.005 G0 X100.0 Y120.0") == "ok\r\nok\r\n"
    assert emu.state.position["X"] == 100 and emu.state.current["X"] == 1.25
    assert talk(emu, "G91 G0 Y-3 G90") == "ok\r\nok\r\n"
    assert emu.state.position["Y"] == 117 and emu.state.absolute
    assert "Y_max:0" in talk(emu, "M119")
    talk(emu, "G28.2 Y")
    assert "Y_max:1" in talk(emu, "M119")
    assert talk(emu, "M120 G0 F600 M121") == "ok\r\nok\r\n"
    assert emu.state.feed_mm_min == 24000
    assert talk(emu, "M18 XY") == "ok\r\nok\r\n" and not emu.state.engaged["X"] and emu.state.engaged["Z"]
    assert talk(emu, "M17") == "ok\r\nok\r\n" and emu.state.engaged["X"]
    assert talk(emu, "G38.2 F420 Z-40").startswith("[PRB:")


def test_refuses_absolute_move_before_homing():
    emu = SmoothieEmulator()
    reply = talk(emu, "G0 X10")
    assert reply.startswith("Error: G0: axis X not homed") and reply.endswith("ok\r\nok\r\n")
    assert talk(emu, "G91 G0 X1 G90") == "ok\r\nok\r\n"     # relative jog allowed
    assert talk(SmoothieEmulator(require_homing=False), "G0 X10") == "ok\r\nok\r\n"


def test_hard_limit_alarm_then_halted_until_m999():
    emu = SmoothieEmulator()
    talk(emu, "G28.2 XYZABC")
    assert talk(emu, "G0 X500") == "ALARM: Hard limit +X\r\nok\r\nok\r\n"
    assert talk(emu, "G0 X10") == "!!\r\nok\r\n"
    assert talk(emu, "G28.6 G0 X1") == "!!\r\nok\r\n"          # rest of the line dropped
    assert talk(emu, "M114.2").startswith("MCS:")               # read-only still allowed
    assert talk(emu, "M999").startswith("WARNING: After HALT you should HOME")
    assert talk(emu, "G28.6") == "X:0 Y:0 Z:0 A:0 B:0 C:0\r\nok\r\nok\r\n"


def test_realtime_m400_waits_for_motion():
    emu2 = SmoothieEmulator(time_scale=0.05, require_homing=False)
    t0 = time.monotonic()
    assert talk(emu2, "G0 X20 F600") == "ok\r\nok\r\n"          # acked at once
    assert time.monotonic() - t0 < 0.05
    talk(emu2, "M400")
    assert 0.07 < time.monotonic() - t0 < 1.0        # 20 mm at 10 mm/s = 2 s, scaled by 0.05


def _read_until(fd: int, marker: bytes, timeout: float = 2.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        r, _, _ = select.select([fd], [], [], max(0, deadline - time.monotonic()))
        if not r:
            raise TimeoutError(buf)
        buf += os.read(fd, 4096)
    return buf


def test_pty_wire_bytes():
    emu = SmoothieEmulator()
    srv = PtyServer(emu).start()
    try:
        fd = os.open(srv.slave_path, os.O_RDWR | os.O_NOCTTY)
        import tty
        tty.setraw(fd)
        os.write(fd, b"M114.2\r\n\r\n")
        assert _read_until(fd, b"ok\r\nok\r\n") == b"MCS: X:0.0000 Y:0.0000 Z:0.0000 A:0.0000 B:0.0000 C:0.0000\r\nok\r\nok\r\n"
        os.write(fd, b"G28.2 X\r")          # a line split across writes
        os.write(fd, b"\n\r\n")
        assert _read_until(fd, b"ok\r\nok\r\n") == b"ok\r\nok\r\n"
        os.close(fd)
    finally:
        srv.close()


def test_tcp_accepts_next_client_and_keeps_state():
    emu = SmoothieEmulator()
    srv = TcpServer(emu).start()
    try:
        for expected in (b"X:0", b"X:1"):
            s = socket.create_connection(srv.address, timeout=2)
            s.sendall(b"G28.6\r\n\r\n")
            assert _read_until(s.fileno(), b"ok\r\nok\r\n").startswith(expected)
            s.sendall(b"G28.2 X\r\n\r\n")
            _read_until(s.fileno(), b"ok\r\nok\r\n")
            s.close()
            time.sleep(0.05)
        d = MotorDriver(srv.url, ack_timeout=0.5)       # pyserial socket:// URL
        assert d.connect().startswith("edge-ot2emu")
        assert d.homed["X"]
        d.disconnect()
    finally:
        srv.close()


def test_cli_tcp_subprocess():
    proc = subprocess.Popen([PYTHON, "-m", "robot_server.emulator", "--tcp", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, cwd=PROJECT_DIR, text=True)
    try:
        host, port = proc.stdout.readline().strip().rsplit(":", 1)
        d = MotorDriver(f"socket://{host}:{port}", ack_timeout=1)
        d.connect()
        d.home()
        assert d.move({"X": 10, "Y": 20}, 100)["X"] == 10
        d.disconnect()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_cli_pty_subprocess_with_link(tmp_path):
    link = tmp_path / "ttyOT2"
    proc = subprocess.Popen([PYTHON, "-m", "robot_server.emulator", "--pty", "--link", str(link)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, cwd=PROJECT_DIR, text=True)
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/") and os.path.realpath(link) == path
        d = MotorDriver(str(link), ack_timeout=1)
        d.connect()
        assert d.read_homing_status() == {ax: False for ax in "XYZABC"}
        d.disconnect()
    finally:
        proc.terminate()
        proc.wait(30)
    assert not link.exists()


def test_cli_rejects_bad_limit():
    r = subprocess.run([PYTHON, "-m", "robot_server.emulator", "--pty", "--hard-limit", "Q=3"],
                       capture_output=True, env=ENV, cwd=PROJECT_DIR, timeout=10)
    assert r.returncode == 2 and b"AXIS=MM" in r.stderr

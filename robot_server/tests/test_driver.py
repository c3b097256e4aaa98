"""The driver against the emulator over a real pty: motion, limits, and every failure."""
import math
import threading
import time

import pytest

from conftest import ACK_TIMEOUT
from robot_server.driver import (AlarmError, BoardDisconnected, BoardError, BoardNotConnected,
                                 BoardTimeout, HaltedError, InvalidSpeedError, MotorDriver,
                                 NotHomedError, SoftLimitError, UnknownAxisError)
from robot_server.gcode import HOMED_POSITION


def test_connect_runs_ot2_setup(driver, emulator):
    assert driver.connected and driver.firmware.startswith("edge-ot2emu")
    assert emulator.log[:3] == ["M999", "version", "G28.6"]
    assert "M92 B768 C768" in emulator.log and "G0 F24000" in emulator.log
    assert emulator.state.steps_per_mm["B"] == 768 and emulator.state.max_speed["X"] == 600
    assert driver.homed == {ax: False for ax in "XYZABC"}


def test_home_order_and_positions(driver, emulator):
    assert driver.home() == HOMED_POSITION
    homes = [ln for ln in emulator.log if ln.startswith("G28.2")]
    assert homes == ["G28.2 ZABC", "G28.2 X", "G28.2 Y"]
    # every command is followed by M400
    idx = emulator.log.index("G28.2 X")
    assert emulator.log[idx + 1] == "M400"
    assert driver.read_homing_status() == {ax: True for ax in "XYZABC"}


def test_home_single_axis(driver):
    driver.home("b")
    assert driver.homed["B"] and not driver.homed["X"]


def test_move_feed_in_mm_per_min(driver, emulator):
    driver.home()
    pos = driver.move({"X": 100, "Y": 50.25, "B": -2}, speed=50)
    assert pos["X"] == 100 and pos["Y"] == 50.25 and pos["B"] == -2
    assert "G0 X100 Y50.25 B-2 F3000" in emulator.log
    assert driver.read_position() == {"X": 100, "Y": 50.25, "Z": 218, "A": 218, "B": -2, "C": 19}


def test_endstops_current_dwell_engage_probe(driver, emulator):
    driver.home()
    ends = driver.read_endstops()
    assert ends["X"] and ends["Y"] and not ends["Probe"]
    driver.set_current({"x": 1.0, "B": 0.3})
    assert emulator.state.current["X"] == 1.0
    driver.dwell(0.01)
    assert driver.disengage("XY") == {**{ax: True for ax in "ZABC"}, "X": False, "Y": False}
    assert not emulator.state.engaged["X"]
    driver.engage("X")
    assert emulator.state.engaged["X"]
    pos = driver.probe("Z", -40, 7)
    assert pos["Z"] == 198.0      # emulated surface half way
    driver.wait_idle()


@pytest.mark.parametrize("targets", [{"X": 419}, {"X": -0.1}, {"Z": 1000}, {"B": -41}, {"X": math.nan},
                                     {"Y": math.inf}, {"X": "10"}, {"X": True}])
def test_soft_limits_checked_before_sending(driver, emulator, targets):
    driver.home()
    before = len(emulator.log)
    with pytest.raises(SoftLimitError):
        driver.move(targets)
    assert len(emulator.log) == before          # nothing went on the wire


@pytest.mark.parametrize("axis", ["Q", "x1", "", "XY", 5, None])
def test_unknown_axis(driver, axis):
    driver.home()
    with pytest.raises(UnknownAxisError):
        driver.move({axis: 10})
    with pytest.raises(UnknownAxisError):
        driver.home([axis] if axis is not None else [None])


@pytest.mark.parametrize("speed", [0, -5, 601, 1e12, math.nan, math.inf, "fast", True])
def test_bad_speed(driver, speed):
    driver.home()
    with pytest.raises(InvalidSpeedError):
        driver.move({"X": 10}, speed)


def test_speed_limit_depends_on_axes(driver):
    driver.home()
    driver.move({"X": 10}, 600)
    with pytest.raises(InvalidSpeedError):
        driver.move({"B": 10}, 41)


def test_move_before_homing(driver, emulator):
    with pytest.raises(NotHomedError):
        driver.move({"X": 10})
    driver.home("X")
    with pytest.raises(NotHomedError):
        driver.move({"X": 10, "Y": 10})
    # the board itself also refuses (raw line, bypassing the driver's check)
    with pytest.raises(BoardError, match="not homed"):
        driver.send("G0 Y10")


def test_timeout_marks_axes_unhomed(driver, emulator):
    driver.home()
    emulator.mute = True
    t0 = time.monotonic()
    with pytest.raises(BoardTimeout):
        driver.move({"X": 100})
    assert time.monotonic() - t0 < 5
    # board still silent: nothing is known any more
    assert driver.homed == {ax: False for ax in "XYZABC"}
    assert driver.position["X"] is None
    emulator.mute = False


def test_timeout_then_board_answers_rereads_state(driver, emulator):
    driver.home()

    def unmute():
        time.sleep(ACK_TIMEOUT * 1.2)
        emulator.mute = False

    emulator.mute = True
    t = threading.Thread(target=unmute)
    t.start()
    with pytest.raises(BoardTimeout):
        driver.wait_idle()
    t.join()
    driver2_pos = driver.read_position()      # the port still works afterwards
    assert driver2_pos["X"] == 418


def test_move_timeout_rereads_position_when_board_recovers(driver, emulator):
    driver.home()
    lines = emulator.lines_received

    def unmute():
        while emulator.lines_received < lines + 2:   # the G0 line and its blank line
            time.sleep(0.005)
        time.sleep(ACK_TIMEOUT * 1.2)
        emulator.mute = False

    emulator.mute = True
    threading.Thread(target=unmute).start()
    with pytest.raises(BoardTimeout):
        driver.move({"X": 100})
    # position re-read from the board, axes homed per G28.6
    assert driver.homed["X"] and driver.position["X"] in (100.0, 418.0)


def test_board_error_reply(driver, emulator):
    driver.home()
    emulator.fail_next = "something broke"
    with pytest.raises(BoardError, match="something broke") as exc:
        driver.move({"X": 100})
    assert not isinstance(exc.value, (AlarmError, HaltedError))
    assert emulator.log[-3:-1] == ["M999", "G28.6"] or "M999" in emulator.log[-4:]
    assert driver.homed["X"]


def test_hard_limit_alarm_recovers_and_rehomes(pty, emulator):
    emulator.hard_limits["X"] = 300          # a shorter X axis than the driver believes
    resets = []
    d = MotorDriver(pty.slave_path, ack_timeout=ACK_TIMEOUT, reset_hook=lambda: (resets.append(1), emulator.reset()))
    d.connect()
    d.home()
    with pytest.raises(AlarmError) as exc:
        d.move({"X": 350, "Y": 100})
    assert exc.value.axis == "X" and "Hard limit +X" in str(exc.value)
    assert resets == [1]                     # reset pin pulsed, then M999, G28.6, home X
    assert not emulator.state.halted
    assert d.homed["X"] and not d.homed["Y"]
    assert d.position["X"] == HOMED_POSITION["X"]
    assert "G28.2 X" in emulator.log[-4:]
    d.disconnect()


def test_alarm_line_from_board(driver, emulator):
    driver.home()
    emulator.alarm_next = "Hard limit +Y"
    with pytest.raises(AlarmError):
        driver.move({"Y": 100})
    assert not emulator.state.halted and driver.homed["Y"]


def test_halted_board_answers_bangs(driver, emulator):
    driver.home()
    emulator.halt()                            # e.g. the halt line was pulled
    with pytest.raises(HaltedError, match="halted"):
        driver.move({"X": 10})
    assert not emulator.state.halted           # M999 sent during recovery
    assert not driver.homed["X"]               # the board lost homing in the halt
    with pytest.raises(HaltedError):
        emulator.halt()
        driver.send("G28.6")                   # raw: no recovery
    driver.clear_alarm()


def test_serial_port_missing():
    d = MotorDriver("/dev/does-not-exist-ot2", ack_timeout=0.2)
    with pytest.raises(BoardNotConnected, match="does not exist"):
        d.connect()
    with pytest.raises(BoardNotConnected):
        d.move({"X": 1})
    assert not d.connected
    with pytest.raises(BoardNotConnected):
        MotorDriver("socket://127.0.0.1:1", ack_timeout=0.2).connect()


def test_board_silent_at_connect(pty, emulator):
    emulator.mute = True
    d = MotorDriver(pty.slave_path, ack_timeout=0.3)
    with pytest.raises(BoardTimeout):
        d.connect()
    assert not d.connected


def test_unreadable_reply_at_connect_is_a_board_error(pty, emulator):
    """A board whose homing status cannot be read (a firmware without ``G28.6`` answers a
    bare ``ok``) fails the set-up with a board error, and the port is closed again."""
    emulator.unknown_commands = {"G28.6"}
    d = MotorDriver(pty.slave_path, ack_timeout=0.3)
    with pytest.raises(BoardError, match="unexpected reply during set-up"):
        d.connect()
    assert not d.connected
    emulator.unknown_commands = set()
    other = MotorDriver(pty.slave_path, ack_timeout=0.3)     # the port is free (opened exclusively)
    other.connect()
    other.disconnect()


def test_resync_that_cannot_read_the_board_closes_the_port(driver, emulator):
    emulator.unknown_commands = {"G28.6"}
    with pytest.raises(BoardError, match="unexpected reply during set-up"):
        driver.resync()
    assert not driver.connected
    assert driver.homed == {ax: False for ax in "XYZABC"}


def test_unplugged_mid_command(driver, pty, emulator):
    driver.home()
    emulator.mute = True                       # the command will be in flight...
    threading.Timer(0.1, pty.unplug).start()   # ...when the cable is pulled
    with pytest.raises(BoardDisconnected):
        driver.move({"X": 100})
    assert not driver.connected
    assert driver.homed == {ax: False for ax in "XYZABC"}
    with pytest.raises(BoardNotConnected):
        driver.read_position()


def test_exclusive_port(pty, driver):
    other = MotorDriver(pty.slave_path, ack_timeout=0.2)
    with pytest.raises(BoardNotConnected):
        other.connect()

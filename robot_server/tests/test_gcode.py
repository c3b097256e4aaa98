import pytest

from robot_server import gcode


def test_split_packed_ot2_line():
    cmds = gcode.split_line("M907 A0.1 B0.05 C0.05 X1.25 Y0.3 Z0.1 G4 P0.005 G0 X100.0 Y120.0")
    assert [c.code for c in cmds] == ["M907", "G4", "G0"]
    assert cmds[0].value("X") == 1.25
    assert cmds[1].value("P") == 0.005
    assert cmds[2].params == [("X", 100.0), ("Y", 120.0)]


def test_split_home_bare_letters_and_relative():
    (home,) = gcode.split_line("G28.2 ABCZ")
    assert home.code == "G28.2" and home.letters() == list("ABCZ")
    assert all(v is None for _, v in home.params)
    assert [c.code for c in gcode.split_line("G91 G0 Y-3 G90")] == ["G91", "G0", "G90"]


def test_split_shell_and_comments_and_errors():
    assert gcode.split_line("version")[0].code == "version"
    assert gcode.split_line("G0 X1 ; go") [0].params == [("X", 1.0)]
    assert gcode.split_line("   ") == []
    with pytest.raises(ValueError):
        gcode.split_line("X10")
    with pytest.raises(ValueError):
        gcode.split_line("G0 X1 #")


def test_builders():
    assert gcode.move({"Y": 120, "X": 100.5}, 400) == "G0 X100.5 Y120 F24000"
    assert gcode.home("ZABC") == "G28.2 ZABC"
    assert gcode.dwell(0.005) == "G4 P0.005"
    assert gcode.set_current({"X": 1.25, "A": 0.1}) == "M907 X1.25 A0.1"
    assert gcode.probe("Z", -40, 7) == "G38.2 F420 Z-40"
    assert gcode.fmt(-0.00001) == "0"


def test_parsers():
    pos = gcode.parse_position("MCS: X:418.0000 Y:353.0000 Z:218.0000 A:218.0000 B:19.0000 C:19.0000")
    assert pos == gcode.HOMED_POSITION
    assert gcode.parse_homing_status("X:1 Y:1 Z:0 A:1 B:1 C:1")["Z"] is False
    ends = gcode.parse_endstops("X_max:0 Y_max:1 Z_max:0 A_max:0 B_max:0 C_max:0 _pins:(P1.24)0 Probe: 1")
    assert ends["Y"] and ends["Probe"] and not ends["X"]
    assert gcode.alarm_axis("ALARM: Hard limit +X") == "X"
    with pytest.raises(ValueError):
        gcode.parse_position("MCS: X:1")

"""Protocol API: definitions, simulation, line-numbered errors, and execution against the
emulator on a real pty (the G-code it received checked against the deck geometry)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENV, PROJECT_DIR, PYTHON
from robot_server import gcode
from robot_server.protocol import ProtocolFailure
from robot_server.protocol.context import RunControl
from robot_server.protocol.hardware import DriverHardware, SimulatedHardware
from robot_server.protocol.labware import labware_definition, labware_names, pipette_definitions
from robot_server.protocol.loader import load_protocol, make_context, run_protocol, simulate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DILUTION = EXAMPLES / "serial_dilution.py"

HEADER = "from opentrons import protocol_api\n\nmetadata = {'apiLevel': '2.15'}\n\n"


class FastControl(RunControl):
    """Delays take no time (tests)."""

    def sleep(self, seconds: float) -> None:
        self.check()


def sim(body: str, filename: str = "p.py"):
    return simulate(HEADER + body, filename)


def line_of(source: str, needle: str) -> int:
    return next(i for i, ln in enumerate(source.splitlines(), 1) if needle in ln)


# ------------------------------------------------------------------ definitions
def test_labware_definitions_sbs_geometry():
    required = {"opentrons_96_tiprack_300ul", "opentrons_96_tiprack_20ul", "corning_96_wellplate_360ul_flat",
                "nest_96_wellplate_200ul_flat", "nest_12_reservoir_15ml", "opentrons_1_trash_1100ml_fixed"}
    assert required <= set(labware_names())
    _, ctx = sim("def run(protocol):\n    pass\n")
    plate = ctx.load_labware("corning_96_wellplate_360ul_flat", 5)
    assert len(plate.wells()) == 96 and [w.well_name for w in plate.wells()[:3]] == ["A1", "B1", "C1"]
    assert [w.well_name for w in plate.rows()[0][:3]] == ["A1", "A2", "A3"] and len(plate.rows()) == 8
    assert len(plate.columns()) == 12 and plate.columns()[0][-1].well_name == "H1"
    # slot 5 origin (132.5, 90.5); A1 centre 14.38 / 74.24 mm in; 9 mm pitch
    assert plate["A1"].top().point == (132.5 + 14.38, 90.5 + 74.24, 3.55 + 10.67)
    assert plate["H12"].bottom(1).point == pytest.approx((132.5 + 14.38 + 99, 90.5 + 74.24 - 63, 4.55))
    res = ctx.load_labware("nest_12_reservoir_15ml", 6)
    assert len(res.wells()) == 12 and res.rows()[0][11].well_name == "A12"
    assert ctx.fixed_trash["A1"].top().point == (265 + 82.84, 271.5 + 80, 82)
    assert labware_definition("opentrons_96_tiprack_20ul")["tiprack"]["tip_length_mm"] == 39.2
    for name in ("p20_single_gen2", "p300_single_gen2", "p1000_single_gen2"):
        assert name in pipette_definitions()


def test_volume_to_plunger_mm():
    _, ctx = sim("def run(protocol):\n    pass\n")
    p300 = ctx.load_instrument("p300_single_gen2", "right")
    assert p300.max_volume == 300 and p300.flow_rate.aspirate == 92.86
    assert p300.plunger_position(0) == -14.5
    assert p300.plunger_position(100) == pytest.approx(-14.5 + 100 / 9.102)
    assert p300.plunger_position(300) <= 19          # full stroke fits below the homed switch
    assert p300.plunger_speed(92.86) == pytest.approx(92.86 / 9.31)
    p20 = ctx.load_instrument("p20_single_gen2", "left")
    assert p20.flow_rate.dispense == 7.56 and p20.plunger_position(20) == pytest.approx(-8.5 + 20 / 0.762)


# ------------------------------------------------------------------ simulation
def test_simulate_serial_dilution_log_and_summary():
    proto, ctx = simulate(DILUTION.read_text(), str(DILUTION))
    assert proto.name == "Serial dilution" and proto.api_version == (2, 15)
    texts = [c["text"] for c in ctx.commands if c["kind"] != "load"]
    assert texts[0].startswith("Transferring 100.0 from A1 of NEST 12 Well Reservoir 15 mL on slot 2 to A1 of NEST 96")
    assert "Picking up tip from A1 of Opentrons OT-2 96 Tip Rack 300 µL on slot 1" in texts
    assert ("Aspirating 100.0 uL from A2 of NEST 12 Well Reservoir 15 mL on slot 2 at 92.86 uL/sec") in texts
    assert texts[-2] == "Dropping tip into A1 of Opentrons Fixed Trash on slot 12"
    asp = next(c for c in ctx.commands if c["text"].startswith("Aspirating 100.0 uL from A2"))
    assert asp["point"] == [155.88, 42.78, 5.55] and asp["volume"] == 100
    assert asp["line"] == line_of(DILUTION.read_text(), 'p300.aspirate(100, reservoir["A2"])')
    nested = [c for c in ctx.commands if c["depth"] == 1]
    assert nested and all(c["line"] is not None for c in nested)
    s = ctx.summary()
    assert s["tips_used"] == 2 and s["aspirated_ul"] == s["dispensed_ul"] == 1200 + 100 + 1100 + 1650
    assert 60 < s["duration_s"] < 600


def test_robot_simulate_command_line(tmp_path):
    out = subprocess.run([PYTHON, "-m", "robot_server.protocol.cli", "simulate", str(DILUTION)], cwd=PROJECT_DIR,
                         env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "Aspirating 100.0 uL from A2 of NEST 12 Well Reservoir 15 mL on slot 2 at 92.86 uL/sec"\
           "  @ (155.88, 42.78, 5.55)" in lines
    assert "\tAspirating 50.0 uL from A2 of NEST 96 Well Plate 200 µL Flat on slot 3 at 92.86 uL/sec"\
           "  @ (288.28, 74.18, 4.50)" in lines
    assert lines[-1].startswith("Summary: 136 commands, 2 tips used, 4050 uL aspirated")
    bad = tmp_path / "bad.py"
    bad.write_text(HEADER + "def run(protocol):\n    protocol.load_labware('no_such_plate', 1)\n")
    out = subprocess.run([PYTHON, "-m", "robot_server.protocol.cli", "simulate", str(bad)], cwd=PROJECT_DIR,
                         env=ENV, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"{bad} line 6: UnknownLabwareError: unknown labware 'no_such_plate'" in out.stderr


# ------------------------------------------------------------------ bad input
BAD = {
    "does-not-parse": ("def run(protocol):\n    p = protocol.load_labware('x', 1\n    p.wells()\n", "syntax", 6),
    "no-run": ("def main(protocol):\n    pass\n", "no-run", None),
    "raises": ("def run(protocol):\n    x = 1\n    raise ValueError('boom')\n", "run", 7),
    "unknown-labware": ("def run(protocol):\n    protocol.load_labware('corning_96_wellplate_360ul', 1)\n",
                        "run", 6),
    "over-aspirate": ("def run(protocol):\n"
                      "    tips = protocol.load_labware('opentrons_96_tiprack_300ul', 1)\n"
                      "    res = protocol.load_labware('nest_12_reservoir_15ml', 2)\n"
                      "    p = protocol.load_instrument('p300_single_gen2', 'right', tip_racks=[tips])\n"
                      "    p.pick_up_tip()\n"
                      "    p.aspirate(200, res['A1'])\n"
                      "    p.aspirate(150, res['A1'])\n", "run", 11),
    "missing-import": ("import pyvisa_not_installed\n\ndef run(protocol):\n    pass\n", "load", 5),
    "no-tip": ("def run(protocol):\n    res = protocol.load_labware('nest_12_reservoir_15ml', 2)\n"
               "    p = protocol.load_instrument('p300_single_gen2', 'left')\n    p.aspirate(10, res['A1'])\n",
               "run", 8),
    "slot-occupied": ("def run(protocol):\n    protocol.load_labware('nest_12_reservoir_15ml', 2)\n"
                      "    protocol.load_labware('nest_12_reservoir_15ml', '2')\n", "run", 7),
    "bad-slot": ("def run(protocol):\n    protocol.load_labware('nest_12_reservoir_15ml', 13)\n", "run", 6),
    "unknown-pipette": ("def run(protocol):\n    protocol.load_instrument('p300_single_gen9', 'right')\n", "run", 6),
    "out-of-tips": ("def run(protocol):\n    tips = protocol.load_labware('opentrons_96_tiprack_20ul', 1)\n"
                    "    p = protocol.load_instrument('p20_single_gen2', 'left', tip_racks=[tips])\n"
                    "    for _ in range(97):\n        p.pick_up_tip()\n        p.drop_tip()\n", "run", 9),
    "nested-call": ("def helper(p):\n    p.load_labware('nope', 1)\n\ndef run(protocol):\n    helper(protocol)\n",
                    "run", 6),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_protocols_name_the_line(name):
    body, kind, line = BAD[name]
    with pytest.raises(ProtocolFailure) as info:
        sim(body, "user.py")
    exc = info.value
    assert exc.kind == kind and exc.line == line, exc
    assert str(exc).startswith(f"user.py line {line}:" if line else "user.py:")
    if name == "missing-import":
        assert exc.error_type == "ModuleNotFoundError" and "pyvisa_not_installed" in str(exc)
    if name == "over-aspirate":
        assert "cannot aspirate 150.0 uL" in str(exc) and "already holds 200" in str(exc)
    if name == "unknown-labware":
        assert "did you mean 'corning_96_wellplate_360ul_flat'" in str(exc)
    if name == "nested-call":
        assert [t[0] for t in exc.trace] == [9, 6]


def test_api_level_too_new_names_metadata_line():
    with pytest.raises(ProtocolFailure) as info:
        load_protocol("metadata = {'apiLevel': '2.99'}\n\ndef run(p):\n    pass\n", "new.py")
    assert info.value.kind == "api-version" and info.value.line == 1


def test_shim_only_while_loading():
    assert "opentrons" not in sys.modules
    proto = load_protocol(HEADER + "def run(protocol: protocol_api.ProtocolContext):\n    import opentrons.types\n"
                          "    protocol.comment(str(opentrons.types.Point(1, 2, 3)))\n", "shim.py")
    assert "opentrons" not in sys.modules
    ctx = make_context(proto)
    run_protocol(proto, ctx)
    assert ctx.commands[-1]["text"] == "(1.00, 2.00, 3.00)"
    assert "opentrons" not in sys.modules


# ------------------------------------------------------------------ execution on the emulator
def test_serial_dilution_executed_against_emulator(driver, emulator):
    """The same file, executed through the driver on a real pty: the emulator's G-code
    matches the deck geometry, and the motions equal the simulated ones."""
    source = DILUTION.read_text()
    proto = load_protocol(source, str(DILUTION))
    simhw = SimulatedHardware(keep=100000)
    run_protocol(proto, make_context(proto, simhw))
    start = len(emulator.log)
    ctx = make_context(proto, DriverHardware(driver), control=FastControl())
    run_protocol(proto, ctx)
    log = emulator.log[start:]
    assert log[:3] == ["G28.2 ZABC", "M400", "G28.2 X"]
    moves = [ln for ln in log if ln.startswith(("G0", "G28.2"))]
    expected = []
    for m, spd in simhw.moves:
        if "home" in m:          # the driver homes in the OT-2 order: Z A B C, then X, then Y
            expected += [gcode.home(g) for g in ("".join(a for a in grp if a in m["home"])
                                                 for grp in gcode.HOME_SEQUENCE) if g]
        else:
            expected.append(gcode.move(m, spd))
    assert moves == expected

    tip_z = 59.3 - 7.47 - 29.45              # tip length - overlap - nozzle offset (p300)

    def index_of(line: str, after: int = 0) -> int:
        return moves.index(line, after)

    # first tip: A1 of the rack in slot 1; nozzle (no tip) to the tip's top, pressed 7.47 mm in
    i = index_of("G0 X14.38 Y74.24 F24000")
    assert moves[i + 1] == f"G0 A{gcode.fmt(64.69 - 29.45)} F7500"
    assert moves[i + 2] == f"G0 A{gcode.fmt(64.69 - 29.45 - 7.47)} F1800"
    # sample: reservoir A2 in slot 2 (132.5 + 23.38, 42.78), 1 mm above the bottom (4.55 mm)
    j = index_of("G0 X155.88 Y42.78 F24000")
    # the plunger goes to its bottom above the liquid (well top), then the tip goes down
    assert moves[j + 1:j + 4] == [f"G0 A{gcode.fmt(4.55 + 26.85 + tip_z)} F7500", "G0 C-14.5 F598.4533",
                                  f"G0 A{gcode.fmt(4.55 + 1 + tip_z)} F7500"]
    k = moves.index(f"G0 C{gcode.fmt(-14.5 + 100 / 9.102)} F{gcode.fmt(92.86 / 9.31 * 60)}", j)
    # into plate A1 in slot 3 (265 + 14.28, 74.18), 1 mm above the bottom (3.5 mm)
    m = index_of("G0 X279.28 Y74.18 F24000", k)
    assert f"G0 A{gcode.fmt(3.5 + 1 + tip_z)} F7500" in moves[m:m + 3]
    assert moves[m + 2] == f"G0 C-14.5 F{gcode.fmt(92.86 / 9.31 * 60)}"
    # tip into the fixed trash (slot 12 + 82.84, 80), plunger to the eject position, homed
    n = moves.index("G0 X347.84 Y351.5 F24000", m)
    assert moves[n + 2:n + 4] == ["G0 C-37 F300", "G28.2 C"]
    assert emulator.state.position["C"] == 19 and driver.homed["C"]
    assert ctx.summary()["tips_used"] == 2

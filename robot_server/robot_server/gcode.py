"""G-code vocabulary of the OT-2 motor board: building command lines and parsing replies.

Sources of the facts used here:

* **Smoothieware** (the motor board firmware, an Opentrons fork; its dispatcher is
  https://github.com/Smoothieware/Smoothieware/blob/edge/src/modules/communication/GcodeDispatch.cpp):
  every G/M word on a line is run as its own command; an empty line is answered with ``ok``; while halted
  every command except ``M999`` (and read-only ``M114``/``M119``) is answered ``!!``;
  errors are reported as ``Error: ...`` lines, alarms as ``ALARM: ...`` lines.
* **OT-2 driver behaviour** (Opentrons' SmoothieDriver,
  https://github.com/Opentrons/opentrons/blob/edge/api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py):
  each command line is written followed by ``\\r\\n\\r\\n`` (the
  command line, then an empty line), so a healthy board answers ``ok`` twice; the host
  reads up to ``ok\\r\\nok\\r\\n``. A data reply puts its data line before the ``ok``.
  ``M400`` (wait for motion to finish) is sent after every command. Feed rates are
  given in mm/min (``F``), everything else in mm, seconds and amperes.

Axes: ``X``/``Y`` gantry, ``Z`` left mount, ``A`` right mount, ``B`` left plunger,
``C`` right plunger.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

AXES = "XYZABC"

#: Machine position (mm) of every axis right after ``G28.2`` (OT-2 driver constant).
HOMED_POSITION: dict[str, float] = {"X": 418.0, "Y": 353.0, "Z": 218.0, "A": 218.0, "B": 19.0, "C": 19.0}
#: Steps per mm (``M92``), OT-2 defaults.
STEPS_PER_MM: dict[str, float] = {"X": 80.0, "Y": 80.0, "Z": 400.0, "A": 400.0, "B": 768.0, "C": 768.0}
#: Maximum speed per axis in mm/s (``M203.1``), OT-2 defaults.
MAX_SPEED: dict[str, float] = {"X": 600.0, "Y": 400.0, "Z": 125.0, "A": 125.0, "B": 40.0, "C": 40.0}
#: Acceleration per axis in mm/s^2 (``M204``), OT-2 defaults.
ACCELERATION: dict[str, float] = {"X": 3000.0, "Y": 2000.0, "Z": 1500.0, "A": 1500.0, "B": 200.0, "C": 200.0}
#: Home order used by the OT-2: mounts and plungers first, then X, then Y.
HOME_SEQUENCE = ("ZABC", "X", "Y")
#: Default motor currents in amperes while moving (``M907``; OT-2 style values).
ACTIVE_CURRENT: dict[str, float] = {"X": 1.25, "Y": 1.25, "Z": 0.8, "A": 0.8, "B": 0.5, "C": 0.5}

#: What the host appends to every command (command line + empty line).
TERMINATOR = "\r\n\r\n"

_WORD = re.compile(r"([A-Za-z])\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


@dataclass
class Command:
    """One G-code command: ``code`` (``"G0"``, ``"M114.2"``, ``"version"``) and its
    parameter words in order, as ``(letter, value)`` with ``value`` ``None`` for a bare
    letter (``G28.2 ABCZ`` homes axes given as bare letters)."""

    code: str
    params: list[tuple[str, float | None]] = field(default_factory=list)

    def value(self, letter: str, default: float | None = None) -> float | None:
        for key, val in self.params:
            if key == letter:
                return val
        return default

    def letters(self) -> list[str]:
        return [k for k, _ in self.params]


def fmt(value: float) -> str:
    """Format a number the way the OT-2 driver does: plain decimal, no exponent,
    trailing zeros trimmed (``100.0`` -> ``100``, ``0.005`` -> ``0.005``)."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def split_line(line: str) -> list[Command]:
    """Split one received line into commands the way Smoothieware does: each ``G`` or
    ``M`` word starts a new command; the words after it are its parameters. A line
    starting with a lower-case word is a shell command (``version``). Comments after
    ``;`` or ``(`` are dropped.

    Raises ``ValueError`` for a line that is not G-code (e.g. starts with a digit)."""
    line = line.strip()
    for mark in (";", "("):
        cut = line.find(mark)
        if cut >= 0:
            line = line[:cut].strip()
    if not line:
        return []
    if line[0].islower():
        word, _, rest = line.partition(" ")
        return [Command(word, [(rest.strip(), None)] if rest.strip() else [])]
    commands: list[Command] = []
    pos = 0
    n = len(line)
    while pos < n:
        if line[pos].isspace():
            pos += 1
            continue
        ch = line[pos].upper()
        if ch in "GM":
            m = _NUMBER.match(line, pos + 1)
            if not m:
                raise ValueError(f"bad command word at {line[pos:pos + 8]!r}")
            commands.append(Command(ch + m.group(0)))
            pos = m.end()
            continue
        if not ch.isalpha():
            raise ValueError(f"unexpected character {line[pos]!r} in {line!r}")
        m = _WORD.match(line, pos)
        assert m is not None
        if not commands:
            raise ValueError(f"parameter before any command in {line!r}")
        letter = m.group(1).upper()
        if m.group(2) is None:
            commands[-1].params.append((letter, None))
        else:
            commands[-1].params.append((letter, float(m.group(2))))
        pos = m.end()
    return commands


# ---------------------------------------------------------------- command builders
def home(axes: str) -> str:
    """``G28.2 <axes>``: home the given axes against their max endstops (axes as bare
    letters, OT-2 style ``G28.2 ZABC``). Afterwards each axis is at :data:`HOMED_POSITION`."""
    return "G28.2 " + "".join(axes)


def move(targets: dict[str, float], feed_mm_s: float | None = None) -> str:
    """``G0 X.. Y.. F..``: move to absolute machine positions (mm, requires ``G90``);
    ``F`` is the feed rate in mm/min, so a speed in mm/s is multiplied by 60."""
    words = [f"{ax}{fmt(targets[ax])}" for ax in AXES if ax in targets]
    if feed_mm_s is not None:
        words.append(f"F{fmt(feed_mm_s * 60.0)}")
    return "G0 " + " ".join(words)


def dwell(seconds: float) -> str:
    """``G4 P<s>``: dwell. The Opentrons firmware takes ``P`` in seconds (the OT-2 driver
    sends ``G4 P0.005`` for a 5 ms settle after a current change)."""
    return f"G4 P{fmt(seconds)}"


def set_current(amps: dict[str, float]) -> str:
    """``M907 X1.25 ...``: set motor currents in amperes."""
    return "M907 " + " ".join(f"{ax}{fmt(amps[ax])}" for ax in AXES if ax in amps)


def steps_per_mm(values: dict[str, float]) -> str:
    """``M92``: steps per mm per axis."""
    return "M92 " + " ".join(f"{ax}{fmt(values[ax])}" for ax in AXES if ax in values)


def max_speeds(values: dict[str, float]) -> str:
    """``M203.1``: maximum speed per axis in mm/s (Opentrons firmware)."""
    return "M203.1 " + " ".join(f"{ax}{fmt(values[ax])}" for ax in AXES if ax in values)


def accelerations(values: dict[str, float]) -> str:
    """``M204 S<default> X.. ..``: accelerations in mm/s^2."""
    return "M204 S10000 " + " ".join(f"{ax}{fmt(values[ax])}" for ax in AXES if ax in values)


def disable_motors(axes: str) -> str:
    """``M18 <axes>``: de-energise the given motors (they can then be moved by hand)."""
    return "M18 " + "".join(axes)


def enable_motors(axes: str) -> str:
    """``M17 <axes>``: energise the given motors."""
    return "M17 " + "".join(axes)


def probe(axis: str, distance: float, feed_mm_s: float) -> str:
    """``G38.2 F<mm/min> <axis><dist>``: move ``axis`` by ``distance`` mm (relative) until
    the probe switch closes (OT-2 tip probe)."""
    return f"G38.2 F{fmt(feed_mm_s * 60.0)} {axis}{fmt(distance)}"


WAIT = "M400"            #: wait until the motion queue is empty
POSITION = "M114.2"      #: read the machine position
ENDSTOPS = "M119"        #: read the endstop switches
HOMING_STATUS = "G28.6"  #: read which axes are homed (Opentrons firmware)
CLEAR_ALARM = "M999"     #: leave the halted state
ABSOLUTE = "G90"
VERSION = "version"


# ---------------------------------------------------------------- reply parsers
_AXIS_VALUE = re.compile(r"\b([XYZABC]):\s*([-+]?\d+(?:\.\d+)?)")


def parse_position(reply: str) -> dict[str, float]:
    """Parse an ``M114.2`` reply (``MCS: X:418.0000 Y:353.0000 ...``) into mm per axis.
    Raises ``ValueError`` if an axis is missing."""
    found = {ax: float(v) for ax, v in _AXIS_VALUE.findall(reply)}
    missing = [ax for ax in AXES if ax not in found]
    if missing:
        raise ValueError(f"position reply lacks {''.join(missing)}: {reply!r}")
    return {ax: found[ax] for ax in AXES}


def parse_homing_status(reply: str) -> dict[str, bool]:
    """Parse a ``G28.6`` reply (``X:1 Y:1 Z:0 A:0 B:1 C:1``). Raises ``ValueError``."""
    found = {ax: v for ax, v in _AXIS_VALUE.findall(reply)}
    missing = [ax for ax in AXES if ax not in found]
    if missing:
        raise ValueError(f"homing status reply lacks {''.join(missing)}: {reply!r}")
    return {ax: float(found[ax]) != 0 for ax in AXES}


_ENDSTOP = re.compile(r"\b([XYZABC])_max:\s*([01])")
_PROBE = re.compile(r"Probe:\s*([01])")


def parse_endstops(reply: str) -> dict[str, bool]:
    """Parse an ``M119`` reply (``X_max:0 Y_max:1 ... _pins:(...) Probe: 0``) into
    ``{"X": bool, ..., "Probe": bool}`` (True = switch closed). Raises ``ValueError``."""
    found = {ax: v == "1" for ax, v in _ENDSTOP.findall(reply)}
    missing = [ax for ax in AXES if ax not in found]
    if missing:
        raise ValueError(f"endstop reply lacks {''.join(missing)}: {reply!r}")
    probe_m = _PROBE.search(reply)
    result = {ax: found[ax] for ax in AXES}
    result["Probe"] = bool(probe_m and probe_m.group(1) == "1")
    return result


_LIMIT = re.compile(r"limit\s*([-+]?)\s*([XYZABC])", re.IGNORECASE)


def alarm_axis(reply: str) -> str | None:
    """The axis named in an alarm such as ``ALARM: Hard limit +X`` (or ``None``)."""
    m = _LIMIT.search(reply)
    return m.group(2).upper() if m else None

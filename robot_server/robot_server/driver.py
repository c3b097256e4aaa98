"""Motor-board driver: G-code over a serial port (pyserial) to the OT-2's Smoothieware board.

Wire protocol (OT-2 driver behaviour, see ``gcode`` module doc): every command line is
written followed by ``\\r\\n\\r\\n``; the board answers each of the two lines with a final
``ok`` (or ``!!`` while halted), data lines first; ``M400`` (wait until idle) follows
every command. A reply containing ``ALARM`` / ``!!`` / ``Error`` becomes
:class:`AlarmError` / :class:`HaltedError` / :class:`BoardError`.

The driver is synchronous and thread-safe (one lock around each transaction); the server
runs it in one worker thread. It keeps a model of the robot (``position``, ``homed``,
``engaged``) that is only ever *known* state: after a timeout the affected axes are
re-read from the board, or marked un-homed with an unknown position if the board does
not answer.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Callable, Iterable

import serial

from . import gcode
from .gcode import AXES, HOMED_POSITION, MAX_SPEED

log = logging.getLogger("robot_server.driver")

#: Soft limits per axis (mm, machine coordinates): [min, max]. The max is the homed
#: position (where the endstop switch is, OT-2 driver constants); the min is our choice
#: for the gantry and mounts (deck level). The plungers go below 0: a GEN2 pipette's
#: published stroke reaches -37 mm to eject a tip (p300/p1000 ``drop`` position), so
#: B/C stop at -40 mm.
SOFT_LIMITS: dict[str, tuple[float, float]] = {
    "X": (0.0, HOMED_POSITION["X"]),
    "Y": (0.0, HOMED_POSITION["Y"]),
    "Z": (0.0, HOMED_POSITION["Z"]),
    "A": (0.0, HOMED_POSITION["A"]),
    "B": (-40.0, HOMED_POSITION["B"]),
    "C": (-40.0, HOMED_POSITION["C"]),
}
#: Speed used when a move gives none (mm/s): the OT-2's default axes speed.
DEFAULT_SPEED = 400.0
#: Seconds allowed for a full homing sequence on top of the ack timeout.
HOME_TIMEOUT = 40.0


# ---------------------------------------------------------------- exceptions
class DriverError(Exception):
    """Base class; ``code`` is the machine-readable error name used by the API."""

    code = "driver-error"


class BoardError(DriverError):
    """The board answered ``Error: ...`` (or another board-side failure)."""

    code = "board-error"

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        self.reply = reply


class AlarmError(BoardError):
    """The board raised an alarm (``ALARM: Hard limit +X``) and halted. ``axis`` is the
    axis named in the alarm, if any."""

    code = "board-alarm"

    def __init__(self, message: str, reply: str = "", axis: str | None = None) -> None:
        super().__init__(message, reply)
        self.axis = axis


class HaltedError(BoardError):
    """The board is halted and refused the command (``!!``); it needs ``M999``."""

    code = "board-halted"


class BoardTimeout(BoardError):
    """The board did not acknowledge within the timeout."""

    code = "board-timeout"


class BoardNotConnected(BoardError):
    """The serial port is missing, cannot be opened, or the board is not connected."""

    code = "board-not-connected"


class BoardDisconnected(BoardNotConnected):
    """The port went away during a command (cable pulled, device removed)."""

    code = "board-disconnected"


class MotionError(DriverError):
    """A motion request was refused before anything was sent."""

    code = "invalid-motion"


class UnknownAxisError(MotionError):
    code = "unknown-axis"


class InvalidSpeedError(MotionError):
    code = "invalid-speed"


class SoftLimitError(MotionError):
    code = "soft-limit"


class NotHomedError(MotionError):
    code = "not-homed"


def check_axes(axes: Iterable[str]) -> str:
    """Normalise axis names (case-insensitive, ``X Y Z A B C``) to an upper-case string in
    canonical order. Raises :class:`UnknownAxisError`."""
    names = []
    for ax in axes:
        if not isinstance(ax, str) or ax.upper() not in AXES or len(ax) != 1:
            raise UnknownAxisError(f"unknown axis {ax!r}; axes are {', '.join(AXES)}")
        names.append(ax.upper())
    return "".join(ax for ax in AXES if ax in names)


def check_speed(speed: float | None, axes: str) -> float:
    """Validate a speed in mm/s for a move of ``axes``: finite, > 0 and not above the
    fastest of those axes' maximum speeds (the board caps each axis at its ``M203.1``
    limit). ``None`` means :data:`DEFAULT_SPEED`. Raises :class:`InvalidSpeedError`."""
    if speed is None:
        return DEFAULT_SPEED
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed):
        raise InvalidSpeedError(f"speed must be a number of mm/s, got {speed!r}")
    top = max((MAX_SPEED[ax] for ax in axes), default=max(MAX_SPEED.values()))
    if speed <= 0 or speed > top:
        raise InvalidSpeedError(f"speed {speed} mm/s out of range (0, {top:g}] for axes {axes}")
    return float(speed)


class MotorDriver:
    """Driver for the Smoothieware motor board.

    ``port``: device path (``/dev/ttyAMA0``) or pyserial URL (``socket://host:port``).
    ``ack_timeout``: seconds to wait for an acknowledgement (moves get their estimated
    duration on top). ``reset_hook``: called (in the driver's thread) to pulse the board's
    reset pin during M999-class recovery; the GPIO backend provides it.
    """

    def __init__(self, port: str, baudrate: int = 115200, ack_timeout: float = 5.0,
                 reset_hook: Callable[[], None] | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.ack_timeout = ack_timeout
        self.reset_hook = reset_hook
        self._serial: serial.SerialBase | None = None
        self._ready = False            # port open *and* set-up sequence done
        self._lock = threading.RLock()
        self._buf = b""
        self.firmware: str | None = None
        self.position: dict[str, float | None] = {ax: None for ax in AXES}
        self.homed: dict[str, bool] = {ax: False for ax in AXES}
        self.engaged: dict[str, bool] = {ax: False for ax in AXES}
        self.last_error: str | None = None

    # ------------------------------------------------------------ connection
    @property
    def connected(self) -> bool:
        return self._ready and self._serial is not None and self._serial.is_open

    def connect(self) -> str:
        """Open the port and run the OT-2 set-up sequence: wait for the board's ack, then
        ``M999`` (clear a halt), ``version``, ``G28.6`` (homing status), ``M92`` steps/mm,
        ``G90`` absolute, ``M114.2`` position, ``M203.1`` max speeds, ``G0 F24000`` default
        feed, ``M204`` accelerations, ``M907`` currents. Returns the firmware version.
        Raises :class:`BoardNotConnected` if the port cannot be opened,
        :class:`BoardTimeout` if the board does not answer."""
        with self._lock:
            self._open()
            try:
                self._setup()
            except BaseException:
                self._close()
                raise
            self._ready = True
            return self.firmware or ""

    def _open(self) -> None:
        self._close()
        if "://" not in self.port and not os.path.exists(self.port):
            raise BoardNotConnected(f"serial port {self.port} does not exist")
        try:
            kwargs = {"baudrate": self.baudrate, "timeout": 0.05, "write_timeout": self.ack_timeout}
            if "://" not in self.port:
                kwargs["exclusive"] = True
            self._serial = serial.serial_for_url(self.port, **kwargs)
        except (serial.SerialException, OSError, ValueError) as exc:
            self._serial = None
            raise BoardNotConnected(f"cannot open {self.port}: {exc}") from None
        self._buf = b""

    def _close(self) -> None:
        self._ready = False
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # noqa: BLE001 - closing a dead port may fail any way
                pass

    def disconnect(self) -> None:
        """Close the port. The model forgets homing (we can no longer vouch for it)."""
        with self._lock:
            self._close()
            self._forget()

    def _forget(self) -> None:
        self.homed = {ax: False for ax in AXES}
        self.position = {ax: None for ax in AXES}

    def _setup(self) -> None:
        """The set-up sequence of :meth:`connect`. A reply it cannot read (a board that
        does not know ``G28.6``, or answers out of step) is a :class:`BoardError`."""
        try:
            self._setup_sequence()
        except ValueError as exc:
            raise BoardError(f"motor board on {self.port} gave an unexpected reply during set-up: {exc}") from None

    def _setup_sequence(self) -> None:
        self._wait_for_board()
        self._transact(gcode.CLEAR_ALARM, self.ack_timeout)
        version = self._transact(gcode.VERSION, self.ack_timeout)
        self.firmware = _firmware_from(version)
        self.homed = gcode.parse_homing_status(self._first(self._transact(gcode.HOMING_STATUS, self.ack_timeout)))
        self._transact(gcode.steps_per_mm({k: v for k, v in gcode.STEPS_PER_MM.items() if k in "XYZA"}), self.ack_timeout)
        self._transact(gcode.steps_per_mm({k: v for k, v in gcode.STEPS_PER_MM.items() if k in "BC"}), self.ack_timeout)
        self._transact(gcode.ABSOLUTE, self.ack_timeout)
        self._read_position_locked()
        self._transact(gcode.max_speeds(gcode.MAX_SPEED), self.ack_timeout)
        self._transact("G0 F24000", self.ack_timeout)
        self._transact(gcode.accelerations(gcode.ACCELERATION), self.ack_timeout)
        self._transact(gcode.set_current(gcode.ACTIVE_CURRENT), self.ack_timeout)
        self._transact(gcode.WAIT, self.ack_timeout)
        log.info("motor board on %s: %s, homed %s", self.port, self.firmware, self.homed)

    def _wait_for_board(self) -> None:
        """Send empty lines until the board answers ``ok`` (it may still be booting)."""
        deadline = time.monotonic() + self.ack_timeout
        while True:
            try:
                self._write(b"\r\n")
                self._read_reply(1, min(0.5, max(0.05, deadline - time.monotonic())), "")
                return
            except BoardTimeout:
                if time.monotonic() >= deadline:
                    raise BoardTimeout(f"motor board on {self.port} does not answer") from None

    # ------------------------------------------------------------ wire level
    def _write(self, data: bytes) -> None:
        ser = self._serial
        if ser is None:
            raise BoardNotConnected(f"motor board on {self.port} is not connected")
        try:
            ser.reset_input_buffer()
            self._buf = b""
            ser.write(data)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        self._close()
        self._forget()
        raise BoardDisconnected(f"motor board on {self.port} disconnected: {exc}") from None

    def _read_reply(self, finals: int, timeout: float, command: str) -> list[str]:
        """Read lines until ``finals`` final answers (``ok...`` or ``!!``) arrived.
        Returns all lines (final ones included), stripped. Raises :class:`BoardTimeout`."""
        ser = self._serial
        if ser is None:
            raise BoardNotConnected(f"motor board on {self.port} is not connected")
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        seen = 0
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode("ascii", "replace").strip()
                if not line:
                    continue
                lines.append(line)
                if line.startswith("ok") or line.startswith("!!"):
                    seen += 1
                    if seen >= finals:
                        return lines
            if time.monotonic() >= deadline:
                raise BoardTimeout(f"motor board did not acknowledge {command!r} within {timeout:.3g} s"
                                   + (f" (got {' | '.join(lines)!r})" if lines else ""))
            try:
                chunk = ser.read(max(1, ser.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                self._lost(exc)
            if chunk:
                self._buf += chunk

    def _transact(self, line: str, timeout: float) -> list[str]:
        """Write one command line (with the OT-2 terminator) and return its data lines
        (the final ``ok`` lines removed). Raises the typed board errors."""
        log.debug("-> %s", line)
        self._write((line + gcode.TERMINATOR).encode("ascii"))
        lines = self._read_reply(2, timeout, line)
        log.debug("<- %s", lines)
        data = [ln for ln in lines if not (ln == "ok" or ln.startswith("!!"))]
        text = " | ".join(lines)
        low = text.lower()
        if "alarm" in low:
            raise AlarmError(f"motor board alarm on {line!r}: {text}", text, gcode.alarm_axis(text))
        if "error" in low:
            raise BoardError(f"motor board error on {line!r}: {text}", text)
        if any(ln.startswith("!!") for ln in lines):
            raise HaltedError(f"motor board is halted, refused {line!r} (needs M999)", text)
        return [ln[2:].strip() if ln.startswith("ok ") else ln for ln in data]

    @staticmethod
    def _first(data: list[str]) -> str:
        return data[0] if data else ""

    # ------------------------------------------------------------ command level
    def _command(self, line: str, timeout: float, moving: str = "", is_move: bool = False) -> list[str]:
        """Run ``line`` then ``M400``; on trouble, leave a known state and re-raise."""
        try:
            data = self._transact(line, timeout)
            self._transact(gcode.WAIT, timeout)
            return data
        except BoardNotConnected:
            raise
        except BoardTimeout as exc:
            self.last_error = str(exc)
            self._after_timeout(moving)
            raise
        except BoardError as exc:
            self.last_error = str(exc)
            self._recover(exc, is_move)
            raise

    def _after_timeout(self, moving: str) -> None:
        """After a timeout the moved axes' positions are unknown: mark them un-homed, then
        try to re-read position and homing status from the board (short timeout). If the
        board still does not answer, every axis is marked un-homed."""
        for ax in moving:
            self.homed[ax] = False
            self.position[ax] = None
        try:
            quick = min(1.0, self.ack_timeout)
            self.homed = gcode.parse_homing_status(self._first(self._transact(gcode.HOMING_STATUS, quick)))
            self._read_position_locked(timeout=quick)
            log.warning("timeout; state re-read from the board: homed %s", self.homed)
        except (BoardError, ValueError) as exc:
            log.warning("timeout; board still silent (%s): marking all axes un-homed", exc)
            self._forget()

    def _recover(self, exc: BoardError, is_move: bool) -> None:
        """Recovery after ``Error``/``ALARM``/``!!`` (OT-2 behaviour): for an alarm or a
        halt, pulse the board's reset pin (if wired); then ``M999`` (clear the halt),
        re-read homing status (``G28.6``) and position, and if the failing command was a
        move that tripped an axis' limit, home that axis. Errors during recovery leave the
        axes marked un-homed."""
        halted = isinstance(exc, (AlarmError, HaltedError))
        try:
            if halted and self.reset_hook is not None:
                self.reset_hook()
                time.sleep(0.05)
                self._wait_for_board()
            self._transact(gcode.CLEAR_ALARM, self.ack_timeout)
            self.homed = gcode.parse_homing_status(self._first(self._transact(gcode.HOMING_STATUS, self.ack_timeout)))
            self._read_position_locked()
            axis = getattr(exc, "axis", None)
            if is_move and axis:
                self._transact(gcode.home(axis), self.ack_timeout + HOME_TIMEOUT)
                self._transact(gcode.WAIT, self.ack_timeout + HOME_TIMEOUT)
                self.homed[axis] = True
                self._read_position_locked()
        except BoardNotConnected:
            raise
        except (BoardError, ValueError) as rexc:
            log.error("recovery after %r failed: %s", exc, rexc)
            self._forget()

    def _read_position_locked(self, timeout: float | None = None) -> dict[str, float]:
        pos = gcode.parse_position(self._first(self._transact(gcode.POSITION, timeout or self.ack_timeout)))
        self.position = dict(pos)
        return pos

    def _require_connected(self) -> None:
        if not self.connected:
            raise BoardNotConnected(f"motor board on {self.port} is not connected")

    # ------------------------------------------------------------ public API
    def send(self, line: str, timeout: float | None = None) -> list[str]:
        """Send a raw G-code line (no ``M400``) and return its data lines. For
        diagnostics; bypasses soft limits and the model. Raises the typed board errors
        (without recovery)."""
        with self._lock:
            self._require_connected()
            return self._transact(line, timeout or self.ack_timeout)

    def home(self, axes: str = AXES) -> dict[str, float]:
        """Home ``axes`` (``G28.2``) in the OT-2 order: Z A B C together, then X, then Y.
        Afterwards the axes are at :data:`~robot_server.gcode.HOMED_POSITION` and the
        position is re-read (``M114.2``). Returns the position (mm per axis).
        Raises :class:`UnknownAxisError`, board errors."""
        axes = check_axes(axes)
        with self._lock:
            self._require_connected()
            for group in gcode.HOME_SEQUENCE:
                sub = "".join(ax for ax in group if ax in axes)
                if not sub:
                    continue
                self._command(gcode.home(sub), self.ack_timeout + HOME_TIMEOUT, moving=sub)
                for ax in sub:
                    self.homed[ax] = True
                    self.engaged[ax] = True
                    self.position[ax] = HOMED_POSITION[ax]
            return self._read_position_locked()

    def validate_move(self, targets: dict[str, float], speed: float | None = None) -> tuple[dict[str, float], float]:
        """Check a move without sending it: axes known, values finite numbers, every
        target inside :data:`SOFT_LIMITS`, every moved axis homed, speed valid. Returns
        the normalised ``(targets, speed)``. Raises :class:`UnknownAxisError`,
        :class:`SoftLimitError`, :class:`NotHomedError`, :class:`InvalidSpeedError`."""
        if not isinstance(targets, dict) or not targets:
            raise MotionError("a move needs at least one axis target")
        norm: dict[str, float] = {}
        for key, val in targets.items():
            ax = check_axes([key])
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
                raise SoftLimitError(f"target for {ax} must be a finite number of mm, got {val!r}")
            lo, hi = SOFT_LIMITS[ax]
            if not lo <= val <= hi:
                raise SoftLimitError(f"{ax} target {val:g} mm outside soft limits [{lo:g}, {hi:g}]")
            norm[ax] = float(val)
        spd = check_speed(speed, "".join(norm))
        unhomed = [ax for ax in norm if not self.homed[ax]]
        if unhomed:
            raise NotHomedError(f"axis {''.join(unhomed)} not homed; home first")
        return norm, spd

    def move(self, targets: dict[str, float], speed: float | None = None) -> dict[str, float | None]:
        """Absolute move (``G0`` in ``G90`` mode) to machine positions in mm at ``speed``
        mm/s (sent as ``F`` = speed * 60 mm/min), then ``M400``. Checked first by
        :meth:`validate_move`. Returns the new position model. On a board alarm the board
        is recovered (see :meth:`_recover`) and :class:`AlarmError` raised; on a timeout the
        moved axes are re-read or marked un-homed and :class:`BoardTimeout` raised."""
        with self._lock:
            self._require_connected()
            norm, spd = self.validate_move(targets, speed)
            timeout = self.ack_timeout + self._duration(norm, spd) * 1.5
            self._command(gcode.move(norm, spd), timeout, moving="".join(norm), is_move=True)
            for ax, val in norm.items():
                self.position[ax] = val
                self.engaged[ax] = True
            return dict(self.position)

    def _duration(self, targets: dict[str, float], speed: float) -> float:
        worst = 0.0
        for ax, val in targets.items():
            cur = self.position[ax]
            dist = abs(val - cur) if cur is not None else SOFT_LIMITS[ax][1] - SOFT_LIMITS[ax][0]
            v = min(speed, MAX_SPEED[ax])
            worst = max(worst, dist / v + v / gcode.ACCELERATION[ax])
        return worst

    def read_position(self) -> dict[str, float]:
        """``M114.2``: read the machine position (mm per axis) from the board."""
        with self._lock:
            self._require_connected()
            data = self._command(gcode.POSITION, self.ack_timeout)
            pos = gcode.parse_position(self._first(data))
            self.position = dict(pos)
            return pos

    def read_homing_status(self) -> dict[str, bool]:
        """``G28.6``: which axes the board considers homed (Opentrons firmware)."""
        with self._lock:
            self._require_connected()
            self.homed = gcode.parse_homing_status(self._first(self._command(gcode.HOMING_STATUS, self.ack_timeout)))
            return dict(self.homed)

    def read_endstops(self) -> dict[str, bool]:
        """``M119``: endstop switches, ``{"X": bool, ..., "Probe": bool}`` (True = closed)."""
        with self._lock:
            self._require_connected()
            return gcode.parse_endstops(self._first(self._command(gcode.ENDSTOPS, self.ack_timeout)))

    def set_current(self, amps: dict[str, float]) -> None:
        """``M907``: set motor currents (A) and dwell 5 ms for them to settle (``G4 P0.005``,
        as the OT-2 driver does). Raises :class:`UnknownAxisError`, :class:`MotionError`."""
        norm = {check_axes([k]): v for k, v in amps.items()}
        for ax, val in norm.items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val <= 2.5:
                raise MotionError(f"current for {ax} must be 0..2.5 A, got {val!r}")
        with self._lock:
            self._require_connected()
            self._command(gcode.set_current(norm) + " " + gcode.dwell(0.005), self.ack_timeout)

    def disengage(self, axes: str = AXES) -> dict[str, bool]:
        """``M18``: de-energise motors (they may then be moved by hand, so the board's
        position for them is no longer trusted by the OT-2; we keep homing state as the
        board reports it). Returns the engaged map."""
        axes = check_axes(axes)
        with self._lock:
            self._require_connected()
            if axes:
                self._command(gcode.disable_motors(axes), self.ack_timeout)
            for ax in axes:
                self.engaged[ax] = False
            return dict(self.engaged)

    def engage(self, axes: str = AXES) -> dict[str, bool]:
        """``M17``: energise motors. Returns the engaged map."""
        axes = check_axes(axes)
        with self._lock:
            self._require_connected()
            if axes:
                self._command(gcode.enable_motors(axes), self.ack_timeout)
            for ax in axes:
                self.engaged[ax] = True
            return dict(self.engaged)

    def dwell(self, seconds: float) -> None:
        """``G4 P<s>``: pause the motion queue for ``seconds`` (0..600)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 600:
            raise MotionError(f"dwell must be 0..600 s, got {seconds!r}")
        with self._lock:
            self._require_connected()
            self._command(gcode.dwell(seconds), self.ack_timeout + seconds)

    def wait_idle(self) -> None:
        """``M400``: wait until all queued motion has finished."""
        with self._lock:
            self._require_connected()
            self._transact(gcode.WAIT, self.ack_timeout)

    def probe(self, axis: str, distance: float, speed: float = 7.0) -> dict[str, float]:
        """``G38.2``: move ``axis`` by ``distance`` mm (relative) at ``speed`` mm/s until the
        probe switch closes; returns the re-read position. The axis must be homed."""
        ax = check_axes([axis])
        spd = check_speed(speed, ax)
        with self._lock:
            self._require_connected()
            if not self.homed[ax]:
                raise NotHomedError(f"axis {ax} not homed; home first")
            cur = self.position[ax] or 0.0
            lo, hi = SOFT_LIMITS[ax]
            if not lo <= cur + distance <= hi:
                raise SoftLimitError(f"probe travel to {cur + distance:g} mm outside [{lo:g}, {hi:g}]")
            self._command(gcode.probe(ax, distance, spd), self.ack_timeout + abs(distance) / spd * 1.5,
                          moving=ax, is_move=True)
            return self._read_position_locked()

    def clear_alarm(self) -> dict[str, bool]:
        """``M999`` then ``G28.6``: leave the halted state; returns homing status."""
        with self._lock:
            self._require_connected()
            self._transact(gcode.CLEAR_ALARM, self.ack_timeout)
            self.homed = gcode.parse_homing_status(self._first(self._transact(gcode.HOMING_STATUS, self.ack_timeout)))
            return dict(self.homed)

    # ------------------------------------------------------------ lending (G-code channel)
    def raw_write(self, data: bytes) -> None:
        """Write ``data`` to the board as is (the G-code channel forwards a client's lines
        with it; nothing is read back here). Raises :class:`BoardNotConnected` or
        :class:`BoardDisconnected` (the port is then closed)."""
        ser = self._serial
        if ser is None or not self._ready:
            raise BoardNotConnected(f"motor board on {self.port} is not connected")
        try:
            ser.write(data)
        except (serial.SerialException, OSError) as exc:
            self._lost(exc)

    def fileno(self) -> int:
        """The open port's file descriptor (to wait for the board's bytes with
        ``select``/``add_reader``). Raises :class:`BoardNotConnected`."""
        ser = self._serial
        if ser is None or not self._ready:
            raise BoardNotConnected(f"motor board on {self.port} is not connected")
        return ser.fileno()

    def raw_read(self) -> bytes:
        """The bytes the board has sent, as is: meant for when :meth:`fileno` is readable
        (it then returns at once); otherwise it waits at most the port's read timeout
        (50 ms) for one byte. Raises :class:`BoardNotConnected` /
        :class:`BoardDisconnected` like :meth:`raw_write`."""
        ser = self._serial
        if ser is None or not self._ready:
            raise BoardNotConnected(f"motor board on {self.port} is not connected")
        try:
            data = ser.read(max(1, ser.in_waiting))
            # a socket:// port counts readiness, not bytes: take what else has arrived
            while len(data) < 65536 and ser.in_waiting:
                data += ser.read(ser.in_waiting)
            return data
        except (serial.SerialException, OSError, TypeError) as exc:
            self._lost(exc)

    def resync(self) -> None:
        """Take the board back after it was lent: run the set-up sequence of
        :meth:`connect` again on the open port (``M999`` clears a halt, ``G28.6`` and
        ``M114.2`` re-read homing status and position, our steps/mm, speeds and currents
        are set again). If the board does not answer, the port is closed (the server
        reopens it) and the axes are marked un-homed; the same whatever else goes wrong
        on the way (the exception is re-raised). Raises the typed board errors."""
        with self._lock:
            self._require_connected()
            self._buf = b""
            try:
                self._setup()
            except BaseException:
                self._close()
                self._forget()
                raise

    def snapshot(self) -> dict:
        """The model as plain data: ``connected``, ``firmware``, ``position`` (mm or None),
        ``homed``, ``engaged``."""
        return {"connected": self.connected, "firmware": self.firmware if self.connected else None,
                "position": dict(self.position), "homed": dict(self.homed), "engaged": dict(self.engaged)}


def _firmware_from(lines: list[str]) -> str:
    for line in lines:
        if "version" in line.lower():
            for part in line.split(","):
                key, _, val = part.partition(":")
                if key.strip().lower() == "build version":
                    return val.strip()
            return line
    return lines[0] if lines else "unknown"

"""A Smoothieware-compatible emulator of the OT-2 motor board.

It answers on the wire the way the board does (Opentrons' driver,
https://github.com/Opentrons/opentrons/blob/edge/api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py, and Smoothieware's G-code dispatcher,
https://github.com/Smoothieware/Smoothieware/blob/edge/src/modules/communication/GcodeDispatch.cpp):

* every received line gets exactly one final answer: ``ok`` (or ``!!`` while halted);
  an empty line is answered ``ok`` (so a command written with ``\\r\\n\\r\\n`` yields
  ``ok\\r\\nok\\r\\n``, which is what the OT-2 driver reads up to);
* several G/M words on one line run as separate commands, one ``ok`` for the line;
* data replies (``M114.2``, ``G28.6``, ``M119``, ``version``) put the data line first;
* a move past an axis' travel answers ``ALARM: Hard limit +X``; the board is then halted
  and answers ``!!`` to every command (except ``M999``, ``M114.x``, ``M119``) until ``M999``;
  the rest of a line after a refused command is dropped;
* an absolute move of an axis that was never homed is refused with ``Error: ...``
  (relative moves are allowed, the OT-2 uses them to back off switches before homing);
* the attached pipettes' memories: ``M369 L`` / ``M371 L`` (``R`` for the right mount)
  read the pipette's ID / model string as ``L:<hex>`` (the stored bytes in hexadecimal,
  padded with zero bytes), ``M370 L <hex>`` / ``M372 L <hex>`` write them; an empty
  mount answers ``Error: no L instrument found``. Sources: Opentrons/opentrons,
  ``api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py`` (``_read_from_pipette``,
  ``_write_to_pipette``, ``_handle_return``) and ``.../smoothie_drivers/parse_utils.py``
  (``parse_instrument_data``, ``byte_array_to_ascii_string``).

Timing: by default every command completes at once. With ``time_scale > 0`` moves take
``distance / speed * time_scale`` seconds: ``G0`` is acknowledged at once and ``M400``
waits until the motion would have finished, like the real board.

Transports: a pseudo-terminal (``--pty``, prints the slave path and can symlink it) or a
TCP socket (``--tcp HOST:PORT``, one client at a time, accepting a new client after the
previous one closes, which is how QEMU wires a guest UART to it).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import select
import socket
import sys
import threading
import time
import tty
from dataclasses import dataclass, field

from . import __version__, gcode
from .gcode import AXES, HOMED_POSITION

log = logging.getLogger("robot_server.emulator")

FIRMWARE_VERSION = f"edge-ot2emu-{__version__}"
#: Axis travel below which the emulated mechanics do not go (mm); there is no switch at
#: the low end on the OT-2, so moving below it is not reported (the motor would stall).
MIN_TRAVEL: dict[str, float] = {"X": -5.0, "Y": -5.0, "Z": -5.0, "A": -5.0, "B": -45.0, "C": -45.0}
#: Commands Smoothieware still runs while halted (read-only queries).
_ALLOWED_WHEN_HALTED = {"version", "M114", "M114.1", "M114.2", "M114.3", "M119", "M999"}
#: Pipette memory commands: code -> (field, write?). Their argument is raw hex text, so
#: the line is not split into G-code words (the firmware reads the command text itself).
PIPETTE_MEMORY = {"M369": ("id", False), "M370": ("id", True),
                  "M371": ("model", False), "M372": ("model", True)}
#: Bytes of each pipette memory field (sent as twice as many hex digits).
PIPETTE_FIELD_BYTES = 32
#: Pipettes attached by default: model strings as OT-2 pipettes store them
#: (Opentrons/opentrons, shared-data/pipette/definitions/2: single_channel p20 and p300, 2.0).
DEFAULT_PIPETTES: dict[str, str | None] = {"left": "p20_single_v2.0", "right": "p300_single_v2.0"}
MOUNT_LETTERS = {"left": "L", "right": "R"}


@dataclass
class EmulatorState:
    position: dict[str, float] = field(default_factory=lambda: {ax: 0.0 for ax in AXES})
    homed: dict[str, bool] = field(default_factory=lambda: {ax: False for ax in AXES})
    engaged: dict[str, bool] = field(default_factory=lambda: {ax: False for ax in AXES})
    current: dict[str, float] = field(default_factory=lambda: {ax: 0.0 for ax in AXES})
    steps_per_mm: dict[str, float] = field(default_factory=lambda: dict(gcode.STEPS_PER_MM))
    max_speed: dict[str, float] = field(default_factory=lambda: dict(gcode.MAX_SPEED))
    acceleration: dict[str, float] = field(default_factory=lambda: dict(gcode.ACCELERATION))
    feed_mm_min: float = 24000.0
    speed_stack: list[float] = field(default_factory=list)
    absolute: bool = True
    halted: bool = False
    probe_triggered: bool = False


@dataclass
class PipetteMemory:
    """What a pipette's memory holds: its ``id`` and ``model`` strings as raw bytes."""

    id: bytes
    model: bytes

    @classmethod
    def for_model(cls, model: str, mount_letter: str) -> "PipetteMemory":
        """A pipette of ``model`` (e.g. ``p20_single_v2.0``) with an emulator serial."""
        serial = f"EMU{mount_letter}{model.split('_')[0].upper()}V20"
        return cls(serial.encode(), model.encode())


class SmoothieEmulator:
    """The board's state machine; :meth:`handle_line` maps one received line to the exact
    bytes the board would send back.

    ``hard_limits`` overrides the top of an axis' travel (default: the homed position,
    where the endstop is); ``require_homing`` makes absolute moves of never-homed axes
    fail; ``time_scale`` enables real-time motion (see module doc).

    Fault injection for tests (attributes, safe to set from another thread):
    ``mute`` (read lines but never answer), ``fail_next`` (answer the next command line
    with this ``Error: ...`` text), ``alarm_next`` (answer the next command line with this
    ``ALARM: ...`` text and halt), ``unknown_commands`` (codes such as ``"G28.6"`` the
    firmware does not know: acknowledged with a bare ``ok``, as Smoothieware answers a
    command no module handles)."""

    def __init__(self, *, hard_limits: dict[str, float] | None = None,
                 require_homing: bool = True, time_scale: float = 0.0,
                 pipettes: dict[str, str | None] | None = None) -> None:
        self.state = EmulatorState()
        #: Attached pipettes by mount letter (``L``/``R``); a missing key is an empty mount.
        #: ``pipettes`` maps ``left``/``right`` to a model string or None (default
        #: :data:`DEFAULT_PIPETTES`). Pipette memory survives a board reset.
        chosen = dict(DEFAULT_PIPETTES, **(pipettes or {}))
        self.pipettes: dict[str, PipetteMemory] = {
            MOUNT_LETTERS[m]: PipetteMemory.for_model(model, MOUNT_LETTERS[m])
            for m, model in chosen.items() if model}
        self.hard_limits = dict(HOMED_POSITION)
        if hard_limits:
            self.hard_limits.update(hard_limits)
        self.require_homing = require_homing
        self.time_scale = time_scale
        self.mute = False
        self.fail_next: str | None = None
        self.alarm_next: str | None = None
        self.unknown_commands: set[str] = set()
        self.lines_received = 0
        self.log: list[str] = []           # every non-empty line received (bounded)
        self._busy_until = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ control
    def reset(self) -> None:
        """What pulsing the board's reset pin does: a fresh boot (nothing homed)."""
        with self._lock:
            self.state = EmulatorState()
            self._busy_until = 0.0

    def halt(self) -> str:
        """What pulling the halt pin does: the board halts and reports an alarm."""
        with self._lock:
            self._enter_halt()
        return "ALARM: Kill button pressed - reset or M999 to continue\r\n"

    def _enter_halt(self) -> None:
        self.state.halted = True
        self.state.homed = {ax: False for ax in AXES}

    # ------------------------------------------------------------------ protocol
    def handle_line(self, raw: str) -> str:
        """Answer one line (without its line ending). Returns the reply text, possibly
        empty when muted. Blocks for ``M400``/``G4`` when real-time motion is on."""
        line = raw.strip()
        self.lines_received += 1
        if self.mute:
            return ""
        if not line:
            return "ok\r\n"
        if len(self.log) < 10000:
            self.log.append(line)
        with self._lock:
            if self.fail_next is not None:
                text, self.fail_next = self.fail_next, None
                return f"Error: {text}\r\nok\r\n"
            if self.alarm_next is not None:
                text, self.alarm_next = self.alarm_next, None
                self._enter_halt()
                return f"ALARM: {text}\r\nok\r\n"
            word = line.split(None, 1)[0].upper()
            if word in PIPETTE_MEMORY:
                if self.state.halted:
                    return "!!\r\n"
                return self._pipette_memory(word, line[len(word):]) + "ok\r\n"
            try:
                commands = gcode.split_line(line)
            except ValueError as exc:
                return f"Error: {exc}\r\nok\r\n"
            out: list[str] = []
            wait = 0.0
            for cmd in commands:
                if self.state.halted and cmd.code not in _ALLOWED_WHEN_HALTED:
                    out.append("!!\r\n")
                    return "".join(out)   # the rest of the line is dropped
                text, wait_more, stop = self._run(cmd)
                out.append(text)
                wait += wait_more
                if stop:
                    break
        if wait > 0:
            time.sleep(wait)
        out.append("ok\r\n")
        return "".join(out)

    def _run(self, cmd: gcode.Command) -> tuple[str, float, bool]:
        """Run one command. Returns (text before the final ok, seconds to block, stop line)."""
        st = self.state
        code = cmd.code
        if code in self.unknown_commands:
            return "", 0.0, False
        if code == "version":
            return (f"Build version: {FIRMWARE_VERSION}, Build date: emulated, "
                    "MCU: LPC1769, System Clock: 120MHz\r\n", 0.0, False)
        if code in ("M114", "M114.2", "M114.1", "M114.3"):
            text = " ".join(f"{ax}:{st.position[ax]:.4f}" for ax in AXES)
            return f"MCS: {text}\r\n", 0.0, False
        if code == "G28.6":
            return " ".join(f"{ax}:{int(st.homed[ax])}" for ax in AXES) + "\r\n", 0.0, False
        if code == "M119":
            ends = " ".join(f"{ax}_max:{int(self._at_switch(ax))}" for ax in AXES)
            return (f"{ends} _pins:(P1.24)0 (P1.26)0 (P1.28)0 (P1.25)0 (P1.27)0 (P1.29)0 "
                    f"Probe: {int(st.probe_triggered)}\r\n"), 0.0, False
        if code == "M999":
            if st.halted:
                st.halted = False
                return "WARNING: After HALT you should HOME as position is currently unknown\r\n", 0.0, True
            return "", 0.0, False
        if code in ("G0", "G1"):
            return self._move(cmd)
        if code == "G28.2" or code == "G28":
            axes = [k for k, _ in cmd.params if k in AXES] or list(AXES)
            dur = 0.0
            for ax in axes:
                dur = max(dur, abs(HOMED_POSITION[ax] - st.position[ax]) / st.max_speed[ax])
                st.position[ax] = HOMED_POSITION[ax]
                st.homed[ax] = True
                st.engaged[ax] = True
            self._schedule(dur)
            return "", 0.0, False
        if code == "G38.2":
            return self._probe(cmd)
        if code == "G4":
            secs = cmd.value("P") or 0.0
            if secs < 0:
                return "Error: negative dwell\r\n", 0.0, True
            self._schedule(secs)
            return "", 0.0, False
        if code == "M400":
            return "", max(0.0, self._busy_until - time.monotonic()), False
        if code == "G90":
            st.absolute = True
        elif code == "G91":
            st.absolute = False
        elif code == "M92":
            self._update(st.steps_per_mm, cmd)
        elif code == "M203.1":
            self._update(st.max_speed, cmd)
        elif code == "M204":
            self._update(st.acceleration, cmd)
        elif code == "M907":
            self._update(st.current, cmd)
        elif code in ("M17", "M18", "M84"):
            axes = [k for k, _ in cmd.params if k in AXES] or list(AXES)
            for ax in axes:
                st.engaged[ax] = code == "M17"
        elif code == "M120":
            st.speed_stack.append(st.feed_mm_min)
        elif code == "M121":
            if st.speed_stack:
                st.feed_mm_min = st.speed_stack.pop()
        # Smoothieware silently acknowledges commands no module handles.
        return "", 0.0, False

    def _pipette_memory(self, code: str, arg: str) -> str:
        """``M369``-``M372``: read or write a pipette's ID or model (see module doc)."""
        field_name, write = PIPETTE_MEMORY[code]
        parts = arg.split()
        letter = parts[0].upper() if parts else ""
        if letter not in ("L", "R"):
            return f"Error: {code} needs a mount, L or R\r\n"
        memory = self.pipettes.get(letter)
        if memory is None:
            return f"Error: no {letter} instrument found\r\n"
        if not write:
            data = getattr(memory, field_name)[:PIPETTE_FIELD_BYTES]
            return f"{letter}:{data.ljust(PIPETTE_FIELD_BYTES, bytes(1)).hex()}\r\n"
        try:
            data = bytes.fromhex("".join(parts[1:]))
        except ValueError:
            return f"Error: {code} data must be hexadecimal\r\n"
        setattr(memory, field_name, data[:PIPETTE_FIELD_BYTES])
        return ""

    @staticmethod
    def _update(target: dict[str, float], cmd: gcode.Command) -> None:
        for key, val in cmd.params:
            if key in target and val is not None:
                target[key] = val

    def _at_switch(self, ax: str) -> bool:
        return self.state.position[ax] >= self.hard_limits[ax] - 1e-6

    def _schedule(self, seconds: float) -> None:
        if self.time_scale <= 0:
            return
        now = time.monotonic()
        self._busy_until = max(now, self._busy_until) + seconds * self.time_scale

    def _move(self, cmd: gcode.Command) -> tuple[str, float, bool]:
        st = self.state
        feed = cmd.value("F")
        if feed is not None:
            if feed <= 0:
                return "Error: feed rate must be positive\r\n", 0.0, True
            st.feed_mm_min = feed
        targets: dict[str, float] = {}
        for key, val in cmd.params:
            if key in AXES:
                if val is None:
                    return f"Error: {cmd.code} {key} without a value\r\n", 0.0, True
                targets[key] = val if st.absolute else st.position[key] + val
        if st.absolute and self.require_homing:
            unhomed = [ax for ax in targets if not st.homed[ax]]
            if unhomed:
                return (f"Error: {cmd.code}: axis {''.join(unhomed)} not homed, "
                        "home first (G28.2)\r\n"), 0.0, True
        # a move past the max switch trips it: the board halts with a hard-limit alarm
        for ax in AXES:
            if ax in targets and targets[ax] > self.hard_limits[ax] + 1e-6:
                st.position[ax] = self.hard_limits[ax]
                self._enter_halt()
                return f"ALARM: Hard limit +{ax}\r\n", 0.0, True
        dist = math.sqrt(sum((targets[ax] - st.position[ax]) ** 2 for ax in targets))
        speed = st.feed_mm_min / 60.0
        dur = 0.0
        if dist > 0:
            dur = dist / speed
            for ax in targets:
                dur = max(dur, abs(targets[ax] - st.position[ax]) / st.max_speed[ax])
        for ax, val in targets.items():
            st.position[ax] = max(val, MIN_TRAVEL[ax])
            st.engaged[ax] = True
        self._schedule(dur)
        return "", 0.0, False

    def _probe(self, cmd: gcode.Command) -> tuple[str, float, bool]:
        """G38.2: the emulated probe surface is half-way along the requested travel."""
        st = self.state
        axes = [(k, v) for k, v in cmd.params if k in AXES and v is not None]
        if len(axes) != 1:
            return "Error: G38.2 needs exactly one axis\r\n", 0.0, True
        ax, dist = axes[0]
        if not st.homed[ax]:
            return f"Error: G38.2: axis {ax} not homed\r\n", 0.0, True
        st.position[ax] = st.position[ax] + dist / 2.0
        st.probe_triggered = True
        pos = ",".join(f"{st.position[a]:.4f}" for a in AXES)
        return f"[PRB:{pos}:1]\r\n", 0.0, False


# ---------------------------------------------------------------- transports
class _LineServer:
    """Feeds bytes to the emulator line by line and writes the answers back."""

    def __init__(self, emulator: SmoothieEmulator) -> None:
        self.emulator = emulator
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while True:
            idx = self._buf.find(b"\n")
            if idx < 0:
                break
            line, self._buf = self._buf[:idx], self._buf[idx + 1:]
            text = line.decode("ascii", "replace")
            if log.isEnabledFor(logging.DEBUG) and text.strip():
                log.debug("<- %s", text.strip())
            reply = self.emulator.handle_line(text)
            if reply:
                out.append(reply.encode())
        if len(self._buf) > 4096:      # the board's line buffer is small; drop garbage
            self._buf = b""
        return b"".join(out)


class PtyServer:
    """Serve the emulator on a new pseudo-terminal. ``slave_path`` is the device a
    driver opens (``/dev/pts/N``). Runs in a daemon thread after :meth:`start`.
    :meth:`unplug` closes the terminal as if the cable were pulled."""

    def __init__(self, emulator: SmoothieEmulator, link: str | None = None) -> None:
        self.emulator = emulator
        self.master_fd, self._slave_fd = os.openpty()
        tty.setraw(self._slave_fd)
        self.slave_path = os.ttyname(self._slave_fd)
        self.link = link
        if link:
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
            os.symlink(self.slave_path, link)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="emulator-pty", daemon=True)
        self._closed = False

    def start(self) -> "PtyServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        lines = _LineServer(self.emulator)
        while True:
            try:
                ready, _, _ = select.select([self.master_fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.master_fd, 4096)
            except OSError:
                # EIO: no process has the slave open right now; wait and retry
                time.sleep(0.01)
                continue
            if not data:
                continue
            reply = lines.feed(data)
            if reply:
                try:
                    os.write(self.master_fd, reply)
                except OSError:
                    pass

    def unplug(self) -> None:
        """Stop serving and close both ends (the driver then sees an I/O error)."""
        if self._closed:
            return
        self._closed = True
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=2)
        for fd in (self.master_fd, self._slave_fd, self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.link:
            try:
                os.unlink(self.link)
            except OSError:
                pass

    close = unplug


class TcpServer:
    """Serve the emulator on a TCP socket, one client at a time (a UART has one other
    end); when the client disconnects the next one is accepted. Board state survives
    reconnects, as a real board's does when the host reboots."""

    def __init__(self, emulator: SmoothieEmulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = emulator
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(1)
        self.address = self.sock.getsockname()
        self._thread = threading.Thread(target=self._run, name="emulator-tcp", daemon=True)
        self._stop = threading.Event()
        self._conn: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.address[0]}:{self.address[1]}"

    def start(self) -> "TcpServer":
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            log.info("client %s:%s connected", *peer[:2])
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            lines = _LineServer(self.emulator)
            try:
                while True:
                    data = conn.recv(4096)
                    if not data:
                        break
                    reply = lines.feed(data)
                    if reply:
                        conn.sendall(reply)
            except OSError:
                pass
            finally:
                self._conn = None
                conn.close()
            log.info("client disconnected")

    def drop_client(self) -> None:
        """Close the current client's connection (cable pulled)."""
        conn = self._conn
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.drop_client()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


# ---------------------------------------------------------------- command line
def _parse_limits(items: list[str]) -> dict[str, float]:
    limits = {}
    for item in items:
        ax, sep, val = item.partition("=")
        ax = ax.strip().upper()
        if not sep or ax not in AXES:
            raise argparse.ArgumentTypeError(f"--hard-limit wants AXIS=MM, got {item!r}")
        limits[ax] = float(val)
    return limits


def main(argv: list[str] | None = None) -> int:
    """``smoothie-emulator``: run the emulator on a pty or a TCP socket until killed."""
    p = argparse.ArgumentParser(prog="smoothie-emulator", description=__doc__.splitlines()[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on a TCP socket (port 0: any)")
    where.add_argument("--pty", action="store_true", help="serve a pseudo-terminal, print its path")
    p.add_argument("--link", metavar="PATH", help="with --pty: symlink PATH to the pty slave")
    p.add_argument("--time-scale", type=float, default=0.0,
                   help="real-time motion: 1.0 = real speed, 0 = instant (default)")
    p.add_argument("--no-require-homing", action="store_true",
                   help="accept absolute moves of axes that were never homed")
    p.add_argument("--hard-limit", action="append", default=[], metavar="AXIS=MM",
                   help="top of an axis' travel (default: its homed position)")
    for mount in ("left", "right"):
        p.add_argument(f"--{mount}", metavar="MODEL|none", default=DEFAULT_PIPETTES[mount],
                       help=f"pipette on the {mount} mount, as its memory stores it "
                            f"(default {DEFAULT_PIPETTES[mount]}; 'none': empty mount)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        limits = _parse_limits(args.hard_limit)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        p.error(str(exc))
    emu = SmoothieEmulator(hard_limits=limits,
                           require_homing=not args.no_require_homing, time_scale=args.time_scale,
                           pipettes={m: None if getattr(args, m).lower() == "none" else getattr(args, m)
                                     for m in ("left", "right")})
    if args.pty:
        srv: PtyServer | TcpServer = PtyServer(emu, link=args.link).start()
        print(srv.slave_path, flush=True)
    else:
        host, _, port = args.tcp.rpartition(":")
        srv = TcpServer(emu, host or "127.0.0.1", int(port)).start()
        print(f"{srv.address[0]}:{srv.address[1]}", flush=True)
    stop = threading.Event()
    import signal
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

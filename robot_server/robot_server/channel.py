"""Supervised G-code channel: the motor board lent to one client at a time (a lease).

A Smoothieware-speaking TCP endpoint on loopback (``socket://127.0.0.1:<channel_port>``,
a pyserial URL): a program that drives an OT-2 motor board, such as the ``opentrons``
package with ``OT_SMOOTHIE_EMULATOR_URI`` set to that URL (read by
``SmoothieDriver.get_port`` in Opentrons/opentrons,
``api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py``), connects to it as to the
board's UART. The robot server keeps the UART (and the GPIO lines) and forwards:

* every complete line from the client goes to the board as is, in order, through the
  driver's port (:meth:`~robot_server.driver.MotorDriver.raw_write`); the board's bytes
  come back to the client unmodified, so the client's driver sees the board itself;
* the lease holder is the first client; a second client gets one ``Error: ...`` line
  naming the holder and is closed. While a lease is held the service refuses motion from
  HTTP and the bridge (409 ``robot-leased``); reads (health, door, positions) are served
  from a model kept up to date from the traffic (moves, ``G28.2`` homing, and the
  board's answers to the client's own ``M114.2`` / ``G28.6``);
* door opened: no further line is forwarded (it is held; a client's re-sent copies of a
  held command are forwarded once) until the door is closed and the lease resumed
  (:meth:`Channel.resume`). Events ``lease-paused`` / ``lease-resumed`` say so and why;
* stop (:meth:`Channel.stop`): the board's halt line is pulsed as the OT-2 does (the
  board alarms and forgets homing), the client is disconnected and the lease ends;
* a client that disconnects ends its lease; a board lost mid-lease sends the client an
  ``Error: ...`` line and ends the lease.

When a lease ends, the lines already forwarded are answered (at most
:data:`DRAIN_TIMEOUT` s), then the driver takes the board back
(:meth:`~robot_server.driver.MotorDriver.resync`, at most :data:`TAKE_BACK_ACKS` ack
timeouts) and ``lease-ended`` is published. A lease always ends, whatever fails on the
way (a client's connection already reset, a board that answers out of step): the
failure is logged and, if the board could not be taken back, the server reconnects to it.

The holder is named by the process at the other end of its socket, found through
``/proc/net/tcp`` and ``/proc/<pid>/fd`` (Linux ``proc(5)``) when the server may read
them, or by a namer the run manager sets (``run <id>``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import pwd
import socket
import sys
import time
from typing import TYPE_CHECKING, Callable

from update_server.interfaces import socket_owner

from . import gcode
from .driver import BoardError, DriverError
from .gcode import AXES, HOMED_POSITION

if TYPE_CHECKING:
    from .service import RobotService

log = logging.getLogger("robot_server.channel")

HOST = "127.0.0.1"
#: Bytes a client may have held while paused, or in one unterminated line.
MAX_HELD = 65536
#: Seconds the board may take to answer the lines forwarded before a lease ended.
DRAIN_TIMEOUT = 30.0
#: Seconds a client may keep its end of the connection open after its lease ended.
CLOSE_GRACE = 2.0
#: Least seconds between two ``position`` events published from channel traffic.
POSITION_EVENT_INTERVAL = 0.1
#: Driver ack timeouts the board may take to be taken back after a lease (its set-up
#: sequence: about a dozen commands, each bounded by one ack timeout).
TAKE_BACK_ACKS = 30

Namer = Callable[["int | None"], "str | None"]


class Lease:
    """One client's lease: who holds it, what is held back while paused, and the count
    of forwarded lines the board has not answered yet."""

    def __init__(self, writer: asyncio.StreamWriter, peer: str, pid: int | None,
                 program: str | None, name: str) -> None:
        self.writer = writer
        self.peer = peer
        self.pid = pid
        self.program = program
        self.name = name
        self.since = time.time()
        self.pause_reason: str | None = None
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.outstanding = 0
        self.lines = 0
        self.ending: str | None = None
        self.end_task: asyncio.Task | None = None      # held: the loop keeps only weak references
        self.eof_sent = False
        self.ended = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.absolute = True
        self.query: str | None = None      # "position" / "homing": the data reply awaited
        self.reply_buf = b""
        self.board_fd: int | None = None   # the port's descriptor, watched by the loop

    def describe(self) -> dict:
        """``{name, pid, program, peer, since (epoch s), paused, pause_reason, lines}``."""
        return {"name": self.name, "pid": self.pid, "program": self.program, "peer": self.peer,
                "since": round(self.since, 3), "paused": self.pause_reason is not None,
                "pause_reason": self.pause_reason, "lines": self.lines}


class Channel:
    """The G-code channel of a :class:`~robot_server.service.RobotService` (its
    ``channel`` attribute). Public API for other parts of the server:

    * :meth:`holder` -> the lease holder's :meth:`Lease.describe` dict, or None;
    * :meth:`set_namer` (``namer(pid | None) -> str | None``) names a holder, e.g. ``run <id>``;
    * :meth:`child_env` -> environment for a child process that should use the channel;
    * :attr:`url` -> ``socket://127.0.0.1:<port>``;
    * :meth:`stop`, :meth:`pause`, :meth:`resume`;
    * events on the service's hub: ``lease-started``, ``lease-ended`` (+ ``reason``),
      ``lease-paused`` / ``lease-resumed`` (+ ``reason``), each with the holder's fields.
    """

    def __init__(self, svc: "RobotService") -> None:
        self.svc = svc
        self.lease: Lease | None = None
        self.port = 0
        self._namer: Namer | None = None
        self._server: asyncio.AbstractServer | None = None
        self._last_position_event = 0.0
        self._taking_back: asyncio.Future | None = None    # the driver's resync after a lease
        self.users = allowed_uids(svc.config.sandbox_user, svc.config.channel_users)

    # ------------------------------------------------------------ public API
    @property
    def url(self) -> str:
        """The pyserial URL a client opens: ``socket://127.0.0.1:<port>``."""
        return f"socket://{HOST}:{self.port}"

    def child_env(self, base: dict | None = None) -> dict:
        """A copy of ``base`` (default ``os.environ``) for a child that drives the robot
        through the channel: ``OT_SMOOTHIE_EMULATOR_URI`` = :attr:`url` (read by
        ``SmoothieDriver.get_port``, Opentrons/opentrons,
        api/src/opentrons/drivers/smoothie_drivers/driver_3_0.py)."""
        env = dict(os.environ if base is None else base)
        env["OT_SMOOTHIE_EMULATOR_URI"] = self.url
        return env

    def set_namer(self, namer: Namer | None) -> None:
        """``namer(pid)`` returns a holder's name (e.g. ``"run 3f2a"``) or None to fall
        back to the program's command line. ``pid`` is None when the peer process could
        not be found. Called once per connection, in the event loop; must not block."""
        self._namer = namer

    def holder(self) -> dict | None:
        """The lease holder (:meth:`Lease.describe`), or None when the board is free."""
        return self.lease.describe() if self.lease is not None else None

    def busy_message(self) -> str:
        """The sentence saying who holds the lease (for 409 ``robot-leased``)."""
        lease = self.lease
        who = "another client" if lease is None else lease.name
        if lease is not None and lease.pid is not None:
            who += f" (pid {lease.pid})"
        return (f"the robot is leased to {who} through the G-code channel; motion is refused "
                "until the lease ends (POST /robot/stop ends it)")

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening loopback socket."""
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self.port = sock.getsockname()[1]

    async def close(self) -> None:
        """End the lease (without halting) and stop listening."""
        if self._server is not None:
            self._server.close()
        lease = self.lease
        if lease is not None:
            self._end_soon(lease, "server stopping")
            await lease.ended.wait()
            lease.writer.close()
            await asyncio.sleep(0.01)     # let the connection's task see the end
        if self._server is not None:
            await self._server.wait_closed()

    async def stop(self, reason: str = "stop requested") -> dict | None:
        """Halt the board the way the OT-2 stops a run (pulse the halt line: the board
        alarms and forgets homing), disconnect the client and end the lease. Returns the
        former holder, or None if there was no lease. Afterwards the driver has re-read
        homing status: every axis is un-homed."""
        lease = self.lease
        if lease is None:
            return None
        if lease.ending is None:
            await asyncio.get_running_loop().run_in_executor(None, self.svc.gpio.pulse_halt)
            self._end_soon(lease, reason)
        await lease.ended.wait()
        return lease.describe()

    def pause(self, reason: str) -> None:
        """Hold every further line of the lease holder (e.g. ``door opened``)."""
        lease = self.lease
        if lease is None or lease.pause_reason is not None or lease.ending:
            return
        lease.pause_reason = reason
        self.svc.events.publish("lease-paused", {**lease.describe(), "reason": reason})

    def resume(self, reason: str = "resume requested") -> dict | None:
        """Forward the held lines and continue. Returns the holder, or None if no lease is
        paused. (The service refuses to resume while the door is open.)"""
        lease = self.lease
        if lease is None or lease.pause_reason is None:
            return None
        lease.pause_reason = None
        held, lease.held, lease.held_bytes = collapse_retries(lease.held), [], 0
        self.svc.events.publish("lease-resumed", {**lease.describe(), "reason": reason})
        for line in held:
            if not self._forward(lease, line):
                break
        return lease.describe()

    # ------------------------------------------------------------ connection
    def _name(self, pid: int | None) -> str | None:
        if self._namer is None:
            return None
        try:
            return self._namer(pid)
        except Exception:   # a faulty namer must not refuse the client
            log.exception("G-code channel: namer failed for pid %s", pid)
            return None

    def _refusal(self) -> str | None:
        if self.lease is not None:
            return self.busy_message()
        if self._taking_back is not None and not self._taking_back.done():
            return "the motor board is still being taken back after the last lease"
        if not self.svc.driver.connected:
            return f"the motor board is not connected ({self.svc.board_error or 'connecting'})"
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer_addr = writer.get_extra_info("peername")
        pid, program = await asyncio.get_running_loop().run_in_executor(
            None, peer_process, peer_addr, writer.get_extra_info("sockname"))
        name = self._name(pid) or program or f"a client at {peer_addr[0]}:{peer_addr[1]}"
        owner = socket_owner(peer_addr, writer.get_extra_info("sockname"))
        refusal = self._refusal() if owner in self.users else (
            f"user {owner} may not use the motor board (channel_users, docs/security.md)")
        if refusal is None:
            async with self.svc.motion_lock:   # a motion started over HTTP finishes first
                refusal = self._refusal()
                if refusal is None:
                    lease = self.lease = Lease(writer, f"{peer_addr[0]}:{peer_addr[1]}", pid, program, name)
        if refusal is not None:
            log.info("G-code channel: refused %s: %s", name, refusal)
            writer.write(f"Error: {refusal}\r\n".encode())
            try:
                # half-close and drop what the client sends, so the line is not lost to a reset
                writer.write_eof()
                await asyncio.wait_for(_read_to_end(reader), CLOSE_GRACE)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
            writer.close()
            return
        log.info("G-code channel: lease started by %s", name)
        self.svc.events.publish("lease-started", lease.describe())
        if self.svc.gpio.door_open():
            self.pause("door open")
        self._watch_board(lease)
        try:
            reason = await self._from_client(lease, reader)
        except (ConnectionError, OSError):
            reason = "client connection lost"
        self._end_soon(lease, reason)
        await lease.ended.wait()
        writer.close()

    async def _from_client(self, lease: Lease, reader: asyncio.StreamReader) -> str:
        """Forward the client's complete lines until it disconnects. Once the lease is
        ending, what the client still sends is read and dropped (closing a socket with
        unread data would reset the connection and lose our last line to the client)."""
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                return "client disconnected"
            if lease.ending is not None:
                continue
            buf += data
            while lease.ending is None:
                idx = buf.find(b"\n")
                if idx < 0:
                    break
                line, buf = buf[:idx + 1], buf[idx + 1:]
                if lease.pause_reason is not None:
                    lease.held.append(line)
                    lease.held_bytes += len(line)
                elif not self._forward(lease, line):
                    break
            if len(buf) > MAX_HELD or lease.held_bytes > MAX_HELD:
                self._to_client(lease, f"Error: more than {MAX_HELD} bytes not forwarded; closing\r\n".encode())
                self._end_soon(lease, "client sent too much data")

    def _forward(self, lease: Lease, line: bytes) -> bool:
        """Write one line to the board; False (and the lease ending) if the board is gone."""
        try:
            self.svc.driver.raw_write(line)
        except DriverError as exc:
            self._board_lost(lease, exc)
            return False
        lease.outstanding += 1
        lease.drained.clear()
        text = line.decode("ascii", "replace").strip()
        if text:
            lease.lines += 1
            self._track_command(lease, text)
        return True

    def _to_client(self, lease: Lease, data: bytes) -> None:
        if not lease.eof_sent and not lease.writer.is_closing():
            lease.writer.write(data)

    # ------------------------------------------------------------ board side
    def _watch_board(self, lease: Lease) -> None:
        """Read the board's bytes in the loop as they arrive (the driver is idle while it
        lends the board, so its port has no other reader)."""
        try:
            lease.board_fd = self.svc.driver.fileno()
        except DriverError as exc:
            self._board_lost(lease, exc)
            return
        self.svc._loop.add_reader(lease.board_fd, self._board_readable, lease)

    def _unwatch_board(self, lease: Lease) -> None:
        if lease.board_fd is not None:
            self.svc._loop.remove_reader(lease.board_fd)
            lease.board_fd = None

    def _board_readable(self, lease: Lease) -> None:
        try:
            data = self.svc.driver.raw_read()
        except DriverError as exc:
            self._board_lost(lease, exc)
            return
        if data:
            self._from_board(lease, data)

    def _board_lost(self, lease: Lease, exc: DriverError) -> None:
        self._unwatch_board(lease)
        if lease.ending is not None:
            return
        self.svc.board_error = str(exc)
        lease.outstanding = 0
        lease.drained.set()
        self._to_client(lease, f"Error: the motor board was lost ({exc}); the lease has ended\r\n".encode())
        self._end_soon(lease, f"motor board lost: {exc}")

    def _from_board(self, lease: Lease, data: bytes) -> None:
        self._to_client(lease, data)
        lease.reply_buf += data
        *lines, lease.reply_buf = lease.reply_buf.split(b"\n")
        for raw in lines:
            text = raw.decode("ascii", "replace").strip()
            if text.startswith("ok") or text.startswith("!!"):
                lease.outstanding = max(0, lease.outstanding - 1)
                if lease.outstanding == 0:
                    lease.drained.set()
                if lease.query is None:
                    continue
                lease.query = None
                self._publish_position(force=True)
            elif text:
                self._track_reply(lease, text)

    # ------------------------------------------------------------ the model
    def _track_command(self, lease: Lease, text: str) -> None:
        """Update the driver's model from a forwarded line (what the board will do)."""
        try:
            commands = gcode.split_line(text)
        except ValueError:
            return              # not motion (e.g. a pipette memory write with hex data)
        d = self.svc.driver
        for cmd in commands:
            code = cmd.code
            if code in ("G0", "G1"):
                for ax, val in cmd.params:
                    if ax in AXES and val is not None:
                        cur = d.position[ax]
                        d.position[ax] = val if lease.absolute else (None if cur is None else cur + val)
                        d.engaged[ax] = True
            elif code in ("G90", "G91"):
                lease.absolute = code == "G90"
            elif code == "G28.2":
                for ax in [k for k, _ in cmd.params if k in AXES] or AXES:
                    d.homed[ax] = d.engaged[ax] = True
                    d.position[ax] = HOMED_POSITION[ax]
            elif code in ("M17", "M18", "M84"):
                for ax in [k for k, _ in cmd.params if k in AXES] or AXES:
                    d.engaged[ax] = code == "M17"
            elif code.startswith("M114"):
                lease.query = "position"
            elif code == "G28.6":
                lease.query = "homing"
        self._publish_position()

    def _track_reply(self, lease: Lease, text: str) -> None:
        """Take what the board says about itself: its position and homing status, and an
        alarm (a halted board has forgotten homing)."""
        d = self.svc.driver
        if "alarm" in text.lower():
            d.homed = {ax: False for ax in AXES}
            return
        try:
            if lease.query == "position":
                d.position = dict(gcode.parse_position(text))
            elif lease.query == "homing":
                d.homed = gcode.parse_homing_status(text)
        except ValueError:
            pass

    def _publish_position(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_position_event >= POSITION_EVENT_INTERVAL:
            self._last_position_event = now
            self.svc._publish_position()

    # ------------------------------------------------------------ ending
    def _end_soon(self, lease: Lease, reason: str) -> None:
        if lease.ending is None:
            lease.ending = reason
            lease.end_task = asyncio.ensure_future(self._end(lease))

    async def _end(self, lease: Lease) -> None:
        """Close the client, let the board answer what it was sent, give the board back
        to the driver, publish ``lease-ended``. The lease ends (the board is free again and
        :attr:`Lease.ended` is set) whatever fails on the way; a failure is logged."""
        try:
            lease.pause_reason = None
            lease.held = []
            self._send_eof(lease)
            try:
                await asyncio.wait_for(lease.drained.wait(), DRAIN_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("G-code channel: the board did not answer %d line(s) after the lease ended",
                            lease.outstanding)
            self._unwatch_board(lease)
            await self._take_back()
        except Exception:  # logged; the lease must end all the same
            log.exception("G-code channel: ending the lease of %s", lease.name)
        finally:
            self._unwatch_board(lease)
            if self.lease is lease:
                self.lease = None
            try:
                log.info("G-code channel: lease of %s ended: %s", lease.name, lease.ending)
                self.svc.events.publish("lease-ended", {**lease.describe(), "reason": lease.ending})
                self.svc._publish_position()
            finally:
                lease.ended.set()
                # a client that keeps its end open after ours is closed is cut off
                asyncio.get_running_loop().call_later(CLOSE_GRACE, lease.writer.close)

    @staticmethod
    def _send_eof(lease: Lease) -> None:
        """Half-close the client's connection (it sees the end; closed once it is gone);
        nothing more is sent to it."""
        lease.eof_sent = True
        writer = lease.writer
        if writer.is_closing() or not writer.can_write_eof():
            return
        try:
            writer.write_eof()
        except OSError:
            # the client is gone and its end reset the connection: a client that died
            # with a command outstanding answers the board's late reply, forwarded to it
            # before we saw it go, with a reset (``shutdown`` then fails with ENOTCONN)
            writer.close()

    def _take_back_timeout(self) -> float:
        """Longest wait for the driver to take the board back (s): its set-up sequence is
        about a dozen commands, each bounded by the driver's ack timeout."""
        return TAKE_BACK_ACKS * self.svc.driver.ack_timeout

    async def _take_back(self) -> None:
        """Give the board back to the driver (:meth:`~robot_server.driver.MotorDriver.resync`).
        If that fails the driver has closed the port and the server reconnects (a board
        error is kept as the board's error; anything else is raised, for :meth:`_end` to
        log). If it does
        not finish within :meth:`_take_back_timeout`, the lease ends anyway; new leases are
        refused until it has finished (the driver's thread still owns the port)."""
        if not self.svc.driver.connected:
            return
        job = self._taking_back = asyncio.ensure_future(self.svc._run(self.svc.driver.resync))
        try:
            await asyncio.wait_for(asyncio.shield(job), self._take_back_timeout())
        except asyncio.TimeoutError:
            self.svc.board_error = (f"the motor board was not taken back within "
                                    f"{self._take_back_timeout():g} s after a lease")
            log.error("G-code channel: %s; leases are refused until it is", self.svc.board_error)
            job.add_done_callback(self._taken_back_late)
        except BoardError as exc:
            self.svc.board_error = str(exc)
            log.warning("G-code channel: taking the board back: %s", exc)

    def _taken_back_late(self, job: asyncio.Future) -> None:
        if job.cancelled():
            return
        exc = job.exception()
        if exc is None:
            self.svc.board_error = None
            log.warning("G-code channel: the motor board was taken back late")
        else:
            self.svc.board_error = str(exc)
            log.warning("G-code channel: taking the board back (late): %s: %s", type(exc).__name__, exc)


async def _read_to_end(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def collapse_retries(lines: list[bytes]) -> list[bytes]:
    """Lines held while paused, with a client's re-sent copies of its first command
    removed: a client waiting for an answer re-sends the same command when its read
    times out (``opentrons``' ``SerialConnection._send_data`` retries), and the board
    must run it once. A command is its line plus the empty line the OT-2 driver writes
    after it (``\\r\\n\\r\\n`` terminator)."""
    end = next((i + 1 for i, ln in enumerate(lines) if not ln.strip()), len(lines))
    unit = lines[:end]
    k = end
    while unit and lines[k:k + end] == unit:
        k += end
    return unit + lines[k:]


def allowed_uids(sandbox_user: str, channel_users: list[str]) -> frozenset[int]:
    """The uids whose processes may lease the motor board: root, this server's own user,
    the protocol-run user (``sandbox_user``, else ``nobody``, the sandbox's fallback) and the
    ``channel_users`` that exist (``ot2-notebook``: notebooks drive the robot too)."""
    def uid(name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    sandbox = uid(sandbox_user)
    found = {sandbox if sandbox is not None else uid("nobody"), *(uid(name) for name in channel_users)}
    return frozenset({0, os.geteuid()} | found - {None})


def _proc_addr(addr: tuple) -> str:
    """An IPv4 ``(host, port)`` as ``/proc/net/tcp`` prints it (``0100007F:7CD8``)."""
    ip = int.from_bytes(socket.inet_aton(addr[0]), sys.byteorder)
    return f"{ip:08X}:{addr[1]:04X}"


def peer_process(peer: tuple, local: tuple) -> tuple[int | None, str | None]:
    """The process holding the other end of a loopback TCP connection: ``(pid, command
    line)``, or ``(None, None)`` when it cannot be seen (another user's process, not
    Linux). Found from the socket's inode in ``/proc/net/tcp`` and the ``socket:[inode]``
    links in ``/proc/<pid>/fd`` (Linux ``proc(5)``)."""
    try:
        want = (_proc_addr(peer), _proc_addr(local))
        inode = None
        with open("/proc/net/tcp", encoding="ascii") as fh:
            next(fh)
            for row in fh:
                cols = row.split()
                if (cols[1], cols[2]) == want:
                    inode = cols[9]
                    break
    except (OSError, ValueError, IndexError, StopIteration):
        return None, None
    if not inode or inode == "0":
        return None, None
    target = f"socket:[{inode}]"
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") == target:
                    return int(entry), _command_line(entry)
            except OSError:
                continue
    return None, None


def _command_line(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return None
    text = " ".join(a.decode("utf-8", "replace") for a in argv if a)
    return text[:200] or None

"""The robot as a set of operations, shared by the HTTP API and the raw TCP bridge.

Every operation takes a ``params`` dict (HTTP: JSON body or query; bridge: ``params``),
validates it strictly (unknown fields are refused), and returns a JSON-able dict, or
raises :class:`~robot_server.errors.ApiError` or a driver error (:mod:`.errors` gives
their HTTP status).

Units: positions in mm, speeds in mm/s, durations in s. Deck coordinates of a mount are
machine coordinates (identity deck calibration) plus the mount offset: the right mount
is the reference, the left one is at ``left_mount_offset`` (config) from it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable

from update_server.tokens import TokenStore, tokens_path

from . import __version__
from .channel import Channel
from .config import Config
from .driver import (AXES, MAX_SPEED, SOFT_LIMITS, BoardError, BoardNotConnected, DriverError, MotorDriver,
                     check_axes, check_speed)
from .errors import ApiError
from .gpio import GPIOBackend, SimulatedGPIO
from .ot2_api import Ot2Resources
from .pairing import Pairing
from .params import boolean, invalid, number, obj

log = logging.getLogger("robot_server.service")

MOUNT_AXES = {"left": ("Z", "B"), "right": ("A", "C")}   # (mount axis, plunger axis)


# ---------------------------------------------------------------- param helpers
def _mount(params: dict, required: bool = True) -> str | None:
    mount = params.get("mount")
    if mount is None:
        if required:
            raise invalid("field 'mount' is required ('left' or 'right')")
        return None
    if not isinstance(mount, str) or mount not in MOUNT_AXES:
        raise invalid("field 'mount' must be 'left' or 'right'")
    return mount


def _speed(params: dict, axes: str) -> float | None:
    if "speed" not in params or params["speed"] is None:
        return None
    return check_speed(params["speed"], axes)


# ---------------------------------------------------------------- events
class EventHub:
    """Fan-out of events ``(name, data)`` to subscriber queues. A subscriber that falls
    more than ``maxsize`` events behind loses the oldest ones (it never blocks others)."""

    def __init__(self) -> None:
        self._subs: set[asyncio.Queue] = set()
        self.seq = 0

    def subscribe(self, maxsize: int = 1000) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subs.discard(q)

    def publish(self, name: str, data: dict) -> None:
        self.seq += 1
        event = {"event": name, "seq": self.seq, "time": time.time(), "data": data}
        for q in list(self._subs):
            if q.full():
                try:
                    q.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(event)

    def close(self) -> None:
        for q in list(self._subs):
            if q.full():
                q.get_nowait()
            q.put_nowait(None)


# ---------------------------------------------------------------- the robot
class RobotService:
    """Owns the driver (run in one worker thread), the GPIO backend and the event hub."""

    #: Longest a paused motion waits for the door to close before failing (s).
    door_wait_timeout = 600.0

    def __init__(self, config: Config, gpio: GPIOBackend, driver: MotorDriver | None = None) -> None:
        self.config = config
        self.gpio = gpio
        self.driver = driver or MotorDriver(config.serial_port, config.baudrate, config.ack_timeout,
                                            reset_hook=gpio.pulse_reset)
        self.events = EventHub()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="motor-board")
        self._motion: asyncio.Lock | None = None
        self._door_closed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.paused = False
        self.moving = False
        self.board_error: str | None = None
        self.started = time.time()
        self.system_version = _system_version()
        self.channel = Channel(self)
        self.ot2 = Ot2Resources(self)
        self.tokens = TokenStore(tokens_path(config.data_dir))
        self.pairing = Pairing(self.tokens, gpio, config.pairing_timeout)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Set up GPIO (pulse the board's reset line once, as at power-up) and start the
        background task that connects (and reconnects) to the motor board. Returns at
        once: the server is healthy without a board."""
        self._loop = asyncio.get_running_loop()
        self._motion = asyncio.Lock()
        self._door_closed = asyncio.Event()
        self.gpio.setup()
        if not self.gpio.door_open():
            self._door_closed.set()
        self.gpio.on_door(lambda state: self._loop.call_soon_threadsafe(self._door_changed, state))
        self.gpio.on_button(lambda state: self._loop.call_soon_threadsafe(self._button_changed, state))
        self.gpio.set_button_light(False, False, True)
        await self._run(self.gpio.pulse_reset)
        self._tasks.append(asyncio.ensure_future(self._connect_loop()))

    async def stop(self) -> None:
        self._stopping = True
        await self.pairing.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self.events.close()
        await self._run(self.driver.disconnect)
        self._executor.shutdown(wait=True)
        self.gpio.close()

    async def _run(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _connect_loop(self) -> None:
        was = False
        while not self._stopping:
            if not self.driver.connected:
                if was:
                    was = False
                    self.events.publish("board", {"connected": False, "error": self.board_error})
                try:
                    await self._run(self.driver.connect)
                    self.board_error = None
                    was = True
                    self.events.publish("board", {"connected": True, "firmware": self.driver.firmware})
                    self._publish_position()
                except BoardError as exc:
                    if exc.args and str(exc) != self.board_error:
                        log.warning("motor board: %s", exc)
                    self.board_error = str(exc)
                except Exception as exc:  # the loop must outlive any failure, or the board stays away
                    message = f"connecting to the motor board failed: {type(exc).__name__}: {exc}"
                    if message != self.board_error:
                        log.exception("motor board: %s", message)
                    self.board_error = message
            await asyncio.sleep(self.config.reconnect_interval)

    # ------------------------------------------------------------ gpio events
    def _door_changed(self, is_open: bool) -> None:
        if is_open:
            self._door_closed.clear()
            if self.moving:
                self.paused = True
            self.channel.pause("door opened")
        else:
            self._door_closed.set()
            self.paused = False
        self.events.publish("door", self._door_state())

    def _button_changed(self, pressed: bool) -> None:
        self.events.publish("button", {"pressed": pressed})
        if pressed and self.channel.lease is not None:      # the front button stops a lease
            self._tasks.append(asyncio.ensure_future(self.channel.stop("front button pressed")))
            self.pairing.deny("the front button stopped a run")
        elif pressed:                                        # else it approves a pairing request
            self.pairing.button_pressed()

    @property
    def motion_lock(self) -> asyncio.Lock:
        """Held while the robot moves for HTTP or the bridge, and while a G-code channel
        lease starts (so a lease never begins in the middle of a motion)."""
        return self._motion

    def _door_state(self) -> dict:
        is_open = self.gpio.door_open()
        lease = self.channel.lease
        paused = self.paused or (lease is not None and lease.pause_reason is not None)
        return {"open": is_open, "status": "open" if is_open else "closed", "paused": paused}

    def _publish_position(self) -> None:
        self.events.publish("position", self._positions())

    # ------------------------------------------------------------ motion helpers
    async def _driver_call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` in the driver's thread; a lost board is noted for ``/health``."""
        try:
            return await self._run(fn, *args)
        except BoardNotConnected as exc:
            self.board_error = str(exc)
            raise

    async def _wait_door(self) -> float:
        """Wait (while a motion is in progress) until the door is closed. Returns the
        seconds spent paused; raises 409 ``door-open`` after :attr:`door_wait_timeout`."""
        if self._door_closed.is_set():
            return 0.0
        t0 = time.monotonic()
        self.paused = True
        self.events.publish("door", self._door_state())
        try:
            await asyncio.wait_for(self._door_closed.wait(), self.door_wait_timeout)
        except asyncio.TimeoutError:
            raise ApiError("door-open", f"motion paused: door open for more than "
                           f"{self.door_wait_timeout:g} s; the remaining motion was cancelled") from None
        finally:
            self.paused = False
        return time.monotonic() - t0

    def _refuse_if_door_open(self) -> None:
        if self.gpio.door_open():
            raise ApiError("door-open", "the door is open; close it before moving the robot")

    def _refuse_if_leased(self) -> None:
        """409 ``robot-leased`` naming the holder while the G-code channel lends the board."""
        if self.channel.lease is not None:
            raise ApiError("robot-leased", self.channel.busy_message())

    @contextlib.asynccontextmanager
    async def _board(self) -> AsyncIterator[None]:
        """The motion lock, for an operation that talks to the board; refused with 409
        ``robot-leased`` while the board is lent (checked again once the lock is held)."""
        self._refuse_if_leased()
        async with self._motion:
            self._refuse_if_leased()
            yield

    async def _motion_sequence(self, steps: list[tuple[Callable, tuple]]) -> float:
        """Run driver calls one after another under the motion lock; before each step the
        door is checked and motion pauses while it is open. Returns seconds paused."""
        paused = 0.0
        async with self._board():
            self.moving = True
            try:
                for fn, args in steps:
                    paused += await self._wait_door()
                    try:
                        await self._driver_call(fn, *args)
                    finally:
                        self._publish_position()
            finally:
                self.moving = False
        return paused

    def _mount_xyz(self, mount: str) -> list[float] | None:
        pos = self.driver.position
        axis = MOUNT_AXES[mount][0]
        if pos["X"] is None or pos["Y"] is None or pos[axis] is None:
            return None
        off = self.config.left_mount_offset if mount == "left" else [0.0, 0.0, 0.0]
        return [pos["X"] + off[0], pos["Y"] + off[1], pos[axis] + off[2]]

    def _positions(self) -> dict:
        return {"position": dict(self.driver.position),
                "mounts": {m: self._mount_xyz(m) for m in MOUNT_AXES},
                "homed": dict(self.driver.homed), "engaged": dict(self.driver.engaged)}

    # ------------------------------------------------------------ operations
    async def health(self, params: Any = None) -> dict:
        """Server and motor-board state; answers even with no board connected."""
        obj(params, set())
        d = self.driver
        return {"name": "robot-server", "version": __version__, "system_version": self.system_version,
                "api_version": 1, "uptime": round(time.time() - self.started, 3),
                "gpio_backend": self.gpio.name,
                "motor_board": {"connected": d.connected, "port": d.port,
                                "firmware": d.firmware if d.connected else None,
                                "homed": dict(d.homed), "error": None if d.connected else self.board_error},
                "door": self._door_state(), "moving": self.moving, "lease": self.channel.holder()}

    async def get_lights(self, params: Any = None) -> dict:
        """``{on}``: frame lights; ``button``: button LED colours."""
        obj(params, set())
        return {"on": self.gpio.lights_on(), "button": self.gpio.button_light()}

    async def set_lights(self, params: Any) -> dict:
        """Body ``{on: bool}`` switches the frame lights; optional ``button: {red, green,
        blue}`` sets the button LED."""
        p = obj(params, {"on", "button"})
        on = boolean(p, "on", required="button" not in p)
        if on is not None:
            self.gpio.set_lights(on)
        if "button" in p:
            b = obj(p["button"], {"red", "green", "blue"})
            cur = self.gpio.button_light()
            self.gpio.set_button_light(*(boolean(b, c, default=cur[c]) for c in ("red", "green", "blue")))
        result = await self.get_lights()
        self.events.publish("lights", result)
        return result

    async def home(self, params: Any) -> dict:
        """Home all axes (default, or ``target: "robot"``), one mount's axes
        (``target: "pipette"``/``"mount"`` + ``mount``: the mount axis and its plunger),
        or named axes (``axis: "X"`` / ``axes: ["X", "Y"]``). Order: Z A B C, X, Y."""
        p = obj(params, {"target", "mount", "axis", "axes"})
        target = p.get("target", "robot")
        if target not in ("robot", "pipette", "mount"):
            raise invalid("field 'target' must be 'robot', 'pipette' or 'mount'")
        if "axis" in p or "axes" in p:
            if "axis" in p and "axes" in p:
                raise invalid("give 'axis' or 'axes', not both")
            names = [p["axis"]] if "axis" in p else p["axes"]
            if not isinstance(names, list) or not names:
                raise invalid("field 'axes' must be a non-empty list of axis names")
            axes = check_axes(names)
        elif target == "robot":
            if "mount" in p:
                raise invalid("'mount' is only valid with target 'pipette' or 'mount'")
            axes = AXES
        else:
            mount = _mount(p)
            axes = "".join(MOUNT_AXES[mount]) if target == "pipette" else MOUNT_AXES[mount][0]
        self._refuse_if_leased()
        self._refuse_if_door_open()
        paused = await self._motion_sequence([(self.driver.home, (axes,))])
        return {"homed": dict(self.driver.homed), "axes": axes, "paused_s": round(paused, 3), **self._positions()}

    async def move(self, params: Any) -> dict:
        """Move a mount to a deck point or axes to machine positions.

        * ``{target: "mount"|"pipette", mount: "left"|"right", point: [x, y, z], speed?,
          strategy?: "direct"|"arc"}``: the mount's reference point to ``point`` (mm,
          deck coordinates); ``arc`` first retracts the mount to the top of its travel,
          moves X/Y, then lowers.
        * ``{axes: {"X": mm, "B": mm, ...}, speed?}``: absolute machine positions.

        ``speed`` in mm/s, (0, fastest moved axis' max]. Everything is checked (axes,
        soft limits, homing, speed) before anything moves. Errors: 422 ``unknown-axis``,
        ``soft-limit``, ``invalid-speed``, ``invalid-request``; 409 ``not-homed``,
        ``door-open``, ``board-*``."""
        p = obj(params, {"target", "mount", "point", "axes", "speed", "strategy"})
        strategy = p.get("strategy", "direct")
        if strategy not in ("direct", "arc"):
            raise invalid("field 'strategy' must be 'direct' or 'arc'")
        if "axes" in p:
            if "point" in p or "mount" in p or "target" in p:
                raise invalid("give either 'axes' or 'target'/'mount'/'point'")
            axes = p["axes"]
            if not isinstance(axes, dict) or not axes:
                raise invalid("field 'axes' must be an object of axis name -> mm")
            targets = {check_axes([k]): v for k, v in axes.items()}
            segments = [targets]
        else:
            target = p.get("target", "mount")
            if target not in ("mount", "pipette"):
                raise invalid("field 'target' must be 'mount' or 'pipette'")
            mount = _mount(p)
            point = p.get("point")
            if (not isinstance(point, list) or len(point) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
                raise invalid("field 'point' must be [x, y, z] in mm")
            off = self.config.left_mount_offset if mount == "left" else [0.0, 0.0, 0.0]
            zax = MOUNT_AXES[mount][0]
            targets = {"X": point[0] - off[0], "Y": point[1] - off[1], zax: point[2] - off[2]}
            if strategy == "arc":
                top = SOFT_LIMITS[zax][1]
                segments = [{zax: top}, {"X": targets["X"], "Y": targets["Y"]}, {zax: targets[zax]}]
            else:
                segments = [targets]
        speed = _speed(p, "".join(targets))
        # an arc's single-axis segments run at most at that axis' max speed
        plan = [(seg, None if speed is None else min(speed, max(MAX_SPEED[a] for a in seg)))
                for seg in segments]
        self._refuse_if_leased()
        # validate every segment against limits and homing before anything moves
        for seg, seg_speed in plan:
            self.driver.validate_move(seg, seg_speed)
        self._refuse_if_door_open()
        paused = await self._motion_sequence([(self.driver.move, (seg, spd)) for seg, spd in plan])
        return {"paused_s": round(paused, 3), **self._positions()}

    async def halt_motion(self) -> dict:
        """Leave the robot in a known state after a run was stopped: if the G-code channel
        lends the board, stop the lease (:meth:`Channel.stop`: halt line, client closed,
        axes un-homed); if a motion is in progress, pulse the board's halt line (the board
        alarms, the driver recovers with ``M999`` and re-reads its state); then re-read
        homing status (``G28.6``) and position (``M114.2``). Returns ``{halted,
        homed_all}``."""
        halted = False
        if await self.channel.stop("stopped") is not None:
            halted = True
        elif self.moving:
            halted = True
            await asyncio.get_running_loop().run_in_executor(None, self.gpio.pulse_halt)
        async with self._motion:
            if self.driver.connected:
                try:
                    await self._driver_call(self.driver.read_homing_status)
                    await self._driver_call(self.driver.read_position)
                except DriverError as exc:
                    log.warning("after stop: %s", exc)
        self._publish_position()
        return {"halted": halted, "homed_all": all(self.driver.homed.values())}

    async def positions(self, params: Any = None) -> dict:
        """Current position: ``position`` per axis (mm, machine; ``null`` if unknown),
        ``mounts`` (deck coordinates of each mount, mm), ``homed``, ``engaged``. With
        ``refresh=true`` the position is re-read from the board (``M114.2``) first."""
        p = obj(params, {"refresh"})
        if boolean(p, "refresh", default=False) and self.channel.lease is None:
            async with self._board():
                await self._driver_call(self.driver.read_position)
        return self._positions()

    async def endstops(self, params: Any = None) -> dict:
        """Endstop switches from ``M119`` (True = closed), plus ``Probe``."""
        obj(params, set())
        async with self._board():
            return {"endstops": await self._driver_call(self.driver.read_endstops)}

    async def engaged(self, params: Any = None) -> dict:
        """Which motors are energised: ``{"X": {"enabled": bool}, ...}`` (OT-2 shape)."""
        obj(params, set())
        return {ax: {"enabled": on} for ax, on in self.driver.engaged.items()}

    async def disengage(self, params: Any) -> dict:
        """Body ``{axes: ["x", "y", ...]}`` (case-insensitive; default all): de-energise
        those motors (``M18``)."""
        p = obj(params, {"axes"})
        names = p.get("axes", list(AXES))
        if not isinstance(names, list):
            raise invalid("field 'axes' must be a list of axis names")
        axes = check_axes(names)
        async with self._board():
            await self._driver_call(self.driver.disengage, axes)
        result = await self.engaged()
        self.events.publish("motors", result)
        return result

    async def stop_robot(self, params: Any = None) -> dict:
        """Stop the robot the way the OT-2 stops a run: pulse the board's halt line if
        anything is moving or the G-code channel lends the board; a lease ends (its client
        is disconnected) and the axes are left un-homed. Returns ``{stopped: bool,
        lease: <former holder> | null, homed: {axis: bool}}``."""
        obj(params, set())
        holder = self.channel.holder()
        result = await self.halt_motion()
        return {"stopped": result["halted"], "lease": holder, "homed": dict(self.driver.homed)}

    async def resume(self, params: Any = None) -> dict:
        """Resume a G-code channel lease paused by the door: its held lines are forwarded.
        Returns ``{lease: <holder>}``. 409 ``door-open`` while the door is open,
        409 ``not-paused`` if no lease is paused."""
        obj(params, set())
        if self.gpio.door_open():
            raise ApiError("door-open", "the door is open; close it before resuming")
        holder = self.channel.resume()
        if holder is None:
            raise ApiError("not-paused", "no G-code channel lease is paused")
        return {"lease": holder}

    async def door(self, params: Any = None) -> dict:
        """``{open, status: "open"|"closed", paused}``; ``paused`` is true while a motion
        waits for the door to close."""
        obj(params, set())
        return self._door_state()

    async def identify(self, params: Any) -> dict:
        """Blink the frame lights for ``seconds`` (1..60, default 10) in the background."""
        p = obj(params, {"seconds"})
        seconds = number(p, "seconds", 1, 60, default=10.0)
        was_on = self.gpio.lights_on()

        async def blink() -> None:
            end = time.monotonic() + seconds
            on = was_on
            while time.monotonic() < end:
                on = not on
                self.gpio.set_lights(on)
                await asyncio.sleep(0.5)
            self.gpio.set_lights(was_on)

        self._tasks.append(asyncio.ensure_future(blink()))
        self._tasks = [t for t in self._tasks if not t.done()]
        return {"identifying": True, "seconds": seconds}

    async def sim_gpio(self, params: Any) -> dict:
        """Simulated backend only: set inputs ``{door_open?: bool, button?: bool}``
        (for tests and the QEMU image). 409 ``not-simulated`` on real GPIO."""
        p = obj(params, {"door_open", "button"})
        if not isinstance(self.gpio, SimulatedGPIO):
            raise ApiError("not-simulated", "GPIO inputs can only be set on the simulated backend")
        door = boolean(p, "door_open")
        button = boolean(p, "button")
        if door is not None:
            self.gpio.set_door(door)
        if button is not None:
            self.gpio.set_button(button)
        await asyncio.sleep(0)   # let the edge callbacks (scheduled on the loop) run
        return {"door": self._door_state(), "button": {"pressed": self.gpio.button_pressed()}}


def _system_version() -> str | None:
    try:
        with open("/etc/ot2/version.json", encoding="utf-8") as fh:
            return str(json.load(fh).get("version"))
    except (OSError, ValueError, AttributeError):
        return None

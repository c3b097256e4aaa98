"""Where a protocol's motions go: nowhere (simulation), the motor-board driver, or the
running robot server's HTTP API.

Every backend takes absolute machine positions in mm (axes ``X Y Z A B C``) and speeds in
mm/s; the protocol layer (``context.py``) does the deck geometry, tracks the position and
estimates durations, so simulation and execution send exactly the same motions.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..driver import DriverError, MotorDriver
from ..versioning import API_VERSION, HEADER
from .errors import HardwareError

#: Seconds an HTTP motion request may take (a door opened mid-run pauses motion up to
#: the server's ``door_wait_timeout`` of 600 s).
HTTP_MOTION_TIMEOUT = 660.0


class Hardware:
    """Backend interface. ``simulating`` is what ``protocol.is_simulating()`` returns."""

    simulating = False
    name = "hardware"

    def home(self, axes: str) -> None:
        """Home ``axes`` (e.g. ``"XYZABC"``, ``"C"``); afterwards they are at the homed position."""
        raise NotImplementedError

    def move(self, targets: dict[str, float], speed: float) -> None:
        """Absolute move of the given axes to machine positions (mm) at ``speed`` mm/s."""
        raise NotImplementedError

    def homed(self) -> dict[str, bool] | None:
        """Which axes are homed, if the backend knows (None: unknown, assume not)."""
        return None

    def set_lights(self, on: bool) -> None:
        """Switch the rail lights (where the backend can)."""

    def close(self) -> None:
        pass


class SimulatedHardware(Hardware):
    """No hardware: motions are only recorded (``moves`` keeps the last ``keep`` of them
    as ``(targets, speed)``; 0 keeps none)."""

    simulating = True
    name = "simulator"

    def __init__(self, keep: int = 0) -> None:
        self.keep = keep
        self.moves: list[tuple[dict[str, float], float]] = []
        self.lights = False

    def home(self, axes: str) -> None:
        if self.keep:
            self.moves.append(({"home": axes}, 0.0))  # type: ignore[dict-item]

    def move(self, targets: dict[str, float], speed: float) -> None:
        if self.keep:
            self.moves.append((dict(targets), speed))
            del self.moves[:-self.keep]

    def homed(self) -> dict[str, bool]:
        return {ax: True for ax in "XYZABC"}

    def set_lights(self, on: bool) -> None:
        self.lights = on


class DriverHardware(Hardware):
    """Drives the motor board directly through a connected :class:`MotorDriver`
    (``robot-execute --direct``; the robot server must not be running)."""

    name = "driver"

    def __init__(self, driver: MotorDriver) -> None:
        self.driver = driver

    def _call(self, fn, *args: Any) -> Any:
        try:
            return fn(*args)
        except DriverError as exc:
            raise HardwareError(str(exc), exc.code) from None

    def home(self, axes: str) -> None:
        self._call(self.driver.home, axes)

    def move(self, targets: dict[str, float], speed: float) -> None:
        self._call(self.driver.move, targets, speed)

    def homed(self) -> dict[str, bool]:
        return dict(self.driver.homed)


class HttpHardware(Hardware):
    """Sends motions to the running robot server (``POST /robot/move`` with machine axes,
    ``POST /robot/home``), so the server stays the UART's only owner and its door pause
    applies. ``base_url`` e.g. ``http://127.0.0.1:31950``."""

    name = "robot-server"

    def __init__(self, base_url: str, timeout: float = HTTP_MOTION_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if path != "/health":      # with the header /health answers only the OT-2's fields
            headers[HEADER] = str(API_VERSION)
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())
                raise HardwareError(f"robot server refused {path}: {err.get('message')}", err.get("error")) from None
            except (ValueError, AttributeError):
                raise HardwareError(f"robot server answered {exc.code} to {path}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HardwareError(f"cannot reach the robot server at {self.base_url}: {reason}",
                                "server-unreachable") from None

    def home(self, axes: str) -> None:
        self.request("POST", "/robot/home", {"axes": list(axes)})

    def move(self, targets: dict[str, float], speed: float) -> None:
        self.request("POST", "/robot/move", {"axes": {k: round(v, 4) for k, v in targets.items()},
                                             "speed": speed})

    def homed(self) -> dict[str, bool] | None:
        health = self.request("GET", "/health", timeout=10)
        mb = health.get("motor_board") or {}
        if not mb.get("connected"):
            raise HardwareError(f"the robot server has no motor board: {mb.get('error')}", "board-not-connected")
        return mb.get("homed")

    def set_lights(self, on: bool) -> None:
        self.request("POST", "/robot/lights", {"on": bool(on)}, timeout=10)

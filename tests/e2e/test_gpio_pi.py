"""The robot server's GPIO on the emulated Raspberry Pi 3 (OT2_BOARD=ot2, `make test-e2e-pi`).

The `rpi` backend (libgpiod on gpiochip0, the BCM2835's controller as Linux sees it under
QEMU's raspi3b) against lines the harness drives and reads through QEMU's qtest socket:
the door switch (BCM 20, closed = high; open, the server refuses motion) and the front button (BCM 5, active low) as
levels only, the frame lights (BCM 6) and the motor board's reset/halt/ISP lines (BCM 24,
18, 23: active low, idle high) as the server sets them. Pin map: robot_server/gpio.py.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from robot_server.gpio import PIN_BUTTON_INPUT as BUTTON
from robot_server.gpio import PIN_DOOR as DOOR
from robot_server.gpio import PIN_FRAME_LIGHTS as LIGHTS
from robot_server.gpio import PIN_HALT as HALT
from robot_server.gpio import PIN_ISP as ISP
from robot_server.gpio import PIN_RESET as RESET

import ot2qemu
from conftest import BOARD, record

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(BOARD != "ot2", reason="the Pi's GPIO: OT2_BOARD=ot2")]


def until(check, timeout: float = 30):
    """Polls `check()` until it returns something true; returns that, or fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    pytest.fail(f"not seen within {timeout} s: {check.__doc__ or check}")


class Events:
    """The robot server's server-sent events (`GET /events`), collected in a thread."""

    def __init__(self, guest: ot2qemu.Guest):
        self.seen: list[dict] = []
        self.conn = http.client.HTTPConnection(ot2qemu.HOST, guest.ports["robot"], timeout=120)
        self.conn.request("GET", "/events", headers={"Opentrons-Version": "*"})
        self.resp = self.conn.getresponse()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                if line.startswith(b"data:"):
                    self.seen.append(json.loads(line[5:]))
        except (OSError, ValueError, AttributeError):
            pass   # closed by close(): http.client drops its file under the reading thread

    def of(self, kind: str) -> list[dict]:
        return [e["data"] for e in self.seen if e.get("event") == kind]

    def close(self) -> None:
        self.conn.close()


def door_status(guest: ot2qemu.Guest) -> str:
    """"open" or "closed": the OT-2 API's `GET /robot/door/status` (`{data: {status}}`)."""
    return guest.request("robot", "GET", "/robot/door/status")["data"]["status"]


def test_gpio_door_button_lights_reset_lines(guest):
    started = time.monotonic()
    if not guest.running:   # run on its own: a fresh guest
        guest.boot()
    health = guest.wait_healthy(timeout=900)
    robot = guest.health("robot")
    assert robot["gpio_backend"] == "rpi", robot
    qtest = guest.qtest

    # Outputs: the motor board's control lines idle high, the lights follow the API.
    assert (qtest.gpio(RESET), qtest.gpio(HALT), qtest.gpio(ISP)) == (True, True, True)
    guest.request("robot", "POST", "/robot/lights", {"on": True})
    assert qtest.gpio(LIGHTS)
    guest.request("robot", "POST", "/robot/lights", {"on": False})
    assert not qtest.gpio(LIGHTS)

    events = Events(guest)
    try:
        # The front button: a press (low) and release reach the API's events.
        qtest.set_gpio(BUTTON, False)
        until(lambda: {"pressed": True} in events.of("button"))
        qtest.set_gpio(BUTTON, True)
        until(lambda: {"pressed": False} in events.of("button"))

        # The door: open, it stops motion (409 door-open); closed, the robot homes.
        qtest.set_gpio(DOOR, False)
        until(lambda: door_status(guest) == "open")
        until(lambda: any(e["open"] for e in events.of("door")))
        with pytest.raises(ot2qemu.HTTPError) as refused:
            guest.request("robot", "POST", "/robot/home", {"target": "robot"}, timeout=120)
        assert refused.value.status == 409, refused.value
        qtest.set_gpio(DOOR, True)
        until(lambda: door_status(guest) == "closed")
        guest.request("robot", "POST", "/robot/home", {"target": "robot"}, timeout=300)
        positions = guest.request("robot", "GET", "/robot/positions")
        assert all(positions["homed"].values()), positions
    finally:
        events.close()
    record("GPIO: door stops homing, button, lights", health["booted_slot"], health["booted_slot"], True,
           time.monotonic() - started)

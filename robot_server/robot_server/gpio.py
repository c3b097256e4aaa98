"""GPIO: frame lights, button LED, front button, door switch, motor-board reset/halt.

Pin map (BCM numbering) of the OT-2, from Opentrons' GPIO driver,
https://github.com/Opentrons/opentrons/blob/edge/api/src/opentrons/drivers/rpi_drivers/gpio.py:

==================  ====  ==========================================================
line                BCM   notes
==================  ====  ==========================================================
frame lights        6     output, high = on
button LED blue     13    output
button LED green    19    output
button LED red      26    output
front button        5     input, active low
door/window switch  20    input, both edges (later boards: door 12, window 16)
motor board halt    18    output, active low
motor board ISP     23    output, active low (kept high: run the firmware)
motor board reset   24    output, active low
audio enable        21    output
board revision      17, 27  inputs
==================  ====  ==========================================================

Reset sequence (OT-2): reset low 0.25 s with ISP high, then high, wait 0.25 s; the host
then waits for the board's ack and sends ``M999``. Hard halt: halt low 0.25 s.

Door level: the facts do not state the switch polarity; we read the door as **closed
when the line is high** (``DOOR_CLOSED_LEVEL``, the one constant to flip after checking on
hardware).

Backends: :class:`RPiGPIO` (libgpiod, imported lazily, only on the Pi) and
:class:`SimulatedGPIO` (in memory; inputs are set by :meth:`SimulatedGPIO.set_door` /
:meth:`SimulatedGPIO.set_button`, used off the Pi, in tests and in the QEMU image).
Input-change callbacks run in an arbitrary thread; the server hops them onto its loop.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("robot_server.gpio")

PIN_FRAME_LIGHTS = 6
PIN_BUTTON_BLUE = 13
PIN_BUTTON_GREEN = 19
PIN_BUTTON_RED = 26
PIN_BUTTON_INPUT = 5
PIN_DOOR = 20
PIN_HALT = 18
PIN_ISP = 23
PIN_RESET = 24
PIN_AUDIO_ENABLE = 21
PIN_REVISION = (17, 27)
DOOR_CLOSED_LEVEL = 1
RESET_PULSE_S = 0.25

Callback = Callable[[bool], None]


class GPIOBackend:
    """Interface of a GPIO backend. ``door_open`` / ``button_pressed`` are the current
    input states; ``on_door`` / ``on_button`` register callbacks ``cb(state: bool)``."""

    name = "abstract"

    def __init__(self) -> None:
        self._door_cbs: list[Callback] = []
        self._button_cbs: list[Callback] = []
        self.reset_count = 0
        self.halt_count = 0

    def setup(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def on_door(self, cb: Callback) -> None:
        self._door_cbs.append(cb)

    def on_button(self, cb: Callback) -> None:
        self._button_cbs.append(cb)

    def _fire(self, cbs: list[Callback], state: bool) -> None:
        for cb in list(cbs):
            try:
                cb(state)
            except Exception:   # a bad listener must not kill the edge thread
                log.exception("GPIO callback failed")

    # outputs
    def set_lights(self, on: bool) -> None:
        raise NotImplementedError

    def lights_on(self) -> bool:
        raise NotImplementedError

    def set_button_light(self, red: bool, green: bool, blue: bool) -> None:
        raise NotImplementedError

    def button_light(self) -> dict[str, bool]:
        raise NotImplementedError

    # inputs
    def door_open(self) -> bool:
        raise NotImplementedError

    def button_pressed(self) -> bool:
        raise NotImplementedError

    def revision(self) -> int:
        return 0

    # motor board
    def pulse_reset(self) -> None:
        """Reset the motor board: reset low 0.25 s with ISP high, then high, wait 0.25 s."""
        raise NotImplementedError

    def pulse_halt(self) -> None:
        """Hard-halt the motor board: halt low 0.25 s (the board answers with an alarm)."""
        raise NotImplementedError


class SimulatedGPIO(GPIOBackend):
    """In-memory backend. ``reset_target`` / ``halt_target``: optional callables run when
    the reset / halt line is pulsed (tests link them to an in-process emulator).
    ``pulse_s`` shortens the pulses (default 0: instant)."""

    name = "sim"

    def __init__(self, pulse_s: float = 0.0) -> None:
        super().__init__()
        self._lights = False
        self._led = {"red": False, "green": False, "blue": False}
        self._door_open = False
        self._button = False
        self.pulse_s = pulse_s
        self.reset_target: Callable[[], None] | None = None
        self.halt_target: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def setup(self) -> None:
        log.info("simulated GPIO")

    def set_lights(self, on: bool) -> None:
        self._lights = bool(on)

    def lights_on(self) -> bool:
        return self._lights

    def set_button_light(self, red: bool, green: bool, blue: bool) -> None:
        self._led = {"red": bool(red), "green": bool(green), "blue": bool(blue)}

    def button_light(self) -> dict[str, bool]:
        return dict(self._led)

    def door_open(self) -> bool:
        return self._door_open

    def button_pressed(self) -> bool:
        return self._button

    def set_door(self, is_open: bool) -> None:
        """Simulate the door switch; fires the door callbacks on a change."""
        with self._lock:
            changed = self._door_open != bool(is_open)
            self._door_open = bool(is_open)
        if changed:
            self._fire(self._door_cbs, self._door_open)

    def set_button(self, pressed: bool) -> None:
        """Simulate the front button; fires the button callbacks on a change."""
        with self._lock:
            changed = self._button != bool(pressed)
            self._button = bool(pressed)
        if changed:
            self._fire(self._button_cbs, self._button)

    def pulse_reset(self) -> None:
        self.reset_count += 1
        if self.pulse_s:
            time.sleep(self.pulse_s * 2)
        if self.reset_target is not None:
            self.reset_target()

    def pulse_halt(self) -> None:
        self.halt_count += 1
        if self.pulse_s:
            time.sleep(self.pulse_s)
        if self.halt_target is not None:
            self.halt_target()


class RPiGPIO(GPIOBackend):
    """The Raspberry Pi's GPIO through the kernel's GPIO character device (libgpiod's
    Python bindings, v1 API as in Debian's ``python3-libgpiod``; BCM numbers are the line
    offsets of ``gpiochip0``, the BCM2835 pin controller). ``gpiod`` is imported in
    :meth:`setup`, so this module imports anywhere; without it :meth:`setup` raises
    ``RuntimeError``.

    Input changes are found by edge events where the controller reports them, and by
    reading the levels every ``POLL_S`` seconds in any case: QEMU's BCM2835 model (and any
    controller without edge detection) only gives levels.
    """

    name = "rpi"
    CHIP = "gpiochip0"
    CONSUMER = "ot2-robot-server"
    POLL_S = 0.05

    def __init__(self) -> None:
        super().__init__()
        self._chip = None
        self._out: dict[int, object] = {}
        self._in: dict[int, object] = {}
        self._led = {"red": False, "green": False, "blue": False}
        self._lights = False
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def setup(self) -> None:
        try:
            import gpiod  # type: ignore[import-not-found]  # only on the Pi
            self._chip = gpiod.Chip(self.CHIP)
        except (ImportError, OSError) as exc:
            raise RuntimeError(f"gpio_backend 'rpi' needs libgpiod's gpiod module and {self.CHIP}: {exc}") from None
        # motor-board control lines are active low: idle high (board running)
        for pin, level in ((PIN_FRAME_LIGHTS, 0), (PIN_BUTTON_BLUE, 0), (PIN_BUTTON_GREEN, 0), (PIN_BUTTON_RED, 0),
                           (PIN_AUDIO_ENABLE, 0), (PIN_HALT, 1), (PIN_ISP, 1), (PIN_RESET, 1)):
            line = self._chip.get_line(pin)
            line.request(consumer=self.CONSUMER, type=gpiod.LINE_REQ_DIR_OUT, default_vals=[level])
            self._out[pin] = line
        for pin in (PIN_BUTTON_INPUT, PIN_DOOR):
            line = self._chip.get_line(pin)
            line.request(consumer=self.CONSUMER, type=gpiod.LINE_REQ_EV_BOTH_EDGES,
                         flags=gpiod.LINE_REQ_FLAG_BIAS_PULL_UP)
            self._in[pin] = line
        for pin in PIN_REVISION:
            line = self._chip.get_line(pin)
            line.request(consumer=self.CONSUMER, type=gpiod.LINE_REQ_DIR_IN, flags=gpiod.LINE_REQ_FLAG_BIAS_PULL_UP)
            self._in[pin] = line
        self._watcher = threading.Thread(target=self._watch, name="gpio-inputs", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        """Fires the door and button callbacks on each change of their levels: woken by an
        edge event, or after ``POLL_S`` seconds without one."""
        import gpiod  # type: ignore[import-not-found]
        edges = gpiod.LineBulk([self._in[PIN_DOOR], self._in[PIN_BUTTON_INPUT]])
        door, button = self.door_open(), self.button_pressed()
        while not self._stop.is_set():
            woken = edges.event_wait(sec=0, nsec=int(self.POLL_S * 1e9))
            for line in woken or ():
                line.event_read()
            if self.door_open() != door:
                door = not door
                self._fire(self._door_cbs, door)
            if self.button_pressed() != button:
                button = not button
                self._fire(self._button_cbs, button)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        for line in (*self._out.values(), *self._in.values()):
            line.release()
        self._out.clear()
        self._in.clear()
        if self._chip is not None:
            self._chip.close()
            self._chip = None

    def _set(self, pin: int, level: bool) -> None:
        self._out[pin].set_value(int(level))

    def set_lights(self, on: bool) -> None:
        self._set(PIN_FRAME_LIGHTS, on)
        self._lights = bool(on)

    def lights_on(self) -> bool:
        return self._lights

    def set_button_light(self, red: bool, green: bool, blue: bool) -> None:
        self._set(PIN_BUTTON_RED, red)
        self._set(PIN_BUTTON_GREEN, green)
        self._set(PIN_BUTTON_BLUE, blue)
        self._led = {"red": bool(red), "green": bool(green), "blue": bool(blue)}

    def button_light(self) -> dict[str, bool]:
        return dict(self._led)

    def door_open(self) -> bool:
        return self._in[PIN_DOOR].get_value() != DOOR_CLOSED_LEVEL

    def button_pressed(self) -> bool:
        return self._in[PIN_BUTTON_INPUT].get_value() == 0   # active low

    def revision(self) -> int:
        return sum(self._in[pin].get_value() << i for i, pin in enumerate(PIN_REVISION))

    def pulse_reset(self) -> None:
        self.reset_count += 1
        self._set(PIN_ISP, True)
        self._set(PIN_RESET, False)
        time.sleep(RESET_PULSE_S)
        self._set(PIN_RESET, True)
        time.sleep(RESET_PULSE_S)

    def pulse_halt(self) -> None:
        self.halt_count += 1
        self._set(PIN_HALT, False)
        time.sleep(RESET_PULSE_S)
        self._set(PIN_HALT, True)


def make_backend(name: str) -> GPIOBackend:
    """``"rpi"`` -> :class:`RPiGPIO`, ``"sim"`` -> :class:`SimulatedGPIO`."""
    if name == "rpi":
        return RPiGPIO()
    if name == "sim":
        return SimulatedGPIO()
    raise ValueError(f"unknown gpio backend {name!r}")

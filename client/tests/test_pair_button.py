"""``ot2 pair`` away from the USB cable: the update server answers ``bad-interface``, the
robot server's button pairing gives the token (``docs/security.md``, "Pairing").  Real
servers on loopback (not trusted: the laptop is a LAN host) sharing one ``/data``, the
front button pressed through the robot server's simulated GPIO backend."""

from __future__ import annotations

import threading
import time

import pytest

from ot2_client.cli import main
from robot_server.config import Config
from robot_server.gpio import SimulatedGPIO
from robot_server.server import ThreadedServer
from test_tokens import run


@pytest.fixture
def lan_robot(fleet, tmp_path):
    """``(update server rig, robot server, its GPIO)`` with loopback untrusted."""
    updates = fleet(1, trusted_interfaces=["usb*"])[0]
    gpio = SimulatedGPIO()
    config = Config(serial_port="socket://127.0.0.1:9", gpio_backend="sim", reconnect_interval=5.0,
                    data_dir=str(updates.config.data_dir), lock_file=str(tmp_path / "robot.lock"),
                    analysis_prewarm=False, trusted_interfaces=["usb*"], pairing_timeout=20.0).validate()
    robot = ThreadedServer(config, gpio).start("127.0.0.1", 0)
    yield updates, robot, gpio
    robot.stop()


def press_when_blinking(gpio: SimulatedGPIO, timeout: float = 15.0) -> threading.Thread:
    """Someone at the robot: presses the front button once its light blinks."""
    def person():
        deadline = time.monotonic() + timeout
        while gpio.button_light()["blue"] and time.monotonic() < deadline:
            time.sleep(0.05)             # steady blue until a pairing request blinks it
        gpio.set_button(True)
        gpio.set_button(False)

    t = threading.Thread(target=person, daemon=True)
    t.start()
    return t


def test_pair_with_the_front_button_then_use_the_token_on_both_servers(lan_robot, own_config_dir, capsys):
    updates, robot, gpio = lan_robot
    port = str(robot.server.http_port)
    code, out, err = run(capsys, ["tokens", "list", "--json", updates.address])
    assert code == 1 and out["error"] == "unauthorized"
    person = press_when_blinking(gpio)
    code, out, err = run(capsys, ["pair", "--json", "--client", "lab-pc-3", "--robot-port", port,
                                  "--wait", "15", updates.address])
    person.join(5)
    assert code == 0, err
    assert out["via"] == "button"
    code, out, err = run(capsys, ["tokens", "list", "--json", updates.address])   # the update server accepts it
    assert code == 0, err
    assert [(t["client"], t["via"]) for t in out["tokens"]] == [("lab-pc-3", "button")]
    assert gpio.button_light() == {"red": False, "green": False, "blue": True}


def test_nobody_presses(lan_robot, own_config_dir, capsys):
    updates, robot, gpio = lan_robot
    code, out, err = run(capsys, ["pair", "--json", "--robot-port", str(robot.server.http_port),
                                  "--wait", "2", updates.address])
    assert code == 1 and out["error"] == "pairing-expired"
    time.sleep(0.6)
    assert gpio.button_light()["blue"] is True     # withdrawn: the light stopped blinking
    assert main(["tokens", "list", "--json", updates.address]) == 1

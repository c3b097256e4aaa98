"""A robot flashed with `ot2 flash --rollout-server` takes its update from a rollout server
(issue: fleets).

A real gooseBit (hawkBit's DDI API, `update_server/rollout_lab.py`) runs on the host; the
guest reaches it at 10.0.2.2, the host as QEMU's user network shows it, as a robot reaches
a server on the lab network. The card is flashed with the server and the robot's controller
id in robot.toml; the robot registers with its version, board and revision, the v2 bundle
is published and rolled out, and the robot downloads it, installs it into the other slot,
reboots itself, marks the slot good and reports success: gooseBit then lists it with v2.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import ot2qemu
from conftest import BOARD, COMPATIBLE, META, VERSION_1, VERSION_2, record
from update_server.rollout_lab import GooseBit

pytestmark = [
    pytest.mark.timeout(1500),
    pytest.mark.skipif(BOARD != "qemu", reason="the Pi's only network is QEMU's usb-net at 0.2 MB/s"),
]

CONTROLLER_ID = "lab-robot-9"
REVISION = META["BOARD_REVISION"]


def wait_for(condition, timeout: float, what: str, state=lambda: None):
    """``condition()``'s first true value, polled every 2 s; on timeout the assertion shows ``state()``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state()}"
        time.sleep(2)
    return result


@pytest.fixture
def lab_server():
    workdir = ot2qemu.ROOT / "build" / "e2e" / "rollout"
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    (workdir / "goosebit").mkdir(parents=True)
    server = GooseBit(workdir / "goosebit", poll_time="00:00:05")
    yield server
    server.stop()


@pytest.fixture
def robot(lab_server, images):
    workdir = ot2qemu.ROOT / "build" / "e2e" / "rollout"
    guest = ot2qemu.Guest(workdir / "card.img", workdir)
    guest.ensure_ssh_key()
    image = images["v1"] / "disk.img"
    subprocess.run(["truncate", "-s", str(image.stat().st_size), str(guest.disk)], check=True)
    flash = subprocess.run(
        [str(ot2qemu.VENV_BIN / "ot2"), "flash", "--force", "--ssh-key", str(guest.ssh_key.with_suffix(".pub")),
         "--rollout-server", f"http://10.0.2.2:{lab_server.port}", "--rollout-id", CONTROLLER_ID,
         str(image), str(guest.disk)], capture_output=True, text=True)
    assert flash.returncode == 0, flash.stderr
    yield guest
    guest.stop()


def test_flashed_robot_takes_a_rollout_and_reboots_itself(robot, lab_server, images):
    started = time.monotonic()
    robot.boot()
    health = robot.wait_healthy(timeout=600)
    assert health["rollout"]["server"] == f"http://10.0.2.2:{lab_server.port}"
    assert health["rollout"]["controller_id"] == CONTROLLER_ID
    device = wait_for(lambda: lab_server.devices().get(CONTROLLER_ID), 300, "the robot's registration",
                      lambda: robot.health())
    assert device["sw_version"] == VERSION_1, device
    assert device["hardware"]["model"] == COMPATIBLE and device["hardware"]["revision"] == REVISION, device

    lab_server.rollout(lab_server.upload(images["v2"] / "rootfs.bundle"))
    health = robot.wait_healthy(timeout=900, not_boot_id=health["bootId"])
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    device = wait_for(lambda: (d := lab_server.devices()[CONTROLLER_ID])["last_state"] == "Finished" and d,
                      300, "the success feedback", lambda: lab_server.devices()[CONTROLLER_ID])
    assert device["sw_version"] == VERSION_2, device
    log = lab_server.device_log(CONTROLLER_ID)
    assert "Downloaded 100%" in log and "marked good" in log, log
    record("rollout from gooseBit, the robot reboots itself", "B", health["booted_slot"], True,
           time.monotonic() - started)

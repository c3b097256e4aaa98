"""A card flashed with `ot2 flash --name --ssh-key` boots provisioned (issue: flashing).

The QEMU board's image is flashed onto a file target (the "card") with the mapped blocks
only and read-back verification, robot.toml goes onto its boot partition, and the card
boots in QEMU: its name is the hostname and the mDNS name, the key logs in over SSH,
robot.toml is gone, /data has grown to the end of the larger card, and a second boot
changes nothing. On that card, with room in /data, an update is installed from a file there
(`update-server install`, as from a USB drive) and boots in the other slot.
"""

from __future__ import annotations

import subprocess
import time

import pytest

import ot2qemu
from conftest import VERSION_2, record

pytestmark = pytest.mark.timeout(1200)

CARD_EXTRA = 256 << 20
# Asks the guest's own mDNS responder (the update server's zeroconf) for the robot's service.
MDNS_QUERY = """python3 -c '
from zeroconf import Zeroconf
zc = Zeroconf()
info = zc.get_service_info("_http._tcp.local.", "lab-robot-7._http._tcp.local.", timeout=5000)
print(info.port if info else "none")
zc.close()'"""


@pytest.fixture
def flashed_guest(images):
    workdir = ot2qemu.ROOT / "build" / "e2e" / "flashed"
    subprocess.run(["rm", "-rf", str(workdir)], check=True)
    workdir.mkdir(parents=True)
    robot = ot2qemu.Guest(workdir / "card.img", workdir)
    public_key = robot.ensure_ssh_key()
    image = images["v1"] / "disk.img"
    # A blank "card": what was never written must read back as zeros.
    subprocess.run(["truncate", "-s", str(image.stat().st_size), str(robot.disk)], check=True)
    flash = subprocess.run(
        [str(ot2qemu.VENV_BIN / "ot2"), "flash", "--force", "--name", "lab-robot-7",
         "--ssh-key", str(robot.ssh_key.with_suffix(".pub")), str(image), str(robot.disk)],
        capture_output=True, text=True)
    assert flash.returncode == 0, flash.stderr
    assert public_key
    # The card is 256 MiB larger than the image: the data partition grows into it on first boot.
    subprocess.run(["truncate", "-s", f"+{CARD_EXTRA}", str(robot.disk)], check=True)
    yield robot
    robot.stop()


def test_flashed_card_boots_provisioned(flashed_guest, images):
    robot = flashed_guest
    started = time.monotonic()
    robot.boot()
    health = robot.wait_healthy(timeout=600)
    assert health["name"] == "lab-robot-7" and health["hostname"] == "lab-robot-7"
    assert robot.ssh("hostname").stdout.strip() == "lab-robot-7"
    assert robot.ssh("test -e /boot/firmware/robot.toml", check=False).returncode == 1
    report = robot.ssh("cat /data/update-server/provision.json").stdout
    assert '"applied"' in report, report
    assert robot.ssh(MDNS_QUERY).stdout.strip() == "31950"
    data_bytes = int(robot.ssh("df -B1 --output=size /data | tail -1").stdout)
    assert data_bytes > CARD_EXTRA, data_bytes  # the image's data file system is 128 MiB
    keys = robot.ssh("cat /data/ssh/authorized_keys").stdout

    health = robot.restart()
    assert health["name"] == "lab-robot-7" and health["booted_slot"] == "A"
    assert robot.ssh("cat /data/update-server/provision.json").stdout == report
    assert robot.ssh("cat /data/ssh/authorized_keys").stdout == keys
    record("flashed card, provisioned, 2 boots", "A", health["booted_slot"], True,
           time.monotonic() - started)

    # An update from a file on /data, installed on the robot without the network: the
    # image's Python runs the update server's command line (`update-server install`).
    started = time.monotonic()
    copied = robot.scp(images["v2"] / "rootfs.bundle", "/data/update.bundle", timeout=600)
    assert copied.returncode == 0, copied.stderr
    done = robot.ssh("python3 -m update_server install /data/update.bundle; echo exit=$?; "
                     "rm /data/update.bundle", timeout=600)
    assert "exit=0" in done.stdout, done.stdout + done.stderr
    assert f"installed {VERSION_2} in slot B, selected for the next boot" in done.stdout, done.stdout
    health = robot.restart()
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2, health
    health = robot.wait_boot_check()
    assert health["name"] == "lab-robot-7"
    assert robot.ssh("cat /data/ssh/authorized_keys").stdout == keys
    record("update-server install from /data", "B", health["booted_slot"], True,
           time.monotonic() - started)

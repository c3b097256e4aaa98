"""Lab equipment on the robot, end to end on one emulated robot (issue: integrating lab
equipment): the seed's commands over SSH as written, pip into /data from an index on the
host that survives an update and a reboot, a USB stick (and a corrupt one) on the guest's
xHCI controller, the balance example over a USB serial adapter wired to the balance
emulator on the host, the journal of the previous boot, Jupyter on 48888. The update is a
rollout (issue: fleets): the card is flashed with the lab's rollout server, a real gooseBit
on the host, and the robot takes the rollout, reboots itself and reports success.

The guest is this module's own (its USB devices are given at power-on); the scenarios run
in file order on it. The host serves wheels and the rollout server on 127.0.0.1, which the
guest reaches as 10.0.2.2 through QEMU's user network; nothing else is contacted.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import ot2qemu
from conftest import COMPATIBLE, META, VERSION_1, VERSION_2, figure, record
from update_server.rollout_lab import GooseBit

sys.path.insert(0, str(ot2qemu.ROOT / "tests"))
from wheelmaker import make_wheel

EXAMPLES = ot2qemu.ROOT / "examples"
STICK_LABEL = "LABSTICK"
CHANNEL_PORT = 31960        # the robot server's G-code channel (OT_SMOOTHIE_EMULATOR_URI)
CONTROLLER_ID = "lab-robot-9"   # the robot's id on the rollout server

pytestmark = pytest.mark.timeout(1800)


def _balance_emulator():
    spec = importlib.util.spec_from_file_location("balance_emulator", EXAMPLES / "balance" / "balance_emulator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BalanceEmulator(start_g=20.0, increment_g=0.25).start()


def _sticks(workdir: Path) -> tuple[Path, Path]:
    """A FAT stick without a partition table (as many are), and one whose only partition
    holds random bytes (a corrupt filesystem)."""
    good, bad = workdir / "stick-fat.img", workdir / "stick-corrupt.img"
    subprocess.run(["truncate", "-s", "32M", str(good)], check=True)
    subprocess.run(["mkfs.vfat", "-n", STICK_LABEL, str(good)], check=True, capture_output=True)
    subprocess.run(["truncate", "-s", "16M", str(bad)], check=True)
    subprocess.run(["sfdisk", "-q", str(bad)], input="start=2048, type=c\n", text=True, check=True)
    with open(bad, "r+b") as f:
        f.seek(2048 * 512)
        f.write(secrets.token_bytes(4 << 20))
    return good, bad


@pytest.fixture(scope="module")
def rollout_server():
    """A real gooseBit (hawkBit's DDI API) on the host, polled every 5 s."""
    workdir = ot2qemu.ROOT / "build" / "e2e" / "goosebit"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    server = GooseBit(workdir, poll_time="00:00:05")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lab(images_v1_v2, rollout_server):
    """The booted robot with a FAT stick, a corrupt stick and the balance on its USB ports,
    its card flashed with `ot2 flash --ssh-key --rollout-server --rollout-id` (the lab's
    rollout server, which the guest reaches at 10.0.2.2)."""
    workdir = ot2qemu.ROOT / "build" / "e2e" / "integrations"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    good, bad = _sticks(workdir)
    balance = _balance_emulator()
    guest = ot2qemu.Guest(workdir / "card.img", workdir, qemu_env={
        "OT2_USB_DRIVES": f"{good} {bad}", "OT2_USB_SERIAL": balance.path,
        "OT2_QMP": str(workdir / "qmp.sock")})
    guest.ensure_ssh_key()
    image = images_v1_v2["v1"] / "disk.img"
    subprocess.run(["truncate", "-s", str(image.stat().st_size), str(guest.disk)], check=True)
    flash = subprocess.run(
        [str(ot2qemu.VENV_BIN / "ot2"), "flash", "--force", "--ssh-key", str(guest.ssh_key.with_suffix(".pub")),
         "--rollout-server", f"http://10.0.2.2:{rollout_server.port}", "--rollout-id", CONTROLLER_ID,
         str(image), str(guest.disk)], capture_output=True, text=True)
    assert flash.returncode == 0, flash.stderr
    guest.stick, guest.balance = good, balance
    yield guest
    guest.stop()
    balance.close()


@pytest.fixture(scope="module")
def images_v1_v2():
    return {"v1": ot2qemu.build_image(VERSION_1), "v2": ot2qemu.build_image(VERSION_2)}


@pytest.fixture(scope="module")
def index():
    """A package index on the host (PEP 503 simple layout) with one small wheel, `labscale`;
    yields the port on 127.0.0.1 (10.0.2.2 from the guest)."""
    root = ot2qemu.ROOT / "build" / "e2e" / "index"
    shutil.rmtree(root, ignore_errors=True)
    wheel = make_wheel(root / "files", "labscale", "1.0",
                       {"labscale/__init__.py": '"""A lab instrument driver (test wheel)."""\nGRAMS_PER_UL = 0.001\n'})
    (root / "simple" / "labscale").mkdir(parents=True)
    (root / "simple" / "labscale" / "index.html").write_text(
        f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a></body></html>\n')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


PROTOCOL_USING_LABSCALE = '''\
import labscale
metadata = {"apiLevel": "2.15"}

def run(protocol):
    protocol.comment(f"labscale says {labscale.GRAMS_PER_UL} g/uL")
'''


def channel_up(guest: ot2qemu.Guest) -> bool:
    """Whether the image's robot server has the G-code channel protocols reach the board through."""
    probe = f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {CHANNEL_PORT}), 5)'"
    return guest.ssh(probe, check=False).returncode == 0


def simulate(guest: ot2qemu.Guest, path: str, source: str) -> subprocess.CompletedProcess:
    """Copies a protocol to `path` on the robot and runs it with opentrons_simulate."""
    guest.ssh(f"cat > {path}", input=source)
    return guest.ssh(f"opentrons_simulate {path}", check=False, timeout=300)


def test_boot_with_lab_equipment_attached(lab):
    started = time.monotonic()
    lab.boot()
    health = lab.wait_healthy(timeout=900)
    figure("cold boot with USB devices attached", f"{time.monotonic() - started:.1f} s")
    assert health["version"] == VERSION_1
    assert lab.ssh("echo ok").stdout.strip() == "ok"   # with the key `ot2 flash --ssh-key` provisioned
    record("boot with USB stick, corrupt stick, balance", "A", health["booted_slot"], True,
           time.monotonic() - started)


def test_the_seeds_commands_work_as_written(lab, tmp_path):
    protocol = tmp_path / "my-protocol.py"
    protocol.write_text(PROTOCOL_USING_LABSCALE)
    copied = lab.scp(protocol, "/data/my-protocol.py")
    assert copied.returncode == 0, copied.stderr
    assert lab.ssh("cat /data/my-protocol.py").stdout == PROTOCOL_USING_LABSCALE
    # `ssh root@robot -l -c "..."`: ssh takes `-c` as -l's argument; the command runs without
    # a login shell, and still gets the robot's environment.
    check = ("python -c 'import os, requests, numpy, serial, opentrons; "
             "print(os.environ[\"OT_SMOOTHIE_EMULATOR_URI\"], os.environ[\"PYTHONUSERBASE\"])'")
    seen = lab.ssh(check, options=("-l", "-c"))
    assert seen.stdout.split() == [f"socket://127.0.0.1:{CHANNEL_PORT}", "/data/python"], seen
    assert lab.ssh("python --version").stdout.startswith("Python 3.")
    for shell in ("bash -lc", "sh -c"):
        env = lab.ssh(f"{shell} 'echo $OT_API_CONFIG_DIR $PYTHONUSERBASE'").stdout.split()
        assert env == ["/data/opentrons", "/data/python"], (shell, env)
    assert "/data/python/bin" in lab.ssh("bash -lc 'echo $PATH'").stdout
    assert lab.ssh("python3 -m pip --version").returncode == 0


def test_pip_install_from_the_lab_index_lands_in_data(lab, index):
    url = f"http://10.0.2.2:{index}/simple/"
    done = lab.ssh(f"pip install --index-url {url} --trusted-host 10.0.2.2 labscale", timeout=300)
    assert "Successfully installed labscale-1.0" in done.stdout, done
    where = lab.ssh("python -c 'import labscale; print(labscale.__file__)'").stdout.strip()
    assert re.fullmatch(r"/data/python/lib/python3\.\d+/site-packages/labscale/__init__\.py", where), where
    missing = lab.ssh(f"pip install --index-url {url} --trusted-host 10.0.2.2 no-such-driver", check=False,
                      timeout=300)
    assert missing.returncode != 0 and "No matching distribution found for no-such-driver" in missing.stderr
    # The servers do not see /data's packages (python3 -I).
    cmdlines = lab.ssh("cat /proc/$(systemctl show -p MainPID --value ot2-robot-server)/cmdline | tr '\\0' ' '")
    assert cmdlines.stdout.startswith("/usr/bin/python3 -I -m robot_server"), cmdlines.stdout
    assert lab.ssh("ot2-python-packages", check=False).returncode == 0




def test_a_protocol_imports_the_package_from_data(lab):
    ran = simulate(lab, "/data/user/uses_labscale.py", PROTOCOL_USING_LABSCALE)
    assert ran.returncode == 0, ran.stderr
    assert "labscale says 0.001 g/uL" in ran.stdout


MOVING_PROTOCOL = '''\
from opentrons import execute
protocol = execute.get_protocol_api("2.15")
protocol.home()
print("homed over the channel")
'''


def test_nohup_python_over_ssh_moves_the_board(lab):
    if not channel_up(lab):
        pytest.skip("no G-code channel on 127.0.0.1:31960 in this image (branch `channel`)")
    before = (lab.workdir / "emulator.log").read_text().count("G28.2")
    lab.ssh("cat > /data/p.py", input=MOVING_PROTOCOL)
    ran = lab.ssh('nohup python /data/p.py > /data/p.log 2>&1; cat /data/p.log', options=("-l", "-c"),
                  timeout=300)
    assert "homed over the channel" in ran.stdout, ran
    assert (lab.workdir / "emulator.log").read_text().count("G28.2") > before


WRITES_TO_USB = '''\
metadata = {"apiLevel": "2.15"}

def run(protocol):
    with open("/mnt/usbdrive/results.csv", "w") as f:
        f.write("well,grams\\nA1,0.101\\n")
    protocol.comment("results written to the USB drive")
'''


def test_usb_stick_mounted_and_a_protocol_writes_there_corrupt_one_reported(lab):
    mount = lab.ssh("findmnt -no SOURCE,FSTYPE,OPTIONS /mnt/usbdrive").stdout.split()
    assert mount[1] == "vfat", mount
    assert {"nodev", "nosuid"} <= set(mount[2].split(",")), mount
    drives = {d["label"] or d["device"]: d for d in lab.request("robot", "GET", "/usb/drives")["drives"]}
    assert drives[STICK_LABEL]["mountpoint"] == "/mnt/usbdrive"
    (corrupt,) = [d for d in drives.values() if d["mountpoint"] is None]
    assert "no filesystem found" in corrupt["error"], corrupt
    assert lab.ssh(f"systemctl is-failed ot2-usbdrive@{corrupt['device']}.service", check=False).stdout.strip() == "failed"
    ran = simulate(lab, "/data/user/writes_to_usb.py", WRITES_TO_USB)
    assert ran.returncode == 0, ran.stderr
    assert lab.ssh("cat /mnt/usbdrive/results.csv").stdout == "well,grams\nA1,0.101\n"
    assert lab.health("robot") and lab.health("update")


def test_usb_stick_pulled_while_mounted(lab):
    device = lab.ssh("findmnt -no SOURCE /mnt/usbdrive").stdout.strip()
    name = device.removeprefix("/dev/")
    lab.ssh("sync")       # as docs/integrating-lab-equipment.md asks before pulling a stick
    # A shell still inside the drive when it is pulled.
    lab.ssh("cd /mnt/usbdrive && nohup sleep 600 < /dev/null > /dev/null 2>&1 &")
    lab.qmp("device_del", id="usbstick0")
    deadline = time.monotonic() + 60
    while lab.ssh("findmnt /mnt/usbdrive", check=False).returncode == 0:
        assert time.monotonic() < deadline, "still mounted after the stick was pulled"
        time.sleep(2)
    assert lab.ssh(f"systemctl is-active ot2-usbdrive@{name}.service", check=False).stdout.strip() == "inactive"
    assert name not in [d["device"] for d in lab.request("robot", "GET", "/usb/drives")["drives"]]
    assert lab.health("robot") and lab.health("update")
    # What the protocol wrote is on the stick.
    copied = subprocess.run(["mtype", "-i", str(lab.stick), "::/results.csv"], capture_output=True, text=True)
    assert copied.stdout.replace("\r\n", "\n") == "well,grams\nA1,0.101\n", copied


def test_balance_example_reads_the_balance_over_usb_serial(lab):
    by_id = lab.ssh("ls /dev/serial/by-id/").stdout.split()
    assert by_id and lab.ssh("ls /dev/ttyUSB0").returncode == 0, by_id
    lab.ssh("cat > /data/user/protocol_with_balance.py",
            input=(EXAMPLES / "balance" / "protocol_with_balance.py").read_text())
    before = lab.balance.requests
    weigh = ("cd /data/user && python -c 'from protocol_with_balance import Balance; "
             f"b = Balance(\"/dev/serial/by-id/{by_id[0]}\"); print(b.weigh(), b.weigh()); b.close()'")
    grams = [float(g) for g in lab.ssh(weigh, timeout=300).stdout.split()]     # opentrons imports slowly under TCG
    assert len(grams) == 2 and grams[1] == pytest.approx(grams[0] + 0.25), grams
    assert lab.balance.requests == before + 2
    # Protocol runs' user opens serial devices on USB (group ot2-usb), never the motor board's UART.
    as_run = "setpriv --reuid=ot2-run --regid=ot2-run --init-groups python3 -c 'import serial; serial.Serial(\"{}\").close()'"
    assert lab.ssh("stat -c %G /dev/ttyUSB0 /dev/ttyS1").stdout.split() == ["ot2-usb", "dialout"]
    assert lab.ssh(as_run.format("/dev/ttyUSB0"), check=False).returncode == 0
    refused = lab.ssh(as_run.format("/dev/ttyS1"), check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused


def test_jupyter_answers_on_48888_and_a_notebook_sees_the_robot_environment(lab):
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.ports['jupyter']}/api", timeout=30) as resp:
        assert "version" in json.loads(resp.read())
    uid = lab.ssh("ps -o uid= -p $(systemctl show -p MainPID --value ot2-jupyter)").stdout.strip()
    assert uid == lab.ssh("id -u ot2-notebook").stdout.strip() != "0"
    cells = ["import os, labscale, opentrons", "print(os.environ['OT_SMOOTHIE_EMULATOR_URI'], labscale.GRAMS_PER_UL)"]
    if channel_up(lab):
        cells += ["from opentrons import execute", "protocol = execute.get_protocol_api('2.15')", "protocol.home()"]
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                           "source": "\n".join(cells), "id": "c1"}]}
    lab.ssh("cat > /data/notebooks/e2e.ipynb && chown ot2-notebook: /data/notebooks/e2e.ipynb",
            input=json.dumps(notebook))
    ran = lab.ssh("cd /data/notebooks && runuser -u ot2-notebook -- env HOME=/data/notebooks "
                  "OT_API_CONFIG_DIR=/data/notebooks/.opentrons python3 -m nbconvert --to notebook --execute "
                  "--stdout e2e.ipynb", check=False, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert f"socket://127.0.0.1:{CHANNEL_PORT} 0.001" in ran.stdout
    assert lab.health("robot")


def test_journal_of_the_previous_boot_is_readable_after_a_reboot(lab):
    mark = f"e2e-mark-{secrets.token_hex(4)}"
    lab.ssh(f"logger -t ot2-e2e {mark} && journalctl --sync")
    assert lab.ssh("findmnt -no SOURCE /var/log/journal").stdout.strip().endswith("[/log/journal]")
    health = lab.restart()
    previous = lab.ssh("journalctl -b -1 -t ot2-e2e -o cat", check=False).stdout
    assert mark in previous
    usage = lab.ssh("journalctl --disk-usage").stdout
    figure("journal in /data after two boots", usage.strip())
    record("reboot keeps the journal", "A", health["booted_slot"], True, 0)


def wait_for(condition, timeout: float, what: str, state=lambda: None):
    """``condition()``'s first true value, polled every 2 s; on timeout the assertion shows ``state()``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state()}"
        time.sleep(2)
    return result


def test_packages_in_data_survive_a_rollout_and_a_reboot(lab, images_v1_v2, rollout_server):
    """The robot registered with the rollout server (version, board, revision); the v2
    bundle is published and rolled out; the robot downloads it, installs it into B, reboots
    itself, marks B good and reports success; the package in /data still imports."""
    started = time.monotonic()
    health = lab.wait_healthy(timeout=60)
    assert health["rollout"]["server"] == f"http://10.0.2.2:{rollout_server.port}"
    assert health["rollout"]["controller_id"] == CONTROLLER_ID
    device = wait_for(lambda: rollout_server.devices().get(CONTROLLER_ID), 300, "the robot's registration",
                      lambda: lab.health())
    assert device["sw_version"] == VERSION_1, device
    assert device["hardware"]["model"] == COMPATIBLE and device["hardware"]["revision"] == META["BOARD_REVISION"]
    rollout_server.rollout(rollout_server.upload(images_v1_v2["v2"] / "rootfs.bundle"))
    health = lab.wait_healthy(timeout=900, not_boot_id=health["bootId"])
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    device = wait_for(lambda: (d := rollout_server.devices()[CONTROLLER_ID])["last_state"] == "Finished" and d,
                      300, "the success feedback", lambda: rollout_server.devices()[CONTROLLER_ID])
    assert device["sw_version"] == VERSION_2, device
    log = rollout_server.device_log(CONTROLLER_ID)
    assert "Downloaded 100%" in log and "marked good" in log, log
    ran = simulate(lab, "/data/user/uses_labscale.py", PROTOCOL_USING_LABSCALE)
    assert ran.returncode == 0 and "labscale says 0.001 g/uL" in ran.stdout, ran.stderr
    health = lab.restart()
    assert health["booted_slot"] == "B"
    assert lab.ssh("python -c 'import labscale; print(labscale.GRAMS_PER_UL)'").stdout.strip() == "0.001"
    record("rollout from gooseBit to B, pip package in /data, reboot", "B", health["booted_slot"], True,
           time.monotonic() - started)

"""Rollouts from a real rollout server: gooseBit (hawkBit's DDI API) on loopback, file-backed
update servers polling it (update_server/ddi.py)."""

from __future__ import annotations

import time

import pytest

from conftest import Rig, make_bundle, make_image
from goosebit_server import VENV, GooseBit

pytestmark = pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="needs .venv-goosebit (make venv)")


def wait_for(condition, timeout: float = 120, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return result


@pytest.fixture
def goosebit(tmp_path):
    (tmp_path / "goosebit").mkdir()
    server = GooseBit(tmp_path / "goosebit")
    yield server
    server.stop()


def robot(tmp_path, keys, goosebit, name: str) -> Rig:
    root = tmp_path / name
    root.mkdir()
    rig = Rig(root, keys["keyring"], ddi_url=goosebit.url, ddi_controller_id=name, ddi_poll_seconds=1)
    rig.start()
    return rig


def reboot_into_update(rig: Rig, version: str) -> None:
    """What the robot does once the update server asked for a reboot: the bootloader boots
    the selected slot and the boot check marks it good."""
    rig.stop()
    rig.bootloader_boots(version=version)
    rig.start()
    assert rig.client.post("/server/update/mark-good").status == 200


def test_a_rollout_installs_reboots_and_reports(tmp_path, keys, goosebit):
    rig = robot(tmp_path, keys, goosebit, "robot-1")
    try:
        wait_for(lambda: goosebit.devices().get("robot-1", {}).get("sw_version") == "1.0.0", what="registration")
        bundle = tmp_path / "system-2.0.0.swu"
        bundle.write_bytes(make_bundle(keys["trusted"], make_image(3 << 20, seed=3), version="2.0.0"))
        goosebit.rollout(goosebit.upload(bundle))
        wait_for(rig.reboot_marker.exists, what="the reboot")
        assert rig.env().order[0] == "B"
        reboot_into_update(rig, "2.0.0")
        device = wait_for(lambda: (d := goosebit.devices()["robot-1"])["last_state"] == "Finished" and d,
                          what="the success feedback")
        assert device["sw_version"] == "2.0.0" and device["progress"] == 100
        log = goosebit.device_log("robot-1")
        assert "Downloaded 100%" in log and "runs from slot B, marked good" in log, log
    finally:
        rig.stop()

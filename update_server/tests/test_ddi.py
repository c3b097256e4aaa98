"""Rollouts from a real rollout server: gooseBit (hawkBit's DDI API) on loopback, file-backed
update servers polling it (update_server/ddi.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import Rig, make_bundle, make_image
from update_server.rollout_lab import DdiProxy, GooseBit, free_port


def wait_for(condition, timeout: float = 300, what: str = "condition", state=lambda: None):
    """``condition()``'s first true value, polled; on timeout the assertion shows ``state()``."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {state()}"
        time.sleep(0.5)
    return result


@pytest.fixture
def goosebit(tmp_path):
    (tmp_path / "goosebit").mkdir()
    server = GooseBit(tmp_path / "goosebit")
    yield server
    server.stop()


def robot(tmp_path, keys, goosebit, name: str, url: str | None = None, **config) -> Rig:
    root = tmp_path / name
    root.mkdir()
    rig = Rig(root, keys["keyring"], ddi_url=url or goosebit.url, ddi_controller_id=name, ddi_poll_seconds=1,
              **config)
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


def publish(goosebit, keys, tmp_path, version: str) -> None:
    bundle = tmp_path / f"system-{version}.swu"
    bundle.write_bytes(make_bundle(keys["trusted"], make_image(3 << 20, seed=3), version=version))
    goosebit.rollout(goosebit.upload(bundle))


def test_ten_robots_one_download_fails(tmp_path, keys, goosebit, monkeypatch):
    """Ten robots in the rollout: the one whose downloads are all cut midway reports its
    failure; the nine others run the new version; one cut once resumes with a Range."""
    monkeypatch.setattr("update_server.ddi.RETRY_DELAY", 0.2)
    cut_always = DdiProxy(goosebit.port, cut_after=0)          # every download dropped at once
    cut_once = DdiProxy(goosebit.port, cut_after=1 << 20, cuts=1)
    names = [f"robot-{i}" for i in range(10)]
    urls = {"robot-0": cut_always.url, "robot-1": cut_once.url}
    # One robot first: gooseBit 0.2.12 makes two records of a board it has not seen when
    # robots of it register at the same moment, and then fails every robot's configData.
    rigs = {}
    try:
        rigs["robot-9"] = robot(tmp_path, keys, goosebit, "robot-9")
        wait_for(lambda: "robot-9" in goosebit.devices(), what="the first registration")
        rigs.update({name: robot(tmp_path, keys, goosebit, name, urls.get(name)) for name in names[:-1]})
        wait_for(lambda: all(goosebit.devices().get(n, {}).get("sw_version") == "1.0.0" for n in names),
                 what="ten registrations")
        publish(goosebit, keys, tmp_path, "2.0.0")
        good = names[1:]
        for name in good:
            wait_for(rigs[name].reboot_marker.exists, what=f"the reboot of {name}")
            reboot_into_update(rigs[name], "2.0.0")
        devices = wait_for(lambda: (d := goosebit.devices()) and all(d[n]["last_state"] == "Finished" for n in good)
                           and d["robot-0"]["last_state"] == "Error" and d, what="ten results",
                           state=lambda: {n: (d["last_state"], d["sw_version"]) for n, d in goosebit.devices().items()})
        assert [devices[n]["sw_version"] for n in good] == ["2.0.0"] * 9
        assert devices["robot-0"]["sw_version"] == "1.0.0"
        assert "truncated" in goosebit.device_log("robot-0")
        assert cut_once.cut == 1 and cut_always.cut > 1
        failed = rigs["robot-0"]
        assert failed.env().order[0] == "A" and failed.slot_a_intact() and not failed.reboot_marker.exists()
    finally:
        for rig in rigs.values():
            rig.stop()
        cut_always.close()
        cut_once.close()


def test_a_run_holds_the_deployment_back(tmp_path, keys, goosebit):
    """While the robot server's /health names a lease (a protocol run), the deployment waits
    and says so; once the run ends it installs."""
    health = {"lease": {"holder": "run 7"}}

    class RobotHealth(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps(health).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    robot_server = ThreadingHTTPServer(("127.0.0.1", 0), RobotHealth)
    threading.Thread(target=robot_server.serve_forever, daemon=True).start()
    rig = robot(tmp_path, keys, goosebit, "busy-robot",
                robot_health_url=f"http://127.0.0.1:{robot_server.server_port}/health")
    try:
        wait_for(lambda: "busy-robot" in goosebit.devices(), what="registration")
        publish(goosebit, keys, tmp_path, "2.0.0")
        wait_for(lambda: "waiting: a protocol run holds the robot" in goosebit.device_log("busy-robot"),
                 what="the waiting feedback")
        assert not rig.reboot_marker.exists() and rig.env().order[0] == "A"
        health["lease"] = None
        wait_for(rig.reboot_marker.exists, what="the install once the run ended")
        assert rig.env().order[0] == "B"
    finally:
        rig.stop()
        robot_server.shutdown()


def test_a_bundle_signed_by_a_stranger_is_refused_and_reported(tmp_path, keys, goosebit):
    rig = robot(tmp_path, keys, goosebit, "careful-robot")
    try:
        wait_for(lambda: "careful-robot" in goosebit.devices(), what="registration")
        bundle = tmp_path / "stranger-2.0.0.swu"
        bundle.write_bytes(make_bundle(keys["untrusted"], make_image(1 << 20, seed=4), version="2.0.0"))
        goosebit.rollout(goosebit.upload(bundle))
        device = wait_for(lambda: (d := goosebit.devices()["careful-robot"])["last_state"] == "Error" and d,
                          what="the failure feedback")
        assert device["sw_version"] == "1.0.0"
        assert "untrusted-key" in goosebit.device_log("careful-robot")
        assert rig.env().order == ("A", "B") and rig.slot_a_intact() and not rig.reboot_marker.exists()
    finally:
        rig.stop()


def test_an_unreachable_server_is_retried(tmp_path, keys, goosebit):
    """Polls that fail (nothing listens at the server's address) are shown in /health and
    retried; nothing changes on the robot."""
    rig = robot(tmp_path, keys, goosebit, "patient-robot", url=f"http://127.0.0.1:{free_port()}")
    try:
        status = wait_for(lambda: (s := rig.client.get("/health").body["rollout"]["status"]).startswith("poll failed")
                          and s, what="a failed poll in /health")
        assert "patient-robot" not in goosebit.devices(), status
    finally:
        rig.stop()
    assert rig.env().order == ("A", "B")


def test_a_server_answering_5xx_is_retried_until_it_recovers(tmp_path, keys, goosebit):
    front = DdiProxy(goosebit.port, errors=4)
    rig = robot(tmp_path, keys, goosebit, "patient-robot", url=front.url)
    try:
        wait_for(lambda: "503" in rig.client.get("/health").body["rollout"]["status"], what="a 503 in /health")
        wait_for(lambda: goosebit.devices().get("patient-robot", {}).get("sw_version") == "1.0.0",
                 what="the registration once the server answers")
        assert front.errors_left == 0 and rig.env().order == ("A", "B")
    finally:
        rig.stop()
        front.close()


def test_a_download_with_a_flipped_byte_is_refused_and_reported(tmp_path, keys, goosebit):
    """One byte of the image flipped on the way: the bundle's SHA-256 of the image does not
    match; refused, reported, the booted slot and the boot selection untouched."""
    front = DdiProxy(goosebit.port, flip_at=2 << 20)
    rig = robot(tmp_path, keys, goosebit, "careful-robot", url=front.url)
    try:
        wait_for(lambda: "careful-robot" in goosebit.devices(), what="registration")
        publish(goosebit, keys, tmp_path, "2.0.0")
        wait_for(lambda: goosebit.devices()["careful-robot"]["last_state"] == "Error", what="the failure feedback",
                 state=lambda: goosebit.device_log("careful-robot"))
        log = goosebit.device_log("careful-robot")
        assert "hash" in log.lower(), log
        assert goosebit.devices()["careful-robot"]["sw_version"] == "1.0.0"
        assert rig.env().order[0] == "A" and rig.slot_a_intact() and not rig.reboot_marker.exists()
    finally:
        rig.stop()
        front.close()


def test_a_rollout_older_than_the_robot_is_refused(tmp_path, keys, goosebit):
    """The downgrade rule holds for rollouts too (a paused newer rollout makes gooseBit fall
    back to an older one): refused before anything is written, reported as a failure."""
    rig = robot(tmp_path, keys, goosebit, "newer-robot")
    rig.set_version("3.0.0")
    try:
        wait_for(lambda: goosebit.devices().get("newer-robot", {}).get("sw_version") == "3.0.0",
                 what="registration")
        publish(goosebit, keys, tmp_path, "2.0.0")
        wait_for(lambda: goosebit.devices()["newer-robot"]["last_state"] == "Error", what="the failure feedback")
        assert "downgrade" in goosebit.device_log("newer-robot")
        assert rig.env().order == ("A", "B") and rig.slot_a_intact() and not rig.reboot_marker.exists()
    finally:
        rig.stop()


def test_a_cancel_during_the_download_stops_it(tmp_path, keys, goosebit):
    """hawkBit's cancelAction (DdiProxy adds it to gooseBit) arrives while the robot
    downloads: the install stops, the robot confirms the cancel, nothing is selected."""
    front = DdiProxy(goosebit.port, cancel_after=1 << 20, rate=256 << 10)
    rig = robot(tmp_path, keys, goosebit, "cancelled-robot", url=front.url)
    try:
        wait_for(lambda: "cancelled-robot" in goosebit.devices(), what="registration")
        publish(goosebit, keys, tmp_path, "2.0.0")
        feedback = wait_for(lambda: front.cancel_feedback and front.cancel_feedback[0], what="the cancel's feedback")
        assert feedback["id"] == front.stop_id and feedback["status"]["execution"] == "closed", feedback
        assert feedback["status"]["result"]["finished"] == "success", feedback
        wait_for(lambda: "cancelled" in rig.client.get("/health").body["rollout"]["status"], what="the status",
                 state=lambda: rig.client.get("/health").body["rollout"])
        assert front.sent < 3 << 20, front.sent            # the 3 MiB artifact was not all sent
        time.sleep(3)                                      # polls go on: the cancelled action stays undone
        # B was being written: it is no boot candidate until a whole bundle is written there.
        assert rig.env().order == ("A",) and rig.slot_a_intact() and not rig.reboot_marker.exists()
    finally:
        rig.stop()
        front.close()


def test_a_deployment_for_another_board_is_refused(tmp_path, keys, goosebit):
    """A deployment of another board's bundle (hawkBit deploys what it is told; DdiProxy
    makes gooseBit believe the robot is that board): refused before anything is written,
    reported as a failure naming both boards."""
    front = DdiProxy(goosebit.port, board="ot2-other-board")
    rig = robot(tmp_path, keys, goosebit, "robot-of-this-board", url=front.url)
    try:
        wait_for(lambda: "robot-of-this-board" in goosebit.devices(), what="registration")
        bundle = tmp_path / "other-board-2.0.0.swu"
        bundle.write_bytes(make_bundle(keys["trusted"], make_image(1 << 20, seed=5), compatible="ot2-other-board"))
        goosebit.rollout(goosebit.upload(bundle))
        wait_for(lambda: goosebit.devices()["robot-of-this-board"]["last_state"] == "Error",
                 what="the failure feedback", state=lambda: goosebit.device_log("robot-of-this-board"))
        log = goosebit.device_log("robot-of-this-board")
        assert "incompatible" in log and "ot2-other-board" in log, log
        assert rig.env().order == ("A", "B") and rig.slot_a_intact() and not rig.reboot_marker.exists()
    finally:
        rig.stop()
        front.close()

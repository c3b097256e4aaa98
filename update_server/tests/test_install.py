"""Install, commit, trial boot, mark-good, rollback -- over real HTTP on loopback."""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import time

import pytest

from conftest import COMPATIBLE, SLOT_SIZE, make_bundle, make_image
from update_server.bootmodel import BootEnv


def wait_for(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def install(rig, key, image, version="2.0.0"):
    token = rig.client.begin()
    r = rig.client.upload(token, make_bundle(key, image, version=version))
    assert r.status == 200, r.body
    return token, r


def test_happy_path_install_commit_trial_mark_good(any_rig, keys):
    rig = any_rig
    c = rig.client
    h = c.get("/health").body
    assert h["booted_slot"] == "A" and h["boot_order"] == ["A", "B"]
    assert h["slots"]["A"]["state"] == "good" and h["slots"]["A"]["version"] == "1.0.0"
    assert h["compatible"] == COMPATIBLE and h["rollback"] is None
    assert c.get("/server/update/health").body["capabilities"]["systemUpdate"] == "/server/update/begin"

    image = make_image((1 << 20) + 12345)  # not a multiple of the chunk size
    token, r = install(rig, keys["trusted"], image)
    assert r.body["stage"] == "done" and r.body["progress"] == 1
    assert r.body["bytes_written"] == r.body["total_bytes"] == len(image)
    assert rig.slot_bytes("B", len(image)) == image
    # the written slot is not bootable until committed; the booted one stays first
    assert rig.env() == BootEnv(("A",), {"A": 3, "B": 0})
    assert c.get("/health").body["slots"]["B"]["state"] == "bad"

    r = c.post(f"/server/update/{token}/commit")
    assert r.status == 200 and r.body["stage"] == "ready-for-restart"
    assert rig.env() == BootEnv(("B", "A"), {"A": 3, "B": 3})
    assert c.get(f"/server/update/{token}/status").body["stage"] == "ready-for-restart"
    # a second commit is harmless
    assert c.post(f"/server/update/{token}/commit").status == 200

    assert c.post("/server/restart").status == 200
    wait_for(rig.reboot_marker.exists, timeout=5)

    # restarting the server within the same boot is not a rollback
    rig.restart()
    h = rig.client.get("/health").body
    assert h["rollback"] is None and h["slots"]["B"]["pending"] is True

    rig.stop()
    assert rig.bootloader_boots("2.0.0") == "B"
    c = rig.start()
    h = c.get("/health").body
    assert h["booted_slot"] == "B" and h["version"] == "2.0.0"
    assert h["slots"]["B"]["state"] == "trial" and h["slots"]["B"]["tries_left"] == 2
    # the factory slot A, never installed through the server, is still named
    assert h["slots"]["A"]["state"] == "inactive" and h["slots"]["A"]["version"] == "1.0.0"

    r = c.post("/server/update/mark-good")
    assert r.status == 200 and r.body["confirmed"] == "2.0.0"
    assert rig.env() == BootEnv(("B", "A"), {"A": 3, "B": 3})
    h = c.get("/health").body
    assert h["slots"]["B"]["state"] == "good" and h["slots"]["B"]["pending"] is False
    assert h["rollback"] is None
    # marking good again confirms nothing new
    assert c.post("/server/update/mark-good").body["confirmed"] is None


def test_rollback_recorded_and_reported(any_rig, keys):
    rig = any_rig
    token, _ = install(rig, keys["trusted"], make_image(300_000), version="3.1.0")
    assert rig.client.post(f"/server/update/{token}/commit").status == 200
    rig.stop()
    # the new slot never became healthy: its tries ran out, the bootloader fell back to A
    assert [rig.bootloader_boots() for _ in range(4)] == ["B", "B", "B", "A"]
    assert rig.env() == BootEnv(("B", "A"), {"A": 2, "B": 0})
    c = rig.start()
    h = c.get("/health").body
    assert h["booted_slot"] == "A"
    assert h["rollback"]["failed_slot"] == "B" and h["rollback"]["failed_version"] == "3.1.0"
    assert h["rollback"]["booted_slot"] == "A"
    assert h["boot_order"] == ["A", "B"] and h["slots"]["B"]["state"] == "bad"
    assert rig.env().tries["B"] == 0
    # recorded once, not again at the next start
    rig.restart()
    state = json.loads((rig.root / "data/update-server/state.json").read_text())
    assert len(state["rollbacks"]) == 1 and state["pending"] is None
    assert rig.client.post("/server/update/mark-good").body["booted_slot"] == "A"
    assert rig.env() == BootEnv(("A", "B"), {"A": 3, "B": 0})


def test_a_session_of_another_process_holds_off_begin(rig):
    """A session in another process (``update-server install``) holds an flock on
    ``session.lock``: ``begin`` is refused while it does, accepted once it is released."""
    rig.config.state_dir.mkdir(parents=True, exist_ok=True)
    with open(rig.config.state_dir / "session.lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = rig.client.post("/server/update/begin")
        assert r.status == 409 and r.body["error"] == "session-already-active", r.body
    token = rig.client.begin()
    assert rig.client.get(f"/server/update/{token}/status").body["stage"] == "awaiting-file"


def test_rsa_signed_bundle_and_multipart_upload(rig, keys):
    image = make_image(200_000, seed=7)
    data = make_bundle(keys["trusted_rsa"], image)
    boundary = "----ot2boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.ot2\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    token = rig.client.begin()
    r = rig.client.upload(token, body, content_type=f"multipart/form-data; boundary={boundary}")
    assert r.status == 200, r.body
    assert rig.slot_bytes("B", len(image)) == image


def test_status_reports_progress_while_writing(rig, keys):
    data = make_bundle(keys["trusted"], make_image(4 << 20, seed=3))
    token = rig.client.begin()
    sock = rig.client.start_upload(token, data)
    try:
        st = wait_for(lambda: (lambda b: b if b["bytes_written"] > 0 else None)(
            rig.client.get(f"/server/update/{token}/status").body))
        assert st["stage"] == "writing" and 0 < st["progress"] < 1
        assert st["total_bytes"] == 4 << 20 and st["target_slot"] == "B"
        sock.sendall(data[len(data) // 2:])
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 200 and json.loads(resp.read())["stage"] == "done"
    finally:
        sock.close()


def test_image_filling_the_whole_slot(rig, keys):
    # a whole-slot image: exactly the capacity is allowed
    image = make_image(SLOT_SIZE, seed=9)
    token, r = install(rig, keys["trusted"], image)
    with open(rig.slots["B"], "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(image).hexdigest()


@pytest.mark.parametrize("backend_files", ["missing-primary", "corrupt-primary"])
def test_grub_backup_env_is_used(tmp_path, keys, backend_files, monkeypatch):
    from conftest import Rig

    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], backend="grub")
    primary, backup = rig.config.grubenv
    rig.boot.storage.store(BootEnv(("A", "B"), {"A": 2, "B": 1}).to_vars())
    if backend_files == "missing-primary":
        import os
        os.unlink(primary)
    else:
        with open(primary, "r+b") as f:
            f.write(b"garbage!")
    assert rig.env() == BootEnv(("A", "B"), {"A": 2, "B": 1})
    rig.start()
    try:
        token, _ = install(rig, keys["trusted"], make_image(10_000))
        # both files were written, primary first, and agree
        import subprocess
        for f in (primary, backup):
            out = subprocess.run(["grub-editenv", f, "list"], capture_output=True, text=True, check=True)
            assert "BOOT_ORDER=A\n" in out.stdout and "BOOT_B_LEFT=0" in out.stdout
    finally:
        rig.stop()

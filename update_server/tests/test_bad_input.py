"""Every bad input of the issue: a 4xx JSON error, the booted slot and selection unchanged."""

from __future__ import annotations

import http.client
import json
import os

import libconf
import pytest

from conftest import (
    SLOT_SIZE,
    Rig,
    make_bundle,
    make_image,
    manifest_for,
    raw_bundle,
    sign,
)
from test_install import wait_for
from update_server import bundle
from update_server.bootmodel import BootEnv

ORIGINAL_ENV = BootEnv(("A", "B"), {"A": 3, "B": 3})


def assert_error(r, status, code):
    assert r.status == status, (r.status, r.raw[:300])
    assert r.body["error"] == code, r.body
    assert isinstance(r.body["message"], str) and r.body["message"]


def assert_nothing_changed(rig):
    """Before a byte was written: the boot environment is exactly as it was."""
    assert rig.env() == ORIGINAL_ENV
    assert_booted_slot_kept(rig)


def assert_booted_slot_kept(rig):
    """After writing started: A is still booted and first; B is not bootable."""
    env = rig.env()
    assert env.order[0] == "A" and env.tries["A"] == 3
    assert env.tries["B"] == 0 or env == ORIGINAL_ENV
    h = rig.client.get("/health").body
    assert h["booted_slot"] == "A" and h["slots"]["A"]["state"] == "good"
    assert rig.slot_a_intact()


def upload_expect(rig, data, status, code, content_type="application/octet-stream"):
    token = rig.client.begin()
    r = rig.client.upload(token, data, content_type=content_type)
    assert_error(r, status, code)
    st = rig.client.get(f"/server/update/{token}/status").body
    assert st["stage"] == "error" and st["error"] == code
    # the failed session is over: a new one may begin, and commit is refused
    assert_error(rig.client.post(f"/server/update/{token}/commit"), 409, "not-ready")
    return token


IMAGE = make_image(150_000, seed=11)


def test_unsigned(rig):
    data = raw_bundle([("sw-description", manifest_for(IMAGE)), ("rootfs.img", IMAGE)])
    upload_expect(rig, data, 400, "unsigned")
    assert_nothing_changed(rig)


def test_wrongly_signed(rig, keys):
    manifest = manifest_for(IMAGE)
    other = manifest_for(IMAGE, version="9.9.9")
    sig = sign(keys["trusted"], other)  # a valid signature of other bytes
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", sig), ("rootfs.img", IMAGE)])
    upload_expect(rig, data, 400, "bad-signature")
    assert_nothing_changed(rig)


def test_corrupted_signature(rig, keys):
    manifest = manifest_for(IMAGE)
    sig = bytearray(sign(keys["trusted"], manifest))
    sig[-3] ^= 0x01   # inside the signature value, the SignerInfo's last field
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", bytes(sig)), ("rootfs.img", IMAGE)])
    upload_expect(rig, data, 400, "bad-signature")
    # and a signature member that is not CMS at all
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", b"\x00garbage"),
                       ("rootfs.img", IMAGE)])
    upload_expect(rig, data, 400, "bad-signature")
    assert_nothing_changed(rig)


def test_untrusted_key(rig, keys):
    upload_expect(rig, make_bundle(keys["untrusted"], IMAGE), 400, "untrusted-key")
    assert_nothing_changed(rig)


def test_empty_or_missing_keyring_refuses_everything(tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    (tmp_path / "empty-keyring").mkdir()
    for keyring in (tmp_path / "empty-keyring", tmp_path / "no-such-dir"):
        root = tmp_path / keyring.name / "robot"
        root.mkdir(parents=True)
        rig = Rig(root, keyring)
        rig.start()
        try:
            upload_expect(rig, make_bundle(keys["trusted"], IMAGE), 400, "untrusted-key")
            assert_nothing_changed(rig)
        finally:
            rig.stop()


def test_bit_flipped_image(rig, keys):
    data = bytearray(make_bundle(keys["trusted"], IMAGE))
    data[len(data) - 1024 - 70_000] ^= 0x10  # inside the image member
    upload_expect(rig, bytes(data), 400, "hash-mismatch")
    assert_booted_slot_kept(rig)
    assert "B" not in rig.env().order


def test_truncated_upload(rig, keys):
    data = make_bundle(keys["trusted"], IMAGE)
    upload_expect(rig, data[: len(data) // 2], 400, "truncated")
    assert_booted_slot_kept(rig)
    # cut inside the manifest: nothing was written
    upload_expect(rig, data[:700], 400, "truncated")
    assert_booted_slot_kept(rig)


def test_truncated_by_dropped_connection(rig, keys):
    data = make_bundle(keys["trusted"], make_image(2 << 20, seed=5))
    token = rig.client.begin()
    sock = rig.client.start_upload(token, data)
    wait_for(lambda: rig.client.get(f"/server/update/{token}/status").body["stage"] == "writing")
    sock.close()
    st = wait_for(lambda: (lambda b: b if b["stage"] == "error" else None)(
        rig.client.get(f"/server/update/{token}/status").body))
    assert st["error"] in ("truncated", "cancelled")
    assert_booted_slot_kept(rig)
    assert rig.client.post("/server/update/begin").status == 201


def test_wrong_compatible(rig, keys):
    upload_expect(rig, make_bundle(keys["trusted"], IMAGE, compatible="ot2-rpi3"), 400, "incompatible")
    assert_nothing_changed(rig)


def test_wrong_board_revision(rig, keys):
    upload_expect(rig, make_bundle(keys["trusted"], IMAGE, revisions=["2.0", "2.1"]), 400, "incompatible")
    assert_nothing_changed(rig)


def test_oversized_image(rig, keys):
    # the header claims more than the slot holds; the data never needs to arrive
    manifest = manifest_for(b"", size=SLOT_SIZE + 512)
    sig = sign(keys["trusted"], manifest)
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", sig)], end=False)
    data += bundle.cpio_header("rootfs.img", SLOT_SIZE + 512, 0, 3) + bytes(4096)
    upload_expect(rig, data, 413, "image-too-large")
    assert_nothing_changed(rig)


def test_manifest_not_libconfig(rig, keys):
    manifest = b"software = { this is not libconfig"
    sig = sign(keys["trusted"], manifest)
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", sig), ("rootfs.img", IMAGE)])
    upload_expect(rig, data, 400, "bad-manifest")
    assert_nothing_changed(rig)


def _second_board(software, board):
    software["ot2-other"] = board


@pytest.mark.parametrize("change", [
    lambda software, board: software.update(version=5),
    lambda software, board: software.update({"build-time": "yesterday"}),
    lambda software, board: board.update(images=()),
    lambda software, board: board.update({"hardware-compatibility": []}),
    lambda software, board: board["images"][0].update(name="bootloader"),
    lambda software, board: board["images"][0].update(filename="../etc/passwd"),
    lambda software, board: board["images"][0].update(type="ubivol"),
    lambda software, board: board["images"][0].update(size=-1),
    _second_board,
])
def test_manifest_invalid_fields(rig, keys, change):
    body = libconf.loads(manifest_for(IMAGE).decode())
    software = body["software"]
    change(software, software["ot2-test"])
    manifest = libconf.dumps(body).encode()
    sig = sign(keys["trusted"], manifest)
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", sig), ("rootfs.img", IMAGE)])
    upload_expect(rig, data, 400, "bad-manifest")
    assert_nothing_changed(rig)


def test_image_member_disagrees_with_manifest(rig, keys):
    manifest = manifest_for(IMAGE)
    sig = sign(keys["trusted"], manifest)
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", sig), ("rootfs.img", IMAGE[:-1])])
    upload_expect(rig, data, 400, "bad-bundle")
    data = raw_bundle([("sw-description", manifest), ("sw-description.sig", sig), ("other.img", IMAGE)])
    upload_expect(rig, data, 400, "bad-bundle")
    assert_nothing_changed(rig)


def test_extra_data(rig, keys):
    good = make_bundle(keys["trusted"], IMAGE)
    upload_expect(rig, good + b"trailing junk", 400, "extra-data")
    assert_booted_slot_kept(rig)
    extra = good[:good.rindex(b"070701")] + raw_bundle([("evil.sh", b"#!/bin/sh\n")])   # before the trailer
    upload_expect(rig, extra, 400, "extra-data")
    assert_booted_slot_kept(rig)
    # zero padding (as cpio(1) writes it) is fine
    token = rig.client.begin()
    assert rig.client.upload(token, good + bytes(9216)).status == 200


@pytest.mark.parametrize("data", [b"", b"\x00" * 512, os.urandom(3000), b"GIF89a" + bytes(600)])
def test_not_a_bundle(rig, data):
    token = rig.client.begin()
    r = rig.client.upload(token, data)
    assert r.status == 400 and r.body["error"] in ("bad-bundle", "truncated")
    assert_nothing_changed(rig)


def test_malformed_multipart(rig):
    token = rig.client.begin()
    r = rig.client.upload(token, b"no boundary here", content_type="multipart/form-data")
    assert_error(r, 400, "bad-request")
    assert_nothing_changed(rig)


def test_second_concurrent_session(rig):
    token = rig.client.begin()
    assert_error(rig.client.post("/server/update/begin"), 409, "session-already-active")
    assert rig.client.get(f"/server/update/{token}/status").body["stage"] == "awaiting-file"
    assert rig.client.post("/server/update/cancel").body["cancelled"] is True
    assert rig.client.post("/server/update/begin").status == 201
    assert_nothing_changed(rig)


def test_commit_before_done(rig, keys):
    token = rig.client.begin()
    assert_error(rig.client.post(f"/server/update/{token}/commit"), 409, "not-ready")
    assert_nothing_changed(rig)


def test_bad_token(rig):
    assert_error(rig.client.get("/server/update/nope/status"), 404, "bad-token")
    assert_error(rig.client.post("/server/update/nope/commit"), 404, "bad-token")
    assert_error(rig.client.upload("nope", b"x"), 404, "bad-token")
    assert_nothing_changed(rig)


def test_file_sent_twice(rig, keys):
    token = rig.client.begin()
    assert rig.client.upload(token, make_bundle(keys["trusted"], IMAGE)).status == 200
    assert_error(rig.client.upload(token, b"again"), 409, "file-already-sent")


def test_cancel_mid_write(rig, keys):
    data = make_bundle(keys["trusted"], make_image(8 << 20, seed=2))
    token = rig.client.begin()
    sock = rig.client.start_upload(token, data)
    try:
        wait_for(lambda: rig.client.get(f"/server/update/{token}/status").body["bytes_written"] > 0)
        r = rig.client.post("/server/update/cancel")
        assert r.status == 200 and r.body["cancelled"] is True
        st = rig.client.get(f"/server/update/{token}/status").body
        assert st["stage"] == "error" and st["error"] == "cancelled"
        assert st["bytes_written"] < len(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 409 and json.loads(resp.read())["error"] == "cancelled"
    finally:
        sock.close()
    assert_booted_slot_kept(rig)
    assert "B" not in rig.env().order
    assert_error(rig.client.post(f"/server/update/{token}/commit"), 409, "not-ready")
    assert rig.client.post("/server/update/begin").status == 201


def test_cancel_after_commit_undoes_the_selection(rig, keys):
    token = rig.client.begin()
    assert rig.client.upload(token, make_bundle(keys["trusted"], IMAGE)).status == 200
    assert rig.client.post(f"/server/update/{token}/commit").status == 200
    assert rig.env().order == ("B", "A")
    assert rig.client.post("/server/update/cancel").body["cancelled"] is True
    assert rig.env() == BootEnv(("A",), {"A": 3, "B": 0})
    assert rig.client.get("/health").body["slots"]["B"]["pending"] is False


def test_bad_json_bodies(rig):
    assert_error(rig.client.post("/server/name", body=b"{not json", headers={"Content-Type": "application/json"}),
                 400, "bad-request")
    assert_error(rig.client.post("/server/name", json_body=["a list"]), 400, "bad-request")
    json_type = {"Content-Type": "application/json"}
    assert_error(rig.client.post("/server/ssh_keys", body=b"\xff\xfe", headers=json_type), 400, "bad-request")
    assert_error(rig.client.post("/server/ssh_keys", body=b"\xff\xfe"), 415, "unsupported-media-type")
    assert_error(rig.client.post("/server/name", body=b"x" * 100_000, headers=json_type), 413, "payload-too-large")
    assert_error(rig.client.get("/no/such/path"), 404, "not-found")
    assert_error(rig.client.request("PUT", "/server/name"), 405, "method-not-allowed")

"""``ot2 flash``: bmap'd writes to files and loop devices, read-back, provisioning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cardimage import have_tools, make_card_image
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ot2_client import bmap as bmap_mod
from ot2_client import flash as flash_mod
from ot2_client.cli import main

pytestmark = pytest.mark.skipif(not have_tools(), reason="needs genimage, bmap-tools, mtools, dosfstools")
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    image = make_card_image(tmp_path_factory.mktemp("card"))
    return image, bmap_mod.parse(str(image) + ".bmap")


@pytest.fixture(scope="module")
def pubkey(tmp_path_factory):
    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519.pub"
    path.write_text(f"{pub} me@laptop\n")
    return path


def flash(capsys, *argv):
    code = main(["flash", "--json", *map(str, argv)])
    out = capsys.readouterr().out
    return code, json.loads(out)


def read_robot_toml(target) -> str:
    offset = flash_mod.boot_partition_offset(str(target))
    p = subprocess.run(["mtype", "-i", f"{target}@@{offset}", "::robot.toml"], env=MTOOLS_ENV,
                       capture_output=True, check=True)
    return p.stdout.decode()


def mapped_equal(image: Path, target: Path, bm) -> bool:
    with open(image, "rb") as a, open(target, "rb") as b:
        for r in bm.ranges:
            start, end = bm.byte_range(r)
            a.seek(start)
            b.seek(start)
            if a.read(end - start) != b.read(end - start):
                return False
    return True


@pytest.fixture
def loopdev(tmp_path):
    """A loop device over a 64 MiB backing file filled with 0xAA (a used card)."""
    backing = tmp_path / "card.bin"
    backing.write_bytes(b"\xaa" * (64 << 20))
    p = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"no loop devices here: {p.stderr.strip()}")
    dev = p.stdout.strip()
    yield dev, backing
    subprocess.run(["losetup", "-d", dev], check=False)


@pytest.mark.parametrize("writer", ["bmaptool", "builtin"])
def test_file_target_with_force_bmap_verify_and_provisioning(card, pubkey, tmp_path, capsys, writer,
                                                            monkeypatch):
    image, bm = card
    target = tmp_path / "card.img"
    extra = ["--no-bmaptool"] if writer == "builtin" else []
    code, out = flash(capsys, *extra, "--force", "--name", "lab-robot-7", "--ssh-key", pubkey,
                      "--wifi-ssid", "Lab", "--wifi-psk", "secret pass", "--timezone", "UTC",
                      "--rollout-server", "https://rollouts.lab.test", "--rollout-token", "t0ken", image, target)
    assert code == 0, out
    assert out["method"] == ("bmaptool" if writer == "bmaptool" else "bmap")
    assert out["bytes_written"] == bm.mapped_bytes < out["image_size"] / 3
    assert out["verified"] and out["provisioned"]
    assert out["provisioned_fields"] == ["name", "rollout", "ssh_authorized_keys", "timezone", "wifi"]
    # the card's partition table and every filesystem block but the boot partition's
    # (robot.toml was added after the read-back) are the image's
    assert target.read_bytes()[:512] == image.read_bytes()[:512]

    # first boot: the robot finds robot.toml on its boot partition and imports it
    from update_server import provision
    from update_server.config import load_config

    text = read_robot_toml(target)
    boot = tmp_path / "bootfs"
    boot.mkdir()
    (boot / "robot.toml").write_text(text)
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    config = load_config(None, {
        "data_dir": str(tmp_path / "data"), "machine_id_file": str(tmp_path / "machine-id")})
    report = provision.run(config, str(boot))
    assert report["status"] == "applied", report
    assert (tmp_path / "data" / "update-server" / "name").read_text() == "lab-robot-7\n"
    assert "me@laptop" in (tmp_path / "data" / "ssh" / "authorized_keys").read_text()
    # the update server's next start polls the rollout server
    provisioned = load_config(None, {"data_dir": str(tmp_path / "data")})
    assert (provisioned.ddi_url, provisioned.ddi_target_token) == ("https://rollouts.lab.test", "t0ken")


def test_regular_file_without_force_is_refused(card, tmp_path, capsys):
    image, _ = card
    target = tmp_path / "not-a-card"
    target.write_bytes(b"precious")
    code, out = flash(capsys, image, target)
    assert code == 4 and out["error"] == "refused" and "regular file" in out["message"]
    assert target.read_bytes() == b"precious"
    code, out = flash(capsys, image, tmp_path / "missing")
    assert code == 4 and not (tmp_path / "missing").exists()


def test_loop_device_only_mapped_blocks_written(card, loopdev, pubkey, capsys):
    image, bm = card
    dev, backing = loopdev
    code, out = flash(capsys, image, dev)
    assert code == 4 and "not a removable device" in out["message"]
    assert backing.read_bytes()[:16] == b"\xaa" * 16  # untouched
    code, out = flash(capsys, "--force", "--name", "lab-robot-7", "--ssh-key", pubkey, image, dev)
    assert code == 0, out
    assert out["method"] == "bmaptool" and out["verified"] and out["provisioned"]
    assert out["bytes_written"] == bm.mapped_bytes
    data = backing.read_bytes()
    holes = [(bm.byte_range(a)[1], bm.byte_range(b)[0]) for a, b in zip(bm.ranges, bm.ranges[1:])]
    hole = max(holes, key=lambda h: h[1] - h[0])
    assert data[hole[0]:hole[1]] == b"\xaa" * (hole[1] - hole[0])  # unmapped blocks: not written
    assert data[hole[1]:hole[1] + 4096] == image.read_bytes()[hole[1]:hole[1] + 4096]
    assert 'name = "lab-robot-7"' in read_robot_toml(dev)


def test_loop_device_builtin_writer_and_whole_image(card, loopdev, capsys):
    image, bm = card
    dev, backing = loopdev
    code, out = flash(capsys, "--force", "--no-bmaptool", image, dev)
    assert code == 0 and out["method"] == "bmap" and out["bytes_written"] == bm.mapped_bytes
    assert mapped_equal(image, backing, bm)
    code, out = flash(capsys, "--force", "--no-bmap", image, dev)
    assert code == 0 and out["method"] == "whole-image" and out["bytes_written"] == out["image_size"]
    assert backing.read_bytes()[: out["image_size"]] == image.read_bytes()


def test_mounted_device_is_refused(tmp_path, card, capsys):
    image, _ = card
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-F", str(fs)], check=True)
    p = subprocess.run(["losetup", "-f", "--show", str(fs)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip("no loop devices")
    dev = p.stdout.strip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        if subprocess.run(["mount", dev, str(mnt)], capture_output=True).returncode != 0:
            pytest.skip("cannot mount here")
        try:
            before = fs.read_bytes()[:1 << 20]
            code, out = flash(capsys, image, dev)
            assert code == 4 and f"is mounted ({dev} on {mnt})" in out["message"]
            assert fs.read_bytes()[:1 << 20] == before
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_system_disk_is_refused():
    root_dev = os.stat("/").st_dev
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{os.major(root_dev)}:{os.minor(root_dev)}"))
    sysdir = os.path.realpath(f"/sys/dev/block/{os.major(root_dev)}:{os.minor(root_dev)}")
    if os.path.exists(os.path.join(sysdir, "partition")):
        name = os.path.basename(os.path.dirname(sysdir))
    node = f"/dev/{name}"
    if not os.path.exists(node):
        pytest.skip("the root is not on a block device node here")
    info = flash_mod.inspect_target(node)  # inspection only: nothing is written
    assert any("holds the running system" in r for r in info.reasons), info.reasons


def test_image_shorter_than_its_bmap(card, tmp_path, capsys):
    image, bm = card
    short = tmp_path / "short.img"
    short.write_bytes(image.read_bytes()[: bm.image_size - 5 * 4096])
    shutil.copy(str(image) + ".bmap", str(short) + ".bmap")
    target = tmp_path / "t.img"
    code, out = flash(capsys, "--force", short, target)
    assert code == 2 and out["error"] == "image-too-short" and "truncated" in out["message"]
    assert not target.exists()


@pytest.mark.parametrize("writer", ["bmaptool", "builtin"])
def test_bmap_checksum_mismatch_names_the_range(card, tmp_path, capsys, writer):
    image, bm = card
    damaged = tmp_path / "damaged.img"
    data = bytearray(image.read_bytes())
    r = bm.ranges[-1]  # the last mapped range (data partition)
    start, end = bm.byte_range(r)
    data[start + 100] ^= 0x01
    damaged.write_bytes(bytes(data))
    shutil.copy(str(image) + ".bmap", str(damaged) + ".bmap")
    extra = ["--no-bmaptool"] if writer == "builtin" else []
    code, out = flash(capsys, *extra, "--force", damaged, tmp_path / "t.img")
    assert code == 1 and out["error"] == "image-checksum-mismatch"
    assert f"blocks {r.first}-{r.last}" in out["message"] and f"bytes {start}-{end - 1}" in out["message"]
    # a damaged bmap file is refused before anything is written
    bad_bmap = tmp_path / "bad.bmap"
    bad_bmap.write_text((Path(str(image) + ".bmap")).read_text().replace("<BlockSize> 4096", "<BlockSize> 8192"))
    code, out = flash(capsys, "--force", "--bmap", bad_bmap, image, tmp_path / "u.img")
    assert code == 2 and out["error"] == "bad-bmap" and not (tmp_path / "u.img").exists()


def test_read_back_mismatch_file_altered_between_write_and_verify(card, tmp_path, capsys, monkeypatch):
    image, bm = card
    target = tmp_path / "card.img"
    start, _ = bm.byte_range(bm.ranges[2])
    spot = start + 3 * 4096 + 17

    def corrupt(device):
        with open(device, "r+b") as f:
            f.seek(spot)
            old = f.read(1)
            f.seek(spot)
            f.write(bytes([old[0] ^ 0xFF]))

    monkeypatch.setattr(flash_mod, "before_verify", corrupt)
    code, out = flash(capsys, "--force", image, target)
    assert code == 1 and out["error"] == "verify-mismatch"
    aligned = spot // 4096 * 4096
    assert out["bad_ranges"] == [{"start": aligned, "end": aligned + 4096}]
    assert f"bytes {aligned}-{aligned + 4095}" in out["message"] and "card is bad" in out["message"]
    code = main(["flash", "--force", str(image), str(target)])  # human output, one line
    err = capsys.readouterr().err
    assert code == 1 and "verify-mismatch" in err


def test_read_back_mismatch_on_loop_device_bypasses_cache(card, loopdev, monkeypatch, capsys):
    """The card (backing file) changes under the loop device after the write: the
    read-back must see the card, not the page cache of what was written."""
    image, bm = card
    dev, backing = loopdev
    spot = bm.byte_range(bm.ranges[0])[0] + 200  # the MBR's boot code area

    def corrupt(device):
        with open(backing, "r+b") as f:
            f.seek(spot)
            f.write(b"\x00\x11\x22\x33")
            f.flush()
            os.fsync(f.fileno())

    monkeypatch.setattr(flash_mod, "before_verify", corrupt)
    code, out = flash(capsys, "--force", image, dev)
    assert code == 1 and out["error"] == "verify-mismatch"
    assert out["bad_ranges"] == [{"start": 0, "end": 4096}]


@pytest.mark.parametrize("args, code_name", [
    (["--name", "bad/name"], "bad-name"),
    (["--name", " spaced "], "bad-name"),
    (["--wifi-ssid", "Lab", "--wifi-psk", "short"], "bad-field"),
    (["--wifi-psk", "long enough"], "bad-field"),
    (["--timezone", "../etc/passwd"], "bad-field"),
    (["--rollout-token", "t0ken"], "bad-field"),
    (["--rollout-server", "ftp://rollouts.lab.test"], "bad-field"),
])
def test_bad_provisioning_values_write_nothing(card, tmp_path, capsys, args, code_name):
    image, _ = card
    target = tmp_path / "t.img"
    code, out = flash(capsys, "--force", *args, image, target)
    assert code == 2 and out["error"] == code_name
    assert not target.exists()


def test_bad_ssh_key_file(card, tmp_path, capsys):
    image, _ = card
    key = tmp_path / "key.pub"
    key.write_text("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 too-short\n")
    code, out = flash(capsys, "--force", "--ssh-key", key, image, tmp_path / "t.img")
    assert code == 2 and out["error"] == "bad-key"
    code, out = flash(capsys, "--force", "--ssh-key", tmp_path / "missing.pub", image, tmp_path / "t.img")
    assert code == 2 and out["error"] == "bad-key"
    assert not (tmp_path / "t.img").exists()


def test_progress_bars(card, tmp_path, capsys):
    image, _ = card
    code = main(["flash", "--progress", "--force", str(image), str(tmp_path / "t.img")])
    cap = capsys.readouterr()
    assert code == 0 and "verified" in cap.out and "writing" in cap.err and "verifying" in cap.err

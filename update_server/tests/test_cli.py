"""The ``update-server`` command: bundle keygen/create/verify/info, serve, boot-check."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import COMPATIBLE, Rig, make_bundle, make_image, manifest_for, raw_bundle

EXE = str(Path(sys.executable).with_name("update-server"))


def cli(*args, check=True):
    proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "keyring").mkdir()
    (d / "other").mkdir()
    cli("bundle", "keygen", "--out", d / "dev.key")
    cli("bundle", "keygen", "--out", d / "rsa.key", "--algorithm", "rsa")
    cli("bundle", "keygen", "--out", d / "other.key")
    os.rename(d / "dev.pem", d / "keyring/dev.pem")
    os.rename(d / "rsa.pem", d / "keyring/rsa.pem")
    os.rename(d / "other.pem", d / "other/other.pem")
    (d / "rootfs.img").write_bytes(make_image(700_001, seed=4))
    return d


def test_keygen_files(made):
    assert oct(os.stat(made / "dev.key").st_mode & 0o777) == "0o600"
    assert (made / "keyring/dev.pem").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert (made / "dev.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert cli("bundle", "keygen", "--out", made / "dev.key", check=False).returncode == 2


@pytest.mark.parametrize("key", ["dev.key", "rsa.key"])
def test_create_verify_info_round_trip(made, key):
    out = made / f"b-{key}.ot2"
    cli("bundle", "create", "--key", made / key, "--compatible", COMPATIBLE, "--version", "5.0",
        "--image", f"rootfs={made / 'rootfs.img'}", "-o", out)
    r = cli("bundle", "verify", "--keyring", made / "keyring", "--compatible", COMPATIBLE, out)
    assert r.stdout.startswith("OK ot2-test 5.0")
    info = json.loads(cli("bundle", "info", "--json", out).stdout)
    assert info["manifest"]["images"][0]["size"] == 700_001
    assert info["manifest"]["hardware_compatibility"] == ["1.0"] and len(info["signers"]) == 1
    # GNU cpio reads it and lists the members in SWUpdate's order
    with open(out, "rb") as f:
        names = subprocess.run(["cpio", "-it", "--quiet"], stdin=f, capture_output=True, text=True,
                               check=True).stdout.split()
    assert names == ["sw-description", "sw-description.sig", "rootfs.img"]
    assert "compatible: ot2-test" in cli("bundle", "info", out).stdout


def test_verify_rejections(made):
    out = made / "v.ot2"
    cli("bundle", "create", "--key", made / "dev.key", "--compatible", COMPATIBLE, "--version", "5.1",
        "--image", f"rootfs={made / 'rootfs.img'}", "-o", out)
    r = cli("bundle", "verify", "--keyring", made / "other", out, check=False)
    assert r.returncode == 1 and "untrusted-key" in r.stderr
    r = cli("bundle", "verify", "--keyring", made / "keyring", "--compatible", "ot2-rpi3", out, check=False)
    assert r.returncode == 1 and "incompatible" in r.stderr
    data = bytearray(out.read_bytes())
    data[5000] ^= 1
    (made / "flipped.ot2").write_bytes(data)
    r = cli("bundle", "verify", "--keyring", made / "keyring", made / "flipped.ot2", check=False)
    assert r.returncode == 1 and "hash-mismatch" in r.stderr
    (made / "cut.ot2").write_bytes(data[:4000])
    r = cli("bundle", "verify", "--keyring", made / "keyring", made / "cut.ot2", check=False)
    assert r.returncode == 1 and "truncated" in r.stderr
    r = cli("bundle", "verify", "--keyring", made / "empty-dir", out, check=False)
    assert r.returncode == 1 and "untrusted-key" in r.stderr
    r = cli("bundle", "verify", "--keyring", made / "keyring", made / "missing.ot2", check=False)
    assert r.returncode == 2


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def toml_value(v):
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def write_config(rig: Rig, port: int) -> Path:
    """The rig's configuration as the ``update-server.toml`` a command reads."""
    lines = []
    for k, v in rig.config.__dict__.items():
        if k in ("slots", "health_urls"):
            continue
        if k == "port":
            v = port
        if v in ("", []):
            continue
        lines.append(f"{k} = {toml_value(v)}")
    lines.append(f"health_urls = [\"http://127.0.0.1:{port}/health\"]")
    for slot, dev in rig.config.slots.items():
        lines.append(f"[slots.{slot}]\ndevice = {json.dumps(dev)}")
    conf = rig.root / "update-server.toml"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def test_serve_subprocess_and_boot_check(tmp_path, keys, made, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"])
    assert rig.bootloader_boots() == "A"  # A has a try less until the boot check
    port = free_port()
    conf = write_config(rig, port)

    # cwd elsewhere: in the repository root, the project directory (also named
    # update_server) would shadow the editable install for "python -m"
    proc = subprocess.Popen([sys.executable, "-m", "update_server", "--config", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    health = json.load(r)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
                time.sleep(0.1)
        assert health["booted_slot"] == "A" and health["name"] == "OT2-01234567"
        r = cli("--config", conf, "boot-check", "--timeout", "5", check=False)
        assert r.returncode == 0, r.stderr
        assert rig.env().tries["A"] == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("prot = 1\n")
    r = cli("--config", bad, "boot-check", check=False)
    assert r.returncode == 2 and "unknown configuration key 'prot'" in r.stderr
    r = cli("--config", tmp_path / "missing.toml", "boot-check", check=False)
    assert r.returncode == 2
    bad.write_text("port = \"x\"\n")
    assert cli("--config", bad, "serve", check=False).returncode == 2


def test_more_tries_than_the_bootloader_counts_is_a_config_error(tmp_path):
    """``max_tries = 4`` would write ``BOOT_B_LEFT=4``, which both bootloader scripts take
    for a corrupt environment (back to order ``A B``): refused before anything runs."""
    conf = tmp_path / "tries.toml"
    conf.write_text("max_tries = 4\n")
    r = cli("--config", conf, "boot-check", check=False)
    assert r.returncode == 2 and "max_tries: expected 1..3" in r.stderr, r.stderr


def test_more_tries_than_the_board_counts_is_a_config_error(tmp_path):
    """The board file (board/<board>/meta on the image) says how many tries its
    bootloader script counts: ``max_tries = 4`` on a board of 3 is refused, naming both."""
    conf = tmp_path / "update-server.toml"
    conf.write_text(f'max_tries = 4\nboard_file = "{tmp_path / "board.conf"}"\n')
    (tmp_path / "board.conf").write_text("BOARD_COMPATIBLE=ot2-rpi3\nBOOTLOADER=uboot\nBOOT_TRIES=3\n")
    r = cli("--config", conf, "boot-check", check=False)
    assert r.returncode == 2, r.stderr
    assert "max_tries = 4 is more than BOOT_TRIES = 3 of {}".format(tmp_path / "board.conf") in r.stderr, r.stderr


def test_install_a_local_bundle_beside_the_running_server(tmp_path, keys, monkeypatch):
    """``update-server install FILE`` (a USB drive's file) runs the update session itself:
    an unsigned bundle is refused (exit 1) with slot A booted and the boot order unchanged;
    while the server has a session open the install is refused, and once it is cancelled a
    signed bundle lands in slot B and is selected, the server then seeing it in ``/health``;
    a server session left idle expires by itself and lets an install with ``--no-commit``
    write the slot and not select it; a missing file is exit 2."""
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], session_idle_timeout=1)
    c = rig.start()
    conf = write_config(rig, rig.server.port)
    try:
        image = make_image(300_000, seed=8)
        unsigned = tmp_path / "unsigned.bundle"
        unsigned.write_bytes(raw_bundle([("sw-description", manifest_for(image)), ("rootfs.img", image)]))
        r = cli("--config", conf, "install", unsigned, check=False)
        assert r.returncode == 1 and "refused: unsigned" in r.stderr, r.stderr
        assert rig.env().order == ("A", "B") and rig.slot_a_intact()

        signed = tmp_path / "update.bundle"
        signed.write_bytes(make_bundle(keys["trusted"], image, version="2.0.0"))
        token = c.begin()
        r = cli("--config", conf, "install", signed, check=False)
        assert r.returncode == 1 and "refused: session-already-active" in r.stderr, r.stderr
        assert c.post("/server/update/cancel", json_body={"token": token}).body["cancelled"]

        r = cli("--config", conf, "install", signed)
        assert r.stdout.startswith("installed 2.0.0 in slot B, selected for the next boot"), r.stdout
        assert rig.env().order == ("B", "A")
        assert rig.slot_bytes("B", len(image)) == image and rig.slot_a_intact()
        health = c.get("/health").body
        assert health["boot_order"] == ["B", "A"] and health["slots"]["B"]["pending"]

        token = c.begin()  # left idle, never polled: the server's timer ends it
        time.sleep(2.5)
        r = cli("--config", conf, "install", "--no-commit", signed)
        assert r.stdout.startswith("installed 2.0.0 in slot B, not selected (--no-commit)"), r.stdout
        assert rig.env().order == ("A",) and rig.slot_bytes("B", len(image)) == image
        assert c.get(f"/server/update/{token}/status").body["error"] == "session-expired"
        assert c.post("/server/update/begin").status == 201  # the install's session has ended
    finally:
        rig.stop()
    r = cli("--config", conf, "install", tmp_path / "missing.bundle", check=False)
    assert r.returncode == 2 and "missing.bundle" in r.stderr, r.stderr

"""SSH keys and the robot name over HTTP."""

from __future__ import annotations

import os
import stat
import subprocess
import urllib.parse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from conftest import Rig
from test_bad_input import assert_error
from update_server.name import hostname_for


def openssh(public_key, comment="user@laptop") -> str:
    line = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


@pytest.fixture(scope="module")
def ssh_keys():
    return {
        "ed25519": openssh(ed25519.Ed25519PrivateKey.generate().public_key()),
        "ecdsa": openssh(ec.generate_private_key(ec.SECP384R1()).public_key(), "lab pc"),
        "rsa": openssh(rsa.generate_private_key(65537, 2048).public_key(), ""),
        "rsa1024": openssh(rsa.generate_private_key(65537, 1024).public_key()),
    }


def keygen_fingerprint(tmp_path, line) -> str:
    path = tmp_path / "k.pub"
    path.write_text(line + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_add_list_dedupe_remove(rig, ssh_keys, tmp_path):
    c = rig.client
    assert c.get("/server/ssh_keys").body == {"public_keys": []}
    for kind in ("ed25519", "ecdsa", "rsa"):
        r = c.post("/server/ssh_keys", json_body={"key": ssh_keys[kind]})
        assert r.status == 201, r.body
        assert r.body["fingerprint"] == keygen_fingerprint(tmp_path, ssh_keys[kind])
    # the same key again (other comment, extra spaces): not added twice
    again = ssh_keys["ed25519"].rsplit(" ", 1)[0] + "   other-comment\n"
    r = c.post("/server/ssh_keys", json_body={"key": again})
    assert r.status == 200 and "already" in r.body["message"]
    keys = c.get("/server/ssh_keys").body["public_keys"]
    assert [k["type"] for k in keys] == ["ssh-ed25519", "ecdsa-sha2-nistp384", "ssh-rsa"]
    assert keys[2]["bits"] == 2048

    path = rig.root / "data/ssh/authorized_keys"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert path.read_text().count("\n") == 3
    # sshd's own parser accepts the file
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3

    fp = keys[0]["fingerprint"]
    r = c.delete("/server/ssh_keys/" + fp)  # contains '/' and '+' possibly: the route accepts it
    assert r.status == 200 and r.body["removed"] == fp
    assert_error(c.delete("/server/ssh_keys/" + fp), 404, "key-not-found")
    fp2 = keys[1]["fingerprint"]
    r = c.delete("/server/ssh_keys/" + urllib.parse.quote(fp2, safe=""))
    assert r.status == 200
    r = c.delete("/server/ssh_keys")
    assert r.status == 200 and r.body["removed"] == 1
    assert c.get("/server/ssh_keys").body == {"public_keys": []}


@pytest.mark.parametrize("bad", [
    "", "ssh-ed25519", "ssh-ed25519 !!!notbase64", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA==",
    "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ecdsa-sha2-nistp256 AAAAC3NzaC1lZDI1NTE5AAAAIBlahBlah",
    'command="rm -rf /" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9',
    "ssh-ed25519 AAAA\nssh-ed25519 BBBB", None, 42, ["ssh-ed25519"],
])
def test_malformed_ssh_keys(rig, bad):
    assert_error(rig.client.post("/server/ssh_keys", json_body={"key": bad}), 400, "bad-key")
    assert rig.client.get("/server/ssh_keys").body == {"public_keys": []}


def test_small_rsa_and_mismatched_type_refused(rig, ssh_keys):
    assert_error(rig.client.post("/server/ssh_keys", json_body={"key": ssh_keys["rsa1024"]}), 400, "bad-key")
    blob = ssh_keys["ed25519"].split()[1]
    assert_error(rig.client.post("/server/ssh_keys", json_body={"key": f"ssh-rsa {blob}"}), 400, "bad-key")


def test_keys_refused_from_untrusted_interfaces(tmp_path, keys, ssh_keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], trusted_interfaces=["usb*"], open_access=True)
    c = rig.start()
    try:  # even the open mode never opens who may log in
        assert_error(c.post("/server/ssh_keys", json_body={"key": ssh_keys["ed25519"]}), 401, "unauthorized")
        assert_error(c.delete("/server/ssh_keys"), 401, "unauthorized")
        assert_error(c.delete("/server/ssh_keys/SHA256:abc"), 401, "unauthorized")
        assert c.get("/server/ssh_keys").status == 200
        assert not (rig.root / "data/ssh/authorized_keys").exists()
    finally:
        rig.stop()


def test_name_default_set_persist(rig):
    c = rig.client
    assert c.get("/server/name").body["name"] == "OT2-01234567"
    r = c.post("/server/name", json_body={"name": "Bench Robot ü #2"})
    assert r.status == 200 and r.body == {"name": "Bench Robot ü #2", "hostname": "bench-robot-u-2"}
    assert c.get("/health").body["name"] == "Bench Robot ü #2"
    rig.restart()
    assert rig.client.get("/server/name").body["name"] == "Bench Robot ü #2"
    assert (rig.root / "data/update-server/name").read_text() == "Bench Robot ü #2\n"


@pytest.mark.parametrize("bad", [
    "", "x" * 64, "é" * 32, "a/b", "back\\slash", 'quo"te', "tab\there", "new\nline",
    "nul\x00", " leading", "trailing ", "\u200b", None, 7, {"n": 1},
])
def test_bad_names(rig, bad):
    assert_error(rig.client.post("/server/name", json_body={"name": bad}), 400, "bad-name")
    assert rig.client.get("/server/name").body["name"] == "OT2-01234567"


def test_longest_name_and_hostname():
    assert hostname_for("ü" * 31 + "x") == "u" * 31 + "x"
    assert hostname_for("x" * 63) == "x" * 63
    assert hostname_for("日本語") == "ot2"
    assert hostname_for("--Robot--One--") == "robot-one"


def test_name_advertised_over_mdns_on_loopback(tmp_path, keys, monkeypatch):
    zeroconf = pytest.importorskip("zeroconf")
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], mdns=True, mdns_interfaces=["127.0.0.1"])
    c = rig.start()
    browser = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
    try:
        assert c.post("/server/name", json_body={"name": "Lab Robot"}).status == 200
        info = browser.get_service_info("_http._tcp.local.", "Lab Robot._http._tcp.local.", timeout=3000)
        assert info is not None and info.port == 31950
        assert info.properties[b"robotModel"] == b"OT-2 Standard"
        assert info.server == "lab-robot.local."
    finally:
        browser.close()
        rig.stop()

"""First-boot provisioning: robot.toml on the boot partition -> /data, report, /health."""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from update_server import provision
from update_server.cli import main
from update_server.errors import UpdateError
from update_server.sshkeys import KeyStore, parse_key


def ssh_key(comment="me@laptop") -> str:
    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{pub} {comment}"


@pytest.fixture
def boot(rig):
    d = rig.root / "bootfs"
    d.mkdir()
    return d


def test_full_file_imported_reported_and_removed(rig, boot):
    k1, k2 = ssh_key("a"), ssh_key("b")
    KeyStore(rig.config.ssh_dir).add(k1)  # already there: not added twice
    text = provision.render(name="lab-robot-7", ssh_keys=[k1, k2],
                            wifi={"ssid": "Lab net", "psk": "correct horse", "country": "DE"},
                            timezone="Europe/Berlin")
    (boot / "robot.toml").write_text(text)
    report = provision.run(rig.config, str(boot))
    assert report["status"] == "applied" and report["removed"] and report["problems"] == []
    assert not (boot / "robot.toml").exists()
    data = rig.root / "data"
    assert (data / "update-server" / "name").read_text() == "lab-robot-7\n"
    assert [k.comment for k in KeyStore(rig.config.ssh_dir).list()] == ["a", "b"]
    wifi = data / "system" / "wifi.json"
    assert json.loads(wifi.read_text())["psk"] == "correct horse"
    assert oct(os.stat(wifi).st_mode & 0o777) == "0o600"
    assert (data / "system" / "timezone").read_text() == "Europe/Berlin\n"
    saved = (data / "update-server" / "provision.json").read_text()
    assert "correct horse" not in saved  # no secret in the report
    health = rig.client.get("/health").body
    assert health["name"] == "lab-robot-7"
    assert health["provisioning"]["status"] == "applied"
    assert health["provisioning"]["applied"]["wifi"] == {"ssid": "Lab net", "psk": True, "country": "DE"}
    # a second boot without the file changes nothing
    assert provision.run(rig.config, str(boot)) is None
    assert (data / "update-server" / "provision.json").read_text() == saved


def test_not_toml_is_reported_removed_and_data_kept(rig, boot):
    rig.client.post("/server/name", json_body={"name": "keep-me"})
    KeyStore(rig.config.ssh_dir).add(ssh_key())
    before = (rig.root / "data" / "ssh" / "authorized_keys").read_bytes()
    (boot / "robot.toml").write_text('name = "x\nwifi = {ssid = \n')
    report = provision.run(rig.config, str(boot))
    assert report["status"] == "rejected" and report["problems"][0]["error"] == "bad-file"
    assert "not TOML" in report["problems"][0]["message"]
    assert not (boot / "robot.toml").exists()
    assert (rig.root / "data" / "ssh" / "authorized_keys").read_bytes() == before
    assert rig.client.get("/health").body["name"] == "keep-me"
    (boot / "robot.toml").write_bytes(b"name = \"\xff\"\n")
    assert provision.run(rig.config, str(boot))["problems"][0]["error"] == "bad-file"


def test_bad_fields_skipped_good_ones_applied(rig, boot):
    good = ssh_key("good")
    (boot / "robot.toml").write_text(
        'name = "bad/name"\n'
        f'ssh_authorized_keys = ["ssh-rsa AAAA not-a-key", "{good}"]\n'
        'timezone = "../../etc/passwd"\n'
        'colour = "blue"\n'
        '[wifi]\nssid = "x"\npsk = "short"\n')
    report = provision.run(rig.config, str(boot))
    assert report["status"] == "partial" and report["removed"]
    fields = {p["field"]: p["error"] for p in report["problems"]}
    assert fields == {"name": "bad-name", "ssh_authorized_keys[0]": "bad-key", "timezone": "bad-field",
                      "wifi.psk": "bad-field", "colour": "unknown-field"}
    assert report["ignored"] == ["colour"]
    assert report["applied"] == {"ssh_authorized_keys": [parse_key(good).fingerprint]}
    assert rig.client.get("/health").body["name"].startswith("OT2-")  # name unchanged
    assert not (rig.root / "data" / "system" / "wifi.json").exists()


def test_file_that_cannot_be_removed_is_not_applied_twice(rig, boot, monkeypatch):
    (boot / "robot.toml").write_text(provision.render(name="first"))
    monkeypatch.setattr(provision, "_remove", lambda path, mount: "read-only file system")
    report = provision.run(rig.config, str(boot))
    assert report["status"] == "applied" and not report["removed"]
    rig.client.post("/server/name", json_body={"name": "renamed-later"})
    report = provision.run(rig.config, str(boot))  # next boot: same file, only retry the delete
    assert rig.client.get("/health").body["name"] == "renamed-later"
    monkeypatch.undo()
    report = provision.run(rig.config, str(boot))
    assert report["removed"] and not (boot / "robot.toml").exists()
    assert rig.client.get("/health").body["name"] == "renamed-later"


def test_cli_subcommand(rig, boot):
    (boot / "robot.toml").write_text(provision.render(name="from-cli", timezone="UTC"))
    code = main(["provision", "--data-dir", rig.config.data_dir, "--boot-dir", str(boot)])
    assert code == 0 and not (boot / "robot.toml").exists()
    assert (rig.root / "data" / "update-server" / "name").read_text() == "from-cli\n"
    assert main(["provision", "--data-dir", rig.config.data_dir, "--boot-dir", str(boot)]) == 0


def test_render_round_trip_and_refusals():
    name = 'Ünïcode "quoted" \\ back 🤖'
    text = provision.render(name=name.replace('"', "'").replace("\\", "-"), wifi={"ssid": 'a"b\\c', "psk": "f" * 64})
    data = provision.parse(text.encode())
    assert data["wifi"]["ssid"] == 'a"b\\c'
    with pytest.raises(UpdateError) as e:
        provision.render(name='no/"slashes')
    assert e.value.code == "bad-name"
    with pytest.raises(UpdateError) as e:
        provision.render(ssh_keys=["ssh-dss AAAA"])
    assert e.value.code == "bad-key"
    for bad in ({"ssid": ""}, {"ssid": "x" * 33}, {"ssid": "x", "psk": "1234567"}, {"ssid": "x", "country": "de"}):
        with pytest.raises(UpdateError):
            provision.render(wifi=bad)
    with pytest.raises(UpdateError):
        provision.render(timezone="Europe/../../etc")
    if os.path.isdir(provision.ZONEINFO):
        with pytest.raises(UpdateError):
            provision.render(timezone="Not/A_Zone_Anywhere")


def test_rollout_server_imported_for_the_update_server(rig, boot):
    """robot.toml's [rollout] becomes the update server's DDI settings (token kept 0600,
    never in the report); a bad server URL is refused and nothing is written."""
    from update_server.config import load_config

    text = provision.render(rollout={"server": "https://rollouts.lab.test", "controller_id": "robot-7",
                                     "target_token": "s3cret-token"})
    (boot / "robot.toml").write_text(text)
    report = provision.run(rig.config, str(boot))
    assert report["status"] == "applied", report
    assert report["applied"]["rollout"] == {"server": "https://rollouts.lab.test", "token": True}
    assert oct(os.stat(rig.config.rollout_file).st_mode & 0o777) == "0o600"
    assert "s3cret-token" not in (rig.root / "data" / "update-server" / "provision.json").read_text()
    config = load_config(None, {"data_dir": rig.config.data_dir})
    assert (config.ddi_url, config.ddi_controller_id, config.ddi_target_token, config.ddi_tenant) == \
        ("https://rollouts.lab.test", "robot-7", "s3cret-token", "DEFAULT")
    # the configuration file's own server wins over the provisioned one
    assert load_config(None, {"data_dir": rig.config.data_dir, "ddi_url": "http://other.test"}).ddi_target_token == ""

    rig.config.rollout_file.unlink()
    (boot / "robot.toml").write_text('[rollout]\nserver = "ftp://files.lab.test"\n')
    report = provision.run(rig.config, str(boot))
    assert report["status"] == "rejected" and report["problems"][0]["field"] == "rollout.server"
    assert not rig.config.rollout_file.exists()
    with pytest.raises(UpdateError):
        provision.render(rollout={"server": "https://a.test", "target_token": "x", "gateway_token": "y"})

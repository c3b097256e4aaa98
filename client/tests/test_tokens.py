"""``ot2 pair``, ``ot2 tokens``, tokens sent by ``ot2 push``, ``--allow-downgrade``,
against real update servers on loopback."""

from __future__ import annotations

import json
import stat

from conftest import write_bundle

from ot2_client.cli import main


def run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if cap.out.strip() else None), cap.err


def test_pair_over_the_usb_link_then_use_the_token(robot, good_bundle, own_config_dir, capsys):
    code, out, err = run(capsys, ["pair", "--json", "--client", "test laptop", robot.address])
    assert code == 0, err
    assert out["via"] == "trusted-interface"
    saved = own_config_dir / "ot2" / "tokens.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    entry = json.loads(saved.read_text())["robots"][robot.address]
    assert entry["id"] == out["id"] and entry["token"].startswith("ot2_") and entry["name"].startswith("OT2-")
    robot.config.trusted_interfaces = []  # from now on loopback is "the network"

    code, out, err = run(capsys, ["tokens", "list", "--json", robot.address])
    assert code == 0 and [t["client"] for t in out["tokens"]] == ["test laptop"]
    code, out, err = run(capsys, ["push", "--json", str(good_bundle), robot.address])
    assert code == 0 and out["results"][0]["ok"], out


def test_without_token_refused_with_a_hint(robot, good_bundle, capsys):
    robot.config.trusted_interfaces = []
    code, out, err = run(capsys, ["push", "--json", str(good_bundle), robot.address])
    result = out["results"][0]
    assert code == 1 and result["error"] == "unauthorized" and "ot2 pair" in result["message"]
    code, out, err = run(capsys, ["name", robot.address, "Nope"])
    assert code == 1 and "unauthorized" in err
    assert robot.health()["boot_order"] == ["A", "B"] and robot.health()["name"] != "Nope"


def test_revoked_token_is_refused_and_forgotten(robot, own_config_dir, capsys):
    code, out, _ = run(capsys, ["pair", "--json", robot.address])
    token_id = out["id"]
    robot.config.trusted_interfaces = []
    code, out, err = run(capsys, ["tokens", "revoke", "--json", robot.address, token_id])
    assert code == 0 and out["revoked"] == token_id, err
    assert json.loads((own_config_dir / "ot2" / "tokens.json").read_text())["robots"] == {}
    code, out, err = run(capsys, ["tokens", "list", robot.address])
    assert code == 1 and "unauthorized" in err


def test_downgrade_only_when_asked(robot, keys, tmp_path, capsys):
    old = write_bundle(tmp_path / "system-0.5.0.ot2", keys["trusted"], "0.5.0")
    code, out, err = run(capsys, ["push", "--json", str(old), robot.address])
    result = out["results"][0]
    assert code == 1 and result["error"] == "downgrade" and "--allow-downgrade" in result["message"]
    assert robot.health()["boot_order"] == ["A", "B"]
    code, out, err = run(capsys, ["push", "--json", "--allow-downgrade", str(old), robot.address])
    assert code == 0 and out["results"][0]["ok"], out
    assert robot.health()["boot_order"] == ["B", "A"]

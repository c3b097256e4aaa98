"""``ot2 push`` and ``ot2 status`` against real update servers on loopback."""

from __future__ import annotations

import json
import socket

from conftest import COMPATIBLE, CuttingProxy, write_bundle

from ot2_client.cli import main

PUSH = ["push", "--json", "--poll-interval", "0.1", "--wait-timeout", "30"]


def run(capsys, argv):
    code = main(argv)
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if "--json" in argv and cap.out.strip() else cap.out), cap.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_to_ten_robots_all_end_on_new_version(fleet, keys, good_bundle, capsys):
    robots = fleet(10)
    code, out, err = run(capsys, PUSH + ["--keyring", str(keys["keyring"]), "--restart", "-j", "10",
                                         str(good_bundle)] + [r.address for r in robots])
    assert code == 0, err
    assert out["ok"] and out["bundle"]["signature_checked"]
    assert [r["ok"] for r in out["results"]] == [True] * 10
    for robot, result in zip(robots, out["results"]):
        health = robot.health()
        assert health["version"] == "2.0.0" and health["booted_slot"] == "B"
        assert result["old_version"] == "1.0.0" and result["new_version"] == "2.0.0"
        assert result["bytes_sent"] == good_bundle.stat().st_size


def test_one_robot_dropping_mid_upload_fails_alone(fleet, keys, good_bundle, loop, capsys):
    robots = fleet(10)
    proxy = CuttingProxy(loop, robots[3].port, limit=1 << 20)
    addresses = [r.address for r in robots]
    addresses[3] = proxy.address
    code, out, err = run(capsys, PUSH + ["--restart", "-j", "10", str(good_bundle)] + addresses)
    proxy.stop()
    assert code == 1
    results = out["results"]
    assert proxy.cuts >= 1
    bad = results[3]
    assert not bad["ok"] and bad["error"] == "connection-lost" and bad["stage"] == "upload"
    assert "MB" in bad["message"]
    assert sum(r["ok"] for r in results) == 9
    for i, robot in enumerate(robots):
        health = robot.health()
        if i == 3:  # untouched: still 1.0.0 on A, A first in BOOT_ORDER
            assert health["version"] == "1.0.0" and health["booted_slot"] == "A"
            assert health["boot_order"][0] == "A"
        else:
            assert health["version"] == "2.0.0" and health["booted_slot"] == "B"


def test_human_output_with_progress_bars(fleet, good_bundle, capsys):
    robots = fleet(2)
    code = main(["push", "--progress", str(good_bundle)] + [r.address for r in robots])
    cap = capsys.readouterr()
    assert code == 0
    assert "2/2 succeeded" in cap.out and robots[0].address in cap.out
    assert robots[1].address in cap.err  # a bar per robot
    assert "installed; restart to use it" in cap.out
    for r in robots:  # committed, not restarted
        assert r.health()["boot_order"] == ["B", "A"]


def test_busy_robot_409(fleet, good_bundle, capsys):
    busy, free = fleet(2)
    status, body = busy.post("/server/update/begin")
    assert status == 201
    code, out, _ = run(capsys, PUSH + [str(good_bundle), busy.address, free.address])
    assert code == 1
    assert out["results"][0]["error"] == "session-already-active" and out["results"][0]["stage"] == "begin"
    assert out["results"][1]["ok"]


def test_unreachable_robot(fleet, good_bundle, capsys):
    ok = fleet(1)[0]
    dead = f"127.0.0.1:{free_port()}"
    code, out, _ = run(capsys, PUSH + [str(good_bundle), dead, ok.address])
    assert code == 3  # only unreachable robots failed
    assert out["results"][0]["error"] == "unreachable" and out["results"][1]["ok"]
    code = main(["push", str(good_bundle), dead])
    err = capsys.readouterr().err
    assert code == 3 and f"{dead}: unreachable: cannot connect to {dead}" in err


def test_unknown_name(good_bundle, capsys):
    code, out, _ = run(capsys, PUSH + ["--mdns-timeout", "0.5", str(good_bundle), "no-such-robot-xq7"])
    assert code == 3
    assert out["results"][0]["error"] == "unknown-robot"
    code = main(["status", "--mdns-timeout", "0.5", "no-such-robot-xq7"])
    assert code == 3 and "no robot named 'no-such-robot-xq7'" in capsys.readouterr().err


def test_bundle_failing_local_verification_sends_nothing(fleet, keys, good_bundle, tmp_path, capsys):
    robot = fleet(1)[0]
    corrupt = tmp_path / "corrupt.ot2"
    data = bytearray(good_bundle.read_bytes())
    data[4096] ^= 0xFF  # inside the image
    corrupt.write_bytes(bytes(data))
    for extra in ([], ["--keyring", str(keys["keyring"])]):
        code, out, _ = run(capsys, PUSH + extra + [str(corrupt), robot.address])
        assert code == 2 and out["error"] == "hash-mismatch"
    truncated = tmp_path / "truncated.ot2"
    truncated.write_bytes(good_bundle.read_bytes()[:-200000])
    code, out, _ = run(capsys, PUSH + [str(truncated), robot.address])
    assert code == 2 and out["error"] == "truncated"
    code = main(["push", str(tmp_path / "missing.ot2"), robot.address])
    assert code == 2 and "unreadable" in capsys.readouterr().err
    # nothing reached the robot: no session, slot B untouched
    assert robot.post("/server/update/begin")[0] == 201
    assert (robot.root / "slot-B.img").read_bytes()[:4096] == bytes(4096)


def test_untrusted_signature_local_and_remote(fleet, keys, tmp_path, capsys):
    robot = fleet(1)[0]
    rogue = write_bundle(tmp_path / "rogue.ot2", keys["untrusted"], "6.6.6")
    code, out, _ = run(capsys, PUSH + ["--keyring", str(keys["keyring"]), str(rogue), robot.address])
    assert code == 2 and out["error"] == "untrusted-key"
    # without a local keyring the robot's own check refuses it
    code, out, _ = run(capsys, PUSH + [str(rogue), robot.address])
    assert code == 1 and out["results"][0]["error"] == "untrusted-key"
    assert robot.health()["boot_order"][0] == "A"


def test_incompatible_robot_gets_nothing(fleet, keys, tmp_path, capsys):
    robot = fleet(1)[0]
    other = write_bundle(tmp_path / "other.ot2", keys["trusted"], "3.0.0", compatible="ot2-rpi3")
    code, out, _ = run(capsys, PUSH + [str(other), robot.address])
    assert code == 1
    r = out["results"][0]
    assert r["error"] == "incompatible" and r["stage"] == "health" and r["bytes_sent"] == 0


def test_status_side_by_side(fleet, capsys):
    a, b = fleet(2)
    dead = f"127.0.0.1:{free_port()}"
    code, out, _ = run(capsys, ["status", "--json", a.address, b.address, dead])
    assert code == 3
    assert [r["ok"] for r in out] == [True, True, False]
    assert out[0]["health"]["compatible"] == COMPATIBLE and out[2]["error"] == "unreachable"
    code = main(["status", a.address, b.address])
    text = capsys.readouterr().out
    assert code == 0 and a.address in text and b.address in text and "1.0.0" in text


def test_keys_name_restart(robot, tmp_path, capsys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " me@laptop"
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(pub + "\n")
    code, out, _ = run(capsys, ["keys", "add", "--json", robot.address, str(keyfile)])
    assert code == 0 and out["fingerprint"].startswith("SHA256:")
    fp = out["fingerprint"]
    code, out, _ = run(capsys, ["keys", "list", "--json", robot.address])
    assert [k["fingerprint"] for k in out["public_keys"]] == [fp]
    code, out, err = run(capsys, ["keys", "add", robot.address, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 short"])
    assert code == 2 and "bad-key" in err
    code, out, _ = run(capsys, ["keys", "rm", "--json", robot.address, fp])
    assert code == 0 and out["removed"] == fp
    code, out, err = run(capsys, ["keys", "rm", robot.address, fp])
    assert code == 1 and "key-not-found" in err

    code, out, _ = run(capsys, ["name", "--json", robot.address, "lab robot 7"])
    assert code == 0 and out == {"robot": robot.address, "ok": True, "name": "lab robot 7", "hostname": "lab-robot-7"}
    code, out, _ = run(capsys, ["name", robot.address])
    assert "lab robot 7 (hostname lab-robot-7)" in out
    code, out, err = run(capsys, ["name", robot.address, 'bad/"name'])
    assert code == 2 and "bad-name" in err
    assert robot.health()["name"] == "lab robot 7"

    boot_id = robot.health()["bootId"]
    code, out, _ = run(capsys, ["restart", "--json", "--wait", "--poll-interval", "0.1",
                                "--wait-timeout", "20", robot.address])
    assert code == 0 and out[0]["ok"] and out[0]["version"] == "1.0.0"
    assert robot.health()["bootId"] != boot_id


def test_console_script(robot):
    import subprocess
    import sys
    from pathlib import Path

    ot2 = Path(sys.executable).with_name("ot2")
    p = subprocess.run([str(ot2), "status", "--json", robot.address], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["health"]["version"] == "1.0.0"
    p = subprocess.run([str(ot2), "push"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2

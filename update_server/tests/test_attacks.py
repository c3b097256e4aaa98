"""The update-server attacks of issue 14, each against the real server, each refused with
the booted slot, the boot selection, ``authorized_keys`` and ``/data`` unchanged.

Peers: loopback with ``trusted_interfaces = ["usb*"]`` stands for "anyone on the
network" (loopback is then not trusted); network namespaces joined by veth pairs give a
real USB-side peer and a LAN host that claims a link-local address.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from conftest import Client, Rig, ServerThread, make_bundle, make_image, manifest_for, raw_bundle
from test_bad_input import assert_error
from update_server import bundle, netlab
from update_server.netlab import read_head
from update_server.tokens import TokenStore
from update_server.versions import is_downgrade, version_key

IMAGE = make_image(120_000, seed=21)
ED25519 = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " attacker"


def ssh_line(public_key, comment="k") -> str:
    return public_key.public_bytes(serialization.Encoding.OpenSSH,
                                   serialization.PublicFormat.OpenSSH).decode() + " " + comment


def data_snapshot(rig) -> dict:
    """Every file under the data dir with its SHA-256 (locks and temporaries aside)."""
    out = {}
    for path in sorted((rig.root / "data").rglob("*")):
        if path.is_file() and not path.name.endswith(".lock"):
            out[str(path.relative_to(rig.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def machine(rig) -> dict:
    """What an attack must not change: boot selection, booted slot, slot A, /data."""
    return {"env": rig.env(), "booted": rig.boot.booted_slot(), "slot_a": rig.slot_a_intact(),
            "data": data_snapshot(rig), "rebooted": rig.reboot_marker.exists()}


@pytest.fixture
def lan(tmp_path, keys, monkeypatch):
    """A robot whose loopback is *not* trusted: the test client is a LAN host.

    ``lan.token`` is a valid token (issued through the token file, as the robot server's
    pairing does); ``lan.client`` sends none.
    """
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    r = Rig(tmp_path, keys["keyring"], trusted_interfaces=["usb*"])
    r.token, r.token_record = TokenStore(r.config.tokens_file).issue("test client", "button")
    r.start()
    r.paired = Client(r.server.port, token=r.token)
    yield r
    r.stop()


# ---------------------------------------------------------------------------------------
# anyone on the network


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/server/ssh_keys", {"key": ED25519}),
    ("DELETE", "/server/ssh_keys", None),
    ("DELETE", "/server/ssh_keys/SHA256:abc", None),
    ("POST", "/server/name", {"name": "pwned"}),
    ("POST", "/server/update/begin", None),
    ("POST", "/server/update/cancel", None),
    ("POST", "/server/update/mark-good", None),
    ("POST", "/server/restart", None),
    ("GET", "/server/tokens", None),
    ("POST", "/server/tokens", {"client": "attacker"}),
])
def test_lan_host_without_token_changes_nothing(lan, method, path, body):
    before = machine(lan)
    r = lan.client.request(method, path, json_body=body)
    assert r.status in (401, 403), (r.status, r.body)
    assert r.body["error"] in ("unauthorized", "bad-interface")
    time.sleep(1.2)  # a restart would have run after 1 s
    assert machine(lan) == before


def test_unauthorised_answer_names_bearer(lan):
    r = lan.client.request("POST", "/server/name", json_body={"name": "x"}, headers={})
    raw = lan.client.request("POST", "/server/name", json_body={"name": "x"},
                             headers={"Authorization": "Bearer ot2_not-a-token"})
    assert_error(r, 401, "unauthorized")
    assert_error(raw, 401, "unauthorized") and "not valid" in raw.body["message"]


def test_read_only_status_stays_open(lan):
    for path in ("/health", "/server/update/health", "/server/name", "/openapi.json"):
        assert lan.client.get(path).status == 200, path


def test_paired_client_may_change_but_not_mark_good(lan):
    before_env = lan.env()
    assert lan.paired.post("/server/name", json_body={"name": "Lab 7"}).status == 200
    assert lan.paired.post("/server/ssh_keys", json_body={"key": ED25519}).status == 201
    assert_error(lan.paired.post("/server/update/mark-good"), 403, "bad-interface")
    assert_error(lan.paired.post("/server/tokens", json_body={"client": "more"}), 403, "bad-interface")
    assert lan.env() == before_env


def test_cancel_needs_the_sessions_token(lan):
    owner = lan.paired.begin()
    other = Client(lan.server.port, token=TokenStore(lan.config.tokens_file).issue("other", "button")[0])
    assert_error(other.post("/server/update/cancel"), 404, "bad-token")
    assert_error(other.post("/server/update/cancel", json_body={"token": "0" * 32}), 404, "bad-token")
    assert lan.client.get(f"/server/update/{owner}/status").body["stage"] == "awaiting-file"
    r = other.post("/server/update/cancel", json_body={"token": owner})
    assert r.status == 200 and r.body["cancelled"] is True


def test_restart_once(lan):
    assert lan.paired.post("/server/restart").status == 200
    assert_error(lan.paired.post("/server/restart"), 409, "restart-pending")
    deadline = time.monotonic() + 5
    while not lan.reboot_marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lan.reboot_marker.exists()


def test_tokens_list_and_revoke(lan):
    listed = lan.paired.get("/server/tokens")
    assert listed.status == 200 and [t["id"] for t in listed.body["tokens"]] == [lan.token_record["id"]]
    assert "sha256" not in listed.body["tokens"][0] and lan.token not in listed.raw.decode()
    stored = lan.config.tokens_file
    assert lan.token not in stored.read_text() and oct(stored.stat().st_mode & 0o777) == "0o640"
    assert_error(lan.paired.delete("/server/tokens/ffff"), 404, "token-not-found")
    assert lan.paired.delete(f"/server/tokens/{lan.token_record['id']}").status == 200
    assert_error(lan.paired.post("/server/name", json_body={"name": "x"}), 401, "unauthorized")


UNPRIVILEGED_POST = """
import json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], data=json.dumps({"key": sys.argv[2]}).encode(),
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code, json.loads(e.read())["error"])
"""


def test_unprivileged_local_process_is_not_trusted(rig):
    """A protocol runs as an unprivileged user on the robot: loopback does not make it
    someone at the robot (it could otherwise add a root login)."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root to run a process as nobody")
    before = machine(rig)
    url = f"http://127.0.0.1:{rig.server.port}/server/ssh_keys"
    out = subprocess.run(["/usr/bin/python3", "-c", UNPRIVILEGED_POST, url, ED25519], user=65534,
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.stdout.split() == ["401", "unauthorized"], out
    assert machine(rig) == before
    assert rig.client.post("/server/ssh_keys", json_body={"key": ED25519}).status == 201  # root may


def test_trusted_caller_issues_tokens(rig):
    r = rig.client.post("/server/tokens", json_body={"client": "ot2 on the USB laptop"})
    assert r.status == 201 and r.body["token"].startswith("ot2_") and r.body["via"] == "trusted-interface"
    assert TokenStore(rig.config.tokens_file).verify(r.body["token"])["id"] == r.body["id"]
    assert_error(rig.client.post("/server/tokens", json_body={"client": ""}), 400, "bad-request")


def test_open_mode_opens_updates_only(tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], trusted_interfaces=["usb*"], open_access=True)
    c = rig.start()
    try:
        token = c.begin()  # the OT-2's behaviour: updates and the name need no token
        assert c.post("/server/name", json_body={"name": "Open"}).status == 200
        assert_error(c.post("/server/ssh_keys", json_body={"key": ED25519}), 401, "unauthorized")
        assert_error(c.post("/server/update/mark-good"), 403, "bad-interface")
        assert_error(c.get("/server/tokens"), 401, "unauthorized")
        assert_error(c.post("/server/update/cancel"), 404, "bad-token")  # not someone else's session
        assert c.post("/server/update/cancel", json_body={"token": token}).status == 200
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------
# a web page in a lab browser (the browser runs on a trusted machine: loopback here)


@pytest.mark.parametrize("headers", netlab.CROSS_SITE_HEADERS)
def test_cross_site_requests_refused(rig, headers):
    headers = {k: v.format(port=rig.server.port) for k, v in headers.items()}
    before = machine(rig)
    body = f'{{"key": "{ED25519}"}}'.encode()
    r = rig.client.post("/server/ssh_keys", body=body, headers=headers)
    assert r.status in (403, 415), r.status
    assert r.body["error"] in ("cross-origin", "unsupported-media-type")
    assert not any(k.lower().startswith("access-control") for k in r.raw.decode(errors="replace").split())
    r = rig.client.post("/server/restart", headers=headers)  # no body: a form with no fields
    assert r.status in (403, 415) and r.body["error"] in ("cross-origin", "unsupported-media-type")
    time.sleep(1.2)
    assert machine(rig) == before


def test_same_origin_by_address_allowed(rig):
    port = rig.server.port
    r = rig.client.post("/server/name", json_body={"name": "Same"},
                        headers={"Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}"})
    assert r.status == 200


def test_no_cors_preflight_granted(rig):
    r = rig.client.request("OPTIONS", "/server/ssh_keys", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status == 405
    assert b"access-control" not in r.raw.lower()


# ---------------------------------------------------------------------------------------
# update integrity


def test_downgrade_refused_then_allowed(rig, keys):
    old = make_bundle(keys["trusted"], IMAGE, version="0.1.0")  # the rig runs 1.0.0
    before = machine(rig)
    token = rig.client.begin()
    r = rig.client.upload(token, old)
    assert_error(r, 409, "downgrade")
    st = rig.client.get(f"/server/update/{token}/status").body
    assert st["stage"] == "error" and st["failed_stage"] == "validating"
    assert machine(rig) == before
    token = rig.client.post("/server/update/begin?allow_downgrade=true").body["token"]
    assert rig.client.upload(token, old).status == 200
    token2 = rig.client.post(f"/server/update/{token}/commit")
    assert token2.status == 200 and rig.env().order == ("B", "A")


def test_downgrade_allowed_on_the_upload(rig, keys):
    token = rig.client.begin()
    r = rig.client.post(f"/server/update/{token}/file?allow_downgrade=1",
                        body=make_bundle(keys["trusted"], IMAGE, version="0.9"),
                        headers={"Content-Type": "application/octet-stream"})
    assert r.status == 200 and r.body["stage"] == "done"


@pytest.mark.parametrize("older,newer", [
    ("0.1.0", "1.5.0"), ("1.4", "1.4.1"), ("1.4.0rc1", "1.4.0"), ("1.4.0.dev2", "1.4.0a1"),
    ("1.4.0", "1.4.0-3-gabc1234"), ("1.4.0-3-gabc1234", "1.4.0-12-g0123456-dirty"),
    ("v1.9.9", "2.0.0"), ("1.0.0-e2e", "2.0.0-e2e"), ("1.0.0-e2e", "1.0.0"), ("1.4.0", "1.4.0.post1"),
    ("1.10.0", "1.11.0"), ("1.9.0", "1.10.0"),
])
def test_version_order(older, newer):
    assert version_key(older) < version_key(newer)
    assert is_downgrade(older, newer) and not is_downgrade(newer, older)


def test_versions_that_cannot_be_compared():
    assert version_key("3655de3") is None and version_key("") is None
    assert not is_downgrade("3655de3", "1.0.0") and not is_downgrade("1.0.0", None)
    assert version_key("1.4") == version_key("1.4.0") == version_key("v1.4.0+build7")


def negative_size_header(name: str) -> bytes:
    """A cpio header whose size field reads -1 to a lax parser (Python's int() takes a sign)."""
    header = bytearray(bundle.cpio_header(name, 0, 0, 1))
    header[54:62] = b"-0000001"
    return bytes(header)


def test_negative_cpio_size_ends_the_session(rig):
    before = machine(rig)
    token = rig.client.begin()
    r = rig.client.upload(token, negative_size_header("sw-description") + bytes(1536))
    assert_error(r, 400, "bad-bundle")
    st = rig.client.get(f"/server/update/{token}/status").body
    assert st["stage"] == "error" and st["failed_stage"] == "validating"
    assert rig.client.post("/server/update/begin").status == 201  # not wedged
    assert machine(rig)["env"] == before["env"] and rig.slot_a_intact()


def test_full_data_ends_the_session_failed(tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    data = tmp_path / "data"
    data.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(data)],
                      stderr=subprocess.DEVNULL).returncode:
        pytest.skip("cannot mount a tmpfs (needs root)")
    rig = Rig(tmp_path, keys["keyring"])
    try:
        c = rig.start()
        fd = os.open(data / "filler", os.O_WRONLY | os.O_CREAT)  # fill /data to the last block
        try:
            while True:
                os.write(fd, bytes(4096))
        except OSError:
            pass
        finally:
            os.close(fd)
        token = c.begin()
        r = c.upload(token, make_bundle(keys["trusted"], IMAGE))
        assert r.status >= 400 and r.body["error"] in ("write-failed", "internal-error"), r.body
        st = c.get(f"/server/update/{token}/status").body
        assert st["stage"] == "error" and st["failed_stage"] in ("validating", "writing", "done")
        assert c.post("/server/update/begin").status == 201  # not stuck
        env = rig.env()
        assert env.order[0] == "A" and env.tries["A"] == 3 and rig.slot_a_intact()
    finally:
        rig.stop()
        subprocess.run(["umount", str(data)], check=False)


def test_idle_session_expires_and_others_cannot_cancel_it(tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], trusted_interfaces=["usb*"], session_idle_timeout=1)
    store = TokenStore(rig.config.tokens_file)
    c = rig.start()
    first, second = (Client(rig.server.port, token=store.issue(n, "button")[0]) for n in ("a", "b"))
    try:
        token = first.begin()
        assert_error(second.post("/server/update/begin"), 409, "session-already-active")
        assert_error(second.post("/server/update/cancel"), 404, "bad-token")
        time.sleep(1.3)
        assert second.post("/server/update/begin").status == 201
        st = c.get(f"/server/update/{token}/status").body
        assert st["stage"] == "error" and st["error"] == "session-expired"
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------
# SSH keys


def rsa_line(bits: int) -> str:
    """An RSA public key of ``bits`` bits (the modulus is not a real key: no generation)."""
    n = (1 << (bits - 1)) | 1
    return ssh_line(rsa.RSAPublicNumbers(65537, n).public_key(), f"rsa{bits}")


@pytest.mark.parametrize("bits", [8200, 16384, 60000])
def test_huge_rsa_keys_refused(rig, bits):
    before = machine(rig)
    assert_error(rig.client.post("/server/ssh_keys", json_body={"key": rsa_line(bits)}), 400, "bad-key")
    assert machine(rig) == before


def test_rsa_8192_accepted(rig):
    assert rig.client.post("/server/ssh_keys", json_body={"key": rsa_line(8192)}).status == 201


def test_key_count_capped(rig):
    from update_server.sshkeys import MAX_KEYS

    for i in range(MAX_KEYS):
        line = ssh_line(ed25519.Ed25519PrivateKey.generate().public_key(), f"k{i}")
        assert rig.client.post("/server/ssh_keys", json_body={"key": line}).status == 201
    before = machine(rig)
    extra = ssh_line(ed25519.Ed25519PrivateKey.generate().public_key(), "one too many")
    assert_error(rig.client.post("/server/ssh_keys", json_body={"key": extra}), 409, "too-many-keys")
    assert machine(rig) == before


# ---------------------------------------------------------------------------------------
# resources


@pytest.mark.parametrize("who", ["stranger", "paired"])
def test_expect_continue_only_after_checks(lan, who):
    token = lan.paired.begin()
    reply = netlab.ask_to_continue(lan.server.port, f"/server/update/{token}/file",
                                   lan.token if who == "paired" else None)
    assert not reply.startswith(b"HTTP/1.1 100"), reply[:80]
    assert reply.startswith(b"HTTP/1.1 413" if who == "paired" else b"HTTP/1.1 401"), reply[:80]
    assert lan.client.get(f"/server/update/{token}/status").body["stage"] == "awaiting-file"


def test_expect_continue_for_a_good_request(lan, keys):
    data = make_bundle(keys["trusted"], IMAGE)
    token = lan.paired.begin()
    with socket.create_connection(("127.0.0.1", lan.server.port)) as sock:
        sock.sendall((f"POST /server/update/{token}/file HTTP/1.1\r\nHost: robot\r\n"
                      f"Authorization: Bearer {lan.token}\r\nContent-Type: application/octet-stream\r\n"
                      f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n").encode())
        assert read_head(sock).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(data)
        assert read_head(sock, 30).startswith(b"HTTP/1.1 200")


@pytest.fixture
def many_fds():
    with netlab.many_fds():
        yield


def test_1100_idle_and_slowloris_connections_leave_health_answering(rig, many_fds):
    with netlab.flood(rig.server.port):
        started = time.monotonic()
        r = rig.client.get("/health", timeout=10)
        assert r.status == 200 and time.monotonic() - started < 5
        stats = netlab.settled(rig.server.server.guard, 1100)
        assert stats["open"] <= rig.config.max_connections
        assert stats["evicted"] + stats["refused"] >= 1100 - rig.config.max_connections, stats
        assert rig.client.get("/health", timeout=10).status == 200


def test_slow_head_and_idle_connection_closed(tmp_path, keys, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], header_timeout=1, idle_timeout=1)
    rig.start()
    try:
        answer, slow_got, closed_after, idle_got = netlab.slow_and_idle(rig.server.port)
        assert answer.startswith(b"HTTP/1.1 200")
        assert slow_got == b"" and closed_after < 4  # closed without an answer
        assert b"HTTP/1.1" not in idle_got          # closed, nothing else sent
    finally:
        rig.stop()


def test_refused_upload_still_sending_gets_its_answer(tmp_path, keys, monkeypatch):
    """An unsigned bundle is refused once its manifest is read; the client keeps sending the
    rest (slowly, longer than the header and idle timeouts) and then reads a 400, not a
    connection reset: a body drained after the answer is no idle connection's next request."""
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], header_timeout=1, idle_timeout=1)
    rig.start()
    try:
        image = make_image(2_000_000, seed=5)
        data = raw_bundle([("sw-description", manifest_for(image)), ("rootfs.img", image)])
        sock = rig.client.start_upload(rig.client.begin(), data)
        with sock:
            rest = data[len(data) // 2:]
            for start in range(0, len(rest), 64 * 1024):      # about 3 s
                sock.sendall(rest[start:start + 64 * 1024])
                time.sleep(0.2)
            sock.settimeout(10)
            answer = read_head(sock)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert machine(rig)["booted"] == "A" and rig.slot_a_intact()
    finally:
        rig.stop()


# ---------------------------------------------------------------------------------------
# network namespaces: the USB link, the LAN and a link-local impostor


@pytest.fixture
def netlab_names():
    with netlab.netlab() as names:
        yield names


@pytest.fixture
def robot_in_netns(tmp_path, keys, netlab_names, monkeypatch):
    monkeypatch.setattr("update_server.config.DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    rig = Rig(tmp_path, keys["keyring"], listen="0.0.0.0")  # default trusted_interfaces
    rig.server = ServerThread(rig.config, netns=netlab_names["robot"])
    yield rig, netlab_names
    rig.stop()


def test_usb_link_is_trusted(robot_in_netns):
    rig, ns = robot_in_netns
    usb = Client(rig.server.port, host=netlab.ROBOT_USB)
    r = netlab.in_netns(ns["usb"], lambda: usb.post("/server/ssh_keys", json_body={"key": ED25519}))
    assert r.status == 201
    assert "attacker" in (rig.root / "data/ssh/authorized_keys").read_text()


def test_lan_host_refused(robot_in_netns):
    rig, ns = robot_in_netns
    before = machine(rig)
    lan = Client(rig.server.port, host=netlab.ROBOT_LAN)
    r = netlab.in_netns(ns["lan"], lambda: lan.post("/server/ssh_keys", json_body={"key": ED25519}))
    assert_error(r, 401, "unauthorized")
    assert netlab.in_netns(ns["lan"], lambda: lan.get("/health")).status == 200
    assert machine(rig) == before


@pytest.mark.parametrize("target", ["169.254.1.1", "192.168.77.1"])
def test_link_local_impostor_on_the_lan_refused(robot_in_netns, target):
    """A LAN host that gives itself 169.254.7.7 never completes a connection: the robot
    answers 169.254/16 only over the USB link."""
    rig, ns = robot_in_netns
    before = machine(rig)
    impostor = Client(rig.server.port, host=target, source=netlab.IMPOSTOR)

    def attack():
        try:
            return impostor.post("/server/ssh_keys", json_body={"key": ED25519}, timeout=3)
        except OSError as e:
            return e

    outcome = netlab.in_netns(ns["lan"], attack)
    assert isinstance(outcome, OSError) or outcome.status in (401, 403), outcome
    assert machine(rig) == before

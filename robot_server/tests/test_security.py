"""The robot-server attacks of issue 14 (``docs/security.md``, "Robot server"), each against
the real server over real HTTP and TCP.

Peers: loopback with ``trusted_interfaces = ["usb*"]`` stands for "anyone on the network"
(loopback is then not trusted); network namespaces joined by veth pairs give a real USB-side
peer and a LAN host; an unprivileged local process (a protocol run) is run as ``nobody``.
Every refused attack leaves the robot as it was: positions, lights, motors, protocols, runs.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
import uuid

import pytest

from conftest import BridgeClient, Robot, start_robot, stop_robot
from update_server import netlab
from update_server.tokens import TokenStore, tokens_path

PROTOCOL = b"""requirements = {"robotType": "OT-2", "apiLevel": "2.15"}

def run(protocol):
    protocol.comment("hello")
"""


def upload_body(content: bytes = PROTOCOL, name: str = "p.py") -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``files`` part, and its Content-Type."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: text/x-python\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def error_code(body) -> str:
    """Our ``error``, or the OT-2's ``errors[0].id`` (its JSON:API endpoints)."""
    return body["error"] if "error" in body else body["errors"][0]["id"]


def machine(robot) -> dict:
    """What a refused request must not change."""
    state = robot.emulator.state
    return {"position": dict(robot.service.driver.position), "homed": dict(robot.service.driver.homed),
            "engaged": dict(state.engaged), "lights": robot.gpio.lights_on(),
            "button": robot.gpio.button_light(), "protocols": robot.get("/protocols")[1]["data"],
            "runs": robot.get("/runs")[1]["data"], "commands": robot.get("/commands")[1]["data"],
            "settings": robot.get("/settings")[1], "halts": robot.gpio.halt_count}


@pytest.fixture(scope="module")
def lan(tmp_path_factory):
    """A robot whose loopback is *not* trusted: the test is a LAN host. ``lan.token`` is a
    paired client's token (issued through the token file, as pairing does)."""
    tmp = tmp_path_factory.mktemp("lan")
    r = start_robot(tmp, trusted_interfaces=["usb*"])
    r.wait_connected()
    r.tokens = TokenStore(tokens_path(tmp))
    r.token, r.token_record = r.tokens.issue("test client", "button")
    r.paired = {"Authorization": f"Bearer {r.token}"}
    yield r
    stop_robot(r)


CHANGES = [  # (method, path, body, error shape: "ot2" JSON:API, "legacy" or "ours")
    ("POST", "/robot/home", {}, "legacy"),
    ("POST", "/robot/move", {"axes": {"X": 100}}, "legacy"),
    ("POST", "/robot/lights", {"on": True}, "legacy"),
    ("POST", "/identify?seconds=1", None, "legacy"),
    ("POST", "/motors/disengage", {"axes": ["x"]}, "legacy"),
    ("POST", "/settings", {"id": "shortFixedTrash", "value": True}, "legacy"),
    ("POST", "/robot/stop", None, "ours"),
    ("POST", "/robot/resume", None, "ours"),
    ("POST", "/robot/sim/gpio", {"door_open": True}, "ours"),
    ("POST", "/commands?waitUntilComplete=true", {"data": {"commandType": "home", "params": {}}}, "ot2"),
    ("POST", "/runs", {"data": {}}, "ot2"),
    ("POST", "/runs/some-run/actions", {"data": {"actionType": "play"}}, "ot2"),
    ("POST", "/runs/some-run/commands", {"data": {"commandType": "home", "params": {}}}, "ot2"),
    ("POST", "/runs/some-run/labware_offsets", {"data": {}}, "ot2"),
    ("PATCH", "/runs/some-run", {"data": {"current": False}}, "ot2"),
    ("DELETE", "/runs/some-run", None, "ot2"),
    ("DELETE", "/protocols/some-protocol", None, "ot2"),
]


@pytest.mark.parametrize("method,path,body,shape", CHANGES)
def test_lan_host_without_token_changes_nothing(lan, method, path, body, shape):
    before = machine(lan)
    for headers in ({}, {"Authorization": "Bearer ot2_not-a-token"}, {"Authorization": "Basic cm9vdDo="}):
        status, reply = lan.request(method, path, body, headers=headers)
        assert status == 401, (status, reply)
        assert error_code(reply) == ("Unauthorized" if shape == "ot2" else "unauthorized")
        if shape == "ot2":   # the OT-2's error shape on its JSON:API endpoints
            assert set(reply["errors"][0]) >= {"id", "title", "detail"}
        elif shape == "legacy":
            assert set(reply) >= {"message", "errorCode"}
        else:
            assert set(reply) == {"error", "message"}
    assert machine(lan) == before


def test_unauthorised_answer_names_bearer(lan):
    conn = http.client.HTTPConnection("127.0.0.1", lan.port, timeout=10)
    conn.request("POST", "/robot/home", body=b"{}",
                 headers={"Content-Type": "application/json", "Opentrons-Version": "*"})
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    assert resp.status == 401 and resp.getheader("WWW-Authenticate") == 'Bearer realm="ot2"'
    assert resp.getheader("Opentrons-Version") == "4" and body["error"] == "unauthorized"


def test_lan_host_cannot_upload_a_protocol(lan):
    """Analysis runs the module body: an upload is code execution."""
    before = machine(lan)
    body, content_type = upload_body(b"import os\nos.system('touch /tmp/pwned')\n" + PROTOCOL)
    status, reply = lan.request("POST", "/protocols", raw=body, headers={"Content-Type": content_type})
    assert status == 401 and reply["errors"][0]["id"] == "Unauthorized"
    assert machine(lan) == before


def test_read_only_status_stays_open(lan):
    for path in ("/health", "/robot/positions", "/robot/lights", "/robot/door/status", "/motors/engaged",
                 "/protocols", "/runs", "/commands", "/settings", "/modules", "/instruments", "/openapi.json"):
        assert lan.get(path)[0] == 200, path


def test_paired_client_moves_uploads_and_runs(lan):
    assert lan.post("/robot/home", {}, headers=lan.paired)[0] == 200
    status, reply = lan.post("/robot/move", {"axes": {"X": 123}}, headers=lan.paired)
    assert status == 200 and reply["position"]["X"] == 123
    assert lan.post("/robot/lights", {"on": True}, headers=lan.paired)[0] == 200 and lan.gpio.lights_on()
    body, content_type = upload_body()
    status, reply = lan.request("POST", "/protocols", raw=body,
                                headers={"Content-Type": content_type, **lan.paired})
    assert status == 201, reply
    protocol_id = reply["data"]["id"]
    status, reply = lan.post("/runs", {"data": {"protocolId": protocol_id}}, headers=lan.paired)
    assert status == 201, reply
    run_id = reply["data"]["id"]
    status, reply = lan.post(f"/runs/{run_id}/actions", {"data": {"actionType": "stop"}}, headers=lan.paired)
    assert status == 201, reply
    lan.post("/robot/lights", {"on": False}, headers=lan.paired)


def test_revoked_token_refused(tmp_path):
    r = start_robot(tmp_path, trusted_interfaces=["usb*"])
    try:
        store = TokenStore(tokens_path(tmp_path))
        token, record = store.issue("lost laptop", "button")
        auth = {"Authorization": f"Bearer {token}"}
        assert r.post("/robot/lights", {"on": True}, headers=auth)[0] == 200
        assert store.revoke(record["id"])   # as `ot2 tokens revoke` does on the update server
        status, reply = r.post("/robot/lights", {"on": False}, headers=auth)
        assert status == 401 and "not valid" in reply["message"] and r.gpio.lights_on()
    finally:
        stop_robot(r)


def test_open_mode_opens_changes_but_not_cross_site(tmp_path):
    r = start_robot(tmp_path, trusted_interfaces=["usb*"], open_access=True)
    try:
        r.wait_connected()
        assert r.post("/robot/home", {})[0] == 200        # the OT-2's behaviour: no token
        assert r.post("/robot/lights", {"on": True})[0] == 200
        status, reply = r.post("/robot/lights", {"on": False}, headers={"Origin": "http://evil.example"})
        assert status == 403 and reply["error"] == "cross-origin" and r.gpio.lights_on()
        status, reply = r.request("POST", "/robot/lights", raw=b'{"on": false}', headers={"Content-Type": "text/plain"})
        assert status == 415 and r.gpio.lights_on()
    finally:
        stop_robot(r)


# ---------------------------------------------------------------------------------------
# a web page in a lab browser (the browser runs on a trusted machine: loopback here)


@pytest.mark.parametrize("headers", netlab.CROSS_SITE_HEADERS)
def test_cross_site_requests_refused(homed, headers):
    headers = {k: v.format(port=homed.port) for k, v in headers.items()}
    before = machine(homed)
    for method, path, raw in (("POST", "/robot/move", b'{"axes": {"X": 50}}'),
                              ("POST", "/robot/lights", b'{"on": true}'),
                              ("POST", "/pair", b'{"client": "evil page"}'),
                              ("POST", "/robot/home", b""),           # a form with no fields
                              ("POST", "/runs", b"")):
        status, reply = homed.request(method, path, raw=raw, headers=headers)
        assert status in (403, 415), (path, status, reply)
        assert error_code(reply) in ("cross-origin", "unsupported-media-type", "CrossOrigin", "UnsupportedMediaType")
    assert machine(homed) == before


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}])
def test_cross_site_upload_refused(homed, headers):
    """A page may post ``multipart/form-data`` without a pre-flight: its Origin gives it away."""
    before = machine(homed)
    body, content_type = upload_body()
    status, reply = homed.request("POST", "/protocols", raw=body, headers={**headers, "Content-Type": content_type})
    assert status == 403 and reply["errors"][0]["id"] == "CrossOrigin"
    assert machine(homed) == before


def test_same_origin_by_address_allowed(homed):
    port = homed.port
    status, _ = homed.post("/robot/lights", {"on": False}, headers={
        "Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"})
    assert status == 200


def test_no_cors_preflight_granted(homed):
    conn = http.client.HTTPConnection("127.0.0.1", homed.port, timeout=10)
    conn.request("OPTIONS", "/robot/move", headers={"Origin": "http://evil.example",
                                                    "Access-Control-Request-Method": "POST"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 405 and not any(k.lower().startswith("access-control") for k, _ in resp.getheaders())
    conn.close()


UNPRIVILEGED_POST = """
import json, sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[1], data=b'{"axes": {"X": 10}}', method="POST",
                             headers={"Content-Type": "application/json", "Opentrons-Version": "*"})
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code, json.loads(e.read())["error"])
"""


def test_unprivileged_local_process_is_not_trusted(homed):
    """A protocol runs as an unprivileged user on the robot: loopback does not make it
    someone at the robot."""
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root to run a process as nobody")
    before = machine(homed)
    out = subprocess.run(["/usr/bin/python3", "-c", UNPRIVILEGED_POST, f"{homed.server.url}/robot/move"],
                         user=65534, capture_output=True, text=True, timeout=30, cwd="/")
    assert out.stdout.split() == ["401", "unauthorized"], out
    assert machine(homed) == before
    assert homed.post("/robot/move", {"axes": {"X": 10}})[0] == 200   # root may


@pytest.mark.parametrize("who", ["stranger", "paired"])
def test_expect_continue_only_after_checks(lan, who):
    reply = netlab.ask_to_continue(lan.port, "/protocols", lan.token if who == "paired" else None,
                                   "Opentrons-Version: *\r\n", "multipart/form-data; boundary=x")
    assert not reply.startswith(b"HTTP/1.1 100"), reply[:80]
    assert reply.startswith(b"HTTP/1.1 413" if who == "paired" else b"HTTP/1.1 401"), reply[:80]


# ---------------------------------------------------------------------------------------
# the raw TCP bridge


def test_bridge_reads_open_changes_need_a_token(lan):
    before = machine(lan)
    c = BridgeClient(lan.bridge_port)
    try:
        assert c.call("health")["ok"] and c.call("positions")["ok"] and c.call("listRuns")["ok"]
        for command, params in (("move", {"axes": {"X": 60}}), ("home", {}), ("setLights", {"on": True}),
                                ("disengage", {"axes": ["x"]}), ("stop", {}), ("stopRun", {})):
            reply = c.call(command, params)
            assert not reply["ok"] and reply["error"] == "unauthorized", (command, reply)
        c.send({"id": 9, "type": "auth", "token": "ot2_not-a-token"})
        assert c.reply()["error"] == "unauthorized"
        assert machine(lan) == before
        c.send({"id": 10, "type": "auth", "token": lan.token})
        reply = c.reply()
        assert reply["ok"] and reply["result"] == {"authorised": True, "token_id": lan.token_record["id"]}
        assert c.call("setLights", {"on": True})["ok"] and lan.gpio.lights_on()
        assert c.call("setLights", {"on": False})["ok"]
    finally:
        c.close()


def test_bridge_revoked_token_refused(tmp_path):
    r = start_robot(tmp_path, trusted_interfaces=["usb*"])
    try:
        store = TokenStore(tokens_path(tmp_path))
        token, record = store.issue("bridge client", "button")
        store.revoke(record["id"])
        c = BridgeClient(r.bridge_port)
        c.send({"id": 1, "type": "auth", "token": token})
        assert c.reply()["error"] == "unauthorized"
        assert c.call("setLights", {"on": True})["error"] == "unauthorized" and not r.gpio.lights_on()
        c.close()
    finally:
        stop_robot(r)


def test_bridge_idle_clients_bounded(tmp_path):
    r = start_robot(tmp_path, bridge_max_clients=6, bridge_max_clients_per_peer=3)
    try:
        clients = [BridgeClient(r.bridge_port) for _ in range(3)]
        newest = BridgeClient(r.bridge_port)            # the peer's 4th: its oldest is closed
        while (msg := clients[0].recv()) is not None:     # events sent before, then the end
            assert msg["type"] == "event"
        assert newest.call("health")["ok"] and clients[1].call("health")["ok"]
        others = []
        for i in range(4):                              # other peers fill the server
            s = socket.create_connection(("127.0.0.1", r.bridge_port), source_address=(f"127.0.0.{2 + i}", 0))
            others.append(s)
            s.recv(65536)
        time.sleep(0.2)
        assert len(r.server.server.bridge.clients) <= 6
        for c in clients[1:] + [newest]:
            c.close()
        for s in others:
            s.close()
    finally:
        stop_robot(r)


# ---------------------------------------------------------------------------------------
# connection limits


@pytest.fixture
def many_fds():
    with netlab.many_fds():
        yield


def test_1100_idle_and_slowloris_connections_leave_health_answering(robot, many_fds):
    with netlab.flood(robot.port):
        started = time.monotonic()
        status, _ = robot.health()
        assert status == 200 and time.monotonic() - started < 5
        stats = netlab.settled(robot.server.server.access.guard, 1100)
        limit = robot.service.config.max_connections
        assert stats["open"] <= limit and stats["evicted"] + stats["refused"] >= 1100 - limit, stats
        assert robot.health()[0] == 200


def test_slow_head_and_idle_connection_closed(tmp_path):
    r = start_robot(tmp_path, header_timeout=1.0, idle_timeout=1.0)
    try:
        answer, slow_got, closed_after, idle_got = netlab.slow_and_idle(r.port)
        assert answer.startswith(b"HTTP/1.1 200")
        assert slow_got == b"" and closed_after < 4  # closed without an answer
        assert b"HTTP/1.1" not in idle_got          # closed, nothing else sent
    finally:
        stop_robot(r)


# ---------------------------------------------------------------------------------------
# network namespaces: the USB link and the LAN


@pytest.fixture
def netlab_names():
    with netlab.netlab() as names:
        yield names


@pytest.fixture
def robot_in_netns(tmp_path, netlab_names):
    """The robot server (default ``trusted_interfaces``: lo, usb*) on 0.0.0.0 of the robot
    namespace; its event loop thread is started there, so it sees that namespace's links."""
    r = netlab.in_netns(netlab_names["robot"], lambda: start_robot(tmp_path, host="0.0.0.0"))
    yield r, netlab_names
    stop_robot(r)


def remote(robot, host: str) -> Robot:
    """The test harness' HTTP helpers for ``robot``, aimed at ``host``."""
    return Robot(robot.server, robot.emulator, robot.pty, robot.gpio, host)


def test_usb_link_is_trusted_lan_is_not(robot_in_netns):
    robot, ns = robot_in_netns
    usb, lan = remote(robot, netlab.ROBOT_USB), remote(robot, netlab.ROBOT_LAN)
    status, reply = netlab.in_netns(ns["lan"], lambda: lan.post("/robot/lights", {"on": True}))
    assert status == 401 and reply["error"] == "unauthorized" and not robot.gpio.lights_on()
    assert netlab.in_netns(ns["lan"], lambda: lan.get("/robot/lights"))[0] == 200
    status, reply = netlab.in_netns(ns["usb"], lambda: usb.post("/robot/lights", {"on": True}))
    assert status == 200 and robot.gpio.lights_on()


def test_lan_bridge_client_needs_a_token(robot_in_netns):
    robot, ns = robot_in_netns

    def bridge_call(host):
        c = BridgeClient(robot.bridge_port, host=host)
        try:
            return c.call("setLights", {"on": True})
        finally:
            c.close()

    assert netlab.in_netns(ns["lan"], lambda: bridge_call(netlab.ROBOT_LAN))["error"] == "unauthorized"
    assert not robot.gpio.lights_on()
    assert netlab.in_netns(ns["usb"], lambda: bridge_call(netlab.ROBOT_USB))["ok"] and robot.gpio.lights_on()


@pytest.mark.parametrize("target", [netlab.ROBOT_USB, netlab.ROBOT_LAN])
def test_link_local_impostor_on_the_lan_refused(robot_in_netns, target):
    """A LAN host that gives itself a link-local address never completes a connection over
    the USB link's subnet, and is a stranger on the LAN's."""
    robot, ns = robot_in_netns

    def attack():
        try:
            conn = http.client.HTTPConnection(target, robot.port, timeout=3, source_address=(netlab.IMPOSTOR, 0))
            conn.request("POST", "/robot/lights", body=b'{"on": true}', headers={
                "Content-Type": "application/json", "Opentrons-Version": "*"})
            return conn.getresponse().status
        except OSError as e:
            return e

    outcome = netlab.in_netns(ns["lan"], attack)
    assert isinstance(outcome, OSError) or outcome == 401, outcome
    assert not robot.gpio.lights_on()

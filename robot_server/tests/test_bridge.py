"""The raw TCP JSON bridge over real loopback TCP."""
import json
import socket
import time

import pytest

from conftest import BridgeClient


def test_handshake_and_commands(homed):
    c = BridgeClient(homed.bridge_port)
    try:
        hs = c.handshake
        assert hs["type"] == "handshake" and hs["client_id"] and "move" in hs["commands"]
        r = c.call("health", req_id="a")
        assert r["ok"] and r["id"] == "a" and r["result"]["robot_model"] == "OT-2 Standard"
        r = c.call("move", {"axes": {"X": 200}}, req_id=2)
        assert r["ok"] and r["result"]["position"]["X"] == 200
        r = c.call("positions")
        assert r["result"]["position"]["X"] == 200
    finally:
        c.close()


def test_same_errors_as_http(homed):
    c = BridgeClient(homed.bridge_port)
    try:
        assert c.call("move", {"axes": {"X": 1000}})["error"] == "soft-limit"
        assert c.call("move", {"axes": {"W": 1}})["error"] == "unknown-axis"
        assert c.call("move", {"axes": {"X": 1}, "speed": -3})["error"] == "invalid-speed"
        r = c.call("teleport")
        assert not r["ok"] and r["error"] == "unknown-command"
        assert c.call("health", params=[1])["error"] == "invalid-request"
    finally:
        c.close()


def test_original_field_names_and_bare_newline(homed):
    c = BridgeClient(homed.bridge_port)
    try:
        c.send({"id": 7, "type": "command", "name": "setLights", "param": {"on": True}}, term=b"\n")
        r = c.reply()
        assert r["ok"] and r["id"] == 7 and r["result"]["on"] is True
        c.send({"id": 8, "command": "getLights"}, term=b"\r\n")
        assert c.reply()["result"]["on"] is True
    finally:
        c.close()


def test_split_and_packed_messages(homed):
    c = BridgeClient(homed.bridge_port)
    try:
        data = json.dumps({"id": 1, "command": "door"}).encode() + b"\n\r"
        for i in range(len(data)):               # one byte at a time
            c.send_raw(data[i:i + 1])
        assert c.reply()["id"] == 1
        packed = b"".join(json.dumps({"id": i, "command": "health"}).encode() + b"\n\r" for i in range(10))
        c.send_raw(packed)
        assert [c.reply()["id"] for _ in range(10)] == list(range(10))   # in order
    finally:
        c.close()


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2", b"\xff\xfe\xfd", b"42", b'"str"', b"null",
                                 b"[" * 20000])
def test_malformed_json_keeps_connection(homed, raw):
    c = BridgeClient(homed.bridge_port)
    try:
        c.send_raw(raw + b"\n\r")
        r = c.reply()
        assert r["ok"] is False and r["error"] in ("invalid-json", "invalid-request")
        assert c.call("health")["ok"]            # still connected
    finally:
        c.close()


def test_oversize_message_closes(homed):
    c = BridgeClient(homed.bridge_port)
    try:
        c.send_raw(b'{"command": "health", "pad": "' + b"x" * 70000)   # no terminator at all
        r = c.reply()
        assert r["error"] == "message-too-large"
        assert c.recv() is None                  # closed by the server
    finally:
        c.close()
    c = BridgeClient(homed.bridge_port)          # terminated but too long
    try:
        c.send_raw(b'{"command": "health", "pad": "' + b"x" * 66000 + b'"}\n\r')
        assert c.reply()["error"] == "message-too-large"
        assert c.recv() is None
    finally:
        c.close()
    c = BridgeClient(homed.bridge_port)          # server still serves others
    assert c.call("health")["ok"]
    c.close()


def test_clients_get_own_replies_and_broadcast_events(homed):
    clients = [BridgeClient(homed.bridge_port) for _ in range(3)]
    try:
        ids = {c.handshake["client_id"] for c in clients}
        assert len(ids) == 3
        for i, c in enumerate(clients):
            c.send({"id": f"req-{i}", "command": "move", "params": {"axes": {"Y": 100 + i}}})
        for i, c in enumerate(clients):
            r = c.reply()
            assert r["id"] == f"req-{i}"
        # every client sees every position event (3 moves), nobody sees others' replies
        for c in clients:
            seen = list(c.events)
            c.sock.settimeout(0.5)
            try:
                while True:
                    msg = c.recv()
                    if msg is None:
                        break
                    assert msg["type"] == "event", msg
                    seen.append(msg)
            except socket.timeout:
                pass
            ys = [m["data"]["position"]["Y"] for m in seen if m["event"] == "position"]
            assert {100, 101, 102} <= set(ys)
    finally:
        for c in clients:
            c.close()


def test_client_vanishing_mid_reply(homed):
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", homed.bridge_port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.recv(65536)     # the handshake: the server has seen who connected (root on loopback)
        s.sendall(b'{"id": 1, "command": "move", "params": {"axes": {"X": 150}}}\n\r' * 20)
        s.close()                                # RST while replies are being written
    time.sleep(0.2)
    c = BridgeClient(homed.bridge_port)
    try:
        r = c.call("positions")
        assert r["ok"] and r["result"]["position"]["X"] == 150
        assert len(homed.server.server.bridge.clients) == 1
    finally:
        c.close()


def test_slow_reader_does_not_block_others(homed):
    lazy = socket.create_connection(("127.0.0.1", homed.bridge_port))
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        lazy.sendall(b'{"command": "health"}\n\r' * 200)   # never reads the replies
        c = BridgeClient(homed.bridge_port)
        t0 = time.monotonic()
        for _ in range(20):
            assert c.call("health")["ok"]
        assert time.monotonic() - t0 < 2
        c.close()
    finally:
        lazy.close()

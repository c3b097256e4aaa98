"""Shared fixtures: the emulator on a real pty, a driver on it, a server on loopback."""
from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time

import pytest

from robot_server.config import Config
from robot_server.driver import MotorDriver
from robot_server.emulator import PtyServer, SmoothieEmulator
from robot_server.gpio import SimulatedGPIO
from robot_server.server import ThreadedServer

ACK_TIMEOUT = 0.5


@pytest.fixture
def emulator():
    return SmoothieEmulator()


@pytest.fixture
def pty(emulator):
    srv = PtyServer(emulator).start()
    yield srv
    srv.close()


@pytest.fixture
def driver(pty):
    d = MotorDriver(pty.slave_path, ack_timeout=ACK_TIMEOUT)
    d.connect()
    yield d
    d.disconnect()


def make_config(tmp_path, serial_port: str, **kw) -> Config:
    base = dict(serial_port=serial_port, gpio_backend="sim", reconnect_interval=0.05,
                ack_timeout=ACK_TIMEOUT, lock_file=str(tmp_path / "lock"), data_dir=str(tmp_path),
                analysis_prewarm=False)
    base.update(kw)
    return Config(**base).validate()


#: Sent by default, as every OT-2 HTTP API client does (the OT-2's endpoints require it).
VERSION_HEADER = {"Opentrons-Version": "*"}


class Robot:
    """A running server + its emulator, with small HTTP helpers. Requests carry
    ``Opentrons-Version: *`` unless ``headers`` maps it to None."""

    def __init__(self, server: ThreadedServer, emulator: SmoothieEmulator | None, pty: PtyServer | None,
                 gpio: SimulatedGPIO, host: str = "127.0.0.1") -> None:
        self.server = server
        self.host = host
        self.emulator = emulator
        self.pty = pty
        self.gpio = gpio
        self.port = server.server.http_port
        self.bridge_port = server.bridge_port
        self.service = server.server.service

    def request(self, method: str, path: str, body=None, raw: bytes | None = None,
                headers: dict | None = None, timeout: float = 10):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            hdrs.update(VERSION_HEADER)
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers={k: v for k, v in hdrs.items() if v is not None})
            resp = conn.getresponse()
            payload = resp.read()
            try:
                parsed = json.loads(payload) if payload else None
            except ValueError:
                parsed = payload
            return resp.status, parsed
        finally:
            conn.close()

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def health(self) -> tuple[int, dict]:
        """``GET /health`` without the version header: the OT-2's fields and ours."""
        return self.get("/health", headers={"Opentrons-Version": None})

    def wait_connected(self, connected: bool = True, timeout: float = 30.0) -> dict:
        """The health once the motor board's connection is ``connected``. The deadline is
        generous: on a loaded machine the server's start alone took 5 s in CI."""
        deadline = time.monotonic() + timeout
        while True:
            status, health = self.health()
            assert status == 200
            if health["motor_board"]["connected"] == connected:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"board connected != {connected}: {health}")
            time.sleep(0.02)


def start_robot(tmp_path, emulator: SmoothieEmulator | None = None, serial_port: str | None = None,
                host: str = "127.0.0.1", port: int = 0, **cfg) -> Robot:
    pty = None
    if serial_port is None:
        emulator = emulator or SmoothieEmulator()
        pty = PtyServer(emulator).start()
        serial_port = pty.slave_path
    gpio = SimulatedGPIO()
    if emulator is not None:
        gpio.reset_target = emulator.reset
        gpio.halt_target = emulator.halt
    server = ThreadedServer(make_config(tmp_path, serial_port, **cfg), gpio).start(host, port)
    return Robot(server, emulator, pty, gpio, host)


def stop_robot(robot: Robot) -> None:
    robot.server.stop()
    if robot.pty is not None:
        robot.pty.close()


@pytest.fixture
def robot(tmp_path):
    r = start_robot(tmp_path)
    r.wait_connected()
    yield r
    stop_robot(r)


@pytest.fixture(scope="module")
def shared_robot(tmp_path_factory):
    r = start_robot(tmp_path_factory.mktemp("robot"))
    r.wait_connected()
    yield r
    stop_robot(r)


@pytest.fixture
def homed(shared_robot):
    """The module's robot, door closed, all axes homed."""
    shared_robot.gpio.set_door(False)
    status, body = shared_robot.post("/robot/home", {})
    assert status == 200, body
    return shared_robot


class BridgeClient:
    """A raw TCP bridge client speaking ``\\n\\r``-terminated JSON."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.events: list[dict] = []
        self.handshake = self.recv()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg: dict, term: bytes = b"\n\r") -> None:
        self.sock.sendall(json.dumps(msg).encode() + term)

    def recv(self) -> dict | None:
        while b"\n\r" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\n\r", 1)
        return json.loads(msg)

    def reply(self) -> dict | None:
        """Next reply; events received meanwhile are kept in ``events``."""
        while True:
            msg = self.recv()
            if msg is None or msg.get("type") == "reply":
                return msg
            self.events.append(msg)

    def call(self, command: str, params=None, req_id=1) -> dict:
        self.send({"id": req_id, "command": command, "params": params or {}})
        return self.reply()

    def close(self) -> None:
        self.sock.close()


PYTHON = sys.executable
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
#: cwd for ``python -m robot_server...`` subprocesses: from the repository root the project
#: directory ``robot_server/`` would shadow the package under setuptools' strict editable finder.
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

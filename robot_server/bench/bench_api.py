"""Benchmark: HTTP move/position round-trip latency and raw-TCP bridge throughput.

By default it starts ``smoothie-emulator --pty`` and ``robot-server`` (simulated GPIO) as
separate processes on loopback, so the client, the server and the "board" do not share
an interpreter. ``--url``/``--bridge`` measure an already running server instead (e.g. the
QEMU image; its board must be homeable).

    python robot_server/bench/bench_api.py [--moves 500] [--seconds 2]     (make bench)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


class Http:
    def __init__(self, url: str) -> None:
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if path != "/health":      # the OT-2 API's version header; /health without it has our fields
            headers["Opentrons-Version"] = "*"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        payload = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload}")
        return payload


class BridgeConn:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self._recv()    # handshake

    def _recv(self) -> dict:
        while b"\n\r" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("bridge closed")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\n\r", 1)
        return json.loads(msg)

    def call(self, command: str, params: dict | None = None) -> dict:
        self.sock.sendall(json.dumps({"id": 1, "command": command, "params": params or {}}).encode() + b"\n\r")
        while True:
            msg = self._recv()
            if msg.get("type") == "reply":
                if not msg["ok"]:
                    raise RuntimeError(f"bridge {command}: {msg}")
                return msg

    def close(self) -> None:
        self.sock.close()


def bench_http(url: str, moves: int) -> list[tuple[str, list[float]]]:
    c = Http(url)
    c.call("POST", "/robot/home", {})
    for i in range(20):   # warm-up
        c.call("POST", "/robot/move", {"axes": {"X": 100 + i}})
    mv, pos, both = [], [], []
    for i in range(moves):
        t0 = time.perf_counter()
        c.call("POST", "/robot/move", {"target": "mount", "mount": "right",
                                       "point": [100 + (i % 50), 120 + (i % 30), 150], "speed": 400})
        t1 = time.perf_counter()
        p = c.call("GET", "/robot/positions")
        t2 = time.perf_counter()
        assert p["mounts"]["right"][0] == 100 + (i % 50)
        mv.append(t1 - t0)
        pos.append(t2 - t1)
        both.append(t2 - t0)
    return [("HTTP POST /robot/move", mv), ("HTTP GET /robot/positions", pos),
            ("HTTP move + positions", both)]


def bench_bridge(host: str, port: int, clients: int, seconds: float, command: str,
                 params_for) -> tuple[int, float]:
    conns = [BridgeConn(host, port) for _ in range(clients)]
    counts = [0] * clients
    stop = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            i = 0
            while time.perf_counter() < stop:
                conns[k].call(command, params_for(k, i))
                i += 1
            counts[k] = i
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    total = sum(counts)
    return total, total / elapsed


def start_local(tmp: Path, extra_config: str = "") -> tuple[str, int, str, list[subprocess.Popen]]:
    """Start ``smoothie-emulator --pty`` and a ``robot-server`` owning it (simulated GPIO)
    in ``tmp`` (``extra_config``: more TOML lines); returns (HTTP URL, bridge port, G-code
    channel URL, the processes)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # cwd=tmp: from the repository root the project directory would shadow the package
    emu = subprocess.Popen([sys.executable, "-m", "robot_server.emulator", "--pty"], cwd=tmp,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    tty = emu.stdout.readline().strip()
    cfg = tmp / "robot-server.toml"
    cfg.write_text(f'listen = "127.0.0.1"\nport = 0\nbridge_port = 0\nchannel_port = 0\nserial_port = "{tty}"\n'
                   f'gpio_backend = "sim"\nlock_file = "{tmp}/lock"\ndata_dir = "{tmp}"\n'
                   'reconnect_interval = 0.1\n' + extra_config)
    srv = subprocess.Popen([sys.executable, "-m", "robot_server", "--config", str(cfg)], cwd=tmp,
                           stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    line = ""
    deadline = time.monotonic() + 30
    while "HTTP on" not in line:
        line = srv.stderr.readline()
        if not line and srv.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("robot-server did not start")
    threading.Thread(target=lambda: [None for _ in srv.stderr], daemon=True).start()   # drain logs
    m = re.search(r"HTTP on [\d.]+:(\d+), bridge on [\d.]+:(\d+).*G-code channel (\S+)", line)
    url = f"http://127.0.0.1:{m.group(1)}"
    deadline = time.monotonic() + 10
    while not Http(url).call("GET", "/health")["motor_board"]["connected"]:
        if time.monotonic() > deadline:
            raise RuntimeError("robot-server did not connect to the emulator")
        time.sleep(0.05)
    return url, int(m.group(2)), m.group(3), [srv, emu]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="HTTP base URL of a running robot server")
    p.add_argument("--bridge", metavar="HOST:PORT", help="bridge of a running robot server")
    p.add_argument("--moves", type=int, default=500, help="HTTP move+positions iterations")
    p.add_argument("--seconds", type=float, default=2.0, help="duration of each bridge run")
    args = p.parse_args(argv)

    procs: list[subprocess.Popen] = []
    tmp = tempfile.TemporaryDirectory(prefix="ot2-bench-")
    try:
        if args.url:
            url = args.url
            host, _, port = (args.bridge or f"{urllib.parse.urlparse(url).hostname}:7887").rpartition(":")
            bhost, bport = host, int(port)
        else:
            url, bport, _, procs = start_local(Path(tmp.name))
            bhost = "127.0.0.1"
        rows = []
        for name, samples in bench_http(url, args.moves):
            rows.append((name, f"{statistics.median(samples) * 1e3:.2f} ms",
                         f"{_pct(samples, 0.99) * 1e3:.2f} ms", f"n={len(samples)}"))
        bridge_rows = []
        for command, params_for in (
                ("positions", lambda k, i: {}),
                ("move", lambda k, i: {"axes": {"X": 100 + (i % 50) + k, "Y": 100 + (i % 20)}})):
            for clients in (1, 8):
                total, rate = bench_bridge(bhost, bport, clients, args.seconds, command, params_for)
                bridge_rows.append((f"bridge '{command}', {clients} client{'s' if clients > 1 else ''}",
                                    f"{rate:,.0f} cmd/s", f"{total} cmds"))
        print()
        print(f"{'HTTP round trip (emulator on a pty)':<36} {'median':>10} {'p99':>10} {'':>8}")
        for r in rows:
            print(f"{r[0]:<36} {r[1]:>10} {r[2]:>10} {r[3]:>8}")
        print()
        print(f"{'raw TCP bridge throughput':<36} {'rate':>14} {'total':>12}")
        for r in bridge_rows:
            print(f"{r[0]:<36} {r[1]:>14} {r[2]:>12}")
        print()
        print("targets: HTTP move median < 5 ms; bridge >= 2,000 commands/s")
    finally:
        stop_all(procs)
        tmp.cleanup()
    return 0


def stop_all(procs: list[subprocess.Popen]) -> None:
    """Terminate the processes (kill those that do not exit within 10 s)."""
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())

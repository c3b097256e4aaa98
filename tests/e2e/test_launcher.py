"""The harness never takes another program's answer for the guest's, and reports QEMU's death."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

import ot2qemu


class _Impostor(http.server.BaseHTTPRequestHandler):
    """Answers /health like an update server that is not our guest."""

    def do_GET(self):
        body = json.dumps({"name": "impostor", "bootId": "x", "serialNumber": "not-the-guest"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_guest_on_a_taken_port_is_not_declared_up(images, tmp_path):
    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    disk = ot2qemu.copy_disk(images["v1"], tmp_path)
    ports = {name: ot2qemu.free_port() for name in ("robot", "bridge", "ssh", "uart")}
    ports["update"] = impostor.server_address[1]
    guest = ot2qemu.Guest(disk, tmp_path, ports)
    try:
        guest.boot()
        with pytest.raises(RuntimeError, match="QEMU stopped"):
            guest.wait_healthy(timeout=120)
        assert "Could not set up host forwarding rule" in guest.qemu_log_tail()
    finally:
        guest.stop()
        impostor.shutdown()


def test_make_run_exits_nonzero_with_qemu_log_when_qemu_dies(images):
    ports = {name: ot2qemu.free_port() for name in ("update", "robot", "bridge", "ssh", "uart")}
    proc = subprocess.run(
        [sys.executable, str(ot2qemu.ROOT / "ci" / "run-qemu.py"), "--fresh", "--image", str(images["v1"]),
         *[arg for name in ("update", "robot", "bridge", "ssh", "uart") for arg in (f"--{name}-port", str(ports[name]))]],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OT2_QEMU_MEM="not-a-size"))
    assert proc.returncode == 1
    assert "QEMU stopped" in proc.stderr
    assert "not-a-size" in proc.stderr or "size" in proc.stderr.lower(), proc.stderr

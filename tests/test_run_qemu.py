"""`make run`'s launcher (ci/run-qemu.py) refuses a taken port before building or booting anything."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ci"))
import ot2qemu  # noqa: E402


def _qemu_processes_using(port: int) -> list[str]:
    """Command lines of running QEMU processes that mention `port`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv)
        if "qemu-system" in text and f":{port}-" in text:
            found.append(text)
    return found


def test_taken_port_is_named_with_its_holder_and_nothing_starts(tmp_path):
    ports = {name: ot2qemu.free_port() for name in ("update", "bridge", "ssh", "uart")}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, str(ROOT / "ci" / "run-qemu.py"), "--robot-port", str(taken),
             "--update-port", str(ports["update"]), "--bridge-port", str(ports["bridge"]),
             "--ssh-port", str(ports["ssh"]), "--uart-port", str(ports["uart"])],
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, OT2_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"robot port {taken} on 127.0.0.1 is taken by pid {os.getpid()}" in lines[0]
    assert proc.stdout == ""
    # Refused before anything was built or booted.
    assert not (tmp_path / "cache").exists()
    assert _qemu_processes_using(taken) == []


def test_free_ports_pass_the_check():
    ot2qemu.check_ports_free({"robot": ot2qemu.free_port(), "update": ot2qemu.free_port()})


def test_holder_of_a_listening_port_is_found():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert ot2qemu.port_holder(port) == f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"

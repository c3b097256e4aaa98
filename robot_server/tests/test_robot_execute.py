"""``robot-execute`` reaches the motor board only through a channel it can connect to."""
import os
import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
PROTOCOL = 'metadata = {"apiLevel": "2.15"}\n\ndef run(protocol):\n    protocol.home()\n'


def test_refuses_clearly_when_the_channel_is_not_reachable(tmp_path):
    with socket.socket() as s:                      # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"socket://127.0.0.1:{s.getsockname()[1]}"
    protocol = tmp_path / "home.py"
    protocol.write_text(PROTOCOL)
    done = subprocess.run([str(BIN / "robot-execute"), str(protocol)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path), OT_SMOOTHIE_EMULATOR_URI=uri))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"robot-execute: the motor board channel {uri} is not reachable")
    assert "robot server running?" in done.stderr

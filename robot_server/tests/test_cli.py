"""Command line, config and the single-owner rule, with real processes."""
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ENV, PROJECT_DIR, PYTHON
from robot_server.config import ConfigError, from_dict, load
from robot_server.owner import HardwareLock, OwnerError


def test_config_defaults_and_file(tmp_path):
    cfg = load(str(tmp_path / "absent.toml"))
    assert (cfg.port, cfg.bridge_port, cfg.serial_port, cfg.baudrate) == (31950, 7887, "/dev/ttyAMA0", 115200)
    assert (cfg.gpio_backend, cfg.data_dir, cfg.lock_file, cfg.ack_timeout) == ("rpi", "/data", "/run/robot-server/robot-server.lock", 5.0)
    p = tmp_path / "rs.toml"
    p.write_text('serial_port = "/dev/ttyS1"\ngpio_backend = "sim"\nack_timeout = 2\n')
    cfg = load(str(p), required=True)
    assert cfg.serial_port == "/dev/ttyS1" and cfg.gpio_backend == "sim" and cfg.ack_timeout == 2.0


@pytest.mark.parametrize("data", [{"prot": 1}, {"port": "80"}, {"port": 70000}, {"gpio_backend": "gpiod"},
                                  {"ack_timeout": 0}, {"ack_timeout": True}, {"left_mount_offset": [1, 2]},
                                  {"baudrate": -1}])
def test_config_errors(data):
    with pytest.raises(ConfigError):
        from_dict(data)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(str(tmp_path / "nope.toml"), required=True)
    bad = tmp_path / "bad.toml"
    bad.write_text("port = ")
    with pytest.raises(ConfigError):
        load(str(bad))


def test_cli_config_error_exit_code(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('gpio_backend = "magic"\n')
    r = subprocess.run([PYTHON, "-m", "robot_server", "--config", str(bad)], capture_output=True,
                       text=True, env=ENV, cwd=PROJECT_DIR, timeout=20)
    assert r.returncode == 2 and "gpio_backend" in r.stderr


def test_lock_names_holder(tmp_path):
    lock = tmp_path / "x.lock"
    with HardwareLock(str(lock), "robot-server"):
        with pytest.raises(OwnerError) as exc:
            HardwareLock(str(lock), "robot-execute").acquire()
        assert f"pid {os.getpid()}" in str(exc.value) and "robot-server" in str(exc.value)
    HardwareLock(str(lock)).acquire().release()        # free again


def _start_server(tmp_path: Path, serial_port: str, name: str) -> subprocess.Popen:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'port = 0\nbridge_port = 0\nchannel_port = 0\nlisten = "127.0.0.1"\nserial_port = "{serial_port}"\n'
                   f'gpio_backend = "sim"\nlock_file = "{tmp_path}/robot.lock"\ndata_dir = "{tmp_path}"\n'
                   'ack_timeout = 0.5\nreconnect_interval = 0.1\n')
    exe = Path(PYTHON).with_name("robot-server")
    cmd = [str(exe)] if exe.exists() else [PYTHON, "-m", "robot_server"]
    return subprocess.Popen(cmd + ["--config", str(cfg)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=ENV, cwd=PROJECT_DIR)


def test_second_server_refused_naming_holder(tmp_path, pty):
    first = _start_server(tmp_path, pty.slave_path, "first")
    try:
        line = ""
        deadline = time.monotonic() + 20
        while "HTTP on" not in line and time.monotonic() < deadline:
            line = first.stderr.readline()
        port = int(re.search(r"HTTP on [\d.]+:(\d+)", line).group(1))
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as resp:
                health = json.load(resp)
            if health["motor_board"]["connected"] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert health["motor_board"]["connected"] is True
        second = _start_server(tmp_path, pty.slave_path, "second")
        _, err = second.communicate(timeout=20)
        assert second.returncode == 1
        assert f"pid {first.pid}" in err and "robot-server" in err and "robot.lock" in err
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0
    assert not (tmp_path / "robot.lock").read_text()     # holder info cleared on exit
    assert (tmp_path / "robot-server").is_dir()         # state dir created under data_dir


def test_help():
    r = subprocess.run([PYTHON, "-m", "robot_server", "--help"], capture_output=True, text=True, env=ENV, cwd=PROJECT_DIR, timeout=20)
    assert r.returncode == 0 and "--config" in r.stdout


def test_rpi_backend_off_the_pi(tmp_path):
    from robot_server.gpio import RPiGPIO
    try:
        import gpiod  # noqa: F401
        pytest.skip("libgpiod's bindings are here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="gpiod"):
        RPiGPIO().setup()
    cfg = tmp_path / "rpi.toml"
    cfg.write_text(f'port = 0\nbridge_port = 0\nchannel_port = 0\nlisten = "127.0.0.1"\ngpio_backend = "rpi"\n'
                   f'lock_file = "{tmp_path}/l"\ndata_dir = "{tmp_path}"\nserial_port = "/dev/nonexistent"\n')
    r = subprocess.run([PYTHON, "-m", "robot_server", "--config", str(cfg)], capture_output=True, text=True,
                       env=ENV, cwd=PROJECT_DIR, timeout=20)
    assert r.returncode == 1 and "gpiod" in r.stderr

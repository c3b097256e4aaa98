"""``robot-execute`` reaches the motor board only through a channel it can connect to."""
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import start_robot, stop_robot

BIN = Path(sys.executable).parent
PROTOCOL = 'metadata = {"apiLevel": "2.15"}\n\ndef run(protocol):\n    protocol.home()\n    protocol.comment("homed")\n'


def test_refuses_clearly_when_the_channel_is_not_reachable(tmp_path):
    with socket.socket() as s:                      # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        uri = f"socket://127.0.0.1:{s.getsockname()[1]}"
    protocol = tmp_path / "home.py"
    protocol.write_text(PROTOCOL)
    done = subprocess.run([str(BIN / "robot-execute"), str(protocol)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path), OT_SMOOTHIE_EMULATOR_URI=uri))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith(f"robot-execute: the motor board channel {uri} is not reachable")
    assert done.stderr.splitlines()[-1].endswith("is the robot server running?")


def test_runs_through_the_robot_servers_channel(tmp_path):
    """No OT_SMOOTHIE_EMULATOR_URI: robot-execute takes the channel port from the robot
    server's config and opentrons drives the board through the server's lease. An
    inherited RUNNING_ON_PI is dropped (with it opentrons would take the GPIO lines)."""
    robot = start_robot(tmp_path / "srv")
    try:
        robot.wait_connected()
        config = tmp_path / "robot-server.toml"
        config.write_text(f"channel_port = {robot.service.channel.port}\n")
        protocol = tmp_path / "home.py"
        protocol.write_text(PROTOCOL)
        env = {k: v for k, v in os.environ.items() if k != "OT_SMOOTHIE_EMULATOR_URI"}
        env.update(RUNNING_ON_PI="1", HOME=str(tmp_path))
        start = len(robot.emulator.log)
        done = subprocess.run([str(BIN / "robot-execute"), "--config", str(config), str(protocol)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.splitlines()[-1] == " homed"                       # opentrons_execute's run log
        # opentrons did not take itself for the OT-2 (IS_ROBOT: settings in /data, real GPIO)
        assert f"{tmp_path}/.opentrons/robot_settings.json" in done.stdout
        assert "/data/robot_settings.json" not in done.stdout
        through_channel = robot.emulator.log[start:]
        assert any(line.startswith("G28.2") for line in through_channel)
        assert "M371 L" in through_channel and "M371 R" in through_channel     # pipettes read from the board
    finally:
        stop_robot(robot)


def test_refuses_clearly_while_another_client_holds_the_channel(tmp_path):
    robot = start_robot(tmp_path / "srv")
    try:
        robot.wait_connected()
        holder = socket.create_connection(("127.0.0.1", robot.service.channel.port))
        protocol = tmp_path / "home.py"
        protocol.write_text(PROTOCOL)
        uri = robot.service.channel.url
        done = subprocess.run([str(BIN / "robot-execute"), str(protocol)], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path, env=dict(os.environ, HOME=str(tmp_path), OT_SMOOTHIE_EMULATOR_URI=uri))
        holder.close()
        assert done.returncode == 2, done.stderr[-2000:]
        refusal = done.stderr.splitlines()[-1]
        assert refusal.startswith(f"robot-execute: the motor board channel {uri} refused this client: Error: ")
        assert "leased" in refusal
    finally:
        stop_robot(robot)

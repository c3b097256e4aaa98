"""The system image end to end, on one emulated robot, scenario after scenario.

Boot (issue: system image): both servers healthy, read-only root, /data writable and
persistent, SSH with a key added through the API, the robot name as hostname after a
reboot, homing the emulated motor board over the guest's UART.
OTA (issue: end to end in QEMU): signed update to the other slot and back to health,
rejected bundles, power cuts mid-install, a corrupted bootloader environment, and the
automatic rollback of an update that never becomes healthy.

The scenarios depend on each other's end state (which slot holds what), so they run in
file order on one guest; each adds a row to the table printed at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import time
from pathlib import Path

import pytest

import ot2qemu
from conftest import (BOARD, BOOT_ENV, BOOT_ENV_BACKUP, BOOT_ENV_LIST, COMPATIBLE, DISK, SLOT_DEVICES, VERSION_1,
                      VERSION_2, VERSION_BAD, figure, record)

NAME = "E2E Robot-1"
MARKER = "/data/user/e2e-marker"
MARKER_TEXT = "written before any update"
HOMED = {"X": 418.0, "Y": 353.0, "Z": 218.0, "A": 218.0, "B": 19.0, "C": 19.0}

pytestmark = pytest.mark.timeout(1800)

# The Pi's emulated USB network carries about 0.2 MB/s (README), ten minutes a bundle: there
# the bundles are put on /data with the robot off, as a PC writes them to its card, and
# installed on the robot with the update server's command line, as from a USB drive.
BUNDLES_ON_DATA = BOARD == "ot2"
STAGED = "e2e-bundles"


def data_intact(guest: ot2qemu.Guest) -> bool:
    """The marker file, the SSH key (the login itself) and the robot name all survived."""
    marker = guest.ssh(f"cat {MARKER}", check=False)
    name = guest.request("update", "GET", "/server/name").get("name")
    return marker.returncode == 0 and marker.stdout.strip() == MARKER_TEXT and name == NAME


def booted(guest: ot2qemu.Guest) -> dict:
    health = guest.health()
    assert health is not None, "update server not answering"
    return health


def cancel_session(guest: ot2qemu.Guest) -> None:
    try:
        guest.request("update", "POST", "/server/update/cancel")
    except ot2qemu.HTTPError:
        pass  # no session running


def test_cold_boot_both_servers_healthy(guest, images):
    for name, directory in images.items():
        figure(f"image {name}: {DISK} (apparent) / rootfs.squashfs",
               f"{(directory / DISK).stat().st_size / 2**20:.0f} MiB / "
               f"{(directory / 'rootfs.squashfs').stat().st_size / 2**20:.1f} MiB")
    started = time.monotonic()
    guest.boot()
    health = guest.wait_healthy(timeout=600)
    seconds = time.monotonic() - started
    assert health["version"] == VERSION_1
    assert health["booted_slot"] == "A"
    robot = guest.health("robot")
    assert robot["motor_board"]["connected"], robot
    # Both servers name the board's serial number, which the harness gave the firmware.
    assert health["serialNumber"] == robot["robot_serial"] == guest.serial
    figure("cold boot to both servers healthy", f"{seconds:.1f} s")
    record("cold boot", "A", health["booted_slot"], True, seconds)


def test_ssh_key_from_api_read_only_root_writable_data(guest):
    key = guest.ensure_ssh_key()
    added = guest.request("update", "POST", "/server/ssh_keys", {"key": key})
    assert added["fingerprint"].startswith("SHA256:")
    assert guest.ssh("echo logged-in").stdout.strip() == "logged-in"
    root = guest.ssh("touch /e2e-root-write", check=False)
    assert root.returncode != 0 and "Read-only file system" in root.stderr
    guest.ssh(f"echo '{MARKER_TEXT}' > {MARKER} && sync")
    mounts = guest.ssh("findmnt -no FSTYPE,OPTIONS /").stdout
    assert mounts.startswith("squashfs") and "ro" in mounts.split()[1].split(",")


def test_name_is_hostname_after_reboot_and_data_persists(guest, images):
    """The name set through the API is the hostname after a reboot. On the Pi that reboot is
    a power cycle during which the run's bundles are written into /data, as a PC writes
    files to the robot's card (BUNDLES_ON_DATA); they arrive whole."""
    started = time.monotonic()
    guest.request("update", "POST", "/server/name", {"name": NAME})
    if BUNDLES_ON_DATA:
        guest.power_off()
        guest.put_data_files({f"{STAGED}/{name}.bundle": images[name] / "rootfs.bundle" for name in images})
        guest.boot()
        health = guest.wait_healthy(timeout=600)
        for name, directory in images.items():
            digest = guest.ssh(f"sha256sum /data/{STAGED}/{name}.bundle").stdout.split()[0]
            with open(directory / "rootfs.bundle", "rb") as f:
                assert digest == hashlib.file_digest(f, "sha256").hexdigest(), name
    else:
        health = guest.restart()
    assert guest.ssh("hostname").stdout.strip() == health["hostname"] == "e2e-robot-1"
    assert guest.request("update", "GET", "/server/name")["name"] == NAME
    assert data_intact(guest)
    record("power cycle: bundles put on /data, name is hostname" if BUNDLES_ON_DATA
           else "reboot keeps /data, name is hostname", "A", health["booted_slot"], True,
           time.monotonic() - started)


def install(guest: ot2qemu.Guest, images, name: str, *, stop_at: float | None = None,
            allow_downgrade: bool = False) -> None:
    """Installs the `name` image's bundle and selects its slot: uploaded to the update server,
    or on the Pi installed from /data (BUNDLES_ON_DATA). With `stop_at` (0..1) returns once
    that fraction is written, the install still running and its slot not selected."""
    if BUNDLES_ON_DATA:
        done = guest.install_local(f"/data/{STAGED}/{name}.bundle", stop_at=stop_at,
                                   allow_downgrade=allow_downgrade)
        assert done is None or done.returncode == 0, (done.stdout, done.stderr)
        return
    token, status, reply = guest.upload(images[name] / "rootfs.bundle", stop_at=stop_at,
                                        allow_downgrade=allow_downgrade)
    if stop_at is None:
        assert status == 200, reply
        guest.request("update", "POST", f"/server/update/{token}/commit")


def test_robot_server_homes_emulated_board_over_uart(guest):
    before = (guest.workdir / "emulator.log").read_text().count("G28.2")
    guest.request("robot", "POST", "/robot/home", {"target": "robot"}, timeout=120)
    positions = guest.request("robot", "GET", "/robot/positions")
    assert all(positions["homed"].values()), positions
    assert positions["position"] == HOMED
    # The homing G-code crossed the guest's UART to the emulator on the host.
    assert (guest.workdir / "emulator.log").read_text().count("G28.2") > before


# ---------------------------------------------------------------- the engine on the robot
# (issue: protocols run on the Opentrons engine through the G-code channel; the OT-2's HTTP API)
RUN_PROTOCOL = '''
from opentrons import protocol_api

metadata = {"protocolName": "e2e door pause", "apiLevel": "2.19"}


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 2)
    pipette = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])
    pipette.pick_up_tip()
    pipette.transfer(50, plate["A1"], plate["B1"], new_tip="never")
    protocol.delay(seconds=25)
    pipette.transfer(50, plate["A2"], plate["B2"], new_tip="never")
    pipette.drop_tip()
'''

SSH_SCRIPT = '''
from opentrons import execute, types

ctx = execute.get_protocol_api("2.19")
ctx.home()
pipette = ctx.load_instrument("p300_single_gen2", "right")
pipette.move_to(ctx.deck.position_for(5).move(types.Point(20, 30, 40)))
print("moved", pipette.mount)
'''


def gcode_lines(guest: ot2qemu.Guest) -> int:
    """Lines the Smoothieware emulator on the host has received (its -v log)."""
    return (guest.workdir / "emulator.log").read_text(errors="replace").count("\n")


def run_status(client, run_id: str) -> str:
    return client.get_runs_run_id(run_id)["data"]["status"]


def wait_run(client, run_id: str, wanted: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (status := run_status(client, run_id)) not in wanted:
        assert time.monotonic() < deadline, f"run {run_id} still {status}, wanted {wanted}"
        time.sleep(1)
    return status


def test_protocol_uploaded_over_http_runs_on_the_board_door_pauses_it(guest, tmp_path):
    """A third-party OT-2 client (opentrons-http-api, unchanged) uploads a protocol; the
    engine analyses and runs it on the guest, through the G-code channel and the guest's
    UART to the emulator; /robot/move from another client gets 409; the door (simulated
    GPIO) blocks the run until it is closed and played again; the run succeeds."""
    from opentrons_http_api.api import API

    started = time.monotonic()
    client = API(guest.robot_alias)
    protocol_file = tmp_path / "door_pause.py"
    protocol_file.write_text(RUN_PROTOCOL)
    with protocol_file.open("rb") as fh:
        protocol = client.post_protocols([fh])["data"]
    deadline = time.monotonic() + 600
    while (summary := client.get_protocols_protocol_id(protocol["id"])["data"]["analysisSummaries"][-1])["status"] != "completed":
        assert time.monotonic() < deadline, "analysis did not complete"
        time.sleep(2)
    figure("upload to completed analysis in the guest", f"{time.monotonic() - started:.1f} s")
    analysis = guest.request("robot", "GET", f"/protocols/{protocol['id']}/analyses/{summary['id']}")["data"]
    assert analysis["result"] == "ok", analysis.get("errors")

    run = client.post_runs({"protocolId": protocol["id"], "labwareOffsets": []})["data"]
    lines_before = gcode_lines(guest)
    client.post_runs_run_id_actions(run["id"], {"actionType": "play"})
    wait_run(client, run["id"], {"running"}, 300)

    # The run holds the board: another client's motion is refused, naming the run.
    deadline = time.monotonic() + 300
    while guest.request("robot", "GET", "/health")["lease"] is None:
        assert time.monotonic() < deadline, "the run never took the G-code channel"
        time.sleep(1)
    with pytest.raises(ot2qemu.HTTPError) as refused:
        guest.request("robot", "POST", "/robot/move", {"mount": "right", "point": [100, 100, 100]})
    assert refused.value.status == 409, refused.value.body
    assert "robot-leased" in str(refused.value.body), refused.value.body

    # Door open during the delay: the run is blocked and no line reaches the board.
    deadline = time.monotonic() + 300
    while not any(c["commandType"] == "waitForDuration"
                  for c in client.get_runs_run_id_commands(run["id"])["data"]):
        assert time.monotonic() < deadline, "the run never reached its delay"
        time.sleep(1)
    guest.request("robot", "POST", "/robot/sim/gpio", {"door_open": True})
    wait_run(client, run["id"], {"blocked-by-open-door"}, 60)
    held_at = gcode_lines(guest)
    time.sleep(35)   # longer than the protocol's delay: the next move would have been sent
    assert gcode_lines(guest) == held_at, "G-code reached the board with the door open"
    assert run_status(client, run["id"]) == "blocked-by-open-door"
    guest.request("robot", "POST", "/robot/sim/gpio", {"door_open": False})
    client.post_runs_run_id_actions(run["id"], {"actionType": "play"})
    assert wait_run(client, run["id"], {"succeeded", "failed", "stopped"}, 600) == "succeeded"
    assert gcode_lines(guest) > held_at > lines_before

    commands = client.get_runs_run_id_commands(run["id"])
    assert commands["meta"]["totalLength"] >= len(commands["data"]) > 0
    assert guest.request("robot", "GET", "/health")["lease"] is None
    record("protocol over HTTP, door pause", "A", booted(guest)["booted_slot"], data_intact(guest),
           time.monotonic() - started)


def test_labmcp_client_drives_the_guest(guest):
    """A second published OT-2 API client, labmcp-opentrons (PyPI, unchanged, in its own venv:
    robot_server/tests/labmcp_flow.py), against the guest's robot server: lights on and off,
    a stateless home, upload, analysis, a run played to `succeeded`, commands paged."""
    import json
    started = time.monotonic()
    tests = ot2qemu.ROOT / "robot_server" / "tests"
    homings = (guest.workdir / "emulator.log").read_text().count("G28.2")
    proc = subprocess.run([str(ot2qemu.ROOT / ".venv-labmcp" / "bin" / "python"), str(tests / "labmcp_flow.py"),
                           f"http://127.0.0.1:{guest.ports['robot']}",
                           str(tests / "protocols" / "v2_08_transfer_options.py"),
                           "--analysis-timeout", "600", "--run-timeout", "1200"],
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["run"]["status"] == "succeeded"
    assert (guest.workdir / "emulator.log").read_text().count("G28.2") > homings
    assert guest.request("robot", "GET", "/robot/lights")["on"] is False
    record("second OT-2 API client (labmcp-opentrons)", "A", booted(guest)["booted_slot"], data_intact(guest),
           time.monotonic() - started)


UNTRUSTING_UPDATE_SERVER = """\
mkdir -p /run/ot2-e2e /run/systemd/system/ot2-update-server.service.d
sed 's/^trusted_interfaces = .*/trusted_interfaces = ["lo", "usb*"]/' /etc/ot2/update-server.toml \
    > /run/ot2-e2e/update-server.toml
printf '[Service]\\nExecStart=\\nExecStart=/usr/bin/python3 -I -m update_server --config /run/ot2-e2e/update-server.toml\\n' \
    > /run/systemd/system/ot2-update-server.service.d/e2e.conf
systemctl daemon-reload && systemctl restart ot2-update-server
"""


def ot2_cli(guest: ot2qemu.Guest, config: Path, *args: str, timeout: float = 900) -> subprocess.Popen:
    """The `ot2` client (this repository's, in .venv) with its own config directory (tokens)."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(config), "OT2_KEYRING": str(ot2qemu.dev_key_dir() / "keyring")}
    return subprocess.Popen([str(ot2qemu.ROOT / ".venv" / "bin" / "ot2"), "--no-progress", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_least_privilege_pairing_with_the_front_button_and_a_push_with_its_token(guest, images, tmp_path):
    """docs/security.md on the image: the robot server runs as ot2-robot with four
    capabilities, the update server as root; protocol code (ot2-run) cannot read the tokens.
    With the host no longer on a trusted interface of the update server, `ot2 pair` gets a
    token through the front button (simulated GPIO), and `ot2 push` installs with that token
    where it is refused without one."""
    started = time.monotonic()
    users = guest.ssh("for unit in ot2-robot-server ot2-update-server; do "
                      "pid=$(systemctl show -p MainPID --value $unit); "
                      "echo $unit $(stat -c %U /proc/$pid) $(awk '/^CapEff/ {print $2}' /proc/$pid/status); done"
                      ).stdout.splitlines()
    assert users[0].split()[1:] == ["ot2-robot", "00000000000000e1"], users
    assert users[1].split()[1] == "root", users
    denied = guest.ssh("setpriv --reuid=ot2-run --regid=ot2-run --init-groups cat /data/ot2/tokens.json",
                       check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    # The OT-2's log endpoints still read the system journal (group systemd-journal).
    conn = http.client.HTTPConnection(ot2qemu.HOST, guest.ports["robot"], timeout=60)
    conn.request("GET", "/logs/api.log", headers={"Opentrons-Version": "*"})
    log = conn.getresponse().read().decode()
    conn.close()
    assert "Started ot2-robot-server.service" in log and "robot_server" in log, log[-2000:]

    guest.ssh(UNTRUSTING_UPDATE_SERVER)
    try:
        guest.wait_healthy(timeout=300)
        robot = f"127.0.0.1:{guest.ports['update']}"
        bundle = str(images["v2"] / "rootfs.bundle")
        refused = ot2_cli(guest, tmp_path / "stranger", "push", bundle, robot)
        out, err = refused.communicate(timeout=600)
        assert refused.returncode != 0 and ("401" in out + err or "token" in (out + err).lower()), (out, err)
        pairing = ot2_cli(guest, tmp_path / "paired", "pair", "--robot-port", str(guest.ports["robot"]), robot)
        deadline = time.monotonic() + 120
        while pairing.poll() is None and time.monotonic() < deadline:
            time.sleep(2)                         # the request waits for a press of the front button
            guest.request("robot", "POST", "/robot/sim/gpio", {"button": True})
            guest.request("robot", "POST", "/robot/sim/gpio", {"button": False})
        out, err = pairing.communicate(timeout=60)
        assert pairing.returncode == 0 and "paired (button)" in out + err, (out, err)
        pushed = ot2_cli(guest, tmp_path / "paired", "push", bundle, robot)
        out, err = pushed.communicate(timeout=900)
        assert pushed.returncode == 0, (out, err)
    finally:
        guest.ssh("rm -rf /run/systemd/system/ot2-update-server.service.d /run/ot2-e2e && "
                  "systemctl daemon-reload && systemctl restart ot2-update-server")
        guest.wait_healthy(timeout=300)
    tokens = guest.request("update", "GET", "/server/tokens")["tokens"]
    assert [t["via"] for t in tokens] == ["button"], tokens
    record("least privilege, button pairing, push with its token", "A", booted(guest)["booted_slot"],
           data_intact(guest), time.monotonic() - started)


def test_idle_connections_do_not_stop_health(guest):
    """1,100 idle connections to each server (more than a server's 1,024 descriptors were
    once): both /health still answer, and the connections are closed by the servers' limits."""
    import socket
    from concurrent.futures import ThreadPoolExecutor
    idle = []
    try:
        def connect(server: str) -> socket.socket:
            return socket.create_connection((ot2qemu.HOST, guest.ports[server]), timeout=60)

        with ThreadPoolExecutor(64) as pool:     # QEMU's user network accepts them one by one
            idle += pool.map(connect, ["robot"] * 1100 + ["update"] * 1100)
        for port in ("robot", "update"):
            assert guest.request(port, "GET", "/health", timeout=60)
    finally:
        for sock in idle:
            sock.close()


def test_ssh_script_drives_the_robot_while_the_server_runs(guest):
    """A script over SSH (no login shell) uses opentrons.execute.get_protocol_api: it homes and
    moves the robot through the G-code channel while the robot server keeps running."""
    started = time.monotonic()
    guest.ssh("mkdir -p /data/user && cat > /data/user/move.py", input=SSH_SCRIPT)
    homings = (guest.workdir / "emulator.log").read_text().count("G28.2")
    result = guest.ssh("python3 /data/user/move.py", check=False, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "moved right" in result.stdout
    assert (guest.workdir / "emulator.log").read_text().count("G28.2") > homings
    health = guest.request("robot", "GET", "/health")
    assert health["lease"] is None and health["motor_board"]["connected"]
    record("SSH script through the channel", "A", booted(guest)["booted_slot"], data_intact(guest),
           time.monotonic() - started)


def test_update_lands_in_other_slot_and_stays(guest, images):
    started = time.monotonic()
    bundle = images["v2"] / "rootfs.bundle"
    size = bundle.stat().st_size
    # dd of the same number of bytes inside the guest, slot to slot, for comparison.
    dd = guest.ssh(f"dd if={SLOT_DEVICES['A']} of={SLOT_DEVICES['B']} bs=1M count={size} iflag=count_bytes "
                   f"conv=fsync 2>&1 | tail -1", timeout=600)
    figure("dd of the image inside the guest", dd.stdout.strip())
    dd_seconds = float(dd.stdout.split(" s,")[0].split(",")[-1].strip())

    t0 = time.monotonic()
    if BUNDLES_ON_DATA:
        install(guest, images, "v2")
    else:
        progress: list[float] = []
        token, status, reply = guest.upload(bundle, progress=progress)
        assert status == 200, reply
        # Progress was observable while the image streamed in, and only went up.
        assert any(0 < p < 1 for p in progress), progress
        assert progress == sorted(progress), progress
        assert guest.request("update", "GET", f"/server/update/{token}/status")["stage"] == "done"
        guest.request("update", "POST", f"/server/update/{token}/commit")
    install_seconds = time.monotonic() - t0
    figure("bundle install from /data throughput" if BUNDLES_ON_DATA else "bundle upload+install throughput",
           f"{size / install_seconds / 1e6:.1f} MB/s ({size / 1e6:.0f} MB in {install_seconds:.1f} s); "
           f"ratio to dd {dd_seconds / install_seconds:.2f}")
    assert booted(guest)["boot_order"][0] == "B"
    # Written into the bootloader's own environment file, by its own tool.
    assert "BOOT_ORDER=B A" in guest.ssh(BOOT_ENV_LIST).stdout.splitlines()

    t0 = time.monotonic()
    health = guest.restart()
    figure("reboot to healthy after an update", f"{time.monotonic() - t0:.1f} s")
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    assert health["slots"]["A"]["version"] == VERSION_1  # the fallback is still named
    health = guest.wait_boot_check()
    assert health["slots"]["B"]["state"] == "good"
    assert data_intact(guest)
    record("update to B", "B", health["booted_slot"], True, time.monotonic() - started)
    if BOARD == "ot2":
        return   # the Pi's next boot (after its power cut) shows B staying, at a third the cost

    started = time.monotonic()
    health = guest.restart()
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    record("reboot after mark-good stays", "B", health["booted_slot"], data_intact(guest),
           time.monotonic() - started)


def _rejected_bundles(images, tmp: Path) -> dict[str, Path]:
    """Bundles the robot must refuse, made from the v2 image: name -> path."""
    keys = ot2qemu.dev_key_dir()
    cli = str(ot2qemu.VENV_BIN / "update-server")
    rootfs = images["v2"] / "rootfs.squashfs"
    good = images["v2"] / "rootfs.bundle"
    made = {}

    # GNU cpio unpacks the good bundle and packs it again without its signature.
    unsigned, members = tmp / "unsigned.bundle", tmp / "members"
    members.mkdir()
    with open(good, "rb") as f:
        subprocess.run(["cpio", "-i", "--quiet"], stdin=f, cwd=members, check=True)
    with open(unsigned, "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"sw-description\nrootfs.img\n",
                       stdout=f, cwd=members, check=True)
    made["unsigned"] = unsigned

    subprocess.run([cli, "bundle", "keygen", "--out", str(tmp / "stranger.key")], check=True,
                   capture_output=True)
    other = ot2qemu.board_meta("ot2" if BOARD == "qemu" else "qemu")["BOARD_COMPATIBLE"]
    for name, key, compatible in (("signed by an untrusted key", tmp / "stranger.key", COMPATIBLE),
                                  ("wrong compatible", keys / "dev.key", other)):
        path = tmp / (name.replace(" ", "-") + ".bundle")
        subprocess.run([cli, "bundle", "create", "--key", str(key), "--compatible", compatible,
                        "--version", VERSION_2, "--image", f"rootfs={rootfs}", "-o", str(path)],
                       check=True, capture_output=True)
        made[name] = path

    flipped = tmp / "bit-flipped.bundle"
    subprocess.run(["cp", str(good), str(flipped)], check=True)
    with open(flipped, "r+b") as f:
        f.seek(good.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    made["bit-flipped image"] = flipped
    made["older version, not asked for"] = images["v1"] / "rootfs.bundle"
    return made


def test_rejected_bundles_change_nothing(guest, images, tmp_path):
    started = time.monotonic()
    before = booted(guest)
    for name, bundle in _rejected_bundles(images, tmp_path).items():
        cancel_session(guest)
        _, status, reply = guest.upload(bundle)
        assert 400 <= status < 500, (name, status, reply)
        assert set(reply) >= {"error", "message"}, reply
        after = booted(guest)
        assert after["booted_slot"] == before["booted_slot"] == "B", name
        assert after["boot_order"][0] == "B", (name, after["boot_order"])
    health = guest.restart()
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    record("5 rejected bundles, reboot", "B", health["booted_slot"], data_intact(guest),
           time.monotonic() - started)


# The Pi boots three times slower under emulation: one power cut there.
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9] if BOARD == "qemu" else [0.5])
def test_power_cut_mid_install_boots_old_slot(guest, images, fraction):
    started = time.monotonic()
    cancel_session(guest)
    install(guest, images, "v1", stop_at=fraction, allow_downgrade=True)
    guest.kill()
    guest.boot()
    health = guest.wait_healthy(timeout=600)
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    assert health["boot_order"][0] == "B"
    # The half-written slot is never a boot candidate.
    assert "A" not in health["boot_order"] or health["slots"]["A"]["tries_left"] == 0, health
    record(f"power cut at {fraction:.0%} of install", "B", health["booted_slot"], data_intact(guest),
           time.monotonic() - started)


def test_install_after_power_cuts_succeeds(guest, images):
    cancel_session(guest)
    token, status, reply = guest.upload(images["v1"] / "rootfs.bundle", allow_downgrade=True)
    assert status == 200, reply
    assert guest.request("update", "GET", f"/server/update/{token}/status")["stage"] == "done"
    cancel_session(guest)  # not committed: B stays the boot selection
    assert booted(guest)["boot_order"][0] == "B"


def test_corrupted_bootloader_environment_still_boots_good_slot(guest):
    started = time.monotonic()
    guest.ssh(f"dd if=/dev/urandom of={BOOT_ENV} bs=1024 count=1 conv=notrunc,fsync 2>/dev/null")
    listed = guest.ssh(f"{BOOT_ENV_LIST} 2>&1", check=False).stdout
    assert "BOOT_ORDER=" not in listed, listed
    console_before = guest.console.stat().st_size
    health = guest.restart()
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    if BOARD == "ot2":   # U-Boot's boot.scr says where the environment came from
        with open(guest.console, "rb") as f:
            f.seek(console_before)
            assert f"trying {BOOT_ENV_BACKUP}".encode() in f.read()
    record("corrupted boot environment", "B", health["booted_slot"], data_intact(guest),
           time.monotonic() - started)


def test_unhealthy_update_rolls_back_by_itself(guest, images):
    started = time.monotonic()
    cancel_session(guest)
    install(guest, images, "bad")
    boot_id = booted(guest)["bootId"]
    console_before = guest.console.stat().st_size
    guest.request("update", "POST", "/server/restart")
    # The bad slot boots (its robot server never starts), the boot check reboots it, and
    # after its tries the bootloader goes back to B on its own.
    health = guest.wait_healthy(timeout=1500, not_boot_id=boot_id)
    with open(guest.console, "rb") as f:
        f.seek(console_before)
        console = f.read().decode(errors="replace")
    assert console.count("ot2: booting slot A") == 3, console.count("ot2: booting slot A")
    assert health["booted_slot"] == "B" and health["version"] == VERSION_2
    rollback = health["rollback"]
    assert rollback and rollback["failed_slot"] == "A" and rollback["failed_version"] == VERSION_BAD, rollback
    assert health["boot_order"][0] == "B"
    record("unhealthy update rolls back", "B", health["booted_slot"], data_intact(guest),
           time.monotonic() - started)

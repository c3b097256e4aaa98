"""Boot either board's image and talk to it.

The harness behind `make run`/`make run-pi` (ci/run-qemu.py) and the end-to-end tests
(tests/e2e): builds images with ci/build-qemu-image.sh (board "qemu", x86_64 PC) or
ci/build-pi-image.sh (board "ot2", the Raspberry Pi 3 under QEMU's raspi3b), boots a copy
of one under QEMU (software emulation) with the guest's ports forwarded to free ports on
127.0.0.1 and its motor-board UART wired to the Smoothieware emulator on the host, and
speaks HTTP and SSH to it; on the Pi it also sets and reads GPIO levels (qtest). Only
loopback addresses are ever contacted.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from robot_server import gpio
from update_server.config import read_board_file

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("OT2_VENV", ROOT / ".venv")) / "bin"
HOST = "127.0.0.1"


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


ROBOT_PORT = 31950


def free_robot_alias() -> str:
    """A loopback address (127.x.y.z) whose port 31950 is free: clients of the OT-2 HTTP API
    that always use port 31950 reach a guest's robot server there."""
    while True:
        alias = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((alias, ROBOT_PORT))
                return alias
            except OSError:
                continue


class PortInUse(Exception):
    """A host port the guest needs is taken; the message names it and, if found, its holder."""


def _listeners(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXADDR:HEXPORT; state 0A is LISTEN
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def port_holder(port: int) -> str | None:
    """"pid N (program)" of a process listening on TCP `port`, if /proc shows one."""
    inodes = _listeners(port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return f"pid {proc.name} ({(proc / 'comm').read_text().strip()})"
        except OSError:
            continue
    return None


def check_ports_free(ports: dict[str, int]) -> None:
    """Raises PortInUse for the first of `ports` (name -> port on 127.0.0.1) that cannot be bound."""
    for name, port in ports.items():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as QEMU's hostfwd does
            try:
                s.bind((HOST, port))
            except OSError as exc:
                holder = port_holder(port)
                raise PortInUse(f"{name} port {port} on {HOST} is taken"
                                f"{f' by {holder}' if holder else ''} ({exc.strerror})") from None


# ssh's errors for a connection no SSH session began on (before authentication).
SSH_NOT_TAKEN_UP = re.compile(r"Connection refused|kex_exchange_identification|banner exchange")
SSH_ATTEMPTS = 4

# Seconds after power-on by which the Pi's usb-net device is up, else the link is lost.
USB_LINK_DEADLINE = 240

BUILDERS = {"qemu": "build-qemu-image.sh", "ot2": "build-pi-image.sh"}


def board_meta(board: str) -> dict[str, str]:
    """The board's facts (board/BOARD/meta: BOARD_COMPATIBLE, IMAGE_NAME, BOOTLOADER, ...),
    with the slots' devices (SLOT_A_DEVICE, SLOT_B_DEVICE) as the image's board.conf has them."""
    meta = read_board_file(ROOT / "board" / board / "meta")
    for slot in ("A", "B"):
        meta[f"SLOT_{slot}_DEVICE"] = meta["PART_DEVICE"] + meta[f"SLOT_{slot}_PART"]
    return meta


def build_image(version: str | None = None, fault: str | None = None, board: str = "qemu",
                jupyter: bool = True) -> Path:
    """Builds (or takes from the cache) an image of `board` ("qemu" or "ot2"); returns its directory.

    The directory holds the disk image (the meta's `IMAGE_NAME`), `rootfs.squashfs` and the signed
    `rootfs.bundle`; the Pi's also `u-boot.bin` and `bcm2837-rpi-3-b.dtb`. `jupyter=False`
    leaves Jupyter out (`--no-jupyter`; the Pi's build leaves it out by default).
    """
    cmd = [str(ROOT / "ci" / BUILDERS[board])]
    if version:
        cmd += ["--version", version]
    if fault:
        cmd += ["--fault", fault]
    if not jupyter:
        cmd += ["--no-jupyter"]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return Path(out.strip().splitlines()[-1])


def dev_key_dir() -> Path:
    """The development signing key's directory (`dev.key`, `dev.pem`), outside the repo."""
    return Path(os.environ.get("OT2_CACHE", Path.home() / ".cache" / "ot2")) / "keys"


class HTTPError(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class QTest:
    """QEMU's qtest protocol on a unix socket the harness listens on; each QEMU start connects.

    Used on the Pi to drive the BCM2835 GPIO inputs: QEMU 7.2's model has no GPIO inputs,
    but a line's level can be set through the GPSET0/GPCLR0 registers and read in GPLEV0
    (BCM2835 ARM Peripherals, section 6.1, registers at 0x7E20001C, 0x7E200028, 0x7E200034;
    0x3F2000xx on the Pi 3's ARM side). Levels only: the model has no edge detection.
    """

    GPIO_BASE = 0x3F200000
    GPSET0, GPCLR0, GPLEV0 = 0x1C, 0x28, 0x34

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._conn: socket.socket | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    def accept(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for QEMU to connect; True once connected."""
        with self._lock:
            if self._conn is None:
                self._server.settimeout(timeout)
                try:
                    self._conn, _ = self._server.accept()
                except TimeoutError:
                    return False
                self._conn.settimeout(30)
                self._buffer = b""
            return True

    def _command(self, line: str) -> str:
        if not self.accept(30):
            raise TimeoutError("QEMU did not connect to the qtest socket")
        with self._lock:
            self._conn.sendall(line.encode() + b"\n")
            while True:
                reply, sep, rest = self._buffer.partition(b"\n")
                if sep:
                    self._buffer = rest
                    if reply.startswith(b"OK") or reply.startswith(b"FAIL"):
                        return reply.decode()
                    continue   # asynchronous IRQ lines
                data = self._conn.recv(4096)
                if not data:
                    raise ConnectionError("QEMU closed the qtest socket")
                self._buffer += data

    def reconnect(self) -> None:
        """Forgets the connection of a QEMU that is gone; the next one is accepted on use."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def set_gpio(self, line: int, level: bool) -> None:
        """Sets GPIO `line` (BCM number, 0..31) to `level`."""
        register = self.GPSET0 if level else self.GPCLR0
        self._command(f"writel {self.GPIO_BASE + register:#x} {1 << line:#x}")

    def gpio(self, line: int) -> bool:
        """The level of GPIO `line` (BCM number, 0..31), as the guest's outputs or set_gpio left it."""
        reply = self._command(f"readl {self.GPIO_BASE + self.GPLEV0:#x}")
        return bool(int(reply.split()[1], 16) >> line & 1)

    def close(self) -> None:
        self.reconnect()
        self._server.close()
        self.path.unlink(missing_ok=True)


def pi_device_tree(dtb: Path, out: Path, serial: str) -> Path:
    """The device tree QEMU hands U-Boot on the Pi, made as the Pi's firmware would.

    From the kernel's `bcm2837-rpi-3-b.dtb`: Bluetooth's node under the PL011 removed (what
    config.txt's `dtoverlay=disable-bt` does, so the PL011 is a plain /dev/ttyAMA0) and
    `/serial-number` set (the firmware's copy of the SoC serial, which board/ot2/boot.cmd
    passes on as ot2.serial=). QEMU runs no firmware and applies no overlays.
    """
    subprocess.run(["cp", str(dtb), str(out)], check=True)
    subprocess.run(["fdtput", "-r", str(out), "/soc/serial@7e201000/bluetooth"], check=True)
    subprocess.run(["fdtput", "-t", "s", str(out), "/", "serial-number", serial], check=True)
    return out


class Guest:
    """One emulated robot: a disk image under QEMU plus the motor-board emulator.

    Each guest reboot ends QEMU and the harness powers it on again; `kill()` is a power cut.
    The guest's serial number (`serial`, random per Guest) comes back in the update server's
    `/health` as `serialNumber`: that is how the harness knows that a `/health` it reads is
    this guest's and not another program's on the same port. The firmware hands it over:
    the SMBIOS system serial on the QEMU board, the device tree's /serial-number on the Pi.

    `board` is "qemu" or "ot2"; the Pi needs `firmware`, the image directory holding
    `u-boot.bin` and `bcm2837-rpi-3-b.dtb`, and has `qtest` for its GPIO.
    """

    def __init__(self, disk: Path, workdir: Path, ports: dict[str, int] | None = None,
                 board: str = "qemu", firmware: Path | None = None,
                 qemu_env: dict[str, str] | None = None):
        """`qemu_env`: more of ci/qemu-run.sh's variables (USB devices, OT2_QMP)."""
        self.disk = disk
        self.board = board
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ports = ports or {name: free_port() for name in ("update", "robot", "bridge", "ssh", "jupyter", "uart")}
        self.qemu_env = qemu_env or {}
        self.console = workdir / "console.log"
        self.qemu: subprocess.Popen | None = None
        self.emulator: subprocess.Popen | None = None
        self.power_ons = 0
        self.usb_link_retries = 0
        self._console_at_power_on = 0
        self._powered_on_at = 0.0
        self._powered = False
        self._supervisor: threading.Thread | None = None
        self.ssh_key = workdir / "id_ed25519"
        self.serial = f"qemu-{secrets.token_hex(6)}"
        self.qtest: QTest | None = None
        self._board_env = {"OT2_BOARD": board}
        if board == "ot2":
            self.qtest = QTest(workdir / "qtest.sock")
            self._board_env.update(
                OT2_UBOOT=str(firmware / "u-boot.bin"), OT2_QTEST=str(self.qtest.path),
                OT2_DTB=str(pi_device_tree(firmware / "bcm2837-rpi-3-b.dtb", workdir / "pi.dtb", self.serial)))
        # The robot server is also forwarded to port 31950 of this address.
        self.robot_alias = free_robot_alias()
        # The host reaches the guest through QEMU's user network, which the QEMU board's
        # update server trusts as its USB link (docs/security.md); a token is sent too if
        # one is given, for images that do not trust that link.
        self.token = os.environ.get("OT2_TOKEN")

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # -- processes ---------------------------------------------------------------

    def start_emulator(self) -> None:
        """Starts the Smoothieware emulator on the UART port (once; it outlives reboots)."""
        if self.emulator and self.emulator.poll() is None:
            return
        log = open(self.workdir / "emulator.log", "ab")
        self.emulator = subprocess.Popen(
            [str(VENV_BIN / "smoothie-emulator"), "-v", "--tcp", f"{HOST}:{self.ports['uart']}"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.ports["uart"]), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the Smoothieware emulator did not start listening")

    def boot(self) -> None:
        """Powers the machine on; guest reboots power it on again until `kill()`."""
        assert not self._powered, "already running"
        self.start_emulator()
        self._powered = True
        self._start_qemu()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _start_qemu(self) -> None:
        env = dict(os.environ,
                   OT2_PORT_UPDATE=str(self.ports["update"]), OT2_PORT_ROBOT=str(self.ports["robot"]),
                   OT2_PORT_BRIDGE=str(self.ports["bridge"]), OT2_PORT_SSH=str(self.ports["ssh"]),
                   OT2_UART_PORT=str(self.ports["uart"]), OT2_SERIAL=self.serial,
                   OT2_ROBOT_ALIAS=self.robot_alias, **self._board_env, **self.qemu_env)
        if "jupyter" in self.ports:
            env["OT2_PORT_JUPYTER"] = str(self.ports["jupyter"])
        self.power_ons += 1
        self._console_at_power_on = self.console.stat().st_size if self.console.exists() else 0
        self._powered_on_at = time.monotonic()
        if self.qtest:
            self.qtest.reconnect()
        self.qemu = subprocess.Popen([str(ROOT / "ci" / "qemu-run.sh"), str(self.disk), str(self.console)],
                                     env=env, stdout=open(self.workdir / "qemu.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if self.qtest:
            self._pull_up_inputs()

    def _pull_up_inputs(self) -> None:
        """The Pi's door switch and front button lines sit high through pull-ups (door
        closed, button released); QEMU models no pull-ups, so the harness sets the levels."""
        while not self.qtest.accept(1):
            if self.qemu.poll() is not None:
                return   # QEMU did not come up; the supervisor sees it exit
        self.qtest.set_gpio(gpio.PIN_DOOR, True)
        self.qtest.set_gpio(gpio.PIN_BUTTON_INPUT, True)

    def _supervise(self) -> None:
        # QEMU runs with -no-reboot: a clean exit is a guest reboot, so power on again.
        while self._powered:
            code = self.qemu.wait()
            if not self._powered:
                return
            if code != 0:
                self._powered = False
                return
            self._start_qemu()

    @property
    def running(self) -> bool:
        return self._powered

    def qemu_log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines QEMU itself printed (errors such as a refused port forward)."""
        try:
            return "\n".join((self.workdir / "qemu.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """Power cut: SIGKILL to QEMU, no shutdown."""
        self._powered = False
        if self.qemu and self.qemu.poll() is None:
            os.killpg(self.qemu.pid, signal.SIGKILL)
            self.qemu.wait()
        if self._supervisor:
            self._supervisor.join(10)

    def stop(self) -> None:
        self.kill()
        if self.qtest:
            self.qtest.close()
        if self.emulator and self.emulator.poll() is None:
            self.emulator.terminate()
            self.emulator.wait(10)

    def qmp(self, command: str, **arguments) -> dict:
        """Runs one QMP command (e.g. `device_del`, id="usbstick0") on the QEMU monitor socket
        given as OT2_QMP in `qemu_env`; returns its "return" value. Raises RuntimeError on an error reply."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(self.qemu_env["OT2_QMP"])
            stream = sock.makefile("rw")
            json.loads(stream.readline())                      # the greeting
            for request in ({"execute": "qmp_capabilities"},
                            {"execute": command, "arguments": arguments}):
                stream.write(json.dumps(request) + "\n")
                stream.flush()
                while "event" in (reply := json.loads(stream.readline())):
                    pass
                if "error" in reply:
                    raise RuntimeError(f"QMP {request['execute']}: {reply['error']}")
            return reply["return"]

    # -- HTTP --------------------------------------------------------------------

    def request(self, port: str, method: str, path: str, body: dict | None = None,
                timeout: float = 30) -> dict:
        """JSON request to a guest server (`port` is "update" or "robot"); raises HTTPError on 4xx/5xx."""
        conn = http.client.HTTPConnection(HOST, self.ports[port], timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            if port == "robot" and path != "/health":   # the OT-2 API's version header; /health
                headers["Opentrons-Version"] = "*"       # without it also answers our fields
            conn.request(method, path, body=data, headers={**headers, **self._auth()})
            resp = conn.getresponse()
            raw = resp.read()
            parsed = json.loads(raw) if raw else {}
            if resp.status >= 400:
                raise HTTPError(resp.status, parsed)
            return parsed
        finally:
            conn.close()

    def health(self, port: str = "update") -> dict | None:
        """`/health` of a server, or None while it does not answer."""
        try:
            return self.request(port, "GET", "/health", timeout=5)
        except (OSError, HTTPError, http.client.HTTPException, json.JSONDecodeError):
            return None

    def wait_healthy(self, timeout: float = 600, not_boot_id: str | None = None) -> dict:
        """Waits until both servers answer `/health` (on a boot other than `not_boot_id`).

        Returns the update server's health. Raises TimeoutError.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._powered:
                raise RuntimeError(f"QEMU stopped (exit {self.qemu.returncode}); see {self.console}")
            if self._usb_link_lost():
                self.usb_link_retries += 1
                print(f"{self.workdir}: QEMU's DWC2 lost the USB link at power-on; power cycle "
                      f"{self.usb_link_retries}", file=sys.stderr)
                self.kill()
                self.boot()
                continue
            update = self.health("update")
            ours = update and update.get("serialNumber") == self.serial
            if ours and update.get("bootId") != not_boot_id and self.health("robot"):
                return update
            time.sleep(2)
        raise TimeoutError(f"guest not healthy after {timeout} s; see {self.console}")

    def _usb_link_lost(self) -> bool:
        """On the Pi: QEMU 7.2's DWC2 model now and then fails every enumeration of the USB
        hub in front of usb-net (the kernel says "dwc2 ...: Not connected" and gives up), and
        the guest has no network. True when this power-on shows that and no usb-net device
        by the login prompt (a good boot registers it ten seconds before), or by
        USB_LINK_DEADLINE s after power-on."""
        if self.board != "ot2":
            return False
        with open(self.console, "rb") as f:
            f.seek(self._console_at_power_on)
            text = f.read()
        late = b" login: " in text or time.monotonic() - self._powered_on_at > USB_LINK_DEADLINE
        return late and b"usb: Not connected" in text and b"register 'cdc_ether'" not in text

    def wait_boot_check(self, timeout: float = 300) -> dict:
        """Waits until the booted slot has been marked good (its tries are back to the maximum)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health and health["slots"][health["booted_slot"]]["state"] == "good":
                return health
            time.sleep(2)
        raise TimeoutError("the booted slot was not marked good")

    def restart(self, timeout: float = 900) -> dict:
        """Reboots through the update server's API; returns health on the new boot."""
        boot_id = self.health()["bootId"]
        self.request("update", "POST", "/server/restart")
        return self.wait_healthy(timeout, not_boot_id=boot_id)

    def upload(self, bundle: Path, *, stop_at: float | None = None, progress: list | None = None,
               chunk: int = 1 << 20, allow_downgrade: bool = False) -> tuple[str, int, dict]:
        """Begins a session and streams `bundle` to it (`allow_downgrade`: a bundle older
        than the running system may install).

        With `stop_at` (0..1), returns as soon as the install's progress reaches it,
        leaving the upload running (for power-cut tests). With a `progress` list, the
        session's status is polled while the upload runs and each `progress` value
        (0..1) is appended. Returns (token, HTTP status, reply body); status 0 when
        stopped early.
        """
        query = "?allow_downgrade=true" if allow_downgrade else ""
        token = self.request("update", "POST", "/server/update/begin" + query)["token"]
        size = bundle.stat().st_size
        result: dict = {}

        def send() -> None:
            conn = http.client.HTTPConnection(HOST, self.ports["update"], timeout=600)
            try:
                conn.putrequest("POST", f"/server/update/{token}/file")
                conn.putheader("Content-Type", "application/octet-stream")
                conn.putheader("Content-Length", str(size))
                for name, value in self._auth().items():
                    conn.putheader(name, value)
                conn.endheaders()
                with open(bundle, "rb") as f:
                    while block := f.read(chunk):
                        conn.send(block)
                resp = conn.getresponse()
                raw = resp.read()
                result["status"] = resp.status
                result["body"] = json.loads(raw) if raw else {}
            except OSError as exc:
                result["status"] = 0
                result["body"] = {"error": "connection", "message": str(exc)}
            finally:
                conn.close()

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        if stop_at is not None or progress is not None:
            while sender.is_alive():
                status = self.request("update", "GET", f"/server/update/{token}/status")
                if progress is not None:
                    progress.append(status.get("progress", 0))
                if stop_at is not None and status.get("progress", 0) >= stop_at:
                    return token, 0, status
                time.sleep(0.2)
        sender.join()
        return token, result["status"], result["body"]

    def install_local(self, path: str, *, stop_at: float | None = None, allow_downgrade: bool = False,
                      timeout: float = 1500) -> subprocess.CompletedProcess | None:
        """Installs the bundle file `path` on the guest with the update server's command line
        (`python3 -m update_server install`, as from a USB drive), over SSH; the slot is
        selected for the next boot once written.

        Returns the finished command. With `stop_at` (0..1) the command runs in the
        background and this returns None as soon as it has written that fraction of the
        file's size to the slot (its /proc/PID/io write_bytes), for power-cut tests.
        """
        command = f"python3 -m update_server install{' --allow-downgrade' * allow_downgrade} {path}"
        if stop_at is None:
            return self.ssh(command, check=False, timeout=timeout)
        size = int(self.ssh(f"stat -c %s {path}").stdout)
        pid = self.ssh(f"setsid nohup {command} >/dev/null 2>&1 </dev/null & echo $!").stdout.strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            io = self.ssh(f"cat /proc/{pid}/io", check=False)
            if io.returncode != 0:
                raise RuntimeError(f"the install ended before {stop_at:.0%} was written")
            written = int(next(line.split()[1] for line in io.stdout.splitlines()
                                if line.startswith("write_bytes:")))
            if written >= stop_at * size:
                return None
            time.sleep(0.5)
        raise TimeoutError(f"the install did not reach {stop_at:.0%} in {timeout} s")

    def power_off(self, timeout: float = 300) -> None:
        """Shuts the guest down (`systemctl poweroff`) and ends QEMU once it has.

        QEMU's raspi3b has no power controller: when the console shows the kernel's
        "reboot: Power down", QEMU is ended here. Raises TimeoutError.
        """
        self._powered = False
        console_before = self.console.stat().st_size
        self.ssh("systemctl poweroff", check=False)
        deadline = time.monotonic() + timeout
        while self.qemu.poll() is None:
            with open(self.console, "rb") as f:
                f.seek(console_before)
                if b"reboot: Power down" in f.read():
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the guest did not power off in {timeout} s; see {self.console}")
            time.sleep(1)
        self.kill()

    def put_data_files(self, files: dict[str, Path]) -> None:
        """Writes host files into the guest's /data while it is off, as a PC writes files
        to a card's data partition: `files` maps a path under /data to a host file.

        /data is the disk's last partition (ext4); debugfs writes into it in place.
        Raises RuntimeError if a file did not land whole.
        """
        assert not self._powered, "power the guest off first"
        table = json.loads(subprocess.run(["sfdisk", "-J", str(self.disk)], check=True,
                                          capture_output=True, text=True).stdout)["partitiontable"]
        offset = table["partitions"][-1]["start"] * table.get("sectorsize", 512)
        device = f"{self.disk}?offset={offset}"
        directories = {parent for target in files for parent in reversed(Path(target).parents)} - {Path(".")}
        commands = [f"mkdir {d}" for d in sorted(directories, key=lambda d: len(d.parts))]
        commands += [f"write {source} {target}" for target, source in files.items()]
        script = self.workdir / "debugfs.cmd"
        script.write_text("\n".join(commands) + "\n")
        subprocess.run(["debugfs", "-w", "-f", str(script), device], check=True, capture_output=True)
        for target, source in files.items():
            stat = subprocess.run(["debugfs", "-R", f"stat {target}", device], check=True,
                                  capture_output=True, text=True).stdout
            if re.search(r"Size: (\d+)", stat)[1] != str(source.stat().st_size):
                raise RuntimeError(f"/data/{target} was not written whole: {stat[:300]}")

    # -- SSH ---------------------------------------------------------------------

    def ensure_ssh_key(self) -> str:
        """Makes the test's SSH key pair once; returns the public key line."""
        if not self.ssh_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ot2-e2e",
                            "-f", str(self.ssh_key)], check=True)
        return (self.ssh_key.with_suffix(".pub")).read_text().strip()

    def scp(self, source: Path, target: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`scp SOURCE root@robot:TARGET` with the test's key (today's scp: over SFTP)."""
        return subprocess.run(
            ["scp", "-i", str(self.ssh_key), "-P", str(self.ports["ssh"]), "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
             str(source), f"root@{HOST}:{target}"], capture_output=True, text=True, timeout=timeout)

    def ssh(self, command: str, check: bool = True, timeout: float = 60, input: str | None = None,
            options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """Runs `command` on the guest as root over SSH (key from `ensure_ssh_key`); `input`
        goes to its stdin, `options` are more ssh arguments after the destination. A
        connection the guest did not take up (refused, or no SSH banner: a guest still busy
        starting) is tried again, up to SSH_ATTEMPTS times; the command never ran then."""
        for attempt in range(1, SSH_ATTEMPTS + 1):
            done = subprocess.run(
                ["ssh", "-i", str(self.ssh_key), "-p", str(self.ports["ssh"]), "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20", f"root@{HOST}", *options, command],
                capture_output=True, text=True, timeout=timeout, input=input)
            if done.returncode != 255 or not SSH_NOT_TAKEN_UP.search(done.stderr) or attempt == SSH_ATTEMPTS:
                break
            time.sleep(5)
        if check:
            done.check_returncode()
        return done


def copy_disk(image: Path, workdir: Path, board: str = "qemu") -> Path:
    """Sparse copy of the board's disk image (its meta's IMAGE_NAME) from the image
    directory `image` into `workdir`; returns the copy's path (the cache's copy stays pristine).

    The Pi's is grown to the next power of two in size, the only SD-card sizes QEMU's
    raspi3b takes (the guest grows /data into the rest, as on a larger card).
    """
    name = board_meta(board)["IMAGE_NAME"]
    dst = workdir / name
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "--sparse=always", str(image / name), str(dst)], check=True)
    if board == "ot2":
        os.truncate(dst, 1 << (dst.stat().st_size - 1).bit_length())
    return dst

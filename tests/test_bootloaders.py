"""The boot algorithm of docs/architecture.md ("Slots and boot selection"), run by the real
bootloaders on one table of environments.

Each row of ROWS is run by U-Boot (Debian's u-boot-qemu build for QEMU's arm64 `virt`
machine: the Pi's bootcmd of board/ot2/uboot.fragment typed at its prompt runs
board/ot2/boot.cmd as boot.scr) and by GRUB EFI (ci/make-grub-efi.sh, started by OVMF,
runs board/qemu/grub.cfg), one QEMU boot per row and bootloader. The scripts run as
written but for two substitutions: the FAT partition's device (U-Boot sees the disk as
`virtio 0`, not `mmc 0`), and `ot2_boot`, which instead of loading a kernel prints a
marker line and powers off when the row says the slot loads, and returns (as a failed load
does) when it does not. The environment files are then read back with the bootloaders'
own tools (fw_printenv, grub-editenv). When `update_server.bootmodel` is importable, the
Python model of the algorithm is checked against the same rows.

Sources: U-Boot's `env import`/`env export` and `fatwrite`
(https://docs.u-boot.org/en/latest/usage/cmd/env.html,
https://docs.u-boot.org/en/latest/usage/cmd/fatwrite.html); GRUB's `load_env`/`save_env`
("Environment block" in the GRUB manual, https://www.gnu.org/software/grub/manual/grub/).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    from update_server.bootmodel import simulate_boot
except ImportError:  # the model is not in this tree yet: the table checks the bootloaders
    simulate_boot = None

ROOT = Path(__file__).resolve().parents[1]
UBOOT_FIRMWARE = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
OVMF = Path("/usr/share/ovmf/OVMF.fd")
PARTITION_OFFSET = 1024 * 1024  # the FAT partition starts at 1 MiB on the test disk
BOOT_SECONDS = 90  # a boot under TCG takes 1-10 s; generous for a loaded machine

# Environment files that are not a plain set of variables. MISSING: no file. CORRUPT: the
# file fails the bootloader's own check (U-Boot: a wrong CRC32; GRUB: a damaged signature
# line). GARBAGE: random bytes.
MISSING = "missing"
CORRUPT = "corrupt"
GARBAGE = "garbage"


def env(order: str, a: object, b: object) -> dict[str, str]:
    """The three boot variables as the bootloaders store them."""
    return {"BOOT_ORDER": order, "BOOT_A_LEFT": str(a), "BOOT_B_LEFT": str(b)}


@dataclass(frozen=True)
class Row:
    """One boot: the environment files before it, which slots load, what it must do.

    primary/backup: dict of variables, or MISSING, CORRUPT, GARBAGE. slot: the slot booted
    ("A"/"B", None when none loads); saved: the variables saved by the boot.
    """
    name: str
    primary: dict[str, str] | str
    backup: dict[str, str] | str
    slot: str | None
    saved: dict[str, str]
    loadable: frozenset[str] = frozenset("AB")


ROWS = [
    Row("valid A B 3/3", env("A B", 3, 3), env("A B", 3, 3), "A", env("A B", 2, 3)),
    Row("B A, B at 1", env("B A", 3, 1), env("B A", 3, 1), "B", env("B A", 3, 0)),
    Row("B A, B at 0: A", env("B A", 3, 0), env("B A", 3, 0), "A", env("B A", 2, 0)),
    Row("both at 0: reset, first", env("A B", 0, 0), env("A B", 0, 0), "A", env("A B", 2, 3)),
    Row("B A both at 0: reset, B", env("B A", 0, 0), env("B A", 0, 0), "B", env("B A", 3, 2)),
    Row("primary bad CRC: backup", CORRUPT, env("B A", 3, 2), "B", env("B A", 3, 1)),
    Row("primary garbage: backup", GARBAGE, env("B A", 3, 2), "B", env("B A", 3, 1)),
    Row("primary missing: backup", MISSING, env("B A", 2, 3), "B", env("B A", 2, 2)),
    Row("both corrupt: defaults", CORRUPT, GARBAGE, "A", env("A B", 2, 3)),
    Row("both missing: defaults", MISSING, MISSING, "A", env("A B", 2, 3)),
    # The latent slot switch of issue 18: tries of 4 make both copies invalid.
    Row("tries 4 in both: defaults", env("B A", 3, 4), env("B A", 3, 4), "A", env("A B", 2, 3)),
    Row("tries -1: backup", env("A B", -1, 3), env("B A", 3, 3), "B", env("B A", 3, 2)),
    Row("tries x, no backup", env("A B", "x", 3), MISSING, "A", env("A B", 2, 3)),
    Row("order C: backup", env("C", 3, 3), env("A", 3, 3), "A", env("A", 2, 3)),
    Row("order A A: defaults", env("A A", 3, 3), GARBAGE, "A", env("A B", 2, 3)),
    # A variable that is not there holds no legal value: the copy fails its check.
    Row("variable missing: backup", {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3"}, env("A B", 1, 3),
        "A", env("A B", 0, 3)),
    Row("both lack a variable: defaults", {"BOOT_ORDER": "C", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "1"},
        {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3"}, "A", env("A B", 2, 3)),
    Row("first fails to load: second", env("A B", 3, 3), env("A B", 3, 3), "B", env("A B", 0, 2),
        loadable=frozenset("B")),
    Row("single slot B", env("B", 1, 2), env("B", 1, 2), "B", env("B", 1, 1)),
    Row("single slot B at 0: only B reset", env("B", 1, 0), env("B", 1, 0), "B", env("B", 1, 2)),
    Row("single slot A at 0, B unlisted", env("A", 0, 3), env("A", 0, 3), "A", env("A", 2, 3)),
    Row("nothing loads", env("A B", 3, 3), env("A B", 3, 3), None, env("A B", 0, 2),
        loadable=frozenset()),
]


def script_text(board: str) -> str:
    """The bootloader script of BOARD ("ot2": U-Boot's boot.cmd, "qemu": GRUB's grub.cfg) as
    post-image.sh renders it from the board's meta (board/common/render-boot-script.sh)."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "script"
        run(ROOT / "board" / "common" / "render-boot-script.sh", board, out)
        return out.read_text()


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], check=True, capture_output=True, **kwargs)


def fat_disk(path: Path, files: dict[str, bytes]) -> Path:
    """An 8 MiB MBR disk image with one FAT16 partition at 1 MiB holding FILES (path → bytes)."""
    path.write_bytes(b"")
    run("truncate", "-s", "8M", path)
    run("sfdisk", "-q", path, input=b"start=2048, type=c\n")
    run("mkfs.vfat", "-F", "16", "-s", "1", "--offset", "2048", path, "7168")
    image = f"{path}@@{PARTITION_OFFSET}"
    folders = {"/".join(name.split("/")[:depth]) for name in files for depth in range(1, name.count("/") + 1)}
    for folder in sorted(folders):
        run("mmd", "-i", image, "::/" + folder)
    for name, data in files.items():
        local = path.parent / name.replace("/", "_")
        local.write_bytes(data)
        run("mcopy", "-i", image, local, "::/" + name)
    return path


def fat_read(disk: Path, name: str) -> bytes | None:
    """The file NAME from the disk's FAT partition, None if it is not there."""
    out = disk.parent / f"read-{name}"
    out.unlink(missing_ok=True)
    done = subprocess.run(["mcopy", "-n", "-i", f"{disk}@@{PARTITION_OFFSET}", f"::/{name}", str(out)],
                          capture_output=True)
    return out.read_bytes() if done.returncode == 0 else None


def listed_vars(command: list[str]) -> dict[str, str] | None:
    """The NAME=value lines an env tool lists; None when it refuses the file (bad CRC or block)."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return dict(line.split("=", 1) for line in done.stdout.splitlines())


class FirmwareHung(Exception):
    """QEMU timed out before the script under test ran (seen once: OVMF under a loaded TCG)."""


def boot(command: list[str], console_input: bytes, log: Path) -> str | None:
    """Runs QEMU until it powers off; the slot the script's ot2_boot stand-in booted, or None.

    Raises FirmwareHung on a timeout before the script's first boot attempt, AssertionError
    when the script did not finish.
    """
    try:
        done = subprocess.run(command, input=console_input, capture_output=True, timeout=BOOT_SECONDS)
        console = done.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as timeout:
        console = (timeout.stdout or b"").decode(errors="replace") + "\n[timed out]\n"
        log.write_text(console)
        if "OT2TRY" not in console:
            raise FirmwareHung(str(log)) from None
    log.write_text(console)
    booted = re.findall(r"OT2RESULT (\w)", console)
    if not booted and "no bootable slot" not in console:
        raise AssertionError(f"the script did not finish; console in {log}:\n{console[-2000:]}")
    return booted[-1] if booted else None


class UBoot:
    """board/ot2/boot.cmd as boot.scr on a virtio disk, run by the Pi's bootcmd in U-Boot."""
    name = "u-boot"
    files = ("uboot.env", "uboot.env.bak")
    tools = ("qemu-system-aarch64",)
    firmware = UBOOT_FIRMWARE

    @staticmethod
    def script(row: Row) -> str:
        text = script_text("ot2")
        loads = " -o ".join(f'"${{ot2_slot}}" = {s}' for s in sorted(row.loadable)) or '"${ot2_slot}" = none'
        stand_in = (f"setenv ot2_boot 'echo \"OT2TRY ${{ot2_slot}}\"; if test {loads}; then "
                    "echo \"OT2RESULT ${ot2_slot}\"; poweroff; fi'")
        text, found = re.subn(r"^setenv ot2_boot '.*'$", lambda _: stand_in, text, flags=re.M)
        assert found == 1, "boot.cmd defines ot2_boot once, on one line"
        assert "mmc 0:1" in text
        return text.replace("mmc 0:1", "virtio 0:1")

    @staticmethod
    def env_file(tmp: Path, content: dict[str, str] | str) -> bytes | None:
        if content == MISSING:
            return None
        if content == GARBAGE:
            return bytes(range(256)) * 64
        variables = env("B A", 3, 3) if content == CORRUPT else content
        (tmp / "env.txt").write_text("".join(f"{k}={v}\n" for k, v in variables.items()))
        run("mkenvimage", "-s", "0x4000", "-o", tmp / "env.bin", tmp / "env.txt")
        data = bytearray((tmp / "env.bin").read_bytes())
        if content == CORRUPT:
            data[8] ^= 0x01  # one bit of the variables: the CRC32 no longer matches
        return bytes(data)

    @staticmethod
    def read_env(tmp: Path, data: bytes) -> dict[str, str] | None:
        (tmp / "check.env").write_bytes(data)
        (tmp / "fw_env.config").write_text(f"{tmp / 'check.env'} 0x0 0x4000\n")
        return listed_vars(["fw_printenv", "-c", str(tmp / "fw_env.config")])

    @staticmethod
    def disk(tmp: Path, script: Path) -> Path:
        run("mkimage", "-A", "arm", "-T", "script", "-C", "none", "-d", script, tmp / "boot.scr")
        return fat_disk(tmp / "disk.img", {"boot.scr": (tmp / "boot.scr").read_bytes()})

    @staticmethod
    def command(disk: Path) -> list[str]:
        return ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "256", "-nographic",
                "-no-reboot", "-nic", "none", "-bios", str(UBOOT_FIRMWARE),
                "-drive", f"if=none,file={disk},format=raw,id=disk",
                "-device", "virtio-blk-device,drive=disk"]

    @staticmethod
    def console_input() -> bytes:
        """A key that stops the autoboot countdown, then the Pi's bootcmd (uboot.fragment)
        for the virtio disk, typed at the prompt."""
        fragment = (ROOT / "board" / "ot2" / "uboot.fragment").read_text()
        bootcmd = re.search(r'^CONFIG_BOOTCOMMAND="(.*)"$', fragment, re.M).group(1)
        assert "mmc 0:1" in bootcmd
        return f"x\n\nvirtio scan; {bootcmd.replace('mmc 0:1', 'virtio 0:1')}\n".encode()

    @staticmethod
    def rewrites(content: dict[str, str] | str) -> bool:
        return True  # fatwrite creates or replaces either file


class Grub:
    """board/qemu/grub.cfg in GRUB EFI (ci/make-grub-efi.sh) booted by OVMF from a virtio disk."""
    name = "grub"
    files = ("grubenv", "grubenv.bak")
    tools = ("qemu-system-x86_64",)
    firmware = OVMF

    @staticmethod
    def script(row: Row) -> str:
        text = script_text("qemu")
        loads = " -o ".join(f'"$ot2_slot" = {s}' for s in sorted(row.loadable)) or '"$ot2_slot" = none'
        stand_in = ("function ot2_boot {\n  echo \"OT2TRY $ot2_slot\"\n"
                    f"  if [ {loads} ]; then echo \"OT2RESULT $ot2_slot\"; reboot; fi\n}}")
        text, found = re.subn(r"^function ot2_boot \{\n.*?^\}$", lambda _: stand_in, text, flags=re.M | re.S)
        assert found == 1, "grub.cfg defines ot2_boot once"
        return text

    @staticmethod
    def env_file(tmp: Path, content: dict[str, str] | str) -> bytes | None:
        if content == MISSING:
            return None
        if content == GARBAGE:
            return bytes(range(256)) * 4
        variables = env("B A", 3, 3) if content == CORRUPT else content
        block = tmp / "grubenv"
        block.unlink(missing_ok=True)
        run("grub-editenv", block, "create")
        run("grub-editenv", block, "set", *(f"{k}={v}" for k, v in variables.items()))
        data = block.read_bytes()
        if content == CORRUPT:
            data = data.replace(b"# GRUB Environment Block", b"# GRUB Environment Bl0ck")
        return data

    @staticmethod
    def read_env(tmp: Path, data: bytes) -> dict[str, str] | None:
        (tmp / "check.env").write_bytes(data)
        return listed_vars(["grub-editenv", str(tmp / "check.env"), "list"])

    @staticmethod
    def disk(tmp: Path, script: Path) -> Path:
        return fat_disk(tmp / "disk.img", {"EFI/BOOT/BOOTX64.EFI": grub_efi().read_bytes(),
                                           "EFI/BOOT/grub.cfg": script.read_bytes()})

    @staticmethod
    def command(disk: Path) -> list[str]:
        return ["qemu-system-x86_64", "-m", "256", "-smp", "1", "-no-reboot", "-nic", "none",
                "-bios", str(OVMF), "-drive", f"file={disk},if=virtio,format=raw",
                "-display", "none", "-monitor", "none", "-serial", "stdio"]

    @staticmethod
    def console_input() -> bytes:
        return b""  # OVMF boots the disk's EFI/BOOT/BOOTX64.EFI, which reads its grub.cfg

    @staticmethod
    def rewrites(content: dict[str, str] | str) -> bool:
        # save_env writes into an existing, well-formed block only: GRUB creates no files.
        return isinstance(content, dict)


BOOTLOADERS = {b.name: b for b in (UBoot, Grub)}
WORKDIR = ROOT / "build" / "test-bootloaders"


def grub_efi() -> Path:
    """The GRUB EFI binary of the QEMU board's image, made once per run."""
    path = WORKDIR / "bootx64.efi"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        run(ROOT / "ci" / "make-grub-efi.sh", path)
    return path


@dataclass
class Result:
    slot: str | None
    files: dict[str, bytes | None]  # the environment files after the boot (None: absent)
    seconds: float
    workdir: Path


def boot_row(bootloader, index: int, attempts: int = 2) -> Result:
    """Writes the row's disk, boots it in the bootloader, returns what the boot left.

    A boot whose firmware hung is started again on a fresh disk, up to ATTEMPTS boots.
    """
    row = ROWS[index]
    tmp = WORKDIR / bootloader.name / f"row{index:02d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    script = tmp / "script"
    script.write_text(bootloader.script(row))
    disk = bootloader.disk(tmp, script)
    image = f"{disk}@@{PARTITION_OFFSET}"
    for name, content in zip(bootloader.files, (row.primary, row.backup)):
        data = bootloader.env_file(tmp, content)
        if data is not None:
            (tmp / name).write_bytes(data)
            run("mcopy", "-i", image, tmp / name, f"::/{name}")
    started = time.monotonic()
    try:
        slot = boot(bootloader.command(disk), bootloader.console_input(), tmp / "console.log")
    except FirmwareHung:
        if attempts == 1:
            raise
        return boot_row(bootloader, index, attempts - 1)
    return Result(slot, {name: fat_read(disk, name) for name in bootloader.files},
                  time.monotonic() - started, tmp)


def unavailable(bootloader) -> str | None:
    for tool in bootloader.tools:
        if shutil.which(tool) is None:
            return f"{tool} is missing (ci/install-deps.sh installs it)"
    if not bootloader.firmware.exists():
        return f"{bootloader.firmware} is missing (ci/install-deps.sh installs it)"
    return None


@pytest.fixture(scope="module")
def results(request) -> dict[tuple[str, int], Future[Result]]:
    """Boots every selected (bootloader, row) pair, two QEMUs at a time."""
    selected = [item.callspec.params for item in request.session.items
                if getattr(item, "function", None) is test_bootloader_follows_the_table]
    wanted = sorted({(params["bootloader"], params["index"]) for params in selected
                     if not unavailable(BOOTLOADERS[params["bootloader"]])})
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(boot_row, BOOTLOADERS[key[0]], key[1]) for key in wanted}
    print(f"\n{len(wanted)} boots in {time.monotonic() - started:.0f} s")
    return futures


def bootloader_rows() -> list:
    """(bootloader, row index) pairs, named after both."""
    return [pytest.param(name, index, id=f"{name}-{row.name}")
            for name in BOOTLOADERS for index, row in enumerate(ROWS)]


@pytest.mark.parametrize(("bootloader", "index"), bootloader_rows())
def test_bootloader_follows_the_table(bootloader: str, index: int, results):
    reason = unavailable(BOOTLOADERS[bootloader])
    if reason:
        pytest.skip(reason)
    row, loader = ROWS[index], BOOTLOADERS[bootloader]
    result = results[(bootloader, index)].result()
    assert result.slot == row.slot, f"booted {result.slot}, console in {result.workdir}"
    for name, before in zip(loader.files, (row.primary, row.backup)):
        after = result.files[name]
        if loader.rewrites(before):
            assert after is not None, f"{name} was not written"
            assert loader.read_env(result.workdir, after) == row.saved, name
        else:
            assert after == loader.env_file(result.workdir, before), f"{name} changed"


@pytest.mark.skipif(simulate_boot is None, reason="update_server.bootmodel is not in this tree")
@pytest.mark.parametrize("index", range(len(ROWS)), ids=[row.name for row in ROWS])
def test_model_follows_the_table(index: int):
    row = ROWS[index]
    outcome = simulate_boot(*(content if isinstance(content, dict) else None
                              for content in (row.primary, row.backup)), row.loadable)
    assert (outcome.slot, outcome.saved) == (row.slot, row.saved)

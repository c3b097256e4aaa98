"""Boot control on its storages, driving the real fw_printenv/fw_setenv and grub-editenv."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import bootloader_boots, make_grub_env, make_uboot_env, make_uboot_env_with_backup
from update_server.bootctl import (
    BootControl,
    BootEnvError,
    GrubStorage,
    KernelCmdline,
    UBootStorage,
    booted_slot_from_cmdline,
    serial_from_cmdline,
)
from update_server.bootmodel import BootEnv


def cmdline(tmp_path, slot="A"):
    path = tmp_path / "cmdline"
    path.write_text(f"root=/dev/mmcblk0p2 rootwait ot2.slot={slot}\n")
    return KernelCmdline(str(path))


def uboot(configs, tmp_path, slot="A"):
    return BootControl(UBootStorage(configs), cmdline(tmp_path, slot))


def grub(files, tmp_path, slot="A"):
    return BootControl(GrubStorage(files), cmdline(tmp_path, slot))


def env(order, a, b):
    return BootEnv(tuple(order.split()), {"A": a, "B": b})


def fw_printenv(config):
    out = subprocess.run(["fw_printenv", "-c", str(config)], capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


@pytest.fixture(params=["uboot", "uboot-redundant", "uboot-backup", "grub"])
def backend(request, tmp_path):
    if request.param == "uboot-backup":
        return uboot(make_uboot_env_with_backup(tmp_path), tmp_path)
    if request.param.startswith("uboot"):
        config = make_uboot_env(tmp_path, redundant=request.param.endswith("redundant"))
        return uboot(str(config), tmp_path)
    return grub(make_grub_env(tmp_path), tmp_path)


def boot(b, loadable=frozenset("AB")):
    """A reboot through the bootloader model; the booted slot goes on the cmdline."""
    slot = bootloader_boots(b, loadable)
    with open(b.cmdline.path, "w") as f:
        f.write(f"ot2.slot={slot}\n")
    return slot


def test_contract_operations(backend):
    b = backend
    assert b.booted_slot() == "A" and b.inactive_slot() == "B"
    assert b.read() == env("A B", 3, 3)
    assert b.mark_bad("B") == b.read() == env("A", 3, 0)
    assert b.select_for_next_boot("B", 3) == b.read() == env("B A", 3, 3)
    # the new slot never becomes healthy: its tries run out, then A is booted
    assert [boot(b) for _ in range(4)] == ["B", "B", "B", "A"]
    assert b.read() == env("B A", 2, 0)
    assert b.set_primary("A", other_tries=0) == b.read() == env("A B", 2, 0)
    assert b.mark_good() == b.read() == env("A B", 3, 0)
    with pytest.raises(BootEnvError):
        b.mark_bad("A")  # never the booted slot


def test_mark_good_after_a_boot_that_skipped_an_unloadable_slot(backend):
    b = backend
    b.select_for_next_boot("B")
    assert boot(b, loadable=frozenset("A")) == "A"
    assert b.read() == env("B A", 2, 0)
    assert b.mark_good() == b.read() == env("B A", 3, 0)


def test_uboot_writes_all_variables_in_one_write(tmp_path):
    config = make_uboot_env(tmp_path)
    b = uboot(str(config), tmp_path)
    before = os.stat(tmp_path / "uboot.env").st_mtime_ns
    b.select_for_next_boot("B")
    assert fw_printenv(config) == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    assert os.stat(tmp_path / "uboot.env").st_mtime_ns >= before


def test_uboot_redundant_env_alternates_copies(tmp_path):
    config = make_uboot_env(tmp_path, redundant=True)
    b = uboot(str(config), tmp_path)
    images = [(tmp_path / n).read_bytes() for n in ("uboot.env", "uboot-redund.env")]
    b.mark_bad("B")
    after = [(tmp_path / n).read_bytes() for n in ("uboot.env", "uboot-redund.env")]
    assert sum(a != b_ for a, b_ in zip(images, after)) == 1  # one copy written, one kept
    # the old copy going bad leaves the new one in charge
    b.select_for_next_boot("B")
    assert b.read() == env("B A", 3, 3)


def test_uboot_corrupt_env_reads_defaults_and_can_be_rewritten(tmp_path):
    config = make_uboot_env(tmp_path)
    with open(tmp_path / "uboot.env", "r+b") as f:
        f.write(b"\xde\xad\xbe\xef")  # CRC no longer matches
    b = uboot(str(config), tmp_path)
    assert b.read() == env("A B", 3, 3)
    b.mark_bad("B")
    assert fw_printenv(config)["BOOT_ORDER"] == "A"


def test_uboot_primary_then_backup(tmp_path):
    configs = make_uboot_env_with_backup(tmp_path)
    primary, backup = tmp_path / "primary/uboot.env", tmp_path / "backup/uboot.env"
    b = uboot(configs, tmp_path)
    b.select_for_next_boot("B")
    assert fw_printenv(configs[0]) == fw_printenv(configs[1]) == {
        "BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    subprocess.run(["fw_setenv", "-c", configs[1], "BOOT_ORDER", "A"], check=True)
    assert b.read().order == ("B", "A")  # the primary wins while valid
    with open(primary, "r+b") as f:
        f.write(b"\xde\xad\xbe\xef")
    assert b.read().order == ("A",)  # CRC-bad primary: the backup
    os.unlink(primary)
    assert b.read().order == ("A",)  # missing primary: the backup
    backup.write_bytes(bytes(0x4000))
    assert b.read() == env("A B", 3, 3)  # neither: defaults
    b.mark_bad("B")  # the missing primary and the invalid backup are rewritten, primary first
    assert fw_printenv(configs[0])["BOOT_ORDER"] == fw_printenv(configs[1])["BOOT_ORDER"] == "A"
    assert os.stat(primary).st_mtime_ns <= os.stat(backup).st_mtime_ns


def test_grub_empty_env_means_defaults(tmp_path):
    files = [str(tmp_path / "grubenv"), str(tmp_path / "grubenv.bak")]
    for f in files:
        subprocess.run(["grub-editenv", f, "create"], check=True)
    b = grub(files, tmp_path, "B")
    assert b.read() == env("A B", 3, 3)
    assert b.inactive_slot() == "A"


def test_grub_primary_then_backup(tmp_path):
    files = make_grub_env(tmp_path)
    b = grub(files, tmp_path)
    subprocess.run(["grub-editenv", files[1], "set", "BOOT_ORDER=B A"], check=True)
    assert b.read().order == ("A", "B")  # primary wins while valid
    os.unlink(files[0])
    assert b.read().order == ("B", "A")  # backup when the primary is missing
    (tmp_path / "grubenv").write_bytes(b"\0" * 1024)
    assert b.read().order == ("B", "A")  # ... or invalid
    os.unlink(files[1])
    assert b.read() == env("A B", 3, 3)  # neither: defaults
    b.mark_bad("B")
    for f in files:
        out = subprocess.run(["grub-editenv", f, "list"], capture_output=True, text=True, check=True).stdout
        assert "BOOT_ORDER=A\n" in out


@pytest.mark.parametrize("bad", [["BOOT_ORDER=C B B"], ["BOOT_A_LEFT=x"], ["BOOT_B_LEFT=4"], ["BOOT_ORDER="]])
def test_a_copy_with_an_illegal_value_is_passed_over_as_the_bootloader_does(tmp_path, bad):
    files = make_grub_env(tmp_path)
    subprocess.run(["grub-editenv", files[1], "set", "BOOT_ORDER=B A", "BOOT_A_LEFT=1"], check=True)
    subprocess.run(["grub-editenv", files[0], "set", *bad], check=True)
    b = grub(files, tmp_path)
    assert b.read() == env("B A", 1, 3)  # the backup
    subprocess.run(["grub-editenv", files[1], "set", *bad], check=True)
    assert b.read() == env("A B", 3, 3)  # the defaults


def test_cmdline_parsing():
    assert booted_slot_from_cmdline("ot2.slot=B") == "B"
    assert booted_slot_from_cmdline("root=x ot2.slot=A quiet") == "A"
    assert booted_slot_from_cmdline("xot2.slot=A") is None
    assert booted_slot_from_cmdline("ot2.slot=C") is None
    assert booted_slot_from_cmdline("") is None


def test_serial_from_cmdline():
    assert serial_from_cmdline("root=x ot2.slot=A ot2.serial=qemu-0a1b2c quiet") == "qemu-0a1b2c"
    # GRUB/U-Boot with no serial to give put an empty value there.
    assert serial_from_cmdline("ot2.slot=A ot2.serial= quiet") is None
    assert serial_from_cmdline("ot2.serial=a;b") is None


def test_serial_read_from_the_kernel_cmdline(tmp_path):
    (tmp_path / "cmdline").write_text("ot2.slot=B ot2.serial=00000000deadbeef\n")
    assert KernelCmdline(str(tmp_path / "cmdline")).serial() == "00000000deadbeef"


def test_health_names_the_serial_from_the_cmdline(rig):
    assert rig.client.get("/health").body["serialNumber"] == "rig-0001"

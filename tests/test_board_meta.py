"""Board facts as data: board/<board>/meta rendered into the bootloader scripts, the initial
boot environment and the disk image (board/common/render-boot-script.sh, post-image.sh), with
the real tools (grub-script-check, mkimage, grub-editenv, fw_printenv, genimage, sfdisk)."""

import json
import os
import re
import shutil
import subprocess

import pytest

TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOARDS = sorted(d for d in os.listdir(os.path.join(TREE, "board"))
                if os.path.isfile(os.path.join(TREE, "board", d, "meta")))


def meta(board, root=TREE):
    """The board's meta as the scripts see it (sourced by sh)."""
    out = subprocess.run(["sh", "-c", 'set -a; . "$1"; env -0', "sh", os.path.join(root, "board", board, "meta")],
                         check=True, capture_output=True, text=True).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def render(board, out, root=TREE, check=True):
    return subprocess.run([os.path.join(root, "board", "common", "render-boot-script.sh"), board, str(out)],
                          check=check, capture_output=True, text=True)


def board_copy(tmp_path, board, **changes):
    """A copy of board/common and board/BOARD with some of BOARD's meta lines replaced."""
    root = tmp_path / "tree"
    for d in ("common", board):
        shutil.copytree(os.path.join(TREE, "board", d), root / "board" / d)
    path = root / "board" / board / "meta"
    text = path.read_text()
    for key, value in changes.items():
        text = re.sub(r"^{}=.*$".format(key), "{}={}".format(key, value), text, flags=re.M)
    path.write_text(text)
    return str(root)


def compile_script(board, script, tmp_path):
    """Runs the bootloader's own checker on a rendered script; returns its output."""
    if meta(board)["BOOTLOADER"] == "grub":
        cmd = ["grub-script-check", str(script)]
    else:
        cmd = ["mkimage", "-A", "arm", "-T", "script", "-C", "none", "-d", str(script), str(tmp_path / "boot.scr")]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def test_both_boards_have_a_meta():
    assert BOARDS == ["ot2", "qemu"]
    assert {meta(b)["BOOTLOADER"] for b in BOARDS} == {"grub", "uboot"}


@pytest.mark.parametrize("board", BOARDS)
def test_rendered_script_compiles_and_holds_the_board_facts(board, tmp_path):
    facts = meta(board)
    script = tmp_path / facts["BOOT_SCRIPT"]
    render(board, script)
    text = script.read_text()
    assert "@" not in re.sub(r"#.*", "", text)
    for fact in ("BOOT_ENV", "BOOT_ENV_BACKUP", "PART_DEVICE"):
        assert facts[fact] in text
    # Legal counts 0..3, three steps down per slot.
    assert text.count(" = 3") >= 2 and " = 4" not in text
    compile_script(board, script, tmp_path)


@pytest.mark.parametrize("board", BOARDS)
def test_another_try_count_is_counted_by_the_script(board, tmp_path):
    root = board_copy(tmp_path, board, BOOT_TRIES=2)
    facts = meta(board, root)
    script = tmp_path / facts["BOOT_SCRIPT"]
    render(board, script, root)
    text = re.sub(r"#.*", "", script.read_text())
    for slot in "AB":
        steps = re.findall(r"BOOT_{}_LEFT}}?\"? = (\d)\s*\]?; then set(?:env)? BOOT_{}_LEFT[= ](\d)".format(slot, slot),
                           text)
        assert steps == [("2", "1"), ("1", "0")]
        # The legal-values check and the countdown compare with 0..2 and nothing else.
        compared = set(re.findall(r"BOOT_{}_LEFT}}?\" = (\d+)".format(slot), text))
        assert compared == {"0", "1", "2"}
    compile_script(board, script, tmp_path)


@pytest.mark.parametrize("tries", ["0", "4", "three"])
def test_a_try_count_the_scripts_cannot_count_is_refused(tries, tmp_path):
    root = board_copy(tmp_path, "qemu", BOOT_TRIES=tries)
    r = render("qemu", tmp_path / "grub.cfg", root, check=False)
    assert r.returncode != 0 and "BOOT_TRIES={}, expected 1..3".format(tries) in r.stderr
    assert not (tmp_path / "grub.cfg").exists()


def test_a_placeholder_without_a_value_is_refused(tmp_path):
    root = board_copy(tmp_path, "qemu")
    with open(os.path.join(root, "board", "qemu", "grub.cfg"), "a") as f:
        f.write("echo @NO_SUCH_FACT@\n")
    r = render("qemu", tmp_path / "grub.cfg", root, check=False)
    assert r.returncode != 0 and "@NO_SUCH_FACT@ has no value" in r.stderr
    assert not (tmp_path / "grub.cfg").exists()


def boot_env(board, binaries, tmp_path):
    """BOOT_* variables of the initial environment post-image.sh wrote, read by the tool
    the update server uses for that bootloader."""
    facts = meta(board)
    path = binaries / facts["BOOT_ENV"]
    if facts["BOOTLOADER"] == "grub":
        out = subprocess.run(["grub-editenv", str(path), "list"], check=True, capture_output=True, text=True).stdout
    else:
        config = tmp_path / "fw_env.config"
        config.write_text("{} 0x0000 {}\n".format(path, facts["BOOT_ENV_SIZE"]))
        out = subprocess.run(["fw_printenv", "-c", str(config)], check=True, capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if line.startswith("BOOT_"))


# What genimage takes from BINARIES_DIR on each board besides the root filesystem.
BOOT_INPUTS = {
    "grub": ["efi-part/EFI/BOOT/bootx64.efi"],
    "uboot": ["rpi-firmware/bootcode.bin", "rpi-firmware/start.elf", "rpi-firmware/fixup.dat",
              "rpi-firmware/overlays/x.dtbo", "bcm2710-rpi-3-b.dtb", "bcm2710-rpi-3-b-plus.dtb",
              "bcm2710-rpi-cm3.dtb", "u-boot.bin"],
}


@pytest.mark.parametrize("board", BOARDS)
def test_post_image_lays_out_the_partitions_of_meta(board, tmp_path):
    facts = meta(board)
    binaries = tmp_path / "images"
    for name in BOOT_INPUTS[facts["BOOTLOADER"]]:
        (binaries / name).parent.mkdir(parents=True, exist_ok=True)
        (binaries / name).write_bytes(b"stand-in")
    (binaries / "rootfs.squashfs").write_bytes(b"\0" * 4096)
    subprocess.run([os.path.join(TREE, "board", "common", "post-image.sh"), str(binaries), board],
                   check=True, capture_output=True)
    image = binaries / facts["IMAGE_NAME"]
    assert (binaries / (facts["IMAGE_NAME"] + ".bmap")).exists()
    table = json.loads(subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True,
                                      text=True).stdout)["partitiontable"]["partitions"]
    assert len(table) == 4
    mib = 2048  # 512-byte sectors
    assert table[int(facts["BOOT_PART"]) - 1]["type"] == "c"
    for slot in "AB":
        assert table[int(facts["SLOT_{}_PART".format(slot)]) - 1]["size"] == 512 * mib
    tries = facts["BOOT_TRIES"]
    assert boot_env(board, binaries, tmp_path) == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": tries, "BOOT_B_LEFT": tries}

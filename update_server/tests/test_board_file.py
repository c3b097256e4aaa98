"""The board's facts in the config's board_file (/etc/ot2/board.conf on the image, written by
board/common/post-build.sh from board/<board>/meta)."""

import pytest

from update_server.config import ConfigError, load_config

QEMU_BOARD = """# The board facts of this image
BOARD_COMPATIBLE=ot2-qemu-x86_64
BOOTLOADER=grub
BOOT_TRIES=3
UBOOT_DEVICE="mmc 0"
SLOT_A_DEVICE=/dev/vda2
SLOT_B_DEVICE=/dev/vda3
GRUBENV_FILES="/boot/firmware/grubenv /boot/firmware/grubenv.bak"
"""


def write(tmp_path, toml, board=QEMU_BOARD):
    (tmp_path / "board.conf").write_text(board)
    path = tmp_path / "update-server.toml"
    path.write_text(f'board_file = "{tmp_path / "board.conf"}"\n' + toml)
    return str(path)


def test_the_board_file_fills_the_board_keys(tmp_path):
    config = load_config(write(tmp_path, 'port = 34001\n'))
    assert config.compatible == "ot2-qemu-x86_64"
    assert config.boot_backend == "grub"
    assert config.slots == {"A": "/dev/vda2", "B": "/dev/vda3"}
    assert config.grubenv == ["/boot/firmware/grubenv", "/boot/firmware/grubenv.bak"]
    assert config.port == 34001


def test_the_config_file_and_overrides_win_over_the_board_file(tmp_path):
    path = write(tmp_path, 'compatible = "test-board"\n[slots.A]\ndevice = "/tmp/a.img"\n')
    config = load_config(path, {"boot_backend": "uboot"})
    assert config.compatible == "test-board"
    assert config.slots == {"A": "/tmp/a.img"}
    assert config.boot_backend == "uboot"


def test_the_libubootenv_configs_of_a_uboot_board(tmp_path):
    board = 'BOOTLOADER=uboot\nBOOT_TRIES=3\nFW_ENV_CONFIGS="/etc/fw_env.config /etc/fw_env.bak.config"\n'
    config = load_config(write(tmp_path, "", board))
    assert config.boot_backend == "uboot"
    assert config.fw_env_config == ["/etc/fw_env.config", "/etc/fw_env.bak.config"]


@pytest.mark.parametrize("max_tries", [1, 2, 3])
def test_max_tries_up_to_the_boards_count(tmp_path, max_tries):
    assert load_config(write(tmp_path, f"max_tries = {max_tries}\n")).max_tries == max_tries


def test_max_tries_defaults_to_the_boards_count(tmp_path):
    board = QEMU_BOARD.replace("BOOT_TRIES=3", "BOOT_TRIES=2")
    assert load_config(write(tmp_path, "", board)).max_tries == 2


def test_max_tries_above_the_boards_count_names_both(tmp_path):
    board = QEMU_BOARD.replace("BOOT_TRIES=3", "BOOT_TRIES=2")
    with pytest.raises(ConfigError, match=r"max_tries = 3 is more than BOOT_TRIES = 2 of .*board\.conf"):
        load_config(write(tmp_path, "max_tries = 3\n", board))


@pytest.mark.parametrize("board, problem", [
    ("BOOT_TRIES\n", "expected KEY=value"),
    ("BOOT_TRIES=three\n", "BOOT_TRIES: expected an integer"),
    ('BOARD_COMPATIBLE="unclosed\n', "cannot read"),
])
def test_a_broken_board_file_is_a_config_error(tmp_path, board, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, "", board))


def test_an_empty_board_file_setting_reads_no_board(tmp_path):
    path = tmp_path / "update-server.toml"
    path.write_text('board_file = ""\n')
    config = load_config(str(path))
    assert config.compatible == "" and config.max_tries == 3 and config.slots == {}

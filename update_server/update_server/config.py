"""Configuration: a TOML file (default ``/etc/ot2/update-server.toml``) plus overrides.

Example (every key is optional; the values shown are the defaults unless noted)::

    listen = "0.0.0.0"
    port = 34000
    data_dir = "/data"
    compatible = ""                       # "" = take it from version_file
    keyring = "/etc/ot2/keyring"          # directory of *.pem public keys
    boot_backend = "uboot"                # "uboot" | "grub"
    fw_env_config = ["/etc/fw_env.config"]  # libubootenv configs, primary first, then
                                          # backups (a string is one config); each is
                                          # passed to fw_printenv/fw_setenv -c
    uboot_default_env = ""                # passed as -f; "" = built-in defaults
    grubenv = ["/boot/firmware/grubenv", "/boot/firmware/grubenv.bak"]
    boot_mount = ""                       # e.g. "/boot/firmware": remounted rw while writing
    cmdline = "/proc/cmdline"
    boot_id_file = "/proc/sys/kernel/random/boot_id"
    machine_id_file = "/etc/machine-id"
    version_file = "/etc/ot2/version.json"
    board_file = "/etc/ot2/board.conf"    # the board's facts ("" = none); see below
    # who may change the robot (docs/security.md): callers on these interfaces (shell
    # patterns: loopback, the USB-Ethernet link) without a token, everyone else with one
    trusted_interfaces = ["lo", "usb*"]
    open_access = false                   # true: the OT-2's behaviour, no token needed for
                                          # updates, name and restart (never for SSH keys,
                                          # tokens or mark-good)
    session_idle_timeout = 300            # seconds an update session may wait unused
                                          # (awaiting its file, or written but not committed)
    max_connections = 256                 # open connections in all
    max_connections_per_peer = 32         # open connections per peer address
    header_timeout = 10                   # seconds to send a request head
    idle_timeout = 60                     # seconds a connection may idle between requests
    apply_hostname = false
    mdns = false
    mdns_port = 31950
    mdns_interfaces = []                  # [] = all interfaces
    robot_model = "OT-2 Standard"
    reboot_command = ["systemctl", "reboot"]
    health_urls = []                      # [] = robot server + this server's /health
    boot_check_timeout = 300              # seconds
    boot_check_interval = 2               # seconds
    chunk_size = 1048576                  # bytes
    max_tries = 3                         # 1..3: the tries the bootloader scripts count
    log_level = "info"

    [slots.A]
    device = "/dev/mmcblk0p2"
    [slots.B]
    device = "/dev/mmcblk0p3"

The board's facts come from ``board_file`` when it exists (on the image
``/etc/ot2/board.conf``, written by ``board/common/post-build.sh`` from ``board/<board>/meta``):
``compatible``, ``revision``, ``boot_backend``, ``slots``, and ``fw_env_config`` or ``grubenv`` are taken from
it unless the TOML file or an override sets them, and ``max_tries`` may not exceed its
``BOOT_TRIES`` (the tries its bootloader script counts).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import bootctl
from .access import AccessSettings
from .errors import UpdateError
from .tokens import tokens_path

DEFAULT_CONFIG_PATH = "/etc/ot2/update-server.toml"
DEFAULT_BOARD_FILE = "/etc/ot2/board.conf"
SLOT_NAMES = ("A", "B")


class ConfigError(Exception):
    """The configuration file or an override is invalid."""


STATE_SUBDIR = "update-server"     # under data_dir: state.json, the name, rollout.json
ROLLOUT_FILE = "rollout.json"


@dataclass
class Config(AccessSettings):
    """All settings of the update server (units: bytes, seconds); the access and
    connection ones are :class:`~update_server.access.AccessSettings`'."""

    listen: str = "0.0.0.0"
    port: int = 34000
    data_dir: str = "/data"
    compatible: str = ""
    revision: str = ""                    # the board revision a bundle must name; "" = any
    keyring: str = "/etc/ot2/keyring"
    boot_backend: str = "uboot"
    fw_env_config: list = field(default_factory=lambda: ["/etc/fw_env.config"])
    uboot_default_env: str = ""
    grubenv: list = field(
        default_factory=lambda: ["/boot/firmware/grubenv", "/boot/firmware/grubenv.bak"]
    )
    boot_mount: str = ""
    cmdline: str = "/proc/cmdline"
    boot_id_file: str = "/proc/sys/kernel/random/boot_id"
    machine_id_file: str = "/etc/machine-id"
    version_file: str = "/etc/ot2/version.json"
    board_file: str = DEFAULT_BOARD_FILE
    session_idle_timeout: float = 300.0
    apply_hostname: bool = False
    mdns: bool = False
    mdns_port: int = 31950
    mdns_interfaces: list = field(default_factory=list)
    robot_model: str = "OT-2 Standard"
    reboot_command: list = field(default_factory=lambda: ["systemctl", "reboot"])
    health_urls: list = field(default_factory=list)
    # The robot server's health (its "lease": a protocol run holds the robot); "" = none.
    robot_health_url: str = ""
    # A rollout server's DDI API (update_server/ddi.py); "" = off.
    ddi_url: str = ""
    ddi_tenant: str = "DEFAULT"
    ddi_controller_id: str = ""           # "" = the board's serial number
    ddi_target_token: str = ""
    ddi_gateway_token: str = ""
    ddi_poll_seconds: float = 300.0       # until the server names its interval
    boot_check_timeout: float = 300.0
    boot_check_interval: float = 2.0
    chunk_size: int = 1 << 20
    max_tries: int = 3
    log_level: str = "info"
    slots: dict = field(default_factory=dict)  # {"A": "/dev/...", "B": "/dev/..."}

    # ---- derived values -------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """``data_dir/update-server``: state.json and the robot name."""
        return Path(self.data_dir) / STATE_SUBDIR

    @property
    def rollout_file(self) -> Path:
        """The rollout server set at provisioning (:func:`_rollout_settings`)."""
        return self.state_dir / ROLLOUT_FILE

    @property
    def ssh_dir(self) -> Path:
        """``data_dir/ssh``: authorized_keys."""
        return Path(self.data_dir) / "ssh"

    def system_version(self) -> dict:
        """The parsed ``version_file`` (``{}`` when missing or unreadable)."""
        try:
            data = json.loads(Path(self.version_file).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def effective_compatible(self) -> str:
        """``compatible`` from the config, else from ``version_file``, else ``""``."""
        if self.compatible:
            return self.compatible
        value = self.system_version().get("compatible", "")
        return value if isinstance(value, str) else ""

    def slot_device(self, slot: str) -> str:
        """Device (or file) of ``slot``; raises UpdateError ``slot-unavailable``."""
        device = self.slots.get(slot)
        if not device:
            raise UpdateError("slot-unavailable", f"no device configured for slot {slot}")
        return device

    @property
    def tokens_file(self) -> Path:
        """``data_dir/ot2/tokens.json``: the paired clients' tokens (both servers)."""
        return tokens_path(self.data_dir)

    def self_health_url(self) -> str:
        """URL of this server's own ``/health`` as seen from the same machine."""
        host = self.listen
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/health"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _check_type(key: str, value):
    default = _FIELDS[key].default
    if default is dataclasses.MISSING:
        expected = list if key != "slots" else dict
    else:
        expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {value!r}")
    if expected is list and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings")
    return value


def _normalise_slots(raw) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError("slots: expected a table")
    slots = {}
    for name, value in raw.items():
        if name not in SLOT_NAMES:
            raise ConfigError(f"slots: unknown slot {name!r} (expected A or B)")
        if isinstance(value, dict):
            value = value.get("device")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"slots.{name}.device: expected a path")
        slots[name] = value
    return slots


def read_board_file(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of a board file (shell syntax: ``#`` comments, quoting) as a
    dict of strings. Raises :class:`ConfigError` when unreadable or not such lines."""
    try:
        words = shlex.split(path.read_text(), comments=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if bad := [word for word in words if "=" not in word]:
        raise ConfigError(f"{path}: expected KEY=value, got {bad[0]!r}")
    return dict(word.split("=", 1) for word in words)


def _board_settings(board: dict[str, str]) -> dict:
    """Config values (key -> raw value, as from the TOML file) of a board file's facts."""
    settings: dict = {}
    if "BOARD_COMPATIBLE" in board:
        settings["compatible"] = board["BOARD_COMPATIBLE"]
    if "BOARD_REVISION" in board:
        settings["revision"] = board["BOARD_REVISION"]
    if "BOOTLOADER" in board:
        settings["boot_backend"] = board["BOOTLOADER"]
    slots = {name: board[f"SLOT_{name}_DEVICE"] for name in SLOT_NAMES if f"SLOT_{name}_DEVICE" in board}
    if slots:
        settings["slots"] = slots
    if "FW_ENV_CONFIGS" in board:
        settings["fw_env_config"] = board["FW_ENV_CONFIGS"].split()
    if "GRUBENV_FILES" in board:
        settings["grubenv"] = board["GRUBENV_FILES"].split()
    if board.get("BOOT_TRIES", "").isdigit():  # other values: _check_board_tries says why
        settings["max_tries"] = int(board["BOOT_TRIES"])
    return settings


def _rollout_settings(data: dict) -> dict:
    """The rollout server set at provisioning (``data_dir/update-server/rollout.json``, made
    by ``update_server/provision.py`` from robot.toml's ``[rollout]``): ``ddi_*`` settings,
    or ``{}`` when there is none, it is unreadable, or the configuration names a server itself."""
    if data.get("ddi_url"):
        return {}
    data_dir = data.get("data_dir", Config.data_dir)
    try:
        rollout = json.loads((Path(str(data_dir)) / STATE_SUBDIR / ROLLOUT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in rollout.items() if k.startswith("ddi_")} if isinstance(rollout, dict) else {}


def _check_board_tries(config: Config, board: dict[str, str], path: Path) -> None:
    """``max_tries`` must fit the board's ``BOOT_TRIES``: its bootloader script takes a larger
    count for a corrupt environment and falls back to the default boot order (a slot switch)."""
    if "BOOT_TRIES" not in board:
        return
    try:
        boot_tries = int(board["BOOT_TRIES"])
    except ValueError:
        raise ConfigError(f"{path}: BOOT_TRIES: expected an integer, got {board['BOOT_TRIES']!r}") from None
    if config.max_tries > boot_tries:
        raise ConfigError(f"max_tries = {config.max_tries} is more than BOOT_TRIES = {boot_tries} of {path}, "
                          "the tries the board's bootloader script counts (a larger value would make it "
                          "reset the boot order)")


def load_config(path: str | None = None, overrides: dict | None = None) -> Config:
    """Read the TOML file at ``path`` and apply ``overrides`` (key -> value).

    ``path=None`` reads :data:`DEFAULT_CONFIG_PATH` if it exists, else uses defaults. The
    board file (``board_file``, :data:`DEFAULT_BOARD_FILE` unless set), when it exists, fills
    the board's keys the file and the overrides leave unset (module docstring). An explicit
    path that does not exist is an error.  Raises :class:`ConfigError` on unknown keys,
    wrong types and bad values.
    """
    data: dict = {}
    if path is None:
        if Path(DEFAULT_CONFIG_PATH).exists():
            path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
    data.update(overrides or {})
    data = {**_rollout_settings(data), **data}
    board: dict[str, str] = {}
    board_file = data.get("board_file", DEFAULT_BOARD_FILE)
    board_path = Path(board_file) if isinstance(board_file, str) and board_file else None
    if board_path is not None and board_path.exists():
        board = read_board_file(board_path)
        data = {**_board_settings(board), **data}
    else:
        board_path = None

    values = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown configuration key {key!r}")
        if key == "slots":
            values[key] = _normalise_slots(value)
        elif key in ("fw_env_config", "grubenv") and isinstance(value, str):
            values[key] = [value]
        else:
            values[key] = _check_type(key, value)
    config = Config(**values)
    if board_path is not None:
        _check_board_tries(config, board, board_path)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Check value ranges; raises :class:`ConfigError`."""
    if config.boot_backend not in ("uboot", "grub"):
        raise ConfigError("boot_backend: expected 'uboot' or 'grub'")
    if not 0 < config.port < 65536:
        raise ConfigError("port: out of range")
    if not 4096 <= config.chunk_size <= 64 << 20 or config.chunk_size % 512:
        raise ConfigError("chunk_size: expected a multiple of 512 between 4 KiB and 64 MiB")
    if not 1 <= config.max_tries <= bootctl.MAX_TRIES:
        raise ConfigError(f"max_tries: expected 1..{bootctl.MAX_TRIES}, the tries the bootloader "
                          "scripts count (a larger value would make them reset the boot order)")
    if config.boot_backend == "grub" and not config.grubenv:
        raise ConfigError("grubenv: at least one file is needed")
    if config.boot_backend == "uboot" and not config.fw_env_config:
        raise ConfigError("fw_env_config: at least one config is needed")
    if not config.reboot_command:
        raise ConfigError("reboot_command: must not be empty")
    if problem := config.access_settings_problem():
        raise ConfigError(problem)
    if config.session_idle_timeout <= 0:
        raise ConfigError("session_idle_timeout: expected a positive number of seconds")

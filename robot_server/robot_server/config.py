"""Robot server configuration: a flat TOML file (default ``/etc/ot2/robot-server.toml``).

Every key is optional; unknown keys and wrong types are errors (a typo must not silently
fall back to a default on a robot).

=====================  ====================  ==================================================
key                    default               meaning
=====================  ====================  ==================================================
``listen``             ``"0.0.0.0"``         HTTP and bridge listen address
``port``               ``31950``             HTTP port
``bridge_port``        ``7887``              raw TCP JSON bridge port (0: any free port, like ``port``)
``bridge_enabled``     ``true``              serve the raw TCP bridge at all
``channel_port``       ``31960``             G-code channel port, always on 127.0.0.1 (0: any free port)
``serial_port``        ``"/dev/ttyAMA0"``    motor board device or pyserial URL
                                             (``socket://127.0.0.1:PORT``)
``baudrate``           ``115200``            UART speed
``gpio_backend``       ``"rpi"``             ``"rpi"`` (libgpiod) or ``"sim"`` (simulated)
``data_dir``           ``"/data"``           persistent data; the server uses ``<data_dir>/robot-server``
``lock_file``          ``"/run/robot-server/robot-server.lock"``  single-owner lock
``ack_timeout``        ``5.0``               seconds to wait for the board's acknowledgement
``reconnect_interval`` ``2.0``               seconds between attempts to (re)open the board
``bridge_max_message`` ``65536``             bytes; a longer bridge message is refused and closed
``left_mount_offset``  ``[-34.0, 0.0, 0.0]`` left mount position relative to the right (mm)
``protocol_analysis_timeout`` ``60.0``       seconds an uploaded protocol's analysis may take
``analysis_prewarm``   ``true``              start the warm analysis worker with the server (else at the first upload)
``sandbox_user``       ``"ot2-run"``         user protocol code runs as (``nobody`` if it does not exist)
``sandbox_memory_max`` ``805306368``         bytes of memory per analysis worker / run process (768 MiB)
``sandbox_tasks_max``  ``256``               processes + threads per sandbox
``channel_users``      ``["ot2-notebook"]``  users besides root, the server's own and ``sandbox_user``
                                             whose processes may use the G-code channel
``trusted_interfaces`` ``["lo", "usb*"]``    interfaces whose callers are someone at the robot
                                             (shell patterns; ``docs/security.md``)
``open_access``        ``false``             true: the OT-2's behaviour, no token needed to change,
                                             move or run (cross-site rules still apply)
``max_connections``    ``256``               open HTTP connections in all
``max_connections_per_peer`` ``32``          open HTTP connections per peer address
``header_timeout``     ``10.0``              seconds to send an HTTP request head
``idle_timeout``       ``60.0``              seconds an HTTP connection may idle between requests
``bridge_max_clients`` ``64``                bridge connections in all (the oldest is closed for a new one)
``bridge_max_clients_per_peer`` ``16``       bridge connections per peer address
``pairing_timeout``    ``30.0``              seconds a pairing request waits for the front button
``module_dir``         ``"/dev"``            where the udev rules name USB modules ``ot_module_<name><n>``
=====================  ====================  ==================================================
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from update_server.access import AccessSettings

DEFAULT_PATH = "/etc/ot2/robot-server.toml"


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


@dataclass
class Config(AccessSettings):
    """The robot server's settings (the table above); the access and connection ones are
    :class:`~update_server.access.AccessSettings`'."""

    listen: str = "0.0.0.0"
    port: int = 31950
    bridge_port: int = 7887
    bridge_enabled: bool = True
    channel_port: int = 31960
    serial_port: str = "/dev/ttyAMA0"
    baudrate: int = 115200
    gpio_backend: str = "rpi"
    data_dir: str = "/data"
    lock_file: str = "/run/robot-server/robot-server.lock"
    ack_timeout: float = 5.0
    reconnect_interval: float = 2.0
    bridge_max_message: int = 65536
    left_mount_offset: list = field(default_factory=lambda: [-34.0, 0.0, 0.0])
    protocol_analysis_timeout: float = 60.0
    analysis_prewarm: bool = True
    sandbox_user: str = "ot2-run"
    channel_users: list = field(default_factory=lambda: ["ot2-notebook"])
    sandbox_memory_max: int = 768 * 1024 * 1024
    sandbox_tasks_max: int = 256
    bridge_max_clients: int = 64
    bridge_max_clients_per_peer: int = 16
    pairing_timeout: float = 30.0
    module_dir: str = "/dev"

    def validate(self) -> "Config":
        if self.gpio_backend not in ("rpi", "sim"):
            raise ConfigError(f"gpio_backend must be 'rpi' or 'sim', not {self.gpio_backend!r}")
        for name in ("port", "bridge_port", "channel_port"):
            val = getattr(self, name)
            if not 0 <= val <= 65535:
                raise ConfigError(f"{name} out of range: {val}")
        if self.baudrate <= 0:
            raise ConfigError("baudrate must be positive")
        if not 0 < self.ack_timeout <= 600:
            raise ConfigError("ack_timeout must be in (0, 600] seconds")
        if self.reconnect_interval <= 0:
            raise ConfigError("reconnect_interval must be positive")
        if self.bridge_max_message < 256:
            raise ConfigError("bridge_max_message must be at least 256 bytes")
        if (len(self.left_mount_offset) != 3
                or not all(isinstance(v, (int, float)) for v in self.left_mount_offset)):
            raise ConfigError("left_mount_offset must be three numbers [x, y, z]")
        self.left_mount_offset = [float(v) for v in self.left_mount_offset]
        if not 0 < self.protocol_analysis_timeout <= 3600:
            raise ConfigError("protocol_analysis_timeout must be in (0, 3600] seconds")
        if self.sandbox_memory_max < 256 * 1024 * 1024:
            raise ConfigError("sandbox_memory_max must be at least 268435456 bytes (256 MiB)")
        if not 16 <= self.sandbox_tasks_max <= 65536:
            raise ConfigError("sandbox_tasks_max must be in [16, 65536]")
        if not self.sandbox_user or self.sandbox_user == "root":
            raise ConfigError("sandbox_user must name an unprivileged user")
        if not all(isinstance(u, str) and u for u in self.channel_users):
            raise ConfigError("channel_users must be a list of user names")
        if problem := self.access_settings_problem():
            raise ConfigError(problem)
        if not 1 <= self.bridge_max_clients_per_peer <= self.bridge_max_clients:
            raise ConfigError("bridge_max_clients_per_peer must be in [1, bridge_max_clients]")
        if not 0 < self.pairing_timeout <= 3600:
            raise ConfigError("pairing_timeout must be in (0, 3600] seconds")
        return self

    @property
    def state_dir(self) -> Path:
        return Path(self.data_dir) / "robot-server"


def from_dict(data: dict) -> Config:
    """Build a :class:`Config` from parsed TOML. Raises :class:`ConfigError`."""
    known = {f.name: f for f in fields(Config)}
    kwargs = {}
    for key, val in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r}")
        default = getattr(Config(), key)
        if isinstance(default, bool) or isinstance(val, bool):
            ok = type(val) is type(default)
        elif isinstance(default, float):
            ok = isinstance(val, (int, float))
            val = float(val) if ok else val
        else:
            ok = isinstance(val, type(default))
        if not ok:
            raise ConfigError(f"config key {key!r} must be {type(default).__name__}, got {val!r}")
        kwargs[key] = val
    return Config(**kwargs).validate()


def load(path: str | None = None, *, required: bool = False) -> Config:
    """Load the config file. A missing file at the default path gives the defaults;
    a missing file given explicitly (``required``) is an error."""
    p = Path(path or DEFAULT_PATH)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {p} does not exist") from None
        return Config().validate()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return from_dict(data)

"""Boot control: which slot is booted, and the bootloader's slot selection.

The bootloader environment holds (identically for U-Boot and GRUB, see
``docs/architecture.md``)::

    BOOT_ORDER   "A B" | "B A" | "A" | "B"   slots in priority order
    BOOT_A_LEFT  0..3                        boot attempts left for slot A
    BOOT_B_LEFT  0..3                        boot attempts left for slot B

:class:`BootControl` implements the operations on that state; the backends
:class:`UBootEnv` (libubootenv's ``fw_printenv``/``fw_setenv``) and :class:`GrubEnv`
(``grub-editenv`` on a primary and backup file) only load and store the variables.
Every change writes all three variables in one go.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
from contextlib import contextmanager

from .errors import UpdateError

log = logging.getLogger(__name__)

SLOTS = ("A", "B")
DEFAULT_ORDER = ["A", "B"]
# Tries a slot can have: the bootloader scripts (board/ot2/boot.cmd, board/qemu/grub.cfg)
# count BOOT_*_LEFT down from 3 and take any value outside 0..3 for a corrupt environment.
MAX_TRIES = 3
_TOOL_TIMEOUT = 30  # seconds


class BootEnvError(UpdateError):
    """The bootloader environment could not be read or written."""

    def __init__(self, message: str):
        super().__init__("boot-env-error", message)


def other_slot(slot: str) -> str:
    """``"B"`` for ``"A"`` and vice versa."""
    return "B" if slot == "A" else "A"


def booted_slot_from_cmdline(text: str) -> str | None:
    """The slot named by ``ot2.slot=A|B`` in a kernel command line, else ``None``."""
    match = re.search(r"(?:^|\s)ot2\.slot=([AB])(?:\s|$)", text)
    return match.group(1) if match else None


def serial_from_cmdline(text: str) -> str | None:
    """The robot's serial number from ``ot2.serial=`` on a kernel command line, else ``None``.

    The bootloader puts it there: GRUB from the SMBIOS system serial number
    (``board/qemu/grub.cfg``), U-Boot from its ``serial#`` variable (``board/ot2/boot.cmd``).
    """
    match = re.search(r"(?:^|\s)ot2\.serial=([A-Za-z0-9._-]{1,64})(?:\s|$)", text)
    return match.group(1) if match else None


def _run(argv: list) -> str:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=_TOOL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BootEnvError(f"{argv[0]}: {e}") from e
    if proc.returncode != 0:
        raise BootEnvError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[:300]}"
        )
    return proc.stdout


def _parse_vars(text: str) -> dict:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value
    return values


class BootControl:
    """Slot selection on top of a backend's :meth:`load` / :meth:`store`.

    ``cmdline``: path of the kernel command line (``/proc/cmdline``);
    ``max_tries``: tries given to a selected or good slot;
    ``boot_mount``: mount point remounted read-write around every write ("" = none).
    Methods raise :class:`BootEnvError` (an UpdateError ``boot-env-error``) when a tool
    fails.  The methods are blocking (they run the tools) and serialised by a lock.
    """

    def __init__(self, cmdline: str = "/proc/cmdline", max_tries: int = 3, boot_mount: str = ""):
        self.cmdline = cmdline
        self.max_tries = max_tries
        self.boot_mount = boot_mount
        self._lock = threading.RLock()

    # ---- backend interface ----------------------------------------------------------

    def load(self) -> dict | None:
        """Raw variables ``{name: value}``; ``None`` if no valid environment exists."""
        raise NotImplementedError

    def store(self, values: dict) -> None:
        """Write ``values`` (``{name: value}``) in one update."""
        raise NotImplementedError

    # ---- slots ------------------------------------------------------------------------

    def booted_slot(self) -> str | None:
        """``"A"``/``"B"`` from ``ot2.slot=`` on the kernel command line, or ``None``."""
        try:
            with open(self.cmdline) as f:
                return booted_slot_from_cmdline(f.read())
        except OSError:
            return None

    def serial(self) -> str | None:
        """The robot's serial number from ``ot2.serial=`` on the kernel command line, or ``None``."""
        try:
            with open(self.cmdline) as f:
                return serial_from_cmdline(f.read())
        except OSError:
            return None

    def inactive_slot(self) -> str:
        """The slot not booted; UpdateError ``unknown-boot-slot`` if that is unknown."""
        booted = self.booted_slot()
        if booted is None:
            raise UpdateError("unknown-boot-slot", f"no ot2.slot= in {self.cmdline}")
        return other_slot(booted)

    def read(self) -> dict:
        """``{"BOOT_ORDER": ["A", "B"], "A": tries, "B": tries}``.

        Missing or invalid variables take the bootloader's defaults (order ``A B``,
        ``max_tries`` tries); an environment that cannot be loaded at all is all defaults.
        """
        with self._lock:
            raw = self.load() or {}
        order = [s for s in raw.get("BOOT_ORDER", "").split() if s in SLOTS]
        order = list(dict.fromkeys(order)) or list(DEFAULT_ORDER)
        result = {"BOOT_ORDER": order}
        for slot in SLOTS:
            value = raw.get(f"BOOT_{slot}_LEFT")
            try:
                tries = int(value) if value is not None else self.max_tries
            except ValueError:
                tries = 0
            result[slot] = max(0, min(tries, MAX_TRIES))
        return result

    def _write(self, order: list, tries: dict) -> None:
        values = {
            "BOOT_ORDER": " ".join(order),
            "BOOT_A_LEFT": str(tries["A"]),
            "BOOT_B_LEFT": str(tries["B"]),
        }
        log.info("boot env: %s", values)
        with self._boot_mounted_rw():
            self.store(values)

    @contextmanager
    def _boot_mounted_rw(self):
        if not self.boot_mount:
            yield
            return
        _run(["mount", "-o", "remount,rw", self.boot_mount])
        try:
            yield
        finally:
            try:
                _run(["mount", "-o", "remount,ro", self.boot_mount])
            except BootEnvError as e:
                log.warning("could not remount %s read-only: %s", self.boot_mount, e)

    def mark_bad(self, slot: str) -> dict:
        """Remove ``slot`` from BOOT_ORDER and set its tries to 0 (before installing).

        The booted slot stays first.  Refuses (``boot-env-error``) to mark the booted
        slot bad.  Returns the new state as :meth:`read` does.
        """
        with self._lock:
            booted = self.booted_slot()
            if slot == booted:
                raise BootEnvError(f"refusing to mark the booted slot {slot} bad")
            env = self.read()
            order = [s for s in env["BOOT_ORDER"] if s != slot]
            if booted:
                order = [booted] + [s for s in order if s != booted]
            tries = {s: env[s] for s in SLOTS}
            tries[slot] = 0
            self._write(order, tries)
            return self.read()

    def select_for_next_boot(self, slot: str, tries: int | None = None) -> dict:
        """BOOT_ORDER = ``slot`` then the booted slot; ``slot`` gets ``tries`` (default max)."""
        with self._lock:
            env = self.read()
            booted = self.booted_slot()
            if booted and booted != slot:
                order = [slot, booted]
            else:
                order = [slot] + [s for s in env["BOOT_ORDER"] if s != slot]
            left = {s: env[s] for s in SLOTS}
            left[slot] = self.max_tries if tries is None else tries
            self._write(order, left)
            return self.read()

    def mark_good(self) -> dict:
        """The booted slot gets ``max_tries`` tries again. Returns the new state."""
        with self._lock:
            booted = self.booted_slot()
            if booted is None:
                raise UpdateError("unknown-boot-slot", f"no ot2.slot= in {self.cmdline}")
            env = self.read()
            left = {s: env[s] for s in SLOTS}
            if left[booted] != self.max_tries or booted not in env["BOOT_ORDER"]:
                left[booted] = self.max_tries
                order = env["BOOT_ORDER"] if booted in env["BOOT_ORDER"] else env["BOOT_ORDER"] + [booted]
                self._write(order, left)
            return self.read()

    def set_primary(self, slot: str, other_tries: int | None = None) -> dict:
        """Put ``slot`` first in BOOT_ORDER (the other slot stays listed second).

        ``other_tries`` optionally sets the other slot's tries in the same write (a
        rollback keeps the failed slot with 0 tries).  ``slot`` keeps its tries, or gets
        ``max_tries`` if it had none left.
        """
        with self._lock:
            env = self.read()
            other = other_slot(slot)
            left = {s: env[s] for s in SLOTS}
            if left[slot] == 0:
                left[slot] = self.max_tries
            if other_tries is not None:
                left[other] = other_tries
            self._write([slot, other], left)
            return self.read()


def _recreate_missing_env_files(config: str) -> None:
    """Create (zero-filled, of the configured size) env files named by ``config`` that are
    missing, so that fw_setenv can write them; device nodes are never created."""
    try:
        with open(config) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise BootEnvError(f"cannot read {config}: {e.strerror}") from e
    for line in lines:
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith("#") or fields[0].startswith("/dev/"):
            continue
        path = fields[0]
        if os.path.exists(path) or not os.path.isdir(os.path.dirname(path) or "."):
            continue
        try:
            size = int(fields[2], 0)
            with open(path, "xb") as env:
                env.truncate(size)
            log.warning("recreated missing U-Boot environment file %s", path)
        except (ValueError, OSError) as e:
            raise BootEnvError(f"cannot recreate {path}: {e}") from e


class UBootEnv(BootControl):
    """U-Boot environment through libubootenv's ``fw_printenv``/``fw_setenv -c CONFIG``.

    ``configs``: libubootenv config files, primary first, then backups (each names one
    environment file, or two for libubootenv's own redundant format).  Reads use the
    first config whose environment is valid; writes go to every config in order, each
    with a script (``-s``) so that all variables change in one write.  An invalid copy
    is rewritten starting from ``default_env`` (``-f``; by default a generated file with
    the contract's defaults).
    """

    def __init__(self, configs, default_env: str = "", **kwargs):
        super().__init__(**kwargs)
        self.configs = [configs] if isinstance(configs, str) else list(configs)
        if not self.configs:
            raise ValueError("UBootEnv needs at least one fw_env config")
        self.default_env = default_env

    def load(self) -> dict | None:
        for config in self.configs:
            try:
                # -f on a missing file: an invalid environment is an error, not defaults
                out = _run(["fw_printenv", "-c", config, "-f", "/nonexistent/ot2-no-default-env"])
                return _parse_vars(out)
            except BootEnvError as e:
                log.warning("U-Boot environment of %s unreadable: %s", config, e)
        return None

    def store(self, values: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="ot2-fwenv-") as tmp:
            script = os.path.join(tmp, "script")
            with open(script, "w") as f:
                for name, value in values.items():
                    f.write(f"{name}={value}\n")
            default_env = self.default_env
            if not default_env:
                default_env = os.path.join(tmp, "default-env")
                with open(default_env, "w") as f:
                    f.write(f"BOOT_ORDER={' '.join(DEFAULT_ORDER)}\n")
                    for slot in SLOTS:
                        f.write(f"BOOT_{slot}_LEFT={self.max_tries}\n")
            for config in self.configs:
                _recreate_missing_env_files(config)
                _run(["fw_setenv", "-c", config, "-f", default_env, "-s", script])
        written = self.load() or {}
        if any(written.get(k) != v for k, v in values.items()):
            raise BootEnvError(f"U-Boot environment did not take the new values: {written}")


class GrubEnv(BootControl):
    """GRUB environment blocks through ``grub-editenv``, one primary and backup files.

    Reads the primary; if it is missing or invalid, the next file.  Writes every file in
    order (primary first); an invalid file is recreated before it is written.
    """

    def __init__(self, files: list, **kwargs):
        super().__init__(**kwargs)
        if not files:
            raise ValueError("GrubEnv needs at least one environment file")
        self.files = list(files)

    def load(self) -> dict | None:
        for path in self.files:
            if not os.path.isfile(path):
                log.warning("GRUB environment %s missing", path)
                continue
            try:
                return _parse_vars(_run(["grub-editenv", path, "list"]))
            except BootEnvError as e:
                log.warning("GRUB environment %s invalid: %s", path, e)
        return None

    def store(self, values: dict) -> None:
        assignments = [f"{name}={value}" for name, value in values.items()]
        for path in self.files:
            if os.path.exists(path):
                try:
                    _run(["grub-editenv", path, "list"])
                except BootEnvError:
                    log.warning("recreating invalid GRUB environment %s", path)
                    _run(["grub-editenv", path, "create"])
            _run(["grub-editenv", path, "set", *assignments])


def from_config(config) -> BootControl:
    """The backend chosen by ``config.boot_backend`` ("uboot" or "grub")."""
    common = dict(cmdline=config.cmdline, max_tries=config.max_tries, boot_mount=config.boot_mount)
    if config.boot_backend == "grub":
        return GrubEnv(config.grubenv, **common)
    return UBootEnv(config.fw_env_config, config.uboot_default_env, **common)

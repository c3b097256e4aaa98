"""Boot control: which slot is booted, and the bootloader's slot selection.

The bootloader environment holds (identically for U-Boot and GRUB, see
``docs/architecture.md``)::

    BOOT_ORDER   "A B" | "B A" | "A" | "B"   slots in priority order
    BOOT_A_LEFT  0..3                        boot attempts left for slot A
    BOOT_B_LEFT  0..3                        boot attempts left for slot B

as a :class:`~update_server.bootmodel.BootEnv`.  The pieces:

* :class:`BootControl`, the policy: the operations of the update contract (mark bad,
  select, mark good, make primary) on a :class:`BootEnv`;
* an env storage it holds, which only loads and stores the raw variables of each copy:
  :class:`UBootStorage` (libubootenv's ``fw_printenv``/``fw_setenv``) or
  :class:`GrubStorage` (``grub-editenv``), optionally wrapped in :class:`RemountedRW`;
* :class:`KernelCmdline`: the booted slot and the serial number from ``/proc/cmdline``.

Every change writes all three variables in one go, primary copy first.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import Protocol

from .bootmodel import DEFAULT_ENV, MAX_TRIES, BootEnv, env_from_copies
from .errors import UpdateError

log = logging.getLogger(__name__)

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


def _parse_vars(text: str) -> dict[str, str]:
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value
    return values


class KernelCmdline:
    """The kernel command line at ``path`` (``/proc/cmdline``), read anew on every call."""

    def __init__(self, path: str = "/proc/cmdline"):
        self.path = path

    def _text(self) -> str:
        try:
            with open(self.path) as f:
                return f.read()
        except OSError:
            return ""

    def booted_slot(self) -> str | None:
        """``"A"``/``"B"`` from ``ot2.slot=``, or ``None`` (also if unreadable)."""
        return booted_slot_from_cmdline(self._text())

    def serial(self) -> str | None:
        """The robot's serial number from ``ot2.serial=``, or ``None``."""
        return serial_from_cmdline(self._text())


class EnvStorage(Protocol):
    """Where the bootloader environment's copies live; knows nothing of their meaning."""

    def load(self) -> Iterator[dict[str, str] | None]:
        """The raw variables ``{name: value}`` of each copy, primary first, lazily;
        ``None`` for a copy that is missing or fails its check (CRC, format)."""
        ...

    def store(self, values: dict[str, str]) -> None:
        """Write ``values`` into every copy, primary first, each in one update.
        Raises :class:`BootEnvError`."""
        ...


class RemountedRW:
    """An :class:`EnvStorage` whose writes remount ``mount_point`` read-write around them
    (``mount -o remount,rw``, then back to ``ro``; a failure to go back is only logged)."""

    def __init__(self, storage: EnvStorage, mount_point: str):
        self.storage = storage
        self.mount_point = mount_point

    def load(self) -> Iterator[dict[str, str] | None]:
        return self.storage.load()

    def store(self, values: dict[str, str]) -> None:
        _run(["mount", "-o", "remount,rw", self.mount_point])
        try:
            self.storage.store(values)
        finally:
            try:
                _run(["mount", "-o", "remount,ro", self.mount_point])
            except BootEnvError as e:
                log.warning("could not remount %s read-only: %s", self.mount_point, e)


class BootControl:
    """The update contract's slot selection on an env ``storage``.

    ``cmdline``: where the booted slot is read; ``max_tries``: tries given to a selected
    or good slot (1..MAX_TRIES).  The changing methods return the env as it now is.  Methods raise
    :class:`BootEnvError` (an UpdateError ``boot-env-error``) when a tool fails.  They are
    blocking (they run the tools) and serialised by a lock.
    """

    def __init__(self, storage: EnvStorage, cmdline: KernelCmdline, max_tries: int = MAX_TRIES):
        self.storage = storage
        self.cmdline = cmdline
        self.max_tries = max_tries
        self._lock = threading.RLock()

    def booted_slot(self) -> str | None:
        """``"A"``/``"B"`` from ``ot2.slot=`` on the kernel command line, or ``None``."""
        return self.cmdline.booted_slot()

    def _booted(self) -> str:
        booted = self.booted_slot()
        if booted is None:
            raise UpdateError("unknown-boot-slot", f"no ot2.slot= in {self.cmdline.path}")
        return booted

    def inactive_slot(self) -> str:
        """The slot not booted; UpdateError ``unknown-boot-slot`` if that is unknown."""
        return other_slot(self._booted())

    def read(self) -> BootEnv:
        """The env the bootloader will use: the first valid copy, else its defaults
        (:func:`~update_server.bootmodel.env_from_copies`)."""
        with self._lock:
            return env_from_copies(self.storage.load())

    def _write(self, env: BootEnv) -> BootEnv:
        log.info("boot env: %s", env.to_vars())
        self.storage.store(env.to_vars())
        return env

    def mark_bad(self, slot: str) -> BootEnv:
        """Remove ``slot`` from BOOT_ORDER and set its tries to 0 (before installing).

        The booted slot stays first.  Refuses (``boot-env-error``) to mark the booted
        slot bad; ``unknown-boot-slot`` if the booted slot is unknown.
        """
        with self._lock:
            booted = self._booted()
            if slot == booted:
                raise BootEnvError(f"refusing to mark the booted slot {slot} bad")
            env = self.read()
            return self._write(BootEnv((booted,), env.tries).with_tries(slot, 0))

    def select_for_next_boot(self, slot: str, tries: int | None = None) -> BootEnv:
        """BOOT_ORDER = ``slot`` then the booted slot; ``slot`` gets ``tries`` (default max)."""
        with self._lock:
            env = self.read()
            booted = self.booted_slot()
            if booted and booted != slot:
                order = (slot, booted)
            else:
                order = (slot, *(s for s in env.order if s != slot))
            return self._write(BootEnv(order, env.tries).with_tries(
                slot, self.max_tries if tries is None else tries))

    def mark_good(self) -> BootEnv:
        """The booted slot gets ``max_tries`` tries again (and is listed if it was not)."""
        with self._lock:
            booted = self._booted()
            env = self.read()
            order = env.order if booted in env.order else (*env.order, booted)
            good = BootEnv(order, env.tries).with_tries(booted, self.max_tries)
            return env if good == env else self._write(good)

    def set_primary(self, slot: str, other_tries: int | None = None) -> BootEnv:
        """Put ``slot`` first in BOOT_ORDER (the other slot stays listed second).

        ``other_tries`` optionally sets the other slot's tries in the same write (a
        rollback keeps the failed slot with 0 tries).  ``slot`` keeps its tries, or gets
        ``max_tries`` if it had none left.
        """
        with self._lock:
            env = self.read()
            other = other_slot(slot)
            primary = BootEnv((slot, other), env.tries)
            if primary.tries[slot] == 0:
                primary = primary.with_tries(slot, self.max_tries)
            if other_tries is not None:
                primary = primary.with_tries(other, other_tries)
            return self._write(primary)


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


class UBootStorage:
    """U-Boot environment copies through libubootenv's ``fw_printenv``/``fw_setenv -c CONFIG``.

    ``configs``: libubootenv config files, primary first, then backups (each names one
    environment file, or two for libubootenv's own redundant format); each is one copy.
    Writes go to every config in order, each with a script (``-s``) so that all variables
    change in one write.  An invalid copy is rewritten starting from ``default_env``
    (``-f``; by default a generated file with the bootloader's defaults).
    """

    def __init__(self, configs: str | list[str], default_env: str = ""):
        self.configs = [configs] if isinstance(configs, str) else list(configs)
        if not self.configs:
            raise ValueError("UBootStorage needs at least one fw_env config")
        self.default_env = default_env

    def load(self) -> Iterator[dict[str, str] | None]:
        for config in self.configs:
            try:
                # -f on a missing file: an invalid environment is an error, not defaults
                values = _parse_vars(_run(["fw_printenv", "-c", config, "-f", "/nonexistent/ot2-no-default-env"]))
            except BootEnvError as e:
                log.warning("U-Boot environment of %s unreadable: %s", config, e)
                values = None
            yield values

    def store(self, values: dict[str, str]) -> None:
        with tempfile.TemporaryDirectory(prefix="ot2-fwenv-") as tmp:
            script = os.path.join(tmp, "script")
            with open(script, "w") as f:
                f.writelines(f"{name}={value}\n" for name, value in values.items())
            default_env = self.default_env
            if not default_env:
                default_env = os.path.join(tmp, "default-env")
                with open(default_env, "w") as f:
                    f.writelines(f"{name}={value}\n" for name, value in DEFAULT_ENV.to_vars().items())
            for config in self.configs:
                _recreate_missing_env_files(config)
                _run(["fw_setenv", "-c", config, "-f", default_env, "-s", script])
        written = next((copy for copy in self.load() if copy is not None), {})
        if any(written.get(k) != v for k, v in values.items()):
            raise BootEnvError(f"U-Boot environment did not take the new values: {written}")


class GrubStorage:
    """GRUB environment blocks through ``grub-editenv``, a primary and backup files.

    Each file is one copy (``None`` when missing or not a valid block).  Writes go to
    every file in order (primary first); an invalid file is recreated before it is written.
    """

    def __init__(self, files: list[str]):
        if not files:
            raise ValueError("GrubStorage needs at least one environment file")
        self.files = list(files)

    def load(self) -> Iterator[dict[str, str] | None]:
        for path in self.files:
            values = None
            if not os.path.isfile(path):
                log.warning("GRUB environment %s missing", path)
            else:
                try:
                    values = _parse_vars(_run(["grub-editenv", path, "list"]))
                except BootEnvError as e:
                    log.warning("GRUB environment %s invalid: %s", path, e)
            yield values

    def store(self, values: dict[str, str]) -> None:
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
    """The policy on the storage chosen by ``config.boot_backend`` ("uboot" or "grub"),
    remounting ``config.boot_mount`` read-write around writes if it is set."""
    if config.boot_backend == "grub":
        storage = GrubStorage(config.grubenv)
    else:
        storage = UBootStorage(config.fw_env_config, config.uboot_default_env)
    if config.boot_mount:
        storage = RemountedRW(storage, config.boot_mount)
    return BootControl(storage, KernelCmdline(config.cmdline), config.max_tries)

"""Persistent update state in ``data_dir/update-server/state.json`` and the slot lifecycle.

The file (written atomically: temporary file, fsync, rename, fsync of the directory)::

    {"slots": {"A": {"version": str, "sha256": hex, "installed_at": ISO8601,
                     "confirmed": bool}, "B": {...}},
     "pending": null | {"slot": "B", "version": str, "boot_id": str, "time": ISO8601},
     "rollbacks": [{"failed_slot": "B", "failed_version": str, "booted_slot": "A",
                    "time": ISO8601}, ...]}

``pending`` is a committed slot not yet confirmed; ``boot_id`` is the boot in which it
was committed, so a restart of the server within that boot is not taken for a reboot.
Read-modify-write cycles hold an exclusive ``flock`` on ``state.lock`` so the server and
``update-server boot-check`` never interleave.

The functions below combine the state with :mod:`update_server.bootctl` following the
contract of ``docs/architecture.md`` (install, commit, mark good, rollback detection).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .bootctl import BootControl
from .bootmodel import SLOTS, BootEnv

log = logging.getLogger(__name__)

MAX_ROLLBACKS = 20


def now() -> str:
    """The current UTC time, ISO 8601, seconds resolution."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_boot_id(path: str) -> str:
    """The kernel's boot id (``/proc/sys/kernel/random/boot_id``), ``""`` if unreadable."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file in the same dir, fsync, rename, dir fsync."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _empty() -> dict:
    return {"slots": {s: None for s in SLOTS}, "pending": None, "rollbacks": []}


class StateStore:
    """``state.json`` under ``directory`` (created on first write)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / "state.json"

    def load(self) -> dict:
        """The state; a missing or corrupt file gives the empty state (logged)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as e:
            log.error("state file %s unreadable, starting afresh: %s", self.path, e)
            return _empty()
        state = _empty()
        if isinstance(data, dict):
            if isinstance(data.get("slots"), dict):
                for s in SLOTS:
                    if isinstance(data["slots"].get(s), dict):
                        state["slots"][s] = data["slots"][s]
            if isinstance(data.get("pending"), dict) and data["pending"].get("slot") in SLOTS:
                state["pending"] = data["pending"]
            if isinstance(data.get("rollbacks"), list):
                state["rollbacks"] = [r for r in data["rollbacks"] if isinstance(r, dict)]
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())

    @contextmanager
    def transaction(self):
        """``with store.transaction() as state:`` -- locked load, then save on success."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "state.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self.save(state)


# ---------------------------------------------------------------------------------------
# lifecycle


def is_trial(state: dict, booted: str | None, boot_id: str) -> bool:
    """Whether this boot is the first boot(s) of a committed, unconfirmed slot."""
    pending = state.get("pending")
    return bool(
        pending and booted and pending.get("slot") == booted and pending.get("boot_id") != boot_id
    )


def reconcile(store: StateStore, boot: BootControl, boot_id: str) -> dict | None:
    """Start-up check: detect a rollback. Returns the rollback record or ``None``.

    With a pending commit from an earlier boot: if the booted slot is not the committed
    one, the committed slot failed -- record ``{failed_slot, failed_version,
    booted_slot, time}``, make the booted slot primary (the failed slot keeps 0 tries)
    and clear ``pending``.  If the committed slot is booted, this is a trial boot that
    :func:`mark_good` confirms.
    """
    booted = boot.booted_slot()
    if booted is None:
        log.warning("booted slot unknown; skipping rollback detection")
        return None
    with store.transaction() as state:
        pending = state["pending"]
        if not pending or pending.get("boot_id") == boot_id or pending.get("slot") == booted:
            return None
        record = {
            "failed_slot": pending["slot"],
            "failed_version": pending.get("version"),
            "booted_slot": booted,
            "time": now(),
        }
        log.error("rollback: slot %s (%s) failed, running %s", record["failed_slot"],
                  record["failed_version"], booted)
        boot.set_primary(booted, other_tries=0)
        state["rollbacks"] = (state["rollbacks"] + [record])[-MAX_ROLLBACKS:]
        state["pending"] = None
        failed = state["slots"].get(pending["slot"])
        if failed:
            failed["confirmed"] = False
            failed["failed"] = True
        return record


def record_booted_version(store: StateStore, booted: str | None, version: str | None) -> None:
    """Remember the version the booted slot runs (``/etc/ot2/version.json``), so that
    ``/health`` can still name it after the other slot has been booted (a factory-flashed
    slot was never installed through this server)."""
    if not booted or not isinstance(version, str) or not version:
        return
    with store.transaction() as state:
        info = state["slots"].get(booted) or {}
        if info.get("version") != version:
            info["version"] = version
            state["slots"][booted] = info


def begin_install(store: StateStore, boot: BootControl, slot: str) -> None:
    """Before writing ``slot``: forget what it held and mark it bad in the boot env."""
    with store.transaction() as state:
        boot.mark_bad(slot)
        state["slots"][slot] = None
        if state["pending"] and state["pending"].get("slot") == slot:
            state["pending"] = None


def record_installed(store: StateStore, slot: str, version: str, sha256: str) -> None:
    """After a verified write: remember what ``slot`` now holds (not yet selected)."""
    with store.transaction() as state:
        state["slots"][slot] = {
            "version": version,
            "sha256": sha256,
            "installed_at": now(),
            "confirmed": False,
        }


def commit(store: StateStore, boot: BootControl, slot: str, version: str, boot_id: str) -> BootEnv:
    """Select ``slot`` for the next boot with ``max_tries`` tries and record ``pending``."""
    with store.transaction() as state:
        env = boot.select_for_next_boot(slot, boot.max_tries)
        state["pending"] = {"slot": slot, "version": version, "boot_id": boot_id, "time": now()}
        return env


def cancel_commit(store: StateStore, boot: BootControl, slot: str) -> None:
    """Undo :func:`commit` (session cancelled after commit): ``slot`` is bad again."""
    with store.transaction() as state:
        boot.mark_bad(slot)
        if state["pending"] and state["pending"].get("slot") == slot:
            state["pending"] = None


def mark_good(store: StateStore, boot: BootControl, boot_id: str) -> dict:
    """Mark the booted slot good (``max_tries`` tries) and confirm a trial boot.

    Returns ``{"booted_slot", "confirmed": version or None, "boot": BootEnv}``.
    """
    with store.transaction() as state:
        env = boot.mark_good()
        booted = boot.booted_slot()
        confirmed = None
        if is_trial(state, booted, boot_id):
            confirmed = state["pending"].get("version")
            slot_state = state["slots"].get(booted) or {"version": confirmed}
            slot_state["confirmed"] = True
            slot_state["confirmed_at"] = now()
            state["slots"][booted] = slot_state
            state["pending"] = None
            log.info("slot %s (%s) confirmed", booted, confirmed)
        elif state["slots"].get(booted):
            state["slots"][booted]["confirmed"] = True
        return {"booted_slot": booted, "confirmed": confirmed, "boot": env}


def slot_report(state: dict, env: BootEnv, booted: str | None, boot_id: str,
                devices: dict, system_version: str | None) -> dict:
    """Per slot ``{device, state, version, tries_left, pending}`` for ``/health``.

    ``state``: ``good`` (booted, confirmed), ``trial`` (booted, committed, unconfirmed),
    ``bad`` (not booted and not bootable: not in BOOT_ORDER or no tries left),
    ``inactive`` (not booted, bootable).
    """
    report = {}
    pending = state.get("pending") or {}
    for slot in SLOTS:
        info = state["slots"].get(slot) or {}
        if slot == booted:
            label = "trial" if is_trial(state, booted, boot_id) else "good"
        elif slot not in env.order or env.tries[slot] == 0:
            label = "bad"
        else:
            label = "inactive"
        version = info.get("version")
        if slot == booted and system_version:
            version = system_version
        report[slot] = {
            "device": devices.get(slot),
            "state": label,
            "version": version,
            "tries_left": env.tries[slot],
            "pending": pending.get("slot") == slot,
        }
    return report

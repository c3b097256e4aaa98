"""Single owner of the robot's hardware (motor-board UART and GPIO lines).

An exclusive, non-blocking ``flock`` on the lock file (default ``/run/robot-server/robot-server.lock``)
is held for the process' lifetime; the file records the holder (pid, program, start
time) so a second process can say who holds the hardware. The kernel drops the lock when
the holder dies, so a stale file never blocks a restart. Any other program that wants the
hardware (a future ``robot-execute``) takes the same lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path


class OwnerError(Exception):
    """Another process holds the hardware; the message names it."""

    def __init__(self, message: str, holder: dict | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class HardwareLock:
    """``with HardwareLock(path, "robot-server"):`` or :meth:`acquire` / :meth:`release`."""

    def __init__(self, path: str, program: str = "robot-server") -> None:
        self.path = Path(path)
        self.program = program
        self._fd: int | None = None

    def acquire(self) -> "HardwareLock":
        """Take the lock. Raises :class:`OwnerError` naming the holder if another process
        has it, or if the lock file cannot be created."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OwnerError(f"cannot open lock file {self.path}: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise OwnerError(
                f"the robot hardware (motor board UART, GPIO) is held by {describe(holder)}; "
                f"lock {self.path}. Stop it first (e.g. 'systemctl stop ot2-robot-server').",
                holder) from None
        info = {"pid": os.getpid(), "program": self.program,
                "argv": sys.argv, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "HardwareLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data.decode() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (holder unknown)"
    text = f"{holder.get('program', 'a process')} (pid {holder['pid']}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    return text + ")"

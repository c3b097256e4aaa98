"""Where uploaded protocol code runs: an unprivileged user, memory and task limits, and a
way to kill everything it started.

A *sandbox* is one process tree started by :meth:`Sandbox.spawn`: a run process, or the
warm analysis worker (which keeps the server's user and whose forked children drop to the
sandbox user with :func:`drop_privileges` before they read an upload). Uploaded code never
runs as root:

* **User.** The server, when it runs as root, switches the child to ``sandbox_user``
  (config; the image creates the system user ``ot2-run`` in ``sysusers.d``). A server
  started by hand as root on a machine without that user falls back to ``nobody``. A
  server that is not root cannot switch users; its children run as its own user (and
  :attr:`Sandbox.isolated` is false).
* **Limits and containment, with systemd as PID 1** (``/run/systemd/system`` exists): the
  child is started through ``systemd-run --scope --unit=<name> --uid= --gid=
  -p MemoryMax= -p TasksMax= --collect``, a transient scope unit of its own (its own
  cgroup); :meth:`kill_all` is ``systemctl kill --signal=SIGKILL <name>.scope``, which
  reaches every process in that cgroup, whatever sessions or process groups they made.
* **Without systemd** (containers, dev machines): the child gets ``RLIMIT_AS`` (bytes of
  address space, ``sandbox_memory_max``) and ``RLIMIT_NPROC`` (processes and threads of
  the sandbox user, ``sandbox_tasks_max``) after ``setsid``/``setgid``/``setuid``;
  :meth:`kill_all` forks a helper that becomes the sandbox user and calls ``kill(-1,
  SIGKILL)``, which signals every process of that user (``kill(2)``: "all processes for
  which the calling process has permission to send signals"), even children that called
  ``setsid``. Every sandbox shares that one user, so this kills all of them at once:
  callers do it when a run ends or is stopped, or after an analysis while no run is
  active; the analysis worker, not being of that user, stays warm.

Systemd sources: ``systemd-run(1)`` (``--scope``, ``--uid``, ``--collect``, ``-p``) and
``systemd.resource-control(5)`` (``MemoryMax=``, ``TasksMax=``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("robot_server.sandbox")

FALLBACK_USER = "nobody"
#: Environment every sandboxed process starts with (plus what the caller adds): nothing
#: of the server's own environment leaks in. Few malloc arenas keep RLIMIT_AS honest
#: with many threads (glibc reserves 64 MiB of address space per arena).
BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2", "PYTHONDONTWRITEBYTECODE": "1"}


def systemd_running() -> bool:
    """True when systemd is PID 1 (``sd_booted(3)``: ``/run/systemd/system`` exists)."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemd-run") is not None


@dataclass(frozen=True)
class Identity:
    """The user sandboxed code runs as: ``name``, ``uid``, ``gid``, ``home``."""

    name: str
    uid: int
    gid: int


def resolve_user(name: str) -> Identity | None:
    """The sandbox user when this process can switch to one (it is root): ``name`` if it
    exists, else ``nobody``; ``None`` when not root (no switch possible)."""
    if os.geteuid() != 0:
        return None
    for candidate in (name, FALLBACK_USER):
        try:
            pw = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if pw.pw_uid == 0:
            raise ValueError(f"sandbox user {candidate!r} is root")
        return Identity(candidate, pw.pw_uid, pw.pw_gid)
    raise ValueError(f"neither {name!r} nor {FALLBACK_USER!r} exists")


class Sandbox:
    """Spawns sandboxed processes and kills them.

    ``memory_max`` in bytes, ``tasks_max`` processes + threads. ``use_systemd`` defaults to
    :func:`systemd_running`."""

    def __init__(self, user: str, memory_max: int, tasks_max: int, use_systemd: bool | None = None) -> None:
        self.identity = resolve_user(user)
        self.memory_max = memory_max
        self.tasks_max = tasks_max
        self.use_systemd = systemd_running() if use_systemd is None else use_systemd
        #: Held while killing: a process spawned meanwhile would be killed with the rest.
        self._killing: asyncio.Lock | None = None

    def _lock(self) -> asyncio.Lock:
        if self._killing is None:
            self._killing = asyncio.Lock()
        return self._killing

    @property
    def isolated(self) -> bool:
        """True when sandboxed code runs as another (unprivileged) user than the server."""
        return self.identity is not None

    def owns(self, path: Path) -> None:
        """Give ``path`` (a scratch directory the sandboxed code may write) to the sandbox user."""
        if self.identity is not None:
            os.chown(path, self.identity.uid, self.identity.gid)

    def command(self, unit: str, argv: list[str], switch_user: bool = True) -> list[str]:
        """The argv that starts ``argv`` in the sandbox: wrapped in ``systemd-run --scope``
        under systemd, unchanged otherwise (:meth:`preexec` then applies the limits)."""
        if not self.use_systemd:
            return argv
        wrap = ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={unit}",
                "-p", f"MemoryMax={self.memory_max}", "-p", f"TasksMax={self.tasks_max}", "-p", "MemorySwapMax=0"]
        if self.identity is not None and switch_user:
            wrap += [f"--uid={self.identity.uid}", f"--gid={self.identity.gid}"]
        return [*wrap, "--", *argv]

    def drop_spec(self) -> str:
        """What :func:`drop_privileges` needs, as one string for a forking worker's argv
        (``uid:gid:memory_max:tasks_max``; uid and gid empty when not isolated)."""
        ident = self.identity
        ids = f"{ident.uid}:{ident.gid}" if ident is not None else ":"
        return f"{ids}:{self.memory_max}:{self.tasks_max}"

    def preexec(self, switch_user: bool = True) -> Callable[[], None]:
        """What runs in the child between ``fork`` and ``exec``: a new session (so a
        stop of the process group reaches its children), and without systemd the
        rlimits and (``switch_user``) the switch to the sandbox user."""
        spec = self.drop_spec() if switch_user else f"::{self.memory_max}:{self.tasks_max}"
        systemd = self.use_systemd

        def setup() -> None:
            os.setsid()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if not systemd:
                drop_privileges(spec)

        return setup

    async def spawn(self, unit: str, argv: list[str], env: dict[str, str], cwd: str,
                    limit: int = 1 << 20, switch_user: bool = True) -> asyncio.subprocess.Process:
        """Start ``argv`` in the sandbox named ``unit`` with ``BASE_ENV`` + ``env``; its
        stdin, stdout and stderr are pipes (``limit``: longest stdout line read, bytes).
        ``switch_user=False``: the process keeps the server's user (a worker that forks
        children which call :func:`drop_privileges` first, e.g. the analysis worker, so
        that killing the sandbox user's processes never kills the worker itself).
        Raises ``OSError`` if it cannot start."""
        async with self._lock():
            return await asyncio.create_subprocess_exec(
                *self.command(unit, argv, switch_user), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env={**BASE_ENV, **env}, cwd=cwd, preexec_fn=self.preexec(switch_user),
                close_fds=True, limit=limit)

    async def kill_all(self, unit: str, proc: asyncio.subprocess.Process | None) -> None:
        """Kill everything started in sandbox ``unit``: its scope's cgroup under systemd;
        every process of the sandbox user otherwise; at least ``proc``'s process group
        when not isolated."""
        async with self._lock():
            if self.use_systemd:
                await _quiet("systemctl", "kill", "--signal=SIGKILL", f"{unit}.scope")
            elif self.identity is not None:
                await asyncio.get_running_loop().run_in_executor(None, kill_user, self.identity)
        if proc is not None and proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def processes(self) -> list[int]:
        """PIDs of the sandbox user's processes (non-systemd hosts; empty when not isolated)."""
        return user_processes(self.identity.uid) if self.identity is not None else []


def copy_in(files: Path, scratch: Path, spec: str) -> Path:
    """Copies a protocol's files (``files``, in the server's data directory) into the scratch
    directory ``scratch`` and gives it all to the user of the :meth:`Sandbox.drop_spec`
    ``spec``: sandboxed code reads its own copy and never needs access to the server's data
    (other protocols, runs, tokens). Returns the copy's directory."""
    copy = Path(shutil.copytree(files, scratch / "protocol"))
    uid, gid = spec.split(":")[:2]
    if uid:
        for path in (scratch, *scratch.rglob("*")):
            os.chown(path, int(uid), int(gid))
    return copy


def drop_privileges(spec: str) -> None:
    """Apply a :meth:`Sandbox.drop_spec`: ``RLIMIT_AS`` (bytes), then, with a user,
    no supplementary groups, its gid, ``RLIMIT_NPROC`` and its uid (from root this sets
    the real, effective and saved uid: there is no way back)."""
    uid, gid, memory, tasks = spec.split(":")
    resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    if uid:
        os.setgroups([])
        os.setgid(int(gid))
        resource.setrlimit(resource.RLIMIT_NPROC, (int(tasks), int(tasks)))
        os.setuid(int(uid))


def user_processes(uid: int) -> list[int]:
    """PIDs of live processes whose real uid is ``uid`` (from ``/proc/<pid>/status``;
    zombies, already dead and waiting for their parent to reap them, are not counted)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("State:") and line.split()[1] in ("Z", "X"):
                        break
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except (OSError, ValueError):
            continue
    return pids


def kill_user(ident: Identity, rounds: int = 20) -> None:
    """SIGKILL every process of ``ident``'s user: a forked helper drops to that user and
    calls ``kill(-1, SIGKILL)`` (repeated until none is left: a fork racing the first
    round is caught by the next)."""
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(ident.gid)
                os.setuid(ident.uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:  # noqa: BLE001 - the helper must never return into the server
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        if not user_processes(ident.uid):
            return
    log.warning("processes of %s survive kill(-1): %s", ident.name, user_processes(ident.uid))


async def _quiet(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await proc.wait()

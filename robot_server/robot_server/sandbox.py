"""Where uploaded protocol code runs: an unprivileged user, memory and task limits, and a
way to kill everything it started.

A *sandbox* is one process tree started by :meth:`Sandbox.spawn`: a run process, or the
warm analysis worker (which keeps the server's user and whose forked children drop to the
sandbox user with :func:`drop_privileges` before they read an upload). Uploaded code never
runs as root:

* **User.** A server that may switch users switches the child to ``sandbox_user``
  (config; the image creates the system user ``ot2-run`` in ``sysusers.d``): root, or
  an unprivileged server holding :data:`SWITCH_CAPS` (``CAP_SETUID``, ``CAP_SETGID``,
  ``CAP_CHOWN``) in its effective set, as the image's ``ot2-robot-server.service`` gives
  its user (``AmbientCapabilities=``). A server started by hand as root on a machine
  without that user falls back to ``nobody``. A server without those capabilities cannot
  switch users; its children run as its own user (and :attr:`Sandbox.isolated` is false).
  The switched child keeps no capability at all and cannot gain any
  (:func:`drop_privileges`): from a non-root user, ``setuid`` alone would leave the
  server's capabilities in place (``capabilities(7)``, "Effect of user ID changes on
  capabilities": only a change away from uid 0 clears them).
* **Limits and containment, when the server is root and systemd is PID 1**
  (``/run/systemd/system`` exists): the child is started through ``systemd-run --scope
  --unit=<name> --uid= --gid= -p MemoryMax= -p TasksMax= --collect``, a transient scope
  unit of its own (its own cgroup); :meth:`kill_all` is ``systemctl kill --signal=SIGKILL
  <name>.scope``, which reaches every process in that cgroup, whatever sessions or process
  groups they made. systemd starts transient units only for root (or whom polkit allows;
  the image has no polkit), so a non-root server takes the next way.
* **Otherwise** (a non-root server, containers, dev machines): the child gets ``RLIMIT_AS`` (bytes of
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
import ctypes
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
#: ``/proc/<pid>/oom_score_adj`` of sandboxed code (-1000..1000; ``proc(5)``).
OOM_SCORE_ADJ = 500
#: Environment every sandboxed process starts with (plus what the caller adds): nothing
#: of the server's own environment leaks in. Few malloc arenas keep RLIMIT_AS honest
#: with many threads (glibc reserves 64 MiB of address space per arena).
BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2", "PYTHONDONTWRITEBYTECODE": "1"}


#: Capability numbers (``linux/capability.h``; ``capabilities(7)``).
CAP_CHOWN, CAP_KILL, CAP_SETGID, CAP_SETUID = 0, 5, 6, 7
#: What a server needs to run sandboxed code as another user: ``setgroups``/``setgid``/
#: ``setuid`` to the sandbox user and ``chown`` of the files it hands over
#: (:meth:`Sandbox.owns`, :func:`copy_in`). ``CAP_KILL`` (signalling the sandbox's
#: process group) is used when present, not required.
SWITCH_CAPS = (CAP_SETUID, CAP_SETGID, CAP_CHOWN)


def effective_caps(status: str = "/proc/self/status") -> int:
    """This process' effective capability set as a bit mask (``CapEff:`` of
    ``/proc/self/status``, ``proc(5)``); 0 if it cannot be read."""
    try:
        with open(status, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return 0


def can_switch_users() -> bool:
    """True when this process may start code as another user: it is root, or it holds
    every capability of :data:`SWITCH_CAPS` in its effective set."""
    caps = effective_caps()
    return os.geteuid() == 0 or all(caps >> cap & 1 for cap in SWITCH_CAPS)


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
    """The sandbox user when this process can switch to one (:func:`can_switch_users`):
    ``name`` if it exists, else ``nobody``; ``None`` when it cannot (no switch possible).
    Raises ``ValueError`` if the user found is root (uid 0) or is this process' own user
    (then killing the sandbox's processes would kill the server)."""
    if not can_switch_users():
        return None
    for candidate in (name, FALLBACK_USER):
        try:
            pw = pwd.getpwnam(candidate)
        except KeyError:
            continue
        if pw.pw_uid == 0:
            raise ValueError(f"sandbox user {candidate!r} is root")
        if pw.pw_uid == os.getuid():
            raise ValueError(f"sandbox user {candidate!r} is this server's own user")
        return Identity(candidate, pw.pw_uid, pw.pw_gid)
    raise ValueError(f"neither {name!r} nor {FALLBACK_USER!r} exists")


class Sandbox:
    """Spawns sandboxed processes and kills them.

    ``memory_max`` in bytes, ``tasks_max`` processes + threads. ``use_systemd`` defaults to
    :func:`systemd_running` for a root server (only root may start transient units)."""

    def __init__(self, user: str, memory_max: int, tasks_max: int, use_systemd: bool | None = None) -> None:
        self.identity = resolve_user(user)
        self.memory_max = memory_max
        self.tasks_max = tasks_max
        self.use_systemd = (os.geteuid() == 0 and systemd_running()) if use_systemd is None else use_systemd
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

    def shares(self, path: Path) -> None:
        """Make the directory ``path`` one that both this server's user (e.g. the warm
        analysis worker) and the sandbox user may create files in, and nobody else: the
        sandbox user's group, mode 1770 (sticky: each removes only its own files)."""
        if self.identity is not None:
            os.chown(path, -1, self.identity.gid)
            os.chmod(path, 0o1770)

    def remove(self, path: Path) -> None:
        """Delete the scratch tree ``path``: what the sandbox user made in it (which a
        non-root server may not even read) as that user, in a forked helper, then the rest.
        Never raises."""
        if self.identity is not None and os.path.lexists(path):
            as_user(self.identity, lambda: shutil.rmtree(path, ignore_errors=True))
        shutil.rmtree(path, ignore_errors=True)

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

    def preexec(self, switch_user: bool = True, cwd: str | None = None) -> Callable[[], None]:
        """What runs in the child between ``fork`` and ``exec``: a new session (so a
        stop of the process group reaches its children), without systemd the rlimits and
        (``switch_user``) the switch to the sandbox user, then ``chdir(cwd)``: after the
        switch, as a non-root server may not enter the sandbox user's scratch directory."""
        spec = self.drop_spec() if switch_user else f"::{self.memory_max}:{self.tasks_max}"
        systemd = self.use_systemd

        def setup() -> None:
            os.setsid()
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if not systemd:
                drop_privileges(spec)
            if cwd is not None:
                os.chdir(cwd)

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
                stderr=subprocess.PIPE, env={**BASE_ENV, **env}, preexec_fn=self.preexec(switch_user, cwd),
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
        # Deepest first: once a directory is given away, a non-root server cannot enter it.
        for path in (*reversed(list(scratch.rglob("*"))), scratch):
            os.chown(path, int(uid), int(gid), follow_symlinks=False)
    return copy


def drop_privileges(spec: str) -> None:
    """Apply a :meth:`Sandbox.drop_spec`: ``RLIMIT_AS`` (bytes), then, with a user,
    no supplementary groups, its gid, ``RLIMIT_NPROC``, its uid (the real, effective and
    saved uid: there is no way back) and :func:`drop_capabilities`; and ``oom_score_adj``
    :data:`OOM_SCORE_ADJ`, so that when memory runs out the kernel kills sandboxed code
    before the server it shares a cgroup with. Raises ``OSError`` when a step is refused
    (the caller must then not run the sandboxed code)."""
    uid, gid, memory, tasks = spec.split(":")
    resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
    if uid:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as fh:
            fh.write(str(OOM_SCORE_ADJ))
        become(int(uid), int(gid), int(tasks))


def become(uid: int, gid: int, tasks_max: int | None = None) -> None:
    """Switch this process to ``uid``/``gid`` for good: only the supplementary groups the
    group database gives that user (on the image ``ot2-run`` is in ``ot2-usb``, for USB
    modules and serial adapters; none of the server's groups), real, effective and saved
    ids, ``RLIMIT_NPROC`` = ``tasks_max`` (if given) and :func:`drop_capabilities`.
    Raises ``OSError`` when a step is refused."""
    os.setgroups(own_groups(uid, gid))
    os.setresgid(gid, gid, gid)
    if tasks_max is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (tasks_max, tasks_max))
    os.setresuid(uid, uid, uid)
    drop_capabilities()


def own_groups(uid: int, gid: int) -> list[int]:
    """The supplementary groups of user ``uid`` in the group database (``getgrouplist(3)``),
    its primary group ``gid`` left out; none for a uid without a passwd entry."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return []
    return [g for g in os.getgrouplist(name, gid) if g != gid]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


#: ``capset(2)`` ABI version 3 (64-bit sets as two ``_CapData``) and ``prctl(2)`` options.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
#: Looked up once, here: a child forked from the threaded server must not ``dlopen``/``dlsym``
#: (the loader's lock may have been held by another thread at the fork).
_LIBC = ctypes.CDLL(None, use_errno=True)
_prctl = _LIBC.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_capset = _LIBC.capset
_capset.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]


def drop_capabilities() -> None:
    """Empty this process' ambient, effective, permitted and inheritable capability sets
    (``prctl(PR_CAP_AMBIENT_CLEAR_ALL)``, ``capset(2)``) and set ``no_new_privs``, so that
    no ``execve`` (a set-user-ID program, file capabilities) gives any back
    (``prctl(2)``, ``PR_SET_NO_NEW_PRIVS``). Raises ``OSError`` if the kernel refuses."""
    empty = (_CapData * 2)()
    if (_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0
            or _capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), empty) != 0
            or _prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0):
        err = ctypes.get_errno()
        raise OSError(err, f"cannot drop capabilities: {os.strerror(err)}")


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


def as_user(ident: Identity, action: Callable[[], None]) -> None:
    """Call ``action()`` in a forked helper that has become ``ident``'s user (no groups,
    no capabilities); wait for it. Whatever the helper does or raises stays in it."""
    pid = os.fork()
    if pid == 0:
        try:
            become(ident.uid, ident.gid)
            action()
        except BaseException:  # noqa: BLE001 - the helper must never return into the server
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def kill_user(ident: Identity, rounds: int = 20) -> None:
    """SIGKILL every process of ``ident``'s user: a forked helper drops to that user and
    calls ``kill(-1, SIGKILL)`` (repeated until none is left: a fork racing the first
    round is caught by the next)."""
    for _ in range(rounds):
        as_user(ident, _kill_every_process_of_this_user)
        if not user_processes(ident.uid):
            return
    log.warning("processes of %s survive kill(-1): %s", ident.name, user_processes(ident.uid))


def _kill_every_process_of_this_user() -> None:
    """``kill(-1, SIGKILL)``, only without any capability: with ``CAP_KILL`` it would
    reach every process of the machine, not only this user's."""
    if effective_caps() != 0:
        raise PermissionError("refusing kill(-1) while holding capabilities")
    os.kill(-1, signal.SIGKILL)


async def _quiet(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await proc.wait()

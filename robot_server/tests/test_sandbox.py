"""The sandbox on this host: real processes under the sandbox user, real rlimits, and
``kill_all`` reaching children that left their session. (The systemd path cannot run
without systemd as PID 1; its command line is checked instead.)"""
from __future__ import annotations

import asyncio
import os
import resource
import sys
import time

import pytest

from robot_server import sandbox
from robot_server.sandbox import Sandbox, user_processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to the sandbox user needs root")

MEMORY = 512 * 1024 * 1024
PROBE = ("import os, resource; print(os.getuid(), os.getgid(), os.getgroups(), "
         "resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_NPROC)[0])")


def run(coro):
    return asyncio.run(coro)


def test_systemd_command_line_asks_for_a_scope_with_limits_and_the_user():
    box = Sandbox("ot2-run", MEMORY, 64, use_systemd=True)
    argv = box.command("ot2-run-x", ["/usr/bin/python3", "-m", "robot_server.run_worker", "/p"])
    assert argv[:2] == ["systemd-run", "--scope"] and "--collect" in argv and "--unit=ot2-run-x" in argv
    assert f"MemoryMax={MEMORY}" in argv and "TasksMax=64" in argv
    assert f"--uid={box.identity.uid}" in argv and f"--gid={box.identity.gid}" in argv
    assert argv[argv.index("--") + 1:] == ["/usr/bin/python3", "-m", "robot_server.run_worker", "/p"]


def test_a_sandboxed_process_runs_unprivileged_with_limits():
    box = Sandbox("ot2-run", MEMORY, 64, use_systemd=False)

    async def probe() -> str:
        proc = await box.spawn("probe", [sys.executable, "-c", PROBE], env={}, cwd="/")
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        return out.decode()

    uid, gid, groups, mem, tasks = probe_fields = run(probe()).split(maxsplit=4)
    assert int(uid) == box.identity.uid != 0 and int(gid) == box.identity.gid, probe_fields
    assert groups.strip() == "[]" and int(mem) == MEMORY and int(tasks.split()[-1]) == 64


def test_kill_all_reaches_children_in_their_own_session():
    box = Sandbox("ot2-run", MEMORY, 64, use_systemd=False)
    script = ("import subprocess, time\n"
              "for _ in range(3):\n"
              "    subprocess.Popen(['sleep', '3600'], start_new_session=True)\n"
              "print('started', flush=True)\n"
              "time.sleep(3600)\n")

    async def scenario() -> None:
        proc = await box.spawn("children", [sys.executable, "-c", script], env={}, cwd="/")
        assert (await proc.stdout.readline()).strip() == b"started"
        assert len(box.processes()) >= 4
        await box.kill_all("children", proc)
        await asyncio.wait_for(proc.wait(), 10)

    run(scenario())
    deadline = time.monotonic() + 5
    while user_processes(box.identity.uid):
        assert time.monotonic() < deadline, user_processes(box.identity.uid)
        time.sleep(0.05)


def test_the_sandbox_user_cannot_be_root():
    with pytest.raises(ValueError):
        Sandbox("root", MEMORY, 64, use_systemd=False)
    assert resource.getrlimit(resource.RLIMIT_NPROC)[0] != 64      # the server's own limits are untouched


def test_kill_of_every_process_of_a_user_is_refused_while_holding_capabilities(monkeypatch):
    """``kill(-1)`` with ``CAP_KILL`` would reach every process of the machine: the helper
    refuses it unless its capabilities are gone (this test runs as root, with all of them;
    ``os.kill`` records instead of signalling, so that a broken check harms nothing)."""
    signalled = []
    monkeypatch.setattr(sandbox.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    with pytest.raises(PermissionError):
        sandbox._kill_every_process_of_this_user()
    assert signalled == [] and sandbox.effective_caps() != 0

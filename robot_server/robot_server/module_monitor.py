"""The USB hardware modules attached to this robot, for ``GET /modules``.

Modules are found by the names the image's udev rules give their serial devices,
``<module_dir>/ot_module_<name><n>`` (overlay/usr/lib/udev/rules.d/95-ot2-modules.rules;
the names ``opentrons`` scans for, Opentrons/opentrons,
api/src/opentrons/hardware_control/module_control.py). They are read by
:mod:`.module_reader`, a helper process that imports ``opentrons`` (the server does not:
it would cost the server tens of MB), started only while a module device exists.

A module's serial port belongs to whoever runs protocols: while a run is active or a
client holds the G-code channel's lease (``robot-execute``), modules are not opened and
the last data read is answered. The helper opens a port only for the moment of one read.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable

from . import worker_io

log = logging.getLogger("robot_server.module_monitor")

#: Longest wait for the helper's answer (its first start imports ``opentrons``: seconds on a Pi).
READ_TIMEOUT_S = 60.0


class ModuleMonitor:
    """Attached modules under ``module_dir``; ``busy()`` says whether a run (or a lease
    holder) may be using their ports."""

    def __init__(self, module_dir: Path, busy: Callable[[], bool]) -> None:
        self.module_dir = module_dir
        self.busy = busy
        self.last: list[dict] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._refs = itertools.count(1)

    def devices(self) -> list[str]:
        """Paths of the module devices present (``ot_module_*``; which are modules the
        helper decides, with ``opentrons``' own matcher)."""
        return sorted(str(p) for p in self.module_dir.glob("ot_module_*"))

    async def modules(self) -> list[dict]:
        """The attached modules in the OT-2's ``AttachedModule`` shape (see
        :mod:`.module_reader`), read now; while :attr:`busy`, the last ones read (without
        those whose device has gone). A module that cannot be read is left out (logged)."""
        async with self._lock:
            devices = self.devices()
            if not devices:
                await self._stop_helper()
                self.last = []
            elif self.busy():
                self.last = [m for m in self.last if m["usbPort"]["path"] in devices]
            else:
                self.last = await self._read(devices)
            return self.last

    async def release(self) -> None:
        """Wait until no read is under way (a run is about to open the modules' ports)."""
        async with self._lock:
            pass

    async def close(self) -> None:
        async with self._lock:
            await self._stop_helper()

    async def execute(self, path: str, command_type: str, params: dict) -> dict:
        """Carry out a module command of ``POST /commands`` on the module at ``path`` (see
        :func:`robot_server.module_reader.execute`): ``{"result": {...}}`` or ``{"error":
        {errorType, detail}}``. The caller makes sure no run or lease holder uses the modules."""
        async with self._lock:
            reply = await self._ask({"command": {"path": path, "commandType": command_type, "params": params}})
        if reply is None:
            return {"error": {"errorType": "ModuleNotAttachedError", "detail": f"The module at {path} did not answer."}}
        return reply

    async def _read(self, devices: list[str]) -> list[dict]:
        reply = await self._ask({"read": devices})
        if reply is None:
            return []
        for path, error in (reply.get("errors") or {}).items():
            log.warning("module at %s not read: %s", path, error)
        return list(reply.get("modules") or [])

    async def _ask(self, request: dict) -> dict | None:
        """The helper's reply to ``request`` (starting the helper if needed); None if it
        failed or did not answer in time (it is then stopped)."""
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "robot_server.module_reader", stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, limit=1 << 20)
        ref = next(self._refs)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            self._proc.stdin.write(json.dumps({"ref": ref, **request}).encode() + b"\n")
            async with asyncio.timeout(READ_TIMEOUT_S):
                async for frame in worker_io.frames(self._proc.stdout):
                    if frame.get("ref") == ref:
                        return frame
        except (TimeoutError, ConnectionError) as exc:
            log.warning("module reader failed: %s", exc or type(exc).__name__)
        await self._stop_helper()
        return None

    async def _stop_helper(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()                  # end of requests: it exits
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

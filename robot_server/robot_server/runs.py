"""Runs (``/runs``) of stored protocols or of no protocol (driven by commands sent over
HTTP, as on the OT-2), each in its own sandboxed process
(:mod:`.run_worker`) driving the engine's runner against the robot server's G-code
channel.

On disk, ``<data_dir>/robot-server/runs/<id>/``:

* ``run.json``: the resource (OT-2 ``Run``: ``id``, ``createdAt``, ``status``,
  ``current``, ``actions``, ``errors``, ``labware``, ``pipettes``, ``modules``,
  ``liquids``, ``labwareOffsets``, ``protocolId``, ``startedAt``, ``completedAt``);
* ``commands.jsonl``: each finished command (one JSON line, in order; at most
  ``MAX_COMMAND_LOG`` bytes) and
  ``commands.idx``: the byte offset of each line (8 bytes, little-endian), so a page
  of commands is read from disk without reading the log before it;
* ``output.log``: the run process's own output (``print`` in a protocol, the engine's
  log), at most ``MAX_OUTPUT`` bytes.

Only the runs' small resources and the command running now stay in memory.

One run is *current* (the newest, until dismissed with ``PATCH {"current": false}``);
a new run while the current one has started and not finished is refused with 409
``RunAlreadyActive``; an unstarted current run is stopped to make way, as on the OT-2.
Stopping a run (HTTP, the bridge, the front button) asks the engine to stop; after
``STOP_GRACE_S`` the process is killed; when a run's process ends, everything else of
its sandbox is killed too (children that called ``setsid`` included).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import struct
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from . import worker_io
from .errors import ROBOT_IN_USE_CODE, Ot2Error, invalid_request, not_found
from .protocols import ProtocolStore, new_id, now, write_json
from .sandbox import Sandbox, copy_in

log = logging.getLogger("robot_server.runs")

TERMINAL = ("stopped", "failed", "succeeded")
#: Statuses in which a run's engine is working (a new run would conflict).
STARTED = ("running", "paused", "blocked-by-open-door", "stop-requested", "finishing", "awaiting-recovery")
MAX_RUNS = 20
MAX_OUTPUT = 4 * 1024 * 1024
#: Longest wait for the run process to answer a request (it answers once its engine is
#: built, which on a loaded Pi takes tens of seconds), seconds.
REPLY_TIMEOUT_S = 120.0
#: Largest command log kept per run, bytes (a run of 10,000 commands writes about 10 MB).
MAX_COMMAND_LOG = 128 * 1024 * 1024
STOP_GRACE_S = 10.0
MAX_FRAME = 16 * 1024 * 1024
IDX = struct.Struct("<Q")


@dataclass
class Run:
    """A run: its resource (``data``), and while its process lives, the process."""

    data: dict
    directory: Path
    proc: asyncio.subprocess.Process | None = None
    current_command: dict | None = None
    command_count: int = 0
    stop_requested: bool = False
    set_up: bool = False           # the process reported its first status: the engine is there
    tasks: list[asyncio.Task] = field(default_factory=list)
    #: Commands enqueued over HTTP that have not started yet, by id.
    queued: dict[str, dict] = field(default_factory=dict)
    #: Requests sent to the run process awaiting its reply, by ``ref`` (from ``refs``).
    replies: dict[int, asyncio.Future] = field(default_factory=dict)
    refs: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: Set when the command of that id has finished (for ``waitUntilComplete``).
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    scratch: str | None = None

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def unit(self) -> str:
        return f"ot2-run-{self.id}"

    def save(self) -> None:
        try:
            write_json(self.directory / "run.json", self.data)
        except OSError as exc:
            log.warning("run %s: cannot save: %s", self.id, exc)


class RunManager:
    """The runs (see the module docstring). ``channel_url()``: the pyserial URL the run
    processes reach the motor board through (``socket://127.0.0.1:<channel_port>``);
    ``on_play()``: called when a run is played (the board may be held by the door);
    ``stopped_elsewhere(name)``: whether the lease of holder ``name`` was ended by a stop
    (then a run that lost its board ends ``stopped``, not ``failed``); ``before_spawn()``:
    awaited before a run process starts, once the run is active (the USB modules' ports
    are then free for it)."""

    def __init__(self, root: Path, protocols: ProtocolStore, sandbox: Sandbox,
                 channel_url: Callable[[], str], on_play: Callable[[], None],
                 stopped_elsewhere: Callable[[str], bool],
                 before_spawn: Callable[[], Awaitable[None]] | None = None) -> None:
        self.root = root
        self.protocols = protocols
        self.sandbox = sandbox
        self.channel_url = channel_url
        self.on_play = on_play
        self.stopped_elsewhere = stopped_elsewhere
        self.before_spawn = before_spawn
        self.runs: dict[str, Run] = {}

    # ------------------------------------------------------------ state
    def load(self) -> None:
        """Read the stored runs; a run that was not finished when the server stopped is
        marked failed (its process died with the server)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for directory in sorted(self.root.iterdir()):
            try:
                data = json.loads((directory / "run.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("dropping unreadable run %s", directory.name)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            run = Run(data, directory, command_count=_count(directory))
            run.finished.set()
            if data["status"] not in TERMINAL:
                data.update(status="failed", completedAt=now(), current=False)
                data["errors"].append(_error("RunInterrupted", "The robot server stopped during the run."))
                run.save()
            self.runs[data["id"]] = run

    def active(self) -> Run | None:
        """The run whose process is alive, if any."""
        return next((r for r in self.runs.values() if not r.finished.is_set()), None)

    def current(self) -> Run | None:
        return next((r for r in self.runs.values() if r.data["current"]), None)

    def get(self, run_id: str) -> Run:
        """A run; 404 ``RunNotFound``."""
        try:
            return self.runs[run_id]
        except KeyError:
            raise not_found("Run", run_id) from None

    def list(self) -> list[dict]:
        """All runs' resources, oldest first."""
        return [r.data for r in sorted(self.runs.values(), key=lambda r: r.data["createdAt"])]

    def protocol_in_use(self, protocol_id: str) -> bool:
        run = self.active()
        return run is not None and run.data["protocolId"] == protocol_id

    # ------------------------------------------------------------ create / delete
    async def create(self, protocol_id: str | None, labware_offsets: list) -> dict:
        """Create a run (status ``idle``; ``play`` starts it) of a stored protocol, or with
        ``protocol_id`` ``None`` a run with no protocol, driven by :meth:`add_command`.
        Raises 404 ``ProtocolNotFound``, 409 ``RunAlreadyActive``."""
        files = self.protocols.files_dir(protocol_id) if protocol_id is not None else None
        current = self.current()
        if current is not None and current.data["status"] in STARTED:
            raise Ot2Error("RunAlreadyActive", "Run Already Active",
                           f"Run {current.id} is {current.data['status']}; stop it before creating "
                           "another run.", ROBOT_IN_USE_CODE)
        if current is not None:
            if not current.finished.is_set():
                await self.stop(current)
                await current.finished.wait()
            current.data["current"] = False
            current.save()
        run_id = new_id()
        directory = self.root / run_id
        directory.mkdir()
        run = Run({"id": run_id, "createdAt": now(), "status": "idle", "current": True, "actions": [],
                   "errors": [], "hasEverEnteredErrorRecovery": False, "labware": [], "pipettes": [],
                   "modules": [], "liquids": [], "labwareOffsets": [], "protocolId": protocol_id,
                   "runTimeParameters": [], "outputFileIds": []}, directory)
        (directory / "commands.jsonl").touch()
        (directory / "commands.idx").touch()
        run.save()
        self.runs[run_id] = run
        self._prune()
        run.scratch = tempfile.mkdtemp(prefix="ot2-run-")
        try:
            args = [str(copy_in(files, Path(run.scratch), self.sandbox.drop_spec()))] if files is not None else []
            self.sandbox.owns(Path(run.scratch))    # after the copy: a non-root server cannot enter it then
            if self.before_spawn is not None:
                await self.before_spawn()
            run.proc = await self.sandbox.spawn(
                run.unit, [sys.executable, "-m", "robot_server.run_worker", *args],
                env={"OT_SMOOTHIE_EMULATOR_URI": self.channel_url(), "OT_API_CONFIG_DIR": run.scratch,
                     "HOME": run.scratch, "TMPDIR": run.scratch},
                cwd=run.scratch, limit=MAX_FRAME)
        except OSError as exc:
            self._end(run, "failed", _error("RunProcessFailed", f"The run process could not start: {exc}"))
            return run.data
        run.tasks = [asyncio.ensure_future(self._read(run)), asyncio.ensure_future(self._output(run))]
        if labware_offsets:
            self._send(run, {"labwareOffsets": labware_offsets})
        return run.data

    async def delete(self, run_id: str) -> None:
        """Delete a finished or unstarted run (an unstarted one's process is stopped first,
        so the next run finds the G-code channel free); 409 ``RunNotIdle`` while it runs."""
        run = self.get(run_id)
        if not run.finished.is_set():
            if run.data["status"] != "idle":
                raise Ot2Error("RunNotIdle", "Run is not Idle",
                               f"Run {run_id} is {run.data['status']}; stop it before deleting it.")
            await self.stop(run)
            await run.finished.wait()       # at most STOP_GRACE_S: then the sandbox is killed
        if run_id not in self.runs:         # deleted meanwhile
            return
        del self.runs[run_id]
        shutil.rmtree(run.directory, ignore_errors=True)

    def dismiss(self, run_id: str, current: Any) -> dict:
        """``PATCH {"current": false}``: the run stops being current (once finished)."""
        run = self.get(run_id)
        if current is not False:
            raise invalid_request("Only 'current': false is accepted.", "/data/current")
        if not run.finished.is_set():
            raise Ot2Error("RunNotIdle", "Run is not Idle", f"Run {run_id} is {run.data['status']}.")
        run.data["current"] = False
        run.save()
        return run.data

    def _prune(self) -> None:
        old = sorted((r for r in self.runs.values() if r.finished.is_set()), key=lambda r: r.data["createdAt"])
        for run in old[: max(0, len(self.runs) - MAX_RUNS)]:
            del self.runs[run.id]
            shutil.rmtree(run.directory, ignore_errors=True)

    # ------------------------------------------------------------ actions
    async def action(self, run_id: str, action_type: str) -> dict:
        """``play`` / ``pause`` / ``stop`` on the current run. Returns the action
        resource ``{id, createdAt, actionType}``. Raises 409 ``RunStopped`` (not the
        current run, or finished), 409 ``RunActionNotAllowed`` (e.g. pause while idle)."""
        run = self.get(run_id)
        status = run.data["status"]
        if not run.data["current"] or status in TERMINAL or run.finished.is_set():
            raise Ot2Error("RunStopped", "Run Stopped", f"Run {run_id} is not the current run "
                           f"or has finished ({status}).")
        allowed = {"play": ("idle", "paused", "blocked-by-open-door"), "pause": ("running",),
                   "stop": ("idle", "running", "paused", "blocked-by-open-door", "finishing")}
        if action_type not in allowed:
            raise invalid_request("actionType must be 'play', 'pause' or 'stop'.", "/data/actionType")
        if status not in allowed[action_type] or (action_type == "play" and run.stop_requested):
            raise Ot2Error("RunActionNotAllowed", "Run Action Not Allowed",
                           f"Cannot {action_type} run {run_id} while it is {status}.")
        action = {"id": new_id(), "createdAt": now(), "actionType": action_type}
        run.data["actions"].append(action)
        if action_type == "play" and "startedAt" not in run.data:
            run.data["startedAt"] = action["createdAt"]
        if action_type == "stop":
            await self.stop(run)
        else:
            if action_type == "play":
                self.on_play()
            self._send(run, {"action": action_type})
        run.save()
        return action

    async def stop(self, run: Run) -> None:
        """Ask the engine to stop; kill the run's sandbox if it has not ended within
        ``STOP_GRACE_S``."""
        if run.finished.is_set() or run.stop_requested:
            return
        run.stop_requested = True
        if run.data["status"] not in TERMINAL:
            run.data["status"] = "stop-requested"
        if not run.set_up:              # nothing has started: no engine to ask yet
            await self.sandbox.kill_all(run.unit, run.proc)
            return
        self._send(run, {"action": "stop"})
        task = asyncio.ensure_future(self._kill_after_grace(run))
        run.tasks.append(task)

    async def stop_active(self, params: Any = None) -> dict:
        """Stop whatever run is active (the bridge's ``stopRun``, the front button).
        Returns ``{"stopped": run id or null}``."""
        run = self.active()
        if run is not None:
            await self.stop(run)
        return {"stopped": run.id if run is not None else None}

    def holder_name(self, pid: int | None) -> str | None:
        """``"run <id>"`` when ``pid`` is the active run's process (the G-code channel's
        namer: 409 ``robot-leased`` messages then name the run)."""
        run = self.active()
        if run is not None and pid is not None and run.proc is not None and run.proc.pid == pid:
            return f"run {run.id}"
        return None

    async def lease_stopped(self, holder_name: str) -> None:
        """The G-code channel ended the lease of ``holder_name`` by a stop (HTTP
        ``/robot/stop``, the bridge, the front button): if that was the active run, it
        ends ``stopped`` rather than failed."""
        run = self.active()
        if run is not None and holder_name == f"run {run.id}":
            await self.stop(run)

    def door(self, is_open: bool) -> None:
        """Tell the active run's engine about the door (it blocks the run while open)."""
        run = self.active()
        if run is not None:
            self._send(run, {"door": "open" if is_open else "closed"})

    async def close(self) -> None:
        """Server shutdown: stop the active run and wait for its process to end."""
        run = self.active()
        if run is not None:
            await self.stop(run)
            try:
                await asyncio.wait_for(run.finished.wait(), STOP_GRACE_S + 5)
            except asyncio.TimeoutError:
                log.warning("run %s did not end", run.id)

    def _send(self, run: Run, request: dict) -> None:
        if run.proc is not None and run.proc.returncode is None and run.proc.stdin is not None:
            try:
                run.proc.stdin.write(json.dumps(request).encode() + b"\n")
            except (ConnectionError, RuntimeError):
                pass

    async def _kill_after_grace(self, run: Run) -> None:
        try:
            await asyncio.wait_for(run.finished.wait(), STOP_GRACE_S)
        except asyncio.TimeoutError:
            log.warning("run %s did not stop within %g s; killing it", run.id, STOP_GRACE_S)
            await self.sandbox.kill_all(run.unit, run.proc)

    # ------------------------------------------------------------ the process
    async def _read(self, run: Run) -> None:
        """Follow the run process's frames until it ends, then finish the run."""
        assert run.proc is not None and run.proc.stdout is not None
        summary: dict | None = None
        setup_error: str | None = None
        final: str | None = None
        with open(run.directory / "commands.jsonl", "ab") as commands, \
                open(run.directory / "commands.idx", "ab") as index:
            async for frame in worker_io.frames(run.proc.stdout):
                if "command" in frame and isinstance(frame["command"], dict):
                    if commands.tell() > MAX_COMMAND_LOG:     # protocol code could flood /data
                        continue
                    index.write(IDX.pack(commands.tell()))
                    commands.write(json.dumps(frame["command"], separators=(",", ":")).encode() + b"\n")
                    commands.flush()
                    index.flush()
                    run.command_count += 1
                    command_id = frame["command"].get("id")
                    run.queued.pop(command_id, None)
                    if run.current_command is not None and run.current_command.get("id") == command_id:
                        run.current_command = None       # finished: the log has it now
                    if command_id in run.done:
                        run.done.pop(command_id).set()
                elif "current" in frame:
                    run.current_command = frame["current"] if isinstance(frame["current"], dict) else None
                    if run.current_command is not None:
                        run.queued.pop(run.current_command.get("id"), None)
                elif isinstance(frame.get("reply"), dict):
                    added = frame["reply"].get("command")
                    if isinstance(added, dict) and added.get("status") in ("queued", "running"):
                        run.queued[added["id"]] = added       # before any later frame about it
                        run.done[added["id"]] = asyncio.Event()
                    future = run.replies.pop(frame["reply"].get("ref"), None)
                    if future is not None and not future.done():
                        future.set_result(frame["reply"])
                elif isinstance(frame.get("status"), str):
                    run.set_up = True
                    if frame["status"] in TERMINAL:     # shown once the summary is in (see below)
                        final = frame["status"]
                    elif not (run.stop_requested and frame["status"] in ("idle", "running", "paused")):
                        run.data["status"] = frame["status"]
                        run.save()
                elif isinstance(frame.get("summary"), dict):
                    summary = frame["summary"]
                elif "setupError" in frame:
                    setup_error = str(frame["setupError"])[:2000]
        code = await run.proc.wait()
        for future in run.replies.values():     # asked, never answered: the run is over
            if not future.done():
                future.set_result({"error": {"id": "RunStopped", "title": "Run Stopped",
                                             "detail": f"Run {run.id} has ended."}})
        run.replies.clear()
        await self.sandbox.kill_all(run.unit, None)     # whatever it started, whatever its session
        run.stop_requested = run.stop_requested or self.stopped_elsewhere(f"run {run.id}")
        if summary is not None:
            run.data.update({k: v for k, v in summary.items() if k in run.data})
        if setup_error is not None:
            self._end(run, "failed", _error("RunSetupFailed", f"The run could not be set up: {setup_error}"))
        elif final is not None:
            self._end(run, "stopped" if run.stop_requested and final == "failed" else final, None)
        elif run.stop_requested:
            self._end(run, "stopped", None)
        else:
            self._end(run, "failed", _error("RunProcessEnded", f"The run process ended unexpectedly "
                                            f"(exit status {code}); a memory or task limit may have been hit."))

    def _end(self, run: Run, status: str, error: dict | None) -> None:
        run.data["status"] = status
        run.data["completedAt"] = now()
        if error is not None:
            run.data["errors"].append(error)
        run.current_command = None
        run.queued.clear()
        for event in run.done.values():
            event.set()
        run.done.clear()
        if run.id in self.runs:           # not deleted meanwhile
            run.save()
        run.finished.set()
        if run.scratch:
            self.sandbox.remove(Path(run.scratch))

    async def _output(self, run: Run) -> None:
        """Keep the run process's stderr (up to ``MAX_OUTPUT`` bytes) in ``output.log``."""
        assert run.proc is not None and run.proc.stderr is not None
        written = 0
        with open(run.directory / "output.log", "ab") as out:
            while chunk := await run.proc.stderr.read(65536):
                if written < MAX_OUTPUT:
                    out.write(chunk[: MAX_OUTPUT - written])
                    out.flush()
                    written += len(chunk)

    # ------------------------------------------------------------ commands
    def commands(self, run_id: str, cursor: int | None, length: int) -> tuple[list[dict], dict, dict]:
        """A page of a run's commands as summaries (without ``result``), read from disk,
        plus the command running now. ``cursor`` ``None``: the page ending at the running
        (or last) command, as the engine's ``get_slice`` chooses. Returns ``(commands,
        meta {cursor, totalLength}, links {current?})``."""
        run = self.get(run_id)
        total = run.command_count + (1 if run.current_command else 0)
        if cursor is None:
            cursor = max(0, total - length)
        cursor = min(cursor, max(0, total - 1)) if total else 0
        page = _read_commands(run.directory, cursor, min(length, max(0, run.command_count - cursor)))
        if run.current_command is not None and cursor + len(page) == run.command_count and len(page) < length:
            page.append(run.current_command)
        summaries = [{k: v for k, v in c.items() if k != "result"} for c in page]
        links = {}
        if run.current_command is not None:
            last, index = run.current_command, run.command_count
        else:
            last, index = (_read_commands(run.directory, run.command_count - 1, 1) or [None])[0], run.command_count - 1
        if last is not None:
            links["current"] = {"href": f"/runs/{run_id}/commands/{last['id']}",
                                "meta": {"runId": run_id, "commandId": last["id"], "index": index,
                                         "key": last.get("key"), "createdAt": last.get("createdAt")}}
        return summaries, {"cursor": cursor, "totalLength": total}, links

    def command(self, run_id: str, command_id: str) -> dict:
        """One command in full (queued, running or finished); 404 ``CommandNotFound``."""
        run = self.get(run_id)
        if run.current_command is not None and run.current_command.get("id") == command_id:
            return run.current_command
        if command_id in run.queued:
            return run.queued[command_id]
        prefix = json.dumps({"id": command_id}, separators=(",", ":"))[:-1].encode() + b","
        with open(run.directory / "commands.jsonl", "rb") as fh:
            for line in fh:
                if line.startswith(prefix):
                    return json.loads(line)
        raise not_found("Command", command_id)

    async def add_command(self, run_id: str, command: dict, wait: bool, timeout_s: float | None) -> dict:
        """Enqueue ``command`` (the OT-2's ``CommandCreate``: ``commandType``, ``params``,
        ``intent`` ``setup``|``protocol``) into the current run's engine. Setup commands run
        while the run is idle or paused, protocol commands once it is played. With ``wait``,
        answers once the command has finished or after ``timeout_s`` (``None``: no limit).
        Returns the command resource as it is then. Raises 404 ``RunNotFound``, 409
        ``RunStopped`` (not current, or finished), 409 ``CommandNotAllowed``, 422
        ``InvalidRequest`` (a command the engine's models refuse)."""
        run = self.get(run_id)
        reply = await self._ask(run, {"command": command})
        added = reply["command"]
        command_id = added["id"]
        if wait and command_id in run.done:
            try:
                await asyncio.wait_for(run.done[command_id].wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        try:
            return self.command(run_id, command_id)
        except Ot2Error:             # finished between the reply and its log line
            return added

    async def add_labware_definition(self, run_id: str, definition: dict) -> dict:
        """Add a custom labware definition (a labware schema 2 or 3 object) to the current
        run's engine. Returns ``{"definitionUri": "<namespace>/<loadName>/<version>"}``.
        Raises 404 ``RunNotFound``, 409 ``RunStopped``, 422 ``InvalidRequest``."""
        reply = await self._ask(self.get(run_id), {"labwareDefinition": definition})
        return {"definitionUri": reply["definitionUri"]}

    async def _ask(self, run: Run, request: dict) -> dict:
        """Send ``request`` to the run's process and wait for its reply (raised as an
        :class:`Ot2Error` when it is an error)."""
        if not run.data["current"] or run.finished.is_set() or run.stop_requested or run.data["status"] in TERMINAL:
            raise Ot2Error("RunStopped", "Run Stopped",
                           f"Run {run.id} is not the current run or has finished ({run.data['status']}).")
        ref = next(run.refs)
        future = run.replies[ref] = asyncio.get_running_loop().create_future()
        self._send(run, {"ref": ref, **request})
        try:
            reply = await asyncio.wait_for(future, REPLY_TIMEOUT_S)
        except asyncio.TimeoutError:
            run.replies.pop(ref, None)
            raise Ot2Error("RunNotReady", "Run Not Ready",
                           f"Run {run.id} did not answer within {REPLY_TIMEOUT_S:g} s.") from None
        if "error" in reply:
            error = reply["error"]
            raise Ot2Error(error["id"], error["title"], error["detail"],
                           pointer="/data" if error["id"] == "InvalidRequest" else None)
        return reply

    def add_labware_offset(self, run_id: str, offset: dict) -> dict:
        """Add a labware offset to a run that has not started; the engine validates it."""
        run = self.get(run_id)
        if run.finished.is_set() or run.data["status"] != "idle" or "startedAt" in run.data:
            raise Ot2Error("RunAlreadyStarted", "Run Already Started",
                           f"Run {run_id} has started; labware offsets can only be added before.")
        self._send(run, {"labwareOffsets": [offset]})
        entry = {"id": new_id(), "createdAt": now(), **offset}
        run.data["labwareOffsets"].append(entry)
        run.save()
        return entry


def _error(error_type: str, detail: str) -> dict:
    return {"id": new_id(), "createdAt": now(), "errorType": error_type, "errorCode": "4000",
            "detail": detail, "errorInfo": {}, "wrappedErrors": []}


def _count(directory: Path) -> int:
    try:
        return (directory / "commands.idx").stat().st_size // IDX.size
    except OSError:
        return 0


def _read_commands(directory: Path, start: int, count: int) -> list[dict]:
    """Commands ``start`` .. ``start + count - 1`` from ``commands.jsonl`` via the index."""
    if count <= 0 or start < 0:
        return []
    with open(directory / "commands.idx", "rb") as idx:
        idx.seek(start * IDX.size)
        offsets = [IDX.unpack(idx.read(IDX.size))[0] for _ in range(count)]
    out = []
    with open(directory / "commands.jsonl", "rb") as fh:
        fh.seek(offsets[0])
        for _ in offsets:
            out.append(json.loads(fh.readline()))
    return out

"""The robot server's protocol store and runs (``/protocols``, ``/runs``).

* Upload (``POST /protocols``): the file is analysed by simulation in a child process
  (``robot-simulate --json``; killed after ``protocol_analysis_timeout`` s, reporting the
  line it was at) and refused with 422 naming the line if it fails. Accepted files are
  kept in ``<data_dir>/robot-server/protocols/<id>/`` (``protocol.py``, ``meta.json``).
* A run (``POST /runs``) executes the protocol in a child process (``robot-execute
  --server <this server>``), so a protocol that crashes, hogs memory or loops forever
  cannot take the server with it; its motions come back through the HTTP API (one owner
  of the UART, door pause applies). The child reports each command as a JSON line on a
  private pipe; its stdout/stderr become ``output`` entries of the log. Runs are kept in
  ``<data_dir>/robot-server/runs/<id>/`` (``run.json``, ``log.jsonl``).
* Actions: ``pause`` (SIGUSR1: the child stops before its next command), ``resume``
  (SIGUSR2), ``stop`` (SIGTERM: the child raises at the current line of the protocol,
  SIGKILL after ``STOP_GRACE_S``); after a stop the server halts any motion in progress
  (the board's halt line) and re-reads homing status and positions.

Only one run is active at a time. Runs that were active when the server stopped are
marked failed at the next start.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ..service import ApiError, _obj, invalid

log = logging.getLogger("robot_server.protocol.runs")

MAX_PROTOCOL_BYTES = 1024 * 1024
#: Runs kept on disk (the oldest finished ones are deleted beyond this).
MAX_RUNS_KEPT = 50
#: Log entries kept in memory per run (the full log is in ``log.jsonl``).
MAX_LOG_IN_MEMORY = 20000
STOP_GRACE_S = 3.0
ACTIVE = ("running", "paused", "stopping")
FINAL = ("succeeded", "failed", "stopped")
_ID = re.compile(r"^[0-9a-f]{12}$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,100}\.py$")


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _child_cmd(mode: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "robot_server.protocol.cli", mode, *args]


class Run:
    def __init__(self, run_id: str, protocol: dict, directory: Path) -> None:
        self.id = run_id
        self.protocol = protocol
        self.dir = directory
        self.status = "running"
        self.created_at = time.time()
        self.finished_at: float | None = None
        self.current: dict | None = None
        self.commands_done = 0
        self.error: dict | None = None
        self.summary: dict | None = None
        self.log: list[dict] = []
        self.log_count = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task | None = None
        self.stop_requested = False
        self.ready = False              # the child has its signal handlers in place
        self.pending_pause = False
        self._log_fh = None

    def info(self, with_log: bool = False, since: int = 0) -> dict:
        d = {"id": self.id, "protocol_id": self.protocol["id"], "protocol_name": self.protocol.get("name"),
             "status": self.status, "created_at": self.created_at, "finished_at": self.finished_at,
             "current_command": self.current, "commands_done": self.commands_done,
             "error": self.error, "summary": self.summary, "log_count": self.log_count}
        if with_log:
            first = self.log_count - len(self.log)
            d["log"] = self.log[max(0, since - first):] if since > first else list(self.log)
        return d

    def add_log(self, entry: dict) -> None:
        self.log_count += 1
        entry = {"seq": self.log_count, **entry}
        self.log.append(entry)
        if len(self.log) > MAX_LOG_IN_MEMORY:
            del self.log[: len(self.log) - MAX_LOG_IN_MEMORY]
        if self._log_fh is not None:
            try:
                self._log_fh.write(json.dumps(entry, default=str) + "\n")
                self._log_fh.flush()
            except OSError as exc:
                log.warning("run %s: cannot write log: %s", self.id, exc)
                self._log_fh = None

    def save(self) -> None:
        try:
            _write_json(self.dir / "run.json", self.info())
        except OSError as exc:
            log.warning("run %s: cannot save: %s", self.id, exc)


class ProtocolManager:
    """Protocol store + runs for a :class:`~robot_server.service.RobotService`."""

    def __init__(self, service: Any) -> None:
        self.svc = service
        self.config = service.config
        self.root = Path(self.config.state_dir)
        self.protocols_dir = self.root / "protocols"
        self.runs_dir = self.root / "runs"
        self.protocols: dict[str, dict] = {}
        self.runs: dict[str, Run] = {}
        self.server_url: str | None = None
        self._analysis: asyncio.Semaphore | None = None
        self._loaded = False

    # ------------------------------------------------------------ persistence
    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for d in sorted(self.protocols_dir.glob("*/meta.json")) if self.protocols_dir.is_dir() else []:
            try:
                meta = json.loads(d.read_text(encoding="utf-8"))
                if (d.parent / "protocol.py").is_file() and meta.get("id") == d.parent.name:
                    self.protocols[meta["id"]] = meta
            except (OSError, ValueError, KeyError) as exc:
                log.warning("skipping %s: %s", d, exc)
        for d in sorted(self.runs_dir.glob("*/run.json")) if self.runs_dir.is_dir() else []:
            try:
                info = json.loads(d.read_text(encoding="utf-8"))
                proto = self.protocols.get(info["protocol_id"], {"id": info["protocol_id"],
                                                                 "name": info.get("protocol_name")})
                run = Run(info["id"], proto, d.parent)
                for key in ("status", "created_at", "finished_at", "current_command", "commands_done",
                            "error", "summary", "log_count"):
                    if key in info:
                        setattr(run, "current" if key == "current_command" else key, info[key])
                if run.status not in FINAL:
                    run.status = "failed"
                    run.finished_at = run.finished_at or time.time()
                    run.error = {"kind": "run", "code": "server-restarted", "type": "ServerRestart", "line": None,
                                 "message": "the robot server stopped during the run", "trace": []}
                    run.save()
                self.runs[run.id] = run
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("skipping %s: %s", d, exc)

    def _read_log(self, run: Run) -> list[dict]:
        if run.log or not run.log_count:
            return run.log
        try:
            with open(run.dir / "log.jsonl", encoding="utf-8") as fh:
                run.log = [json.loads(line) for line in fh if line.strip()][-MAX_LOG_IN_MEMORY:]
        except (OSError, ValueError):
            pass
        return run.log

    def active_run(self) -> Run | None:
        return next((r for r in self.runs.values() if r.status in ACTIVE), None)

    # ------------------------------------------------------------ protocols
    async def upload(self, params: Any) -> dict:
        """Upload a protocol: JSON ``{filename?, source}`` (``source`` the file's text) or
        multipart form data with a ``files``/``file`` part (``curl -F files=@protocol.py``).
        The protocol is analysed by simulation first; a protocol that does not parse, has no
        ``run``, fails while simulated or does not finish in time is refused with 422
        ``protocol-invalid`` (``protocol-analysis-timeout``) naming the line."""
        self._load()
        p = _obj(params, {"filename", "source"})
        source = p.get("source")
        filename = p.get("filename", "protocol.py")
        if isinstance(source, bytes):
            pass
        elif isinstance(source, str):
            source = source.encode("utf-8", "surrogatepass")
        else:
            raise invalid("field 'source' (the protocol file's text) is required")
        if not isinstance(filename, str) or not _FILENAME.match(filename):
            raise invalid("field 'filename' must be a plain file name ending in .py")
        if len(source) > MAX_PROTOCOL_BYTES:
            raise ApiError(413, "request-too-large", f"protocol larger than {MAX_PROTOCOL_BYTES} bytes")
        pid = _new_id()
        incoming = self.protocols_dir / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        tmp = incoming / f"{pid}.py"
        tmp.write_bytes(source)
        try:
            analysis = await self._analyse(tmp, filename)
            if not analysis.get("ok"):
                err = analysis.get("error") or {}
                raise ApiError(422, "protocol-invalid", err.get("message") or "the protocol failed analysis")
            target = self.protocols_dir / pid
            target.mkdir(parents=True)
            os.replace(tmp, target / "protocol.py")
            proto = analysis.get("protocol") or {}
            meta = {"id": pid, "filename": filename, "name": proto.get("name") or filename,
                    "api_level": proto.get("api_level"), "metadata": proto.get("metadata") or {},
                    "created_at": time.time(), "size": len(source), "analysis": analysis.get("summary")}
            _write_json(target / "meta.json", meta)
            self.protocols[pid] = meta
            return meta
        finally:
            tmp.unlink(missing_ok=True)

    async def _analyse(self, path: Path, filename: str) -> dict:
        if self._analysis is None:
            self._analysis = asyncio.Semaphore(1)
        timeout = self.config.protocol_analysis_timeout
        async with self._analysis:
            proc = await asyncio.create_subprocess_exec(
                *_child_cmd("simulate", str(path), "--json", "--no-commands", "--as-filename", filename),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(path.parent),
                start_new_session=True)
            try:
                out, err = await asyncio.wait_for(proc.communicate(), timeout)
                timed_out = False
            except asyncio.TimeoutError:
                timed_out = True
                _signal(proc, signal.SIGTERM)
                try:
                    out, err = await asyncio.wait_for(proc.communicate(), STOP_GRACE_S)
                except asyncio.TimeoutError:
                    _signal(proc, signal.SIGKILL)
                    out, err = await proc.communicate()
        try:
            result = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
            raise ApiError(422, "protocol-invalid", f"the protocol could not be analysed "
                           f"(simulator exit {proc.returncode}{': ' + tail[0] if tail else ''})") from None
        if timed_out:
            line = (result.get("error") or {}).get("line")
            raise ApiError(422, "protocol-analysis-timeout",
                           f"{filename}: simulation did not finish within {timeout:g} s"
                           + (f" (it was at line {line})" if line else "")
                           + "; a protocol that waits for something should skip that when "
                             "protocol.is_simulating() is true")
        return result

    async def list_protocols(self, params: Any = None) -> dict:
        """Uploaded protocols (newest last)."""
        _obj(params, set())
        self._load()
        return {"data": sorted(self.protocols.values(), key=lambda m: m.get("created_at", 0))}

    def _protocol(self, pid: Any) -> dict:
        self._load()
        if not isinstance(pid, str) or pid not in self.protocols:
            raise ApiError(404, "not-found", f"no protocol {pid!r}")
        return self.protocols[pid]

    async def get_protocol(self, params: Any) -> dict:
        """One protocol's metadata and analysis summary."""
        p = _obj(params, {"id"})
        return self._protocol(p.get("id"))

    async def delete_protocol(self, params: Any) -> dict:
        """Delete an uploaded protocol (409 while it runs)."""
        p = _obj(params, {"id"})
        meta = self._protocol(p.get("id"))
        active = self.active_run()
        if active is not None and active.protocol["id"] == meta["id"]:
            raise ApiError(409, "run-active", f"protocol {meta['id']} is running (run {active.id})")
        shutil.rmtree(self.protocols_dir / meta["id"], ignore_errors=True)
        del self.protocols[meta["id"]]
        return {"deleted": meta["id"]}

    # ------------------------------------------------------------ runs
    async def create_run(self, params: Any) -> dict:
        """Start a run of an uploaded protocol: ``{protocol_id}`` (``protocolId`` too).
        409 ``run-active`` if another run is active, ``board-not-connected`` without a board."""
        p = _obj(params, {"protocol_id", "protocolId"})
        meta = self._protocol(p.get("protocol_id", p.get("protocolId")))
        active = self.active_run()
        if active is not None:
            raise ApiError(409, "run-active", f"run {active.id} is {active.status}; stop it first")
        if not self.svc.driver.connected:
            raise ApiError(409, "board-not-connected", "the motor board is not connected")
        if self.server_url is None:
            raise ApiError(409, "not-ready", "the server is not serving HTTP yet")
        run_id = _new_id()
        directory = self.runs_dir / run_id
        directory.mkdir(parents=True)
        run = Run(run_id, meta, directory)
        run._log_fh = open(directory / "log.jsonl", "a", encoding="utf-8")
        self.runs[run_id] = run
        self._prune()
        r, w = os.pipe()
        try:
            off = ",".join(str(v) for v in self.config.left_mount_offset)
            run.proc = await asyncio.create_subprocess_exec(
                *_child_cmd("execute", str(self.protocols_dir / meta["id"] / "protocol.py"), "--no-config",
                            "--server", self.server_url, "--events-fd", str(w), "--quiet",
                            "--as-filename", meta.get("filename", "protocol.py"), f"--left-mount-offset={off}"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, pass_fds=(w,),
                cwd=str(directory), start_new_session=True)
        except OSError as exc:
            os.close(r)
            run.status, run.finished_at = "failed", time.time()
            run.error = {"kind": "run", "code": "spawn-failed", "type": "OSError", "line": None,
                         "message": f"cannot start the protocol runner: {exc}", "trace": []}
            run.save()
            raise ApiError(409, "spawn-failed", run.error["message"]) from None
        finally:
            os.close(w)
        run.add_log({"time": time.time(), "kind": "run", "text": f"Run of {meta.get('name')} started"})
        run.save()
        run.task = asyncio.ensure_future(self._supervise(run, r))
        return run.info()

    def _prune(self) -> None:
        finished = sorted((r for r in self.runs.values() if r.status in FINAL), key=lambda r: r.created_at)
        for run in finished[: max(0, len(self.runs) - MAX_RUNS_KEPT)]:
            shutil.rmtree(run.dir, ignore_errors=True)
            del self.runs[run.id]

    async def _supervise(self, run: Run, events_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(events_fd, "rb"))
        result: dict | None = None

        async def pump_output() -> None:
            assert run.proc is not None and run.proc.stdout is not None
            while True:
                line = await run.proc.stdout.readline()
                if not line:
                    return
                run.add_log({"time": time.time(), "kind": "output",
                             "text": line.decode("utf-8", "replace").rstrip("\n")[:2000]})

        out_task = asyncio.ensure_future(pump_output())
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:          # an over-long line: skip it
                    continue
                if not line:
                    break
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                kind = ev.pop("event", None)
                if kind == "ready":
                    run.ready = True
                    if run.pending_pause and run.status == "paused":
                        _signal(run.proc, signal.SIGUSR1, group=False)
                elif kind == "command":
                    run.current = ev
                    run.commands_done = ev.get("index", run.commands_done)
                    run.add_log(ev)
                elif kind == "state":
                    if run.status in ("running", "paused") and not run.stop_requested:
                        run.status = "paused" if ev.get("state") == "paused" else "running"
                        run.add_log({"time": ev.get("time"), "kind": "state", "text": f"Run {run.status}"
                                     + (f": {ev['reason']}" if ev.get("reason") else "")})
                        run.save()
                elif kind == "result":
                    result = ev
            rc = await run.proc.wait()
            await out_task
        finally:
            transport.close()
        run.finished_at = time.time()
        if result is not None:
            run.summary = result.get("summary")
        if result is not None and result.get("ok"):
            run.status = "succeeded"
        elif run.stop_requested or (result and (result.get("error") or {}).get("kind") == "stopped"):
            run.status = "stopped"
            run.error = (result or {}).get("error") or {"kind": "stopped", "code": "stopped", "type": "Stopped",
                                                        "line": None, "message": "stopped by request", "trace": []}
        else:
            run.status = "failed"
            run.error = (result or {}).get("error") or {
                "kind": "run", "code": "runner-died", "type": "RunnerExit", "line": None, "trace": [],
                "message": f"the protocol runner exited with status {rc} without a result"}
        run.add_log({"time": run.finished_at, "kind": "run", "text": f"Run {run.status}"
                     + (f": {run.error['message']}" if run.error else "")})
        if run.status == "stopped":
            await self._after_stop(run)
        if run._log_fh is not None:
            run._log_fh.close()
            run._log_fh = None
        run.save()

    async def _after_stop(self, run: Run) -> None:
        try:
            state = await self.svc.halt_motion()
            run.add_log({"time": time.time(), "kind": "run",
                         "text": "Motion halted; positions re-read" + ("" if state.get("homed_all") else
                                                                       " (home before moving again)")})
        except Exception as exc:  # noqa: BLE001 - the run is over either way
            log.warning("run %s: after stop: %s", run.id, exc)

    def _run(self, rid: Any) -> Run:
        self._load()
        if not isinstance(rid, str) or rid not in self.runs:
            raise ApiError(404, "not-found", f"no run {rid!r}")
        return self.runs[rid]

    async def list_runs(self, params: Any = None) -> dict:
        """Runs (without their logs), oldest first."""
        _obj(params, set())
        self._load()
        return {"data": [r.info() for r in sorted(self.runs.values(), key=lambda r: r.created_at)]}

    async def get_run(self, params: Any) -> dict:
        """A run: ``status`` (running, paused, stopping, succeeded, failed, stopped),
        ``current_command``, ``error`` (with ``line``), ``summary`` and ``log`` (entries
        after ``since``, a log sequence number)."""
        p = _obj(params, {"id", "since"})
        run = self._run(p.get("id"))
        since = p.get("since", 0)
        try:
            since = int(since)
        except (TypeError, ValueError):
            raise invalid("field 'since' must be a whole number") from None
        self._read_log(run)
        return run.info(with_log=True, since=since)

    async def run_action(self, params: Any) -> dict:
        """``{action: "pause"|"resume"|"stop"}`` (``actionType`` and ``play`` accepted):
        pause before the next command, resume, or stop now (motion is halted and the
        positions re-read). 409 ``run-not-active`` once the run has finished."""
        p = _obj(params, {"id", "action", "actionType"})
        run = self._run(p.get("id"))
        action = p.get("action", p.get("actionType"))
        if action == "play":
            action = "resume"
        if action not in ("pause", "resume", "stop"):
            raise invalid("field 'action' must be 'pause', 'resume' or 'stop'")
        if run.status not in ACTIVE or run.proc is None or run.proc.returncode is not None:
            raise ApiError(409, "run-not-active", f"run {run.id} is {run.status}")
        if action == "pause":
            if run.status == "running":
                if run.ready:
                    _signal(run.proc, signal.SIGUSR1, group=False)
                else:
                    run.pending_pause = True
                run.status = "paused"
                run.add_log({"time": time.time(), "kind": "state", "text": "Pause requested"})
        elif action == "resume":
            if run.status == "paused":
                run.pending_pause = False
                if run.ready:
                    _signal(run.proc, signal.SIGUSR2, group=False)
                run.status = "running"
                run.add_log({"time": time.time(), "kind": "state", "text": "Resume requested"})
        else:
            if not run.stop_requested:
                run.stop_requested = True
                run.status = "stopping"
                run.add_log({"time": time.time(), "kind": "state", "text": "Stop requested"})
                _signal(run.proc, signal.SIGTERM, group=False)
                asyncio.ensure_future(self._kill_later(run))
        run.save()
        return run.info()

    async def _kill_later(self, run: Run) -> None:
        await asyncio.sleep(STOP_GRACE_S)
        if run.proc is not None and run.proc.returncode is None:
            log.warning("run %s: runner ignored SIGTERM; killing it", run.id)
            _signal(run.proc, signal.SIGKILL)

    async def wait(self, run_id: str, timeout: float = 30.0) -> dict:
        """Wait until a run has finished (tests, shutdown)."""
        run = self._run(run_id)
        if run.task is not None:
            await asyncio.wait_for(asyncio.shield(run.task), timeout)
        return run.info()

    async def close(self) -> None:
        """Server shutdown: stop an active run."""
        run = self.active_run()
        if run is not None and run.proc is not None and run.proc.returncode is None:
            run.stop_requested = True
            _signal(run.proc, signal.SIGTERM, group=False)
            try:
                await asyncio.wait_for(asyncio.shield(run.task), STOP_GRACE_S + 1) if run.task else None
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                _signal(run.proc, signal.SIGKILL)


def _signal(proc: asyncio.subprocess.Process, sig: int, group: bool = True) -> None:
    """Signal the child (and, for kills, its process group: children it started)."""
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass

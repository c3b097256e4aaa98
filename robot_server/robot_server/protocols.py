"""Stored protocols and their analyses (``/protocols``), analysed by the engine in the
sandboxed warm worker (:mod:`.analysis_worker`).

On disk, ``<data_dir>/robot-server/protocols/<id>/``:

* ``files/``: the uploaded files as sent (the main ``.py`` or ``.json`` plus labware
  definitions and data files), owned by root, readable by the sandbox user;
* ``protocol.json``: the resource (OT-2 ``Protocol``: ``id``, ``createdAt``, ``files``
  ``[{name, role}]``, ``protocolType``, ``robotType``, ``metadata``,
  ``analysisSummaries`` ``[{id, status}]``, ``key``, ``protocolKind``);
* ``analyses/<analysisId>.json``: each completed analysis (OT-2 ``CompletedAnalysis``).

An upload is refused (422 ``ProtocolFilesInvalid``, nothing kept) only when the engine's
reader refuses the files; a protocol that fails analysis is kept with a completed
analysis whose ``result`` is ``not-ok``, as on the OT-2. An analysis that outlives
``protocol_analysis_timeout`` or dies (memory limit) completes ``not-ok`` with an
``AnalysisFailed`` error. Only the resources' small metadata stay in memory.
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
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import worker_io
from .errors import Ot2Error, invalid_request, not_found
from .sandbox import Sandbox

log = logging.getLogger("robot_server.protocols")

#: Largest upload (all files together), bytes.
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
MAX_FILES = 50
#: Largest frame (one analysis) accepted from the worker, bytes.
MAX_FRAME = 256 * 1024 * 1024
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-() ]{0,120}\.(py|json|csv|txt)$")
#: Prefix of the analysis worker's sandbox (one name per start: systemd refuses to reuse
#: the name of a scope that has not been collected yet).
ANALYSIS_UNIT = "ot2-analysis"


def now() -> str:
    """The current time as the OT-2 writes it (ISO 8601, UTC)."""
    return datetime.now(tz=timezone.utc).isoformat()


def new_id() -> str:
    return str(uuid.uuid4())


def write_json(path: Path, data: object) -> None:
    """Write ``data`` to ``path`` atomically and durably (file and directory fsynced)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def failed_analysis(analysis_id: str, robot_type: str, detail: str) -> dict:
    """A completed ``not-ok`` analysis for a protocol whose analysis never finished."""
    error = {"id": new_id(), "createdAt": now(), "errorType": "AnalysisFailed", "errorCode": "4000",
             "detail": detail, "errorInfo": {}, "wrappedErrors": []}
    return {"id": analysis_id, "status": "completed", "result": "not-ok", "robotType": robot_type,
            "runTimeParameters": [], "commands": [], "labware": [], "pipettes": [], "modules": [],
            "liquids": [], "errors": [error], "commandAnnotations": [], "liquidClasses": []}


class FilesInvalid(Exception):
    """The engine's reader refused the uploaded files."""


class AnalysisUnavailable(Exception):
    """The analysis worker could not be started."""


@dataclass
class Job:
    """One analysis: ``source`` resolves with the reader's view of the files (or raises
    :class:`FilesInvalid`), ``done`` with the analysis (``None``: it never finished)."""

    directory: Path
    source: asyncio.Future
    done: asyncio.Future
    pid: int | None = None
    analysis: dict | None = None
    exit: int | None = None
    attempts: int = 0
    reason: str | None = None
    frames: asyncio.Queue = field(default_factory=asyncio.Queue)


class Analyzer:
    """The warm analysis worker: started in the sandbox's limits, restarted when it dies;
    one analysis at a time, each in a child that runs as the sandbox user. ``run_active()``
    tells whether a run (also the sandbox user) is active, so its processes are not taken
    for an analysis's leftovers."""

    def __init__(self, sandbox: Sandbox, timeout: float, run_active: Callable[[], bool]) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self.run_active = run_active
        self.proc: asyncio.subprocess.Process | None = None
        self.unit = ANALYSIS_UNIT
        self._ready: asyncio.Event | None = None
        self._jobs: asyncio.Queue = asyncio.Queue()
        self._job: Job | None = None
        self._tasks: list[asyncio.Task] = []
        self._scratch: str | None = None

    def start(self, prewarm: bool = True) -> None:
        """Start the job loop, and with ``prewarm`` the worker at once (warming takes
        seconds; otherwise it starts with the first upload)."""
        self._tasks.append(asyncio.ensure_future(self._loop()))
        if prewarm:
            self._tasks.append(asyncio.ensure_future(self._prewarm()))

    async def _prewarm(self) -> None:
        try:
            await self.ensure_worker()
        except OSError as exc:
            log.warning("analysis worker: %s", exc)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self._kill()
        if self._scratch:
            self.sandbox.remove(Path(self._scratch))

    def submit(self, directory: Path) -> Job:
        """Queue the analysis of the protocol files in ``directory``."""
        loop = asyncio.get_running_loop()
        job = Job(directory, loop.create_future(), loop.create_future())
        self._jobs.put_nowait(job)
        return job

    async def ensure_worker(self) -> None:
        """Start the worker unless it runs; return once it is warm."""
        if self.proc is not None and self.proc.returncode is None and self._ready is not None:
            await self._ready.wait()
            return
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix="ot2-analysis-")
            self.sandbox.shares(Path(self._scratch))
        self._ready = asyncio.Event()
        self.unit = f"{ANALYSIS_UNIT}-{new_id()[:8]}"
        self.proc = await self.sandbox.spawn(
            self.unit, [sys.executable, "-m", "robot_server.analysis_worker", self.sandbox.drop_spec()],
            env={"OT_API_CONFIG_DIR": self._scratch, "HOME": self._scratch, "TMPDIR": self._scratch},
            cwd=self._scratch, limit=MAX_FRAME, switch_user=False)
        self._tasks.append(asyncio.ensure_future(self._read(self.proc)))
        self._tasks.append(asyncio.ensure_future(_drain(self.proc.stderr)))
        self._tasks = [t for t in self._tasks if not t.done()]
        await self._ready.wait()
        if self.proc.returncode is not None:
            raise OSError(f"the analysis worker exited with status {self.proc.returncode}")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        async for frame in worker_io.frames(proc.stdout):
            if frame.get("ready"):
                self._ready.set()
            elif self._job is not None:
                self._job.frames.put_nowait(frame)
        await proc.wait()
        self._ready.set()                  # wake waiters: the worker is gone
        if self._job is not None:
            self._job.frames.put_nowait({"gone": True})

    async def _loop(self) -> None:
        while True:
            job: Job = await self._jobs.get()
            self._job = job
            try:
                await self._analyse(job)
            except Exception as exc:  # noqa: BLE001 - the job fails, the loop goes on
                log.warning("analysis failed: %s", exc)
                _settle(job, None, AnalysisUnavailable("the analysis worker could not be started"),
                        "the analysis worker could not be started")
            finally:
                self._job = None
            await self._clean_up()

    async def _analyse(self, job: Job) -> None:
        while True:
            job.attempts += 1
            try:
                await self.ensure_worker()
            except OSError:
                if job.attempts >= 2:
                    raise
                continue                 # e.g. killed with a run's processes while warming
            self.proc.stdin.write(json.dumps({"id": "job", "dir": str(job.directory)}).encode() + b"\n")
            await self.proc.stdin.drain()
            try:
                gone = await asyncio.wait_for(self._collect(job), self.timeout)
            except asyncio.TimeoutError:
                await self._kill_child(job)
                _settle(job, None, None, f"analysis took longer than {self.timeout:g} s")
                return
            if not gone:
                reason = (None if job.exit == 0 else "the analysis process was killed"
                          + (" (memory or task limit)" if job.exit in (-9, 137) else ""))
                _settle(job, job.analysis, None, reason)
                return
            if job.attempts >= 2:
                _settle(job, None, None, "the analysis worker ended during the analysis")
                return

    async def _collect(self, job: Job) -> bool:
        """Take frames until the child's exit (False) or the worker's end (True)."""
        while True:
            frame = await job.frames.get()
            if frame.get("gone"):
                return True
            if "pid" in frame:
                job.pid = frame["pid"]
            elif "invalid" in frame:
                if not job.source.done():
                    job.source.set_exception(FilesInvalid(str(frame["invalid"])[:2000]))
            elif "source" in frame:
                if not job.source.done():
                    job.source.set_result(frame["source"])
            elif "analysis" in frame:
                job.analysis = frame["analysis"]
            elif "exit" in frame:
                job.exit = frame["exit"]
                return False

    async def _kill_child(self, job: Job) -> None:
        if job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            await asyncio.wait_for(self._collect(job), 5)
        except asyncio.TimeoutError:
            await self._kill()

    async def _clean_up(self) -> None:
        """Kill what an analysis left behind (e.g. children that called ``setsid``): on
        hosts without systemd, every process of the sandbox user while no run is active
        (the worker itself runs as the server's user). Under systemd they stay in the
        worker's scope, inside its memory and task limits, until the worker restarts."""
        if self.sandbox.isolated and not self.sandbox.use_systemd and not self.run_active():
            strays = self.sandbox.processes()
            if strays:
                log.warning("analysis left %d process(es) behind; killing them", len(strays))
                await self.sandbox.kill_all(self.unit, None)

    async def _kill(self) -> None:
        if self.proc is not None:
            await self.sandbox.kill_all(self.unit, self.proc)
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                log.warning("the analysis worker does not exit")
        self.proc = None


def _settle(job: Job, analysis: dict | None, source_error: Exception | None, reason: str | None = None) -> None:
    if not job.source.done():
        job.source.set_exception(source_error or FilesInvalid(reason or "the protocol could not be analysed"))
    if not job.done.done():
        job.done.set_result(analysis if reason is None else None)
    job.reason = reason


async def _drain(stream: asyncio.StreamReader | None) -> None:
    """Read and drop a worker's stderr (the engine's own log), so it never blocks."""
    while stream is not None and await stream.read(65536):
        pass


class ProtocolStore:
    """Protocols on disk plus their analyses (see the module docstring)."""

    def __init__(self, root: Path, analyzer: Analyzer) -> None:
        self.root = root
        self.analyzer = analyzer
        self.protocols: dict[str, dict] = {}
        self._tasks: set[asyncio.Task] = set()

    def load(self) -> None:
        """Read the stored protocols; drop half-stored uploads and pending analyses
        (a pending analysis at start-up never finished: it completes as failed)."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)    # sandboxed code gets a copy of its own files (sandbox.copy_in)
        for directory in sorted(self.root.iterdir()):
            meta_path = directory / "protocol.json"
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                log.warning("dropping incomplete protocol upload %s", directory.name)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            for summary in meta["analysisSummaries"]:
                if summary["status"] == "pending":
                    self._complete(meta, summary["id"], failed_analysis(
                        summary["id"], meta["robotType"], "the robot server stopped during the analysis"))
            self.protocols[meta["id"]] = meta

    def get(self, protocol_id: str) -> dict:
        """One protocol resource; 404 ``ProtocolNotFound``."""
        try:
            return self.protocols[protocol_id]
        except KeyError:
            raise not_found("Protocol", protocol_id) from None

    def files_dir(self, protocol_id: str) -> Path:
        return self.root / self.get(protocol_id)["id"] / "files"

    def list(self) -> list[dict]:
        """All protocols, oldest first."""
        return sorted(self.protocols.values(), key=lambda m: m["createdAt"])

    async def upload(self, files: list[tuple[str, bytes]], key: str | None = None) -> dict:
        """Store ``files`` (``[(name, content)]``) as a new protocol and start its
        analysis. Returns the resource once the engine's reader accepted the files (its
        analysis ``pending``). Raises 422 ``InvalidRequest`` (no files, a bad name, a
        duplicate name), 413 ``FileTooLarge``, 422 ``ProtocolFilesInvalid``, 503
        ``AnalysisUnavailable`` (the worker cannot start: a server fault, not the files')."""
        if not files:
            raise invalid_request("Expected at least one file in the 'files' field.", "/files")
        if len(files) > MAX_FILES:
            raise invalid_request(f"At most {MAX_FILES} files per protocol.", "/files")
        names = [name for name, _ in files]
        for name in names:
            if not _FILENAME.match(name):
                raise invalid_request(f"File name {name[:80]!r} is not allowed: use letters, digits, "
                                      "'_', '-', '.', and end in .py, .json, .csv or .txt.", "/files")
        if len(set(names)) != len(names):
            raise invalid_request("Two files have the same name.", "/files")
        if sum(len(content) for _, content in files) > MAX_UPLOAD_BYTES:
            raise Ot2Error("FileTooLarge", "File Too Large",
                           f"The files are larger than {MAX_UPLOAD_BYTES} bytes together.")
        protocol_id, analysis_id = new_id(), new_id()
        directory = self.root / protocol_id
        (directory / "files").mkdir(parents=True)
        (directory / "analyses").mkdir()
        for name, content in files:
            (directory / "files" / name).write_bytes(content)
        job = self.analyzer.submit(directory / "files")
        try:
            source = await job.source
        except FilesInvalid as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise Ot2Error("ProtocolFilesInvalid", "Protocol File(s) Invalid", str(exc)) from None
        except AnalysisUnavailable as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise Ot2Error("AnalysisUnavailable", "Analysis Unavailable", str(exc)) from None
        meta = {"id": protocol_id, "createdAt": now(), "files": source["files"],
                "protocolType": source["protocolType"], "robotType": source["robotType"],
                "metadata": source["metadata"], "analyses": [],
                "analysisSummaries": [{"id": analysis_id, "status": "pending"}], "protocolKind": "standard"}
        if key is not None:
            meta["key"] = key
        write_json(directory / "protocol.json", meta)
        self.protocols[protocol_id] = meta
        task = asyncio.ensure_future(self._finish(meta, analysis_id, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return meta

    async def _finish(self, meta: dict, analysis_id: str, job: Job) -> None:
        analysis = await job.done
        if analysis is None:
            analysis = failed_analysis(analysis_id, meta["robotType"],
                                       job.reason or "the analysis did not finish")
        analysis = {"id": analysis_id, "status": "completed", **{k: v for k, v in analysis.items() if k != "id"}}
        if meta["id"] in self.protocols:
            self._complete(meta, analysis_id, analysis)

    def _complete(self, meta: dict, analysis_id: str, analysis: dict) -> None:
        directory = self.root / meta["id"]
        try:
            write_json(directory / "analyses" / f"{analysis_id}.json", analysis)
            for summary in meta["analysisSummaries"]:
                if summary["id"] == analysis_id:
                    summary["status"] = "completed"
            write_json(directory / "protocol.json", meta)
        except OSError as exc:
            log.warning("cannot store analysis %s: %s", analysis_id, exc)

    def analyses(self, protocol_id: str) -> list[dict]:
        """Every analysis of a protocol (pending ones as ``{id, status}``)."""
        return [self.analysis(protocol_id, s["id"]) for s in self.get(protocol_id)["analysisSummaries"]]

    def analysis(self, protocol_id: str, analysis_id: str) -> dict:
        """One analysis, read from disk; 404 ``AnalysisNotFound``."""
        meta = self.get(protocol_id)
        summary = next((s for s in meta["analysisSummaries"] if s["id"] == analysis_id), None)
        if summary is None:
            raise not_found("Analysis", analysis_id)
        if summary["status"] == "pending":
            return dict(summary)
        path = self.root / meta["id"] / "analyses" / f"{analysis_id}.json"
        return json.loads(path.read_text(encoding="utf-8"))

    def delete(self, protocol_id: str) -> None:
        """Remove a protocol and its analyses."""
        meta = self.get(protocol_id)
        del self.protocols[meta["id"]]
        shutil.rmtree(self.root / meta["id"], ignore_errors=True)

"""``ot2 push``: one bundle to many robots at once, each robot on its own.

Per robot: resolve -> ``/health`` (reachable? same ``compatible``?) -> ``begin`` (409
when busy) -> stream the bundle (the robot writes while it receives and answers once the
image is written, fsynced and its hash matched) -> ``commit`` -> optionally ``restart``
and wait until ``/health`` answers with a new ``bootId`` and the bundle's version.
At most ``jobs`` robots are worked on at a time; an exception of one robot is recorded
as that robot's result and never reaches the others.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from . import credentials
from .bundlecheck import BundleInfo
from .errors import EXIT_FAILED, EXIT_OK, ClientError, combine
from .robot import Robot
from .targets import resolve


@dataclass
class PushResult:
    robot: str
    address: str | None = None
    ok: bool = False
    stage: str = "resolve"  # the step that was running when it ended
    error: str | None = None
    message: str = ""
    old_version: str | None = None
    new_version: str | None = None
    booted_slot: str | None = None
    bytes_sent: int = 0
    upload_seconds: float = 0.0
    seconds: float = 0.0
    exit_status: int = EXIT_OK

    @property
    def mb_per_s(self) -> float:
        return self.bytes_sent / self.upload_seconds / 1e6 if self.upload_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mb_per_s"] = round(self.mb_per_s, 2)
        d["upload_seconds"] = round(self.upload_seconds, 3)
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class PushOptions:
    jobs: int = 4
    restart: bool = False
    wait_timeout: float = 900.0  # seconds for the robot to come back on the new version
    poll_interval: float = 2.0
    port: int = 34000
    mdns_timeout: float = 3.0
    request_timeout: float = 30.0
    upload_read_timeout: float = 600.0
    allow_downgrade: bool = False  # install a bundle older than the robot's system


@dataclass
class Reporter:
    """Progress callbacks; the default does nothing (``--json`` or not a terminal)."""

    def start(self, robot: str, total: int) -> None: ...

    def advance(self, robot: str, n: int) -> None: ...

    def stage(self, robot: str, text: str) -> None: ...

    def finish(self, robot: str, ok: bool, text: str) -> None: ...


@dataclass
class RichReporter(Reporter):
    """One rich progress bar per robot (bytes, MB/s, ETA) on stderr."""

    console: object = None
    tasks: dict = field(default_factory=dict)

    def __post_init__(self):
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TimeRemainingColumn, TransferSpeedColumn)

        self.progress = Progress(
            TextColumn("{task.fields[robot]:<22.22}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[stage]}"),
            console=self.console, transient=False,
        )

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def _task(self, robot: str, total=None):
        if robot not in self.tasks:
            self.tasks[robot] = self.progress.add_task("", total=total, robot=robot, stage="waiting")
        return self.tasks[robot]

    def start(self, robot, total):
        self.progress.update(self._task(robot, total), total=total, stage="uploading")

    def advance(self, robot, n):
        self.progress.advance(self._task(robot), n)

    def stage(self, robot, text):
        self.progress.update(self._task(robot), stage=text)

    def finish(self, robot, ok, text):
        style = "green" if ok else "red"
        self.progress.update(self._task(robot), stage=f"[{style}]{text}[/{style}]")


async def _wait_back(robot: Robot, old_boot_id: str | None, version: str, opts: PushOptions) -> dict:
    """Poll ``/health`` until the robot rebooted (new bootId) and answers; returns it."""
    deadline = time.monotonic() + opts.wait_timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        await asyncio.sleep(opts.poll_interval)
        try:
            health = await robot.health(timeout=min(10.0, opts.request_timeout))
        except ClientError as e:
            last_error = e.message
            continue
        if health.get("bootId") != old_boot_id:
            return health
    raise ClientError("timeout", f"not back within {opts.wait_timeout:.0f} s after the restart ({last_error})")


async def push_one(session, spec: str, info: BundleInfo, opts: PushOptions, reporter: Reporter) -> PushResult:
    result = PushResult(spec)
    started = time.monotonic()
    token = None
    robot = None
    try:
        reporter.stage(spec, "resolving")
        target = await resolve(spec, opts.port, opts.mdns_timeout)
        result.address = target.address
        robot = Robot(session, target, opts.request_timeout, credentials.token_for(spec, target.address))
        result.stage = "health"
        health = await robot.health()
        result.old_version = health.get("version")
        result.booted_slot = health.get("booted_slot")
        compatible = health.get("compatible")
        if compatible and compatible != info.compatible:
            raise ClientError("incompatible", f"bundle is for {info.compatible!r}, the robot is {compatible!r}")
        result.stage = "begin"
        token = await robot.begin(opts.allow_downgrade)
        result.stage = "upload"
        reporter.start(spec, info.size)

        def sent(n):
            result.bytes_sent += n
            reporter.advance(spec, n)

        t0 = time.monotonic()
        try:
            await robot.upload(token, info.path, sent, opts.upload_read_timeout)
        except ClientError as e:
            if e.code in ("connection-lost", "timeout"):
                # the robot may have refused the bundle and closed early: ask why
                robot_says = ""
                try:
                    st = await robot.status(token)
                    code = st.get("error")
                    if code and code not in ("truncated", "cancelled"):
                        raise ClientError(code, st.get("message", ""), e.status) from None
                    if code:
                        robot_says = f"; the robot: {code}: {st.get('message', '')}"
                    if isinstance(st.get("bytes_written"), int):
                        robot_says = f", {st['bytes_written'] / 1e6:.1f} MB written by the robot" + robot_says
                except ClientError as inner:
                    if inner.code not in ("connection-lost", "timeout", "unreachable", "bad-token"):
                        raise inner from None
                raise ClientError(e.code, f"{e.message} ({result.bytes_sent / 1e6:.1f} of "
                                          f"{info.size / 1e6:.1f} MB sent{robot_says})") from None
            raise
        finally:
            result.upload_seconds = time.monotonic() - t0
        result.stage = "commit"
        reporter.stage(spec, "committing")
        await robot.commit(token)
        result.new_version = info.version
        if opts.restart:
            result.stage = "restart"
            reporter.stage(spec, "restarting")
            await robot.restart()
            result.stage = "wait"
            reporter.stage(spec, "waiting for the robot")
            health = await _wait_back(robot, health.get("bootId"), info.version, opts)
            result.new_version = health.get("version")
            result.booted_slot = health.get("booted_slot")
            if health.get("version") != info.version:
                rollback = health.get("rollback")
                why = f" (rolled back from slot {rollback.get('failed_slot')})" if isinstance(rollback, dict) else ""
                raise ClientError("wrong-version",
                                  f"back on version {health.get('version')!r}, expected {info.version!r}{why}")
            result.message = f"running {info.version} on slot {result.booted_slot}"
        else:
            result.message = f"{info.version} installed; restart to use it"
        result.stage = "done"
        result.ok = True
        reporter.finish(spec, True, "done")
    except ClientError as e:
        result.error, result.message, result.exit_status = e.code, e.message, e.exit_status
        reporter.finish(spec, False, e.code)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # noqa: BLE001 - one robot's bug must not stop the others
        result.error, result.message, result.exit_status = "internal-error", repr(e), EXIT_FAILED
        reporter.finish(spec, False, "internal-error")
    result.seconds = time.monotonic() - started
    return result


async def push(specs: list, info: BundleInfo, opts: PushOptions, reporter: Reporter | None = None) -> list:
    """Push to every robot in ``specs`` (bounded by ``opts.jobs``); results in input order."""
    reporter = reporter or Reporter()
    limit = asyncio.Semaphore(max(1, opts.jobs))
    connector = aiohttp.TCPConnector(limit=0, force_close=False)

    async def one(session, spec):
        async with limit:
            return await push_one(session, spec, info, opts, reporter)

    async with aiohttp.ClientSession(connector=connector) as session:
        return list(await asyncio.gather(*(one(session, s) for s in specs)))


def exit_status(results: list) -> int:
    return combine(r.exit_status for r in results)

"""The robot server's side of the Opentrons engine: one sandbox, the warm analysis
worker, the protocol store and the runs, started and stopped with the server, and
the robot's own inputs wired to the active run: door → the engine blocks the run (and the
G-code channel holds its lines until the run is played again); a stop that ends the run's
lease on the channel (``/robot/stop``, the bridge, the front button) → the run stops.

Data: ``<data_dir>/robot-server/engine/{protocols,runs}/`` (see :mod:`.protocols`,
:mod:`.runs`). The run processes reach the motor board through the G-code channel
(:mod:`.channel`, ``socket://127.0.0.1:<channel_port>``), which names their lease
``run <id>``.
"""
from __future__ import annotations

import asyncio
import logging

from .config import Config
from .errors import Ot2Error
from .protocols import Analyzer, ProtocolStore
from .runs import RunManager
from .sandbox import Sandbox
from .service import RobotService

log = logging.getLogger("robot_server.engine_host")

#: ``lease-ended`` reasons that are a stop (``Channel.stop`` from ``/robot/stop``, the
#: bridge's ``stop``, the front button), not a lost client or board.
STOP_REASONS = ("stopped", "stop requested", "front button pressed")


class EngineHost:
    """``protocols`` (:class:`ProtocolStore`) and ``runs`` (:class:`RunManager`) of a
    :class:`RobotService`."""

    def __init__(self, config: Config, service: RobotService) -> None:
        self.service = service
        self.sandbox = Sandbox(config.sandbox_user, config.sandbox_memory_max, config.sandbox_tasks_max)
        root = config.state_dir / "engine"
        self.analyzer = Analyzer(self.sandbox, config.protocol_analysis_timeout,
                                 run_active=lambda: self.runs.active() is not None)
        self.protocols = ProtocolStore(root / "protocols", self.analyzer)
        self.runs = RunManager(root / "runs", self.protocols, self.sandbox,
                               channel_url=lambda: service.channel.url, on_play=self._resume_board,
                               stopped_elsewhere=self._stopped_by_channel,
                               before_spawn=service.ot2.module_monitor.release)
        self._stopped_leases: set[str] = set()
        self.prewarm = config.analysis_prewarm
        self._events: asyncio.Task | None = None

    async def start(self) -> None:
        """Load what is stored, start warming the analysis worker, follow door and button."""
        self.protocols.load()
        self.runs.load()
        self.analyzer.start(self.prewarm)
        self._events = asyncio.ensure_future(self._follow(self.service.events.subscribe()))
        self.service.channel.set_namer(self.runs.holder_name)
        if not self.sandbox.isolated:
            log.warning("cannot switch users (neither root nor CAP_SETUID, CAP_SETGID and CAP_CHOWN): "
                        "protocols run as this server's own user")

    async def stop(self) -> None:
        await self.runs.close()
        await self.analyzer.stop()
        if self._events is not None:
            self._events.cancel()

    async def erase(self) -> None:
        """Delete every run and protocol with its analyses (``POST /settings/reset``
        ``runsHistory``). A run that has started and not finished: 409 ``RunNotIdle``,
        nothing deleted (the OT-2 erases at the next boot instead; we erase at once)."""
        active = self.runs.active()
        if active is not None and active.data["status"] != "idle":
            raise Ot2Error("RunNotIdle", "Run is not Idle",
                           f"Run {active.id} is {active.data['status']}; stop it before erasing runs.")
        for run in self.runs.list():
            await self.runs.delete(run["id"])
        for protocol in self.protocols.list():
            self.protocols.delete(protocol["id"])

    def _resume_board(self) -> None:
        """A run was played: forward the lines the channel held while the door was open."""
        if not self.service.gpio.door_open():
            self.service.channel.resume("run played")

    def _stopped_by_channel(self, name: str) -> bool:
        """Whether the channel ended (or is ending) the lease of ``name`` by a stop."""
        lease = self.service.channel.lease
        if lease is not None and lease.name == name and lease.ending in STOP_REASONS:
            return True
        return name in self._stopped_leases

    async def _follow(self, queue: asyncio.Queue) -> None:
        while (event := await queue.get()) is not None:
            data = event["data"]
            if event["event"] == "door":
                self.runs.door(bool(data.get("open")))
            elif event["event"] == "lease-ended" and data.get("reason") in STOP_REASONS:
                self._stopped_leases.add(str(data.get("name")))
                await self.runs.lease_stopped(str(data.get("name")))

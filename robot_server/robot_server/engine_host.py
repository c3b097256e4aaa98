"""The robot server's side of the Opentrons engine: one sandbox, the warm analysis
worker, the protocol store and the runs, started and stopped with the server, and
the robot's own inputs wired to the active run (door → the engine blocks the run;
front button pressed → stop).

Data: ``<data_dir>/robot-server/engine/{protocols,runs}/`` (see :mod:`.protocols`,
:mod:`.runs`). The run processes reach the motor board through the G-code channel at
``socket://127.0.0.1:<channel_port>``.
"""
from __future__ import annotations

import asyncio
import logging

from .config import Config
from .protocols import Analyzer, ProtocolStore
from .runs import RunManager
from .sandbox import Sandbox
from .service import RobotService

log = logging.getLogger("robot_server.engine_host")


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
                               f"socket://127.0.0.1:{config.channel_port}")
        self.prewarm = config.analysis_prewarm
        self._events: asyncio.Task | None = None

    async def start(self) -> None:
        """Load what is stored, start warming the analysis worker, follow door and button."""
        self.protocols.load()
        self.runs.load()
        self.analyzer.start(self.prewarm)
        self._events = asyncio.ensure_future(self._follow(self.service.events.subscribe()))
        if not self.sandbox.isolated:
            log.warning("not running as root: protocols run as this server's own user")

    async def stop(self) -> None:
        await self.runs.close()
        await self.analyzer.stop()
        if self._events is not None:
            self._events.cancel()

    async def _follow(self, queue: asyncio.Queue) -> None:
        while (event := await queue.get()) is not None:
            if event["event"] == "door":
                self.runs.door(bool(event["data"].get("open")))
            elif event["event"] == "button" and event["data"].get("pressed"):
                await self.runs.stop_active()

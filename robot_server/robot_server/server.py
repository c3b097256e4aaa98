"""Assembly: HTTP API + TCP bridge + robot service, started and stopped together.

:class:`RobotServer` runs inside an event loop (the CLI's). :class:`ThreadedServer` runs
one in a background thread with its own loop (tests and the benchmark use it).
"""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Coroutine

from aiohttp import web

from update_server.connlimit import GuardedSockSite

from . import runs_api
from .access import Access
from .api import make_app, operations
from .bridge import Bridge
from .channel import HOST as CHANNEL_HOST
from .config import Config
from .driver import MotorDriver
from .engine_host import EngineHost
from .gpio import GPIOBackend, make_backend
from .service import RobotService


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (``SO_REUSEADDR``). Raises ``OSError`` if the port is taken."""
    return socket.create_server((host, port), backlog=128)


class RobotServer:
    def __init__(self, config: Config, gpio: GPIOBackend | None = None,
                 driver: MotorDriver | None = None) -> None:
        self.config = config
        self.gpio = gpio or make_backend(config.gpio_backend)
        self.service = RobotService(config, self.gpio, driver)
        self.engine = EngineHost(config, self.service)
        self.service.ot2.engine = self.engine
        self.access = Access(config, self.service.tokens)
        self.bridge: Bridge | None = None
        self._runner: web.AppRunner | None = None
        self.http_port = 0
        self.bridge_port = 0

    @property
    def channel_port(self) -> int:
        return self.service.channel.port

    async def start(self, http_sock: socket.socket | None = None,
                    bridge_sock: socket.socket | None = None,
                    channel_sock: socket.socket | None = None) -> None:
        """Bind (unless sockets are given), start the service (board connection happens in
        the background), then serve HTTP, the bridge and the G-code channel (loopback)."""
        cfg = self.config
        http_sock = http_sock or bind(cfg.listen, cfg.port)
        if bridge_sock is None and cfg.bridge_enabled:
            bridge_sock = bind(cfg.listen, cfg.bridge_port)
        channel_sock = channel_sock or bind(CHANNEL_HOST, cfg.channel_port)
        await self.service.start()
        await self.service.channel.start(channel_sock)
        self.service.ot2.preload()
        await self.engine.start()
        app = make_app(self.service, self.engine, self.access)
        self._runner = self.access.guard.runner(app, access_log=None)
        await self._runner.setup()
        await GuardedSockSite(self._runner, http_sock, self.access.guard).start()
        self.http_port = http_sock.getsockname()[1]
        if bridge_sock is not None:
            table = operations(self.service)
            ops = {op.op_id: op.func for op in table}
            ops.update(runs_api.bridge_operations(self.engine))
            read_only = {op.op_id for op in table if op.method == "GET"} | runs_api.BRIDGE_READ_ONLY
            self.bridge = Bridge(self.service, ops, cfg.bridge_max_message, read_only, self.access)
            await self.bridge.start(bridge_sock)
            self.bridge_port = bridge_sock.getsockname()[1]

    async def stop(self) -> None:
        await self.engine.stop()             # an active run stops while its lease still works
        await self.service.ot2.module_monitor.close()
        await self.service.channel.close()
        self.service.events.close()          # ends event streams so HTTP can shut down
        if self.bridge is not None:
            await self.bridge.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.service.stop()


class ThreadedServer:
    """A :class:`RobotServer` on loopback ephemeral ports, in a background thread."""

    def __init__(self, config: Config, gpio: GPIOBackend | None = None) -> None:
        self.server = RobotServer(config, gpio)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="robot-server", daemon=True)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> "ThreadedServer":
        """Serve HTTP on ``host:port`` (default any free port) and the bridge on ``host``."""
        self.host = host
        self._thread.start()
        self.call(self.server.start(bind(host, port), bind(host, 0), bind(CHANNEL_HOST, 0)))
        return self

    def call(self, coro: Coroutine, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.http_port}"

    @property
    def bridge_port(self) -> int:
        return self.server.bridge_port

    @property
    def channel_url(self) -> str:
        return self.server.service.channel.url

    def stop(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

"""Connection limits for an aiohttp server: slow and idle clients cannot take every socket.

:class:`ConnectionGuard` wraps the server's protocol factory (see :class:`GuardedSite`):

* at most ``max_connections`` connections, and ``max_per_peer`` per peer address;
  when a limit is reached, the oldest connection that is *not* inside a request (still
  sending its request head, or idle between requests) is closed to make room, so a new
  client (``/health``, the boot check) always gets in; if every connection is busy in a
  request, the new one is closed instead;
* a request head (request line and headers) must be complete within ``header_timeout``
  seconds of its first byte (of the connection, for the first request): slowloris;
* a connection idle between requests is closed after ``idle_timeout`` seconds;
* a request answered before its body was read (a refused upload) is drained, not
  timed out as a request head, for up to ``lingering_time`` seconds; aiohttp's server
  must linger as long (:meth:`ConnectionGuard.runner`).

The aiohttp application reports request start and end with :meth:`request_started` /
:meth:`request_finished` (a middleware), keyed by ``request.transport``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from aiohttp import web

log = logging.getLogger(__name__)

HEAD, BUSY, IDLE, DRAIN = "head", "busy", "idle", "drain"


class _Conn:
    __slots__ = ("peer", "transport", "phase", "timer", "tail")

    def __init__(self, peer, transport):
        self.peer = peer
        self.transport = transport
        self.phase = HEAD
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""


class ConnectionGuard:
    """Limits and timeouts for every connection of one server (see the module docstring)."""

    def __init__(self, max_connections: int, max_per_peer: int, header_timeout: float, idle_timeout: float,
                 lingering_time: float = 10.0):
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.lingering_time = lingering_time
        self.conns: OrderedDict = OrderedDict()  # transport -> _Conn, oldest first
        self.per_peer: dict = {}
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    @classmethod
    def from_settings(cls, settings, lingering_time: float = 10.0) -> "ConnectionGuard":
        """The guard of a server configured by ``settings``
        (:class:`~update_server.access.AccessSettings`)."""
        return cls(settings.max_connections, settings.max_connections_per_peer,
                   settings.header_timeout, settings.idle_timeout, lingering_time)

    def wrap(self, factory):
        """A protocol factory for ``loop.create_server`` that guards ``factory``'s protocols."""
        guard = self

        class Guarded(asyncio.Protocol):
            # A refused connection (``conn`` None) never reaches the HTTP protocol.
            def __init__(self):
                self.inner = factory()
                self.conn: _Conn | None = None

            def connection_made(self, transport):
                self.conn = guard._admit(transport)
                if self.conn is not None:
                    self.inner.connection_made(transport)

            def data_received(self, data):
                if self.conn is not None:
                    guard._data(self.conn, data)
                    self.inner.data_received(data)

            def eof_received(self):
                return self.inner.eof_received() if self.conn is not None else None

            def connection_lost(self, exc):
                if self.conn is not None:
                    guard._forget(self.conn)
                    self.inner.connection_lost(exc)

            def pause_writing(self):
                self.inner.pause_writing()

            def resume_writing(self):
                self.inner.resume_writing()

        return Guarded

    def runner(self, app: web.Application, **kwargs) -> web.AppRunner:
        """An ``AppRunner`` for ``app`` whose connections drain an unread body as long as
        this guard lets them (aiohttp's ``lingering_time``)."""
        return web.AppRunner(app, lingering_time=self.lingering_time, **kwargs)

    # ---- bookkeeping -----------------------------------------------------------------

    def _admit(self, transport) -> _Conn | None:
        peername = transport.get_extra_info("peername")
        peer = peername[0] if peername else None
        if len(self.conns) >= self.max_connections and not self._evict(None):
            return self._refuse(transport, "the server's connection limit")
        if self.per_peer.get(peer, 0) >= self.max_per_peer and not self._evict(peer):
            return self._refuse(transport, f"the connection limit of {peer}")
        conn = _Conn(peer, transport)
        self.conns[transport] = conn
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        self._arm(conn, self.header_timeout)
        return conn

    def _refuse(self, transport, why: str) -> None:
        self.refused += 1
        log.warning("connection refused: %s reached", why)
        transport.abort()
        return None

    def _evict(self, peer) -> bool:
        for conn in self.conns.values():
            if conn.phase not in (BUSY, DRAIN) and (peer is None or conn.peer == peer):
                self.evicted += 1
                self._close(conn)
                return True
        return False

    def _close(self, conn: _Conn) -> None:
        self._forget(conn)
        conn.transport.abort()

    def _forget(self, conn: _Conn) -> None:
        if self.conns.pop(conn.transport, None) is None:
            return
        if conn.timer:
            conn.timer.cancel()
        left = self.per_peer.get(conn.peer, 1) - 1
        if left:
            self.per_peer[conn.peer] = left
        else:
            self.per_peer.pop(conn.peer, None)

    def _arm(self, conn: _Conn, seconds: float) -> None:
        if conn.timer:
            conn.timer.cancel()
        conn.timer = asyncio.get_running_loop().call_later(seconds, self._expire, conn)

    def _expire(self, conn: _Conn) -> None:
        if conn.phase != BUSY and conn.transport in self.conns:
            self.timed_out += 1
            self._close(conn)

    def _data(self, conn: _Conn, data: bytes) -> None:
        if conn.phase == IDLE:  # first byte of the next request head
            conn.phase = HEAD
            conn.tail = b""
            self._arm(conn, self.header_timeout)
        if conn.phase == HEAD:
            seen = conn.tail + data[:65536]
            if b"\r\n\r\n" in seen:
                conn.phase = BUSY
                if conn.timer:
                    conn.timer.cancel()
            else:
                conn.tail = seen[-3:]

    # ---- called by the application ---------------------------------------------------

    def request_started(self, transport) -> None:
        """A request is being handled on ``transport``: no timeout applies to it."""
        conn = self.conns.get(transport)
        if conn is not None:
            conn.phase = BUSY
            if conn.timer:
                conn.timer.cancel()

    def request_finished(self, request: web.Request) -> None:
        """The answer to ``request`` was sent: the connection is idle until its next request
        head, or, if the request's body was not all read, drains the rest first (the client
        may still be sending it; cutting it off would reset the connection under the answer)."""
        body_left = not request.content.is_eof()
        conn = self.conns.get(request.transport)
        if conn is not None:
            conn.phase = DRAIN if body_left else IDLE
            self._arm(conn, self.lingering_time if body_left else self.idle_timeout)

    def stats(self) -> dict:
        """``{open, refused, evicted, timed_out}`` (counts since start)."""
        return {"open": len(self.conns), "refused": self.refused, "evicted": self.evicted,
                "timed_out": self.timed_out}


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through a :class:`ConnectionGuard`."""

    def __init__(self, runner, host, port, guard: ConnectionGuard, backlog: int = 512):
        super().__init__(runner, host, port, backlog=backlog, reuse_address=True)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.wrap(self._runner.server), self._host, self._port,
            backlog=self._backlog, reuse_address=True,
        )
        if hasattr(self, "_bound_port"):
            self._bound_port = self._server.sockets[0].getsockname()[1]


class GuardedSockSite(web.SockSite):
    """``web.SockSite`` (an already bound, listening socket) whose connections go through
    a :class:`ConnectionGuard`."""

    def __init__(self, runner, sock, guard: ConnectionGuard, backlog: int = 512):
        super().__init__(runner, sock, backlog=backlog)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._guard.wrap(self._runner.server),
                                                sock=self._sock, backlog=self._backlog)

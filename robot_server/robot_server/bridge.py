"""Raw TCP JSON bridge (port 7887), after the OT-One raw-TCP bridge (seed 004): for
clients that cannot speak HTTP (lab software, LabVIEW, PLC gateways).

Framing: every message in both directions is one JSON object followed by ``\\n\\r`` (LF
then CR, as the original); a bare ``\\n`` (or ``\\r\\n``) is accepted from clients.
Messages may arrive split across or packed into TCP segments.

* On connect the server sends ``{"type": "handshake", "client_id", "server", "version",
  "commands"}``.
* A request is ``{"id"?: any, "command": <operationId>, "params"?: {...}}`` with the same
  operations as the HTTP API (``health``, ``getLights``, ``setLights``, ``home``, ``move``,
  ``positions``, ``endstops``, ``engaged``, ``disengage``, ``door``, ``identify``,
  ``simGpio``), plus the engine's ``stopRun`` (stop the active run) and ``listRuns``;
  ``name``/``param`` are accepted for ``command``/``params`` (the original bridge's field
  names).
* The reply goes only to the requesting client: ``{"type": "reply", "id", "ok": true,
  "result"}`` or ``{"type": "reply", "id", "ok": false, "error", "message"}``.
  Requests of one client run in order; different clients run concurrently (motion is
  serialised by the robot).
* Events go to every client: ``{"type": "event", "event", "seq", "time", "data"}``.
* Who may do what (``docs/security.md``): reads (the operations that are ``GET`` over
  HTTP, ``listRuns``) and events are open to anyone.  Commands that change, move or run
  (``setLights``, ``home``, ``move``, ``disengage``, ``stop``, ``stopRun``, ...) need a
  connection from a trusted interface (loopback from root, the USB link), ``open_access``,
  or an ``{"type": "auth", "token": "<token>"}`` message first (a paired client's token,
  as sent in ``Authorization: Bearer`` over HTTP); it is answered ``{"type": "reply", "id",
  "ok": true, "result": {"authorised": true, "token_id"}}`` and authorises the rest of the
  connection, or ``ok: false`` ``unauthorized``.  A command without it gets
  ``unauthorized``; the connection stays up.
* At most ``bridge_max_clients`` connections, ``bridge_max_clients_per_peer`` per peer
  address: a new connection closes the oldest one (of its peer, when that limit is hit),
  so idle clients cannot take every file descriptor.
* Malformed JSON gets an error reply (``invalid-json``) and the connection stays up; a
  message longer than ``max_message`` bytes gets ``message-too-large`` and the connection
  is closed. A client that vanishes mid-reply is dropped; its command still completes.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from typing import Any

from . import __version__
from .access import Access
from .errors import API_ERRORS, ApiError, as_api_error
from .service import RobotService

log = logging.getLogger("robot_server.bridge")

TERM = b"\n\r"
SEND_QUEUE = 1000


class _TooLarge(Exception):
    pass


class _Client:
    def __init__(self, cid: str, writer: asyncio.StreamWriter, authorised: bool) -> None:
        self.cid = cid
        self.writer = writer
        peername = writer.get_extra_info("peername")
        self.peer = peername[0] if peername else None
        self.authorised = authorised
        self.queue: asyncio.Queue = asyncio.Queue(SEND_QUEUE)
        self.closed = False

    def send(self, msg: dict) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(json.dumps(msg, separators=(",", ":")).encode() + TERM)
        except asyncio.QueueFull:
            log.warning("bridge client %s is not reading; dropping it", self.cid)
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class Bridge:
    """The TCP bridge over the operations ``ops`` (``{operationId: coroutine(params)}``);
    those in ``read_only`` are open to anyone, the others need authorisation (``access``)."""

    def __init__(self, svc: RobotService, ops: dict[str, Any], max_message: int,
                 read_only: set[str], access: Access) -> None:
        self.svc = svc
        self.ops = ops
        self.max_message = max_message
        self.read_only = read_only
        self.access = access
        self.clients: dict[str, _Client] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._events_task: asyncio.Task | None = None

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already bound, listening socket."""
        self._server = await asyncio.start_server(self._serve, sock=sock)
        self._events_task = asyncio.ensure_future(self._fan_out())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in list(self.clients.values()):
            c.close()
        if self._events_task is not None:
            self._events_task.cancel()
            try:
                await self._events_task
            except asyncio.CancelledError:
                pass
        if self._server is not None:
            await self._server.wait_closed()

    async def _fan_out(self) -> None:
        q = self.svc.events.subscribe()
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    return
                msg = {"type": "event", **ev}
                for c in list(self.clients.values()):
                    c.send(msg)
        finally:
            self.svc.events.unsubscribe(q)

    async def _writer(self, client: _Client) -> None:
        try:
            while True:
                data = await client.queue.get()
                client.writer.write(data)
                await client.writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass   # client vanished (mid-reply or not): drop it
        finally:
            client.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cid = f"c{next(self._ids)}"
        client = _Client(cid, writer, self.access.bridge_authorised(writer))
        self._make_room(client.peer)
        self.clients[cid] = client
        sender = asyncio.ensure_future(self._writer(client))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        client.send({"type": "handshake", "client_id": cid, "server": "robot-server",
                     "version": __version__, "commands": sorted(self.ops)})
        buf = b""
        try:
            while not client.closed:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                while not client.closed:
                    idx = buf.find(b"\n")
                    if idx < 0:
                        if len(buf) > self.max_message:
                            self._too_large(client)
                        break
                    msg, buf = buf[:idx], buf[idx + 1:]
                    if len(msg) > self.max_message:
                        self._too_large(client)
                        break
                    msg = msg.strip(b"\r\t ")
                    if msg:
                        await self._handle(client, msg)
                if buf[:1] == b"\r":
                    buf = buf[1:]
        except (ConnectionError, OSError, _TooLarge):
            pass
        finally:
            self.clients.pop(cid, None)
            # let queued replies go out before closing, unless the client is gone
            if not client.closed:
                try:
                    await asyncio.wait_for(self._flush(client), 2.0)
                except asyncio.TimeoutError:
                    pass
            client.close()
            sender.cancel()
            try:
                await sender
            except asyncio.CancelledError:
                pass

    def _make_room(self, peer) -> None:
        """Close the oldest connection (of ``peer``, if that peer is at its limit) when a
        new one would exceed ``bridge_max_clients`` (``bridge_max_clients_per_peer``)."""
        config = self.access.config
        same_peer = [c for c in self.clients.values() if c.peer == peer]
        if len(same_peer) >= config.bridge_max_clients_per_peer:
            victim = same_peer[0]
        elif len(self.clients) >= config.bridge_max_clients:
            victim = next(iter(self.clients.values()))
        else:
            return
        log.warning("bridge: connection limit reached; closing client %s (%s)", victim.cid, victim.peer)
        self.clients.pop(victim.cid, None)
        victim.close()

    @staticmethod
    async def _flush(client: _Client) -> None:
        while not client.queue.empty() and not client.closed:
            await asyncio.sleep(0.01)

    def _too_large(self, client: _Client) -> None:
        """Refuse an over-long message; the connection is closed once the error is out."""
        client.send({"type": "reply", "id": None, "ok": False, "error": "message-too-large",
                     "message": f"message longer than {self.max_message} bytes; closing"})
        raise _TooLarge()

    def _auth(self, client: _Client, req: dict) -> dict:
        """An ``auth`` message: authorise ``client`` with its token; ApiError 401 if invalid."""
        token_id = self.access.token_id(req.get("token"))
        if token_id is None:
            raise ApiError("unauthorized", "the token is not valid (revoked, or from another robot)")
        client.authorised = True
        return {"authorised": True, "token_id": token_id}

    async def _handle(self, client: _Client, raw: bytes) -> None:
        req_id = None
        try:
            try:
                req = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                raise ApiError("invalid-json", f"message is not valid JSON: {exc}") from None
            if not isinstance(req, dict):
                raise ApiError("invalid-request", "a message must be a JSON object")
            req_id = req.get("id")
            if req.get("type") == "auth":
                client.send({"type": "reply", "id": req_id, "ok": True, "result": self._auth(client, req)})
                return
            name = req.get("command", req.get("name"))
            params = req.get("params", req.get("param", {}))
            if not isinstance(name, str):
                raise ApiError("invalid-request", "field 'command' (string) is required")
            op = self.ops.get(name)
            if op is None:
                raise ApiError("unknown-command",
                               f"unknown command {name!r}; commands: {', '.join(sorted(self.ops))}")
            if name not in self.read_only and not client.authorised:
                raise ApiError("unauthorized", f"{name!r} changes the robot: send "
                               '{"type": "auth", "token": "<token>"} first (pair with \'ot2 pair\')')
            result = await op(params)
            client.send({"type": "reply", "id": req_id, "ok": True, "result": result})
        except API_ERRORS as exc:
            client.send({"type": "reply", "id": req_id, "ok": False, **as_api_error(exc).body()})
        except Exception:   # a bug must not kill the connection
            log.exception("bridge command failed")
            client.send({"type": "reply", "id": req_id, "ok": False,
                         **ApiError("internal-error", "internal server error (see the server log)").body()})

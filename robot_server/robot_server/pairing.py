"""Pairing with physical presence: a client asks for a token, a press of the front button
approves (``docs/security.md``, "Pairing"; the client side is ``client/ot2_client/pairing.py``).

* ``POST /pair {"client": label}`` -> 202 ``{pairing_id, expires_in, message}``; the
  button light blinks blue for ``expires_in`` seconds (``pairing_timeout``).  One request
  waits at a time (409 ``pairing-in-progress``); the sixth request within a minute gets
  429 ``too-many-requests``.
* ``GET /pair/{pairing_id}`` -> ``{"status": "waiting", "expires_in"}``, ``{"status":
  "approved", "token", "id"}`` (once: the pairing is then forgotten), ``{"status":
  "expired"}`` or ``{"status": "denied"}``; 404 ``bad-pairing`` for an unknown id.
* ``DELETE /pair/{pairing_id}`` withdraws a waiting request (the light stops).

A press of the front button while a request waits approves it: the token is issued with
``TokenStore.issue(client, "button")`` (``update_server/tokens.py``, the one token file
both servers read) and held here until the matching ``GET``.  When a press stops a run
instead (the button's first meaning), a waiting request is denied: a request made while
someone reaches for the stop button never profits from that press.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass

from update_server.tokens import MAX_CLIENT_LABEL, TokenError, TokenStore

from .gpio import GPIOBackend
from .errors import ApiError

log = logging.getLogger("robot_server.pairing")

RATE_LIMIT = 5            # requests ...
RATE_WINDOW = 60.0        # ... per this many seconds
BLINK_PERIOD = 0.5        # seconds the light is on, then off
KEEP_FINISHED = 300.0     # seconds an answered-but-unread result (approved, expired, denied) is kept

WAITING, APPROVED, EXPIRED, DENIED = "waiting", "approved", "expired", "denied"


@dataclass
class _Request:
    pairing_id: str
    client: str
    expires: float                  # time.monotonic()
    status: str = WAITING
    token: str | None = None
    token_id: str | None = None
    finished: float = 0.0


class Pairing:
    """The pairing requests of one robot server (run on its event loop)."""

    def __init__(self, tokens: TokenStore, gpio: GPIOBackend, timeout: float) -> None:
        self.tokens = tokens
        self.gpio = gpio
        self.timeout = timeout
        self.requests: dict[str, _Request] = {}
        self.waiting: _Request | None = None
        self._asked: deque = deque()
        self._blinker: asyncio.Task | None = None

    # ---- HTTP -------------------------------------------------------------------------

    async def ask(self, params) -> dict:
        """``POST /pair`` body ``{"client": label}`` (1..100 printable characters) ->
        ``{pairing_id, expires_in, message}``.  Raises :class:`ApiError` 422
        ``invalid-request``, 409 ``pairing-in-progress``, 429 ``too-many-requests``."""
        client = params.get("client") if isinstance(params, dict) else None
        if not isinstance(client, str) or not client.strip() or len(client) > MAX_CLIENT_LABEL \
                or not client.isprintable():
            raise ApiError("invalid-request",
                           f"'client' must be a printable label of 1..{MAX_CLIENT_LABEL} characters")
        now = time.monotonic()
        self._forget_old(now)
        while self._asked and now - self._asked[0] > RATE_WINDOW:
            self._asked.popleft()
        if len(self._asked) >= RATE_LIMIT:
            raise ApiError("too-many-requests", f"at most {RATE_LIMIT} pairing requests a minute")
        self._asked.append(now)
        if self.waiting is not None:
            raise ApiError("pairing-in-progress", "another pairing request is waiting for the button")
        request = _Request(secrets.token_hex(16), client.strip(), now + self.timeout)
        self.requests[request.pairing_id] = request
        self.waiting = request
        self._blinker = asyncio.ensure_future(self._blink(request))
        log.info("pairing requested by %r; waiting for the front button", request.client)
        return {"pairing_id": request.pairing_id, "expires_in": round(self.timeout),
                "message": "press the front button"}

    async def state(self, params) -> dict:
        """``GET /pair/{pairing_id}`` -> ``{status, ...}`` (see the module docstring);
        404 ``bad-pairing``."""
        request = self._lookup(params)
        if request.status == WAITING:
            return {"status": WAITING, "expires_in": max(0, round(request.expires - time.monotonic()))}
        if request.status == APPROVED:
            del self.requests[request.pairing_id]       # the token is given out once
            return {"status": APPROVED, "token": request.token, "id": request.token_id}
        return {"status": request.status}

    async def withdraw(self, params) -> dict:
        """``DELETE /pair/{pairing_id}`` -> ``{"withdrawn": true}``: forget the request (a
        token approved but not yet fetched is revoked); 404 ``bad-pairing``."""
        request = self._lookup(params)
        if request.status == WAITING:
            self._finish(request, DENIED)
        self._discard(request)
        return {"withdrawn": True}

    def _lookup(self, params) -> _Request:
        self._forget_old(time.monotonic())
        request = self.requests.get(params.get("pairing_id", "") if isinstance(params, dict) else "")
        if request is None:
            raise ApiError("bad-pairing", "no such pairing request")
        return request

    # ---- the front button ---------------------------------------------------------------

    def button_pressed(self) -> None:
        """Approve the waiting request, if any (a press with nothing waiting means nothing here)."""
        request = self.waiting
        if request is None or request.expires < time.monotonic():
            return
        try:
            request.token, record = self.tokens.issue(request.client, "button")
        except (TokenError, OSError) as exc:
            log.error("pairing of %r approved, but no token could be issued: %s", request.client, exc)
            self._finish(request, DENIED)
            return
        request.token_id = record["id"]
        self._finish(request, APPROVED)
        log.info("pairing of %r approved with the front button (token %s)", request.client, record["id"])

    def deny(self, why: str) -> None:
        """Deny the waiting request, if any (the button stopped a run instead)."""
        if self.waiting is not None:
            log.info("pairing of %r denied: %s", self.waiting.client, why)
            self._finish(self.waiting, DENIED)

    # ---- bookkeeping --------------------------------------------------------------------

    def _finish(self, request: _Request, status: str) -> None:
        request.status = status
        request.finished = time.monotonic()
        if self.waiting is request:
            self.waiting = None
            if self._blinker is not None and self._blinker is not asyncio.current_task():
                self._blinker.cancel()       # the light stops at once (its finally restores it)

    def _discard(self, request: _Request) -> None:
        self.requests.pop(request.pairing_id, None)
        if request.status == APPROVED and request.token_id:
            self.tokens.revoke(request.token_id)     # issued, never fetched: nobody holds it

    def _forget_old(self, now: float) -> None:
        for request in list(self.requests.values()):
            if request.status == WAITING and request.expires <= now:
                self._finish(request, EXPIRED)
            elif request.status != WAITING and now - request.finished > KEEP_FINISHED:
                self._discard(request)

    async def _blink(self, request: _Request) -> None:
        """Blink the button light blue while ``request`` waits; then restore the light."""
        before = self.gpio.button_light()
        on = False
        try:
            while request.status == WAITING and time.monotonic() < request.expires:
                on = not on
                self.gpio.set_button_light(False, False, on)
                await asyncio.sleep(BLINK_PERIOD)
            if request.status == WAITING:
                self._finish(request, EXPIRED)
                log.info("pairing of %r expired", request.client)
        finally:
            self.gpio.set_button_light(before["red"], before["green"], before["blue"])

    async def close(self) -> None:
        """Stop blinking (server shutdown)."""
        if self._blinker is not None:
            self._blinker.cancel()
            try:
                await self._blinker
            except asyncio.CancelledError:
                pass

"""The update server's HTTP API (``update_server/README.md``) as seen from the client."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse

import aiohttp

from .errors import ClientError
from .targets import Target

CHUNK = 1 << 20  # bytes per upload read
HINTS = {  # what the user can do about a refusal (docs/security.md)
    "unauthorized": " -- pair first: 'ot2 pair ROBOT' (or set OT2_TOKEN)",
    "downgrade": " -- 'ot2 push --allow-downgrade' installs it anyway",
}


def _connection_error(target: Target, e: BaseException, during: str = "") -> ClientError:
    where = f" during {during}" if during else ""
    if isinstance(e, aiohttp.ClientConnectorError):
        reason = e.os_error.strerror if getattr(e, "os_error", None) and e.os_error.strerror else str(e)
        return ClientError("unreachable", f"cannot connect to {target.address}: {reason}")
    if isinstance(e, asyncio.TimeoutError):
        return ClientError("timeout", f"{target.address} did not answer in time{where}")
    if isinstance(e, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
                      aiohttp.ClientPayloadError, ConnectionError)):
        return ClientError("connection-lost", f"{target.address} dropped the connection{where}")
    return ClientError("connection-lost", f"{target.address}{where}: {e or type(e).__name__}")


class Robot:
    """One robot's update server, over a shared :class:`aiohttp.ClientSession`.

    ``token`` (a paired client's, see :mod:`ot2_client.credentials`) is sent as
    ``Authorization: Bearer`` with every request.
    """

    def __init__(self, session: aiohttp.ClientSession, target: Target, timeout: float = 30.0,
                 token: str | None = None):
        self.session = session
        self.target = target
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def request(self, method: str, path: str, body: dict | None = None,
                      timeout: float | None = None) -> dict:
        """JSON request; the JSON answer, or :class:`ClientError` (API code and status)."""
        t = aiohttp.ClientTimeout(total=timeout or self.timeout)
        try:
            async with self.session.request(method, self.target.url + path, json=body, timeout=t,
                                            headers=self.headers) as r:
                raw = await r.read()
                return self._answer(r.status, raw)
        except ClientError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _connection_error(self.target, e, f"{method} {path}") from None

    def _answer(self, status: int, raw: bytes) -> dict:
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if 200 <= status < 300 and isinstance(data, dict):
            return data
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            hint = HINTS.get(data["error"], "")
            raise ClientError(data["error"], str(data.get("message", "")) + hint, status)
        if 200 <= status < 300:
            raise ClientError("bad-answer", f"{self.target.address} answered {status} without JSON", status)
        raise ClientError("http-error", f"{self.target.address} answered HTTP {status}", status)

    # ---- reads ----------------------------------------------------------------------

    async def health(self, timeout: float | None = None) -> dict:
        return await self.request("GET", "/health", timeout=timeout)

    async def name(self) -> dict:
        return await self.request("GET", "/server/name")

    async def keys(self) -> list:
        return (await self.request("GET", "/server/ssh_keys")).get("public_keys", [])

    async def status(self, token: str) -> dict:
        return await self.request("GET", f"/server/update/{token}/status", timeout=10)

    # ---- changes --------------------------------------------------------------------

    async def set_name(self, name: str) -> dict:
        return await self.request("POST", "/server/name", {"name": name})

    async def add_key(self, key: str) -> dict:
        return await self.request("POST", "/server/ssh_keys", {"key": key})

    async def remove_key(self, fingerprint: str) -> dict:
        quoted = urllib.parse.quote(fingerprint, safe="")
        return await self.request("DELETE", f"/server/ssh_keys/{quoted}")

    async def clear_keys(self) -> dict:
        return await self.request("DELETE", "/server/ssh_keys")

    async def restart(self) -> dict:
        return await self.request("POST", "/server/restart")

    async def begin(self, allow_downgrade: bool = False) -> str:
        """A new update session's token; ``allow_downgrade`` lets it install an older bundle."""
        query = "?allow_downgrade=true" if allow_downgrade else ""
        return (await self.request("POST", "/server/update/begin" + query))["token"]

    async def tokens(self) -> list:
        """The paired clients' tokens ``[{id, client, created, via}]``."""
        return (await self.request("GET", "/server/tokens")).get("tokens", [])

    async def issue_token(self, client: str) -> dict:
        """``{token, id, ...}``: works only over a trusted interface (the USB link)."""
        return await self.request("POST", "/server/tokens", {"client": client})

    async def revoke_token(self, token_id: str) -> dict:
        return await self.request("DELETE", f"/server/tokens/{urllib.parse.quote(token_id, safe='')}")

    async def commit(self, token: str) -> dict:
        return await self.request("POST", f"/server/update/{token}/commit", timeout=60)

    async def upload(self, token: str, path: str, progress=None, read_timeout: float = 600.0) -> dict:
        """Stream the bundle file as the body of ``/file``; ``progress(n)`` per chunk sent.

        The robot answers when the install has finished (or failed).  ``read_timeout``:
        seconds without any data from the robot (it answers only at the end, after fsync).
        """
        size = os.path.getsize(path)
        loop = asyncio.get_running_loop()

        async def body():
            with open(path, "rb", buffering=0) as f:
                while True:
                    chunk = await loop.run_in_executor(None, f.read, CHUNK)
                    if not chunk:
                        return
                    yield chunk
                    if progress:
                        progress(len(chunk))

        t = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=read_timeout)
        headers = {**self.headers, "Content-Type": "application/octet-stream", "Content-Length": str(size)}
        url = f"{self.target.url}/server/update/{token}/file"
        try:
            async with self.session.post(url, data=body(), headers=headers, timeout=t) as r:
                raw = await r.read()
                return self._answer(r.status, raw)
        except ClientError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _connection_error(self.target, e, "the upload") from None

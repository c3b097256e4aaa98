"""``update-server install BUNDLE``: install a bundle from a local file (a USB drive, a file
on ``/data``) on a robot without a network, through the running update server, as
``rauc install`` goes through the RAUC service: the same session, verification, slot
writing and boot selection as an upload over the network (the ``/server/update``
endpoints of ``update_server/README.md``), so two installs can never write the inactive slot at once.

The caller is on loopback; the server trusts it as root (``docs/security.md``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
from typing import BinaryIO, Callable

HOST = "127.0.0.1"
SEND_BLOCK = 1 << 20          # bytes written to the socket at a time
ANSWER_TIMEOUT = 900.0        # s: the server answers the upload once the slot is written

Progress = Callable[[int, int], None]   # (bytes sent, bundle size in bytes)


class InstallFailed(Exception):
    """The server refused or failed the install: ``code`` is its stable error code
    (``unsigned``, ``downgrade``, ``session-already-active``, ...), ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Counting:
    """A file read by http.client while the bytes read are reported to ``progress``."""

    def __init__(self, f: BinaryIO, size: int, progress: Progress | None) -> None:
        self.f, self.size, self.progress, self.sent = f, size, progress, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sent += len(data)
        if self.progress:
            self.progress(self.sent, self.size)
        return data


def _call(port: int, method: str, path: str, body=None, headers: dict | None = None) -> dict:
    conn = http.client.HTTPConnection(HOST, port, timeout=ANSWER_TIMEOUT, blocksize=SEND_BLOCK)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {}
    if response.status >= 400:
        raise InstallFailed(answer.get("error", f"http-{response.status}"),
                            answer.get("message", raw.decode(errors="replace")[:200]))
    return answer


def install(port: int, path: str, allow_downgrade: bool = False, commit: bool = True,
            progress: Progress | None = None) -> dict:
    """Install the bundle file ``path`` through the update server on 127.0.0.1:``port``:
    begin a session, stream the file (``progress`` is called as bytes go), and unless
    ``commit`` is false select the written slot for the next boot.

    Returns the session's last status (``{stage, target_slot, version, ...}``; with
    ``commit``, ``stage`` is ``ready-for-restart``). Raises :class:`InstallFailed` when the
    server refuses or fails (the booted slot and the boot selection are then unchanged),
    ``OSError`` when the file cannot be read or the server cannot be reached.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        token = _call(port, "POST", "/server/update/begin")["token"]
        query = "?allow_downgrade=true" if allow_downgrade else ""
        try:
            status = _call(port, "POST", f"/server/update/{token}/file{query}",
                           body=_Counting(f, size, progress),
                           headers={"Content-Type": "application/octet-stream",
                                    "Content-Length": str(size)})
        except OSError:          # the session must not wait for a file that will not come
            with contextlib.suppress(OSError, InstallFailed):
                _call(port, "POST", "/server/update/cancel", json.dumps({"token": token}).encode(),
                      {"Content-Type": "application/json"})
            raise
    if commit:
        status = _call(port, "POST", f"/server/update/{token}/commit")
    return status

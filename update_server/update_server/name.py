"""The robot's name: validation, persistence, hostname, mDNS advertisement.

The name (1..63 UTF-8 octets, printable, none of ``/ \\ "``) is stored in
``data_dir/update-server/name``.  The hostname is derived from it (lowercase ASCII
letters, digits and hyphens, at most 63).  With zeroconf installed and ``mdns`` enabled
the robot is advertised as ``<name>._http._tcp.local.`` on the robot server's port with
TXT ``robotModel``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import unicodedata
from pathlib import Path

from .errors import UpdateError
from .state import atomic_write

log = logging.getLogger(__name__)

MAX_OCTETS = 63
FORBIDDEN = set('/\\"')


def validate_name(name) -> str:
    """Return ``name`` if valid; raises UpdateError ``bad-name`` otherwise."""
    if not isinstance(name, str):
        raise UpdateError("bad-name", "the name must be a string")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UpdateError("bad-name", "the name is not valid Unicode") from None
    if not 1 <= size <= MAX_OCTETS:
        raise UpdateError("bad-name", f"the name must be 1 to {MAX_OCTETS} UTF-8 octets, not {size}")
    if name != name.strip():
        raise UpdateError("bad-name", "the name must not start or end with spaces")
    if not name.isprintable():
        raise UpdateError("bad-name", "the name must contain only printable characters")
    bad = sorted(set(name) & FORBIDDEN)
    if bad:
        raise UpdateError("bad-name", f"the name must not contain {' '.join(bad)}")
    return name


def hostname_for(name: str, fallback: str = "ot2") -> str:
    """A hostname from ``name``: ASCII lowercase letters, digits, hyphens, 1..63 chars."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    host = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:63].strip("-")
    return host or fallback


def default_name(machine_id_file: str) -> str:
    """``OT2-<first 8 hex digits of the machine id>`` (``OT2`` without a machine id)."""
    try:
        machine_id = Path(machine_id_file).read_text().strip()
    except OSError:
        machine_id = ""
    if re.fullmatch(r"[0-9a-fA-F]{8,}", machine_id):
        return f"OT2-{machine_id[:8].lower()}"
    return "OT2"


class NameStore:
    """The persisted name in ``directory/name``."""

    def __init__(self, directory: str | os.PathLike, machine_id_file: str):
        self.path = Path(directory) / "name"
        self.machine_id_file = machine_id_file

    def get(self) -> str:
        """The stored name, or :func:`default_name` if none (or an invalid one) is stored."""
        try:
            return validate_name(self.path.read_text(encoding="utf-8").rstrip("\n"))
        except (OSError, UnicodeDecodeError, UpdateError):
            return default_name(self.machine_id_file)

    def set(self, name: str) -> str:
        """Validate and store ``name``; returns it."""
        validate_name(name)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, (name + "\n").encode("utf-8"))
        return name


def apply_hostname(name: str) -> str | None:
    """Set the kernel hostname derived from ``name``; returns it (``None`` on failure)."""
    host = hostname_for(name)
    try:
        socket.sethostname(host)
    except OSError as e:
        log.warning("cannot set hostname %r: %s", host, e)
        return None
    return host


class Advertiser:
    """mDNS ``_http._tcp`` advertisement with zeroconf (a no-op without zeroconf)."""

    SERVICE_TYPE = "_http._tcp.local."

    def __init__(self, port: int, robot_model: str, interfaces=None):
        self.port = port
        self.robot_model = robot_model
        self.interfaces = interfaces  # None: all interfaces
        self._zc = None
        self._info = None
        self._broadcast = None

    def _addresses(self) -> list:
        try:
            import ifaddr
        except ImportError:
            return []
        found = []
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
                if address.startswith("127.") or address == "::1":
                    continue
                found.append(address.split("%")[0])
        return found

    async def advertise(self, name: str) -> str | None:
        """(Re-)register the service under ``name``; returns the registered service name.

        Errors are logged and give ``None``; mDNS never takes the server down.
        """
        try:
            from zeroconf import ServiceInfo
            from zeroconf.asyncio import AsyncZeroconf
        except ImportError:
            log.info("zeroconf not installed; mDNS advertisement disabled")
            return None
        try:
            if self._zc is None:
                self._zc = AsyncZeroconf(**({"interfaces": self.interfaces} if self.interfaces else {}))
            elif self._info is not None:
                if self._broadcast is not None and not self._broadcast.done():
                    self._broadcast.cancel()
                await self._zc.async_unregister_service(self._info)
            self._info = ServiceInfo(
                self.SERVICE_TYPE,
                f"{name}.{self.SERVICE_TYPE}",
                port=self.port,
                properties={"robotModel": self.robot_model},
                server=f"{hostname_for(name)}.local.",
                parsed_addresses=self._addresses(),
            )
            # the awaited call returns the task that sends the announcements
            self._broadcast = await self._zc.async_register_service(self._info, allow_name_change=True)
            log.info("advertising %r over mDNS", self._info.name)
            return self._info.name
        except Exception as e:  # noqa: BLE001 - mDNS must never take the server down
            log.warning("mDNS advertisement failed: %s", e)
            return None

    async def close(self) -> None:
        """Withdraw the advertisement and stop zeroconf."""
        if self._broadcast is not None and not self._broadcast.done():
            self._broadcast.cancel()
            await asyncio.wait({self._broadcast})
        self._broadcast = None
        if self._zc is not None:
            try:
                await self._zc.async_close()
            except Exception as e:  # noqa: BLE001
                log.warning("mDNS shutdown: %s", e)
            self._zc = None

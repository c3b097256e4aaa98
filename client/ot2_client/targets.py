"""ROBOT arguments: a robot name (resolved over mDNS), a host, or host:port.

Resolution order for ``spec``:

1. an IP literal (``10.0.0.5``, ``[fe80::1%eth0]:34000``, ``::1``): used as is;
2. ``host:port`` / ``host``: if the host looks like a DNS name with a dot (or is
   ``localhost``) it is resolved through the system resolver;
3. anything else is first looked up over mDNS as the robot's name (the service
   ``<name>._http._tcp.local.`` that the update server advertises), then through the
   system resolver (which may know ``<name>`` or ``<name>.local``).

The update server listens on ``--port`` (34000) of the address found; an explicit
``:port`` wins.  An unknown name is :class:`ClientError` ``unknown-robot``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from .errors import ClientError

UPDATE_SERVER_PORT = 34000
SERVICE_TYPE = "_http._tcp.local."
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?$")


@dataclass
class Target:
    """A robot to talk to: what the user typed and where it resolved to."""

    spec: str
    host: str
    port: int
    via: str = "address"  # address | dns | mdns
    name: str | None = None  # the mDNS instance name when resolved by name

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0])) + (
            "%" + text.split("%", 1)[1] if "%" in text else "")
    except ValueError:
        return None


def split_spec(spec: str, default_port: int) -> tuple:
    """``(host, port, is_literal)`` from ``spec``; raises :class:`ClientError` on a bad port."""
    spec = spec.strip()
    if not spec:
        raise ClientError("unknown-robot", "empty robot name")
    if spec.startswith("["):  # [v6]:port or [v6]
        host, sep, rest = spec[1:].partition("]")
        if not sep:
            raise ClientError("unknown-robot", f"bad address {spec!r}")
        port = default_port
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ClientError("unknown-robot", f"bad address {spec!r}")
            port = int(rest[1:])
        literal = _ip(host)
        if literal is None:
            raise ClientError("unknown-robot", f"bad IPv6 address in {spec!r}")
        return literal, _check_port(port, spec), True
    literal = _ip(spec)
    if literal is not None:  # bare IPv4 or IPv6
        return literal, default_port, True
    host, sep, port_text = spec.rpartition(":")
    if sep and port_text.isdigit() and host:
        literal = _ip(host)
        return (literal or host), _check_port(int(port_text), spec), literal is not None
    return spec, default_port, False


def _check_port(port: int, spec: str) -> int:
    if not 0 < port < 65536:
        raise ClientError("unknown-robot", f"bad port in {spec!r}")
    return port


async def _dns(host: str, port: int) -> str | None:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout=5)
    except (OSError, asyncio.TimeoutError, UnicodeError):
        return None
    # prefer IPv4 (what the robots advertise first), then whatever came
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    return infos[0][4][0] if infos else None


async def mdns_lookup(name: str, timeout: float) -> tuple | None:
    """``(address, mdns_port, properties)`` of the robot named ``name``, or ``None``."""
    try:
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
    except ImportError:
        return None
    try:
        azc = AsyncZeroconf()
    except Exception:  # noqa: BLE001 - no multicast-capable interface, etc.
        return None
    try:
        info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}")
        if not await info.async_request(azc.zeroconf, int(timeout * 1000)):
            return None
        addresses = info.parsed_addresses()
        if not addresses:
            return None
        addresses.sort(key=lambda a: 0 if "." in a else 1)
        return addresses[0], info.port, _props(info.properties)
    except Exception:  # noqa: BLE001 - a bad name for mDNS (too long, ...) is "not found"
        return None
    finally:
        await azc.async_close()


def _props(properties) -> dict:
    out = {}
    for k, v in (properties or {}).items():
        key = k.decode(errors="replace") if isinstance(k, bytes) else str(k)
        out[key] = v.decode(errors="replace") if isinstance(v, bytes) else v
    return out


async def resolve(spec: str, default_port: int = UPDATE_SERVER_PORT, mdns_timeout: float = 3.0) -> Target:
    """Resolve one ROBOT argument; raises :class:`ClientError` ``unknown-robot``."""
    host, port, literal = split_spec(spec, default_port)
    if literal:
        return Target(spec, host, port)
    dns_first = host == "localhost" or ("." in host.rstrip(".") and _HOSTNAME_RE.match(host))
    if dns_first:
        address = await _dns(host, port)
        if address:
            return Target(spec, address, port, "dns")
    found = await mdns_lookup(host, mdns_timeout)
    if found:
        return Target(spec, found[0], port, "mdns", name=host)
    if not dns_first and _HOSTNAME_RE.match(host):
        for candidate in (host, f"{host}.local"):
            address = await _dns(candidate, port)
            if address:
                return Target(spec, address, port, "dns")
    raise ClientError("unknown-robot", f"no robot named {spec!r} found (mDNS and DNS)")


@dataclass
class Advert:
    """One robot seen over mDNS."""

    name: str
    addresses: list
    mdns_port: int
    properties: dict = field(default_factory=dict)


async def browse(timeout: float) -> list:
    """Robots advertised over mDNS within ``timeout`` seconds (services with ``robotModel``)."""
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    names: set = set()

    def on_change(zeroconf, service_type, name, state_change):
        if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
            names.add(name)

    try:
        azc = AsyncZeroconf()
    except Exception as e:  # noqa: BLE001
        raise ClientError("mdns-unavailable", f"mDNS is not available here: {e}") from None
    try:
        browser = AsyncServiceBrowser(azc.zeroconf, SERVICE_TYPE, handlers=[on_change])
        await asyncio.sleep(timeout)
        await browser.async_cancel()
        found = []
        for name in sorted(names):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(azc.zeroconf, 1500):
                continue
            props = _props(info.properties)
            if "robotModel" not in props:
                continue
            instance = name[: -len("." + SERVICE_TYPE)] if name.endswith("." + SERVICE_TYPE) else name
            addresses = sorted(info.parsed_addresses(), key=lambda a: 0 if "." in a else 1)
            found.append(Advert(instance, addresses, info.port, props))
        return found
    finally:
        await azc.async_close()

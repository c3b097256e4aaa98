"""Trust by interface, not by address: did a TCP connection come over loopback or the USB link?

A connection is *local* (someone at the robot) when:

* its peer is a loopback address (``127.0.0.0/8``, ``::1``; the kernel drops packets
  from outside that claim such a source), ``lo`` is a trusted interface, and the peer's
  socket belongs to root or to the server's own user (the boot check, an administrator;
  never the unprivileged user protocols run as), or
* its peer is an IPv6 link-local address whose scope (the interface the connection
  arrived on, ``sin6_scope_id``) is a trusted interface, or
* its local address is the IPv4 address of a trusted interface *and* the peer lies in
  that interface's subnet.  The kernel sends the replies of such a connection out of
  that interface (only the USB link has link-local addressing, see
  ``overlay/etc/systemd/network``), so a LAN host that merely claims a USB-side source
  address never completes the TCP handshake.

Trusted interfaces are named by shell patterns (``trusted_interfaces``, e.g.
``["lo", "usb*"]``: loopback and the OT-2's USB-Ethernet gadget link).  A peer address alone (169.254/16,
fe80::/10) is never enough.  Linux only: the IPv4 address and netmask of an interface
come from the ``SIOCGIFADDR``/``SIOCGIFNETMASK`` ioctls (netdevice(7)); the owner of a
loopback peer's socket from ``/proc/net/tcp`` and ``/proc/net/tcp6`` (proc(5): the
``uid`` column of the row whose local address is the peer's and remote address ours).
"""

from __future__ import annotations

import fcntl
import fnmatch
import ipaddress
import os
import socket
import struct

SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def _ipv4_of(sock: socket.socket, name: str, request: int) -> ipaddress.IPv4Address | None:
    try:
        raw = fcntl.ioctl(sock.fileno(), request, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None  # no IPv4 address on this interface
    return ipaddress.IPv4Address(raw[20:24])


def ipv4_networks(patterns: list) -> list:
    """``[(name, IPv4Interface)]`` of the interfaces matching ``patterns`` that have an IPv4 address."""
    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            if not _matches(name, patterns):
                continue
            address = _ipv4_of(sock, name, SIOCGIFADDR)
            mask = _ipv4_of(sock, name, SIOCGIFNETMASK)
            if address is not None and mask is not None:
                found.append((name, ipaddress.IPv4Interface(f"{address}/{mask}")))
    return found


def _matches(name: str, patterns: list) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _address(sockaddr) -> tuple:
    """``(ip_address, scope_id)`` of a peername/sockname tuple, IPv4-mapped addresses unwrapped."""
    host = sockaddr[0].split("%", 1)[0]
    address = ipaddress.ip_address(host)
    scope = sockaddr[3] if len(sockaddr) > 3 else 0
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address, scope


def _proc_hex(address: ipaddress._BaseAddress, port: int) -> list:
    """The ways ``/proc/net/tcp{,6}`` may spell ``address:port`` (32-bit words in host order)."""
    forms = []
    if isinstance(address, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{address}")
        forms.append(f"{int.from_bytes(address.packed, 'little'):08X}:{port:04X}")
    else:
        mapped = address
    words = mapped.packed
    forms.append("".join(f"{int.from_bytes(words[i:i + 4], 'little'):08X}" for i in range(0, 16, 4))
                 + f":{port:04X}")
    return forms


def socket_owner(peername, sockname) -> int | None:
    """The uid owning the local peer socket of the loopback connection ``peername`` →
    ``sockname``, or ``None`` if it cannot be found."""
    try:
        peer, _ = _address(peername)
        local, _ = _address(sockname)
        theirs = set(_proc_hex(peer, int(peername[1])))
        ours = set(_proc_hex(local, int(sockname[1])))
    except (ValueError, IndexError, TypeError):
        return None
    for table in ("/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"):  # this thread's netns
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and fields[1] in theirs and fields[2] in ours:
                        return int(fields[7])
        except OSError:
            continue
    return None


def arrived_on(peername, sockname, patterns: list) -> str | None:
    """Why the connection ``peername`` → ``sockname`` is local (the trusted interface's
    name, ``"lo"`` for loopback from root or this process's user), or ``None`` if it is not.
    Both are socket address tuples as ``transport.get_extra_info`` returns them.
    """
    if not peername or not sockname:
        return None
    try:
        peer, scope = _address(peername)
        local, _ = _address(sockname)
    except (ValueError, IndexError, TypeError, AttributeError):
        return None
    if peer.is_loopback:
        if _matches("lo", patterns) and socket_owner(peername, sockname) in (0, os.geteuid()):
            return "lo"
        return None
    if isinstance(peer, ipaddress.IPv6Address):
        if peer.is_link_local and scope:
            try:
                name = socket.if_indextoname(scope)
            except OSError:
                return None
            if _matches(name, patterns):
                return name
        return None
    for name, interface in ipv4_networks(patterns):
        if local == interface.ip and peer in interface.network:
            return name
    return None

"""Test tooling for the attack tests of both servers (``update_server/tests/test_attacks.py``,
``robot_server/tests/test_security.py``): network namespaces joined by veth pairs (a USB
link, a LAN and a link-local impostor), the connection floods of issue 14 and the
headers of a web page's cross-site requests.

Linux only; the namespaces need root and iproute2 (``ip netns``, ``ip link ... type veth``;
ip-netns(8)).  When they cannot be made, :func:`netlab` raises :class:`unittest.SkipTest`,
which pytest reports as a skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
import unittest
import uuid

CLONE_NEWNET = 0x40000000   # linux/sched.h
ROBOT_USB = "169.254.1.1"   # the robot's address on the USB link (usb0)
ROBOT_LAN = "192.168.77.1"  # the robot's address on the LAN (lan0)
IMPOSTOR = "169.254.7.7"    # a LAN host claiming a link-local address

#: Headers of requests a web page in a lab browser can make (``{port}``: the server's):
#: "simple" requests that need no CORS pre-flight, foreign origins, DNS rebinding (the
#: page's own name now points at the robot, so ``Host`` matches ``Origin``).
CROSS_SITE_HEADERS = [
    {"Content-Type": "text/plain", "Origin": "http://evil.example"},
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Content-Type": "application/json", "Origin": "http://evil.example"},
    {"Content-Type": "application/json", "Origin": "null"},
    {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
    {"Content-Type": "application/json", "Origin": "http://rebind.example:{port}", "Host": "rebind.example:{port}"},
]


def ip(*args, netns: str | None = None) -> None:
    """Run ``ip [-n netns] args...``; ``CalledProcessError`` on failure."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def enter_netns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``ip netns add``), with
    setns(2); threads it starts afterwards are in it too."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def in_netns(name: str, fn, timeout: float = 120.0):
    """Run ``fn()`` in a thread inside network namespace ``name``; its result or exception."""
    result = {}

    def run():
        try:
            enter_netns(name)
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(timeout)
    if "error" in result:
        raise result["error"]
    return result["value"]


@contextlib.contextmanager
def netlab():
    """Namespaces ``{"robot", "usb", "lan"}`` (their names): ``robot`` has usb0
    (:data:`ROBOT_USB`/16) and lan0 (:data:`ROBOT_LAN`/24); ``usb`` is the laptop on the
    USB cable (169.254.9.9/16); ``lan`` is a LAN host (192.168.77.2/24) that also claims
    :data:`IMPOSTOR` with a route to the robot's USB address over the LAN.  Removed on exit."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise unittest.SkipTest("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    names = {role: f"ot2t-{role}-{tag}" for role in ("robot", "usb", "lan")}
    try:
        for name in names.values():
            ip("netns", "add", name)
    except subprocess.CalledProcessError as e:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        raise unittest.SkipTest(f"ip netns unavailable: {e.stderr.decode().strip()}") from None
    try:
        for link, peer, role in (("usb0", "u-host", "usb"), ("lan0", "l-host", "lan")):
            ip("link", "add", link, "netns", names["robot"], "type", "veth", "peer", "name", peer,
               "netns", names[role])
        ip("addr", "add", f"{ROBOT_USB}/16", "dev", "usb0", netns=names["robot"])
        ip("addr", "add", f"{ROBOT_LAN}/24", "dev", "lan0", netns=names["robot"])
        ip("addr", "add", "169.254.9.9/16", "dev", "u-host", netns=names["usb"])
        ip("addr", "add", "192.168.77.2/24", "dev", "l-host", netns=names["lan"])
        ip("addr", "add", f"{IMPOSTOR}/32", "dev", "l-host", netns=names["lan"])
        for role, links in (("robot", ("lo", "usb0", "lan0")), ("usb", ("lo", "u-host")), ("lan", ("lo", "l-host"))):
            for link in links:
                ip("link", "set", link, "up", netns=names[role])
        ip("route", "add", f"{ROBOT_USB}/32", "dev", "l-host", "src", IMPOSTOR, netns=names["lan"])
        yield names
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def many_fds(needed: int = 4096):
    """Raise this process's file limit for a flood of client sockets (``SkipTest`` if the
    hard limit is below ``needed``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise unittest.SkipTest(f"the hard file limit ({hard}) is too low for {needed} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read_head(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """What ``sock`` receives up to the end of an HTTP head (or EOF, or ``timeout`` s)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def ask_to_continue(port: int, path: str, token: str | None, headers: str = "",
                    content_type: str = "application/octet-stream") -> bytes:
    """Send ``POST path`` announcing a 10 GiB body with ``Expect: 100-continue`` (and the
    bearer ``token``, and ``headers``: ``"Name: value\r\n"`` lines) to 127.0.0.1:``port``;
    return the head of the answer, sending no body (RFC 9110, section 10.1.1)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: robot\r\n{auth}{headers}"
                      f"Content-Type: {content_type}\r\nContent-Length: {10 << 30}\r\n"
                      "Expect: 100-continue\r\n\r\n").encode())
        return read_head(sock)


@contextlib.contextmanager
def flood(port: int, count: int = 1100, peers: int = 11):
    """``count`` connections to ``127.0.0.1:port`` from ``peers`` loopback addresses; half
    stay idle, half trickle an unfinished request head (slowloris).  Closed on exit."""
    socks = []
    try:
        for i in range(count):
            s = socket.socket()
            socks.append(s)
            s.bind((f"127.0.0.{2 + i % peers}", 0))
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        time.sleep(0.5)
        for s in socks[::2]:
            try:
                s.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass  # already closed by the server
        yield socks
    finally:
        for s in socks:
            s.close()


def settled(guard, count: int, timeout: float = 10.0) -> dict:
    """The connection guard's stats once it has dealt with ``count`` connections (accepted,
    evicted, refused or timed out), or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        stats = guard.stats()
        if stats["open"] + stats["evicted"] + stats["refused"] + stats["timed_out"] >= count \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def slow_and_idle(port: int) -> tuple:
    """Against a server with 1-second header and idle timeouts: one connection sends a
    request head a byte every 0.2 s, one idles after an answered ``GET /health``.
    Returns ``(first answer, what the slow one got, seconds until it was closed, what the
    idle one got after its answer)``."""
    with socket.create_connection(("127.0.0.1", port)) as slow, \
            socket.create_connection(("127.0.0.1", port)) as idle:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_head(idle)
        started = time.monotonic()
        for byte in b"GET /health HTTP/1.1\r\n":
            try:
                slow.send(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        slow.settimeout(5)
        slow_got = slow.recv(100)
        closed_after = time.monotonic() - started
        idle.settimeout(5)
        rest = b""
        while chunk := idle.recv(4096):
            rest += chunk
        return answer, slow_got, closed_after, rest.split(b"\r\n\r\n", 1)[-1]

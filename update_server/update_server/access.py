"""Who is calling, and is it a browser's cross-site request?  The checks both servers make
before a state-changing request (``docs/security.md``; the update server and the robot
server import this module, so the rules have one source).

Every refusal raises :class:`~update_server.errors.UpdateError` with the codes of
``docs/security.md``: ``cross-origin`` (403), ``unauthorized`` (401), ``bad-interface``
(403), ``unsupported-media-type`` (415), ``payload-too-large`` (413).

Cross-site rules: a browser tells its requests apart with ``Sec-Fetch-Site`` and
``Origin`` (Fetch Metadata, https://www.w3.org/TR/fetch-metadata/; RFC 6454, "The Web
Origin Concept"); the body types an HTML form can send without a CORS pre-flight are
``application/x-www-form-urlencoded``, ``multipart/form-data`` and ``text/plain``
(the Fetch standard's "CORS-safelisted request-header", https://fetch.spec.whatwg.org/).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from . import interfaces
from .errors import UpdateError
from .tokens import TokenStore, bearer_token

JSON_TYPE = "application/json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
OPEN_VIA = "open"
TOKEN_VIA = "token:"


@dataclass
class AccessSettings:
    """The access and connection settings both servers' configs have (their config files
    take these keys; ``docs/security.md``). Counts, and seconds for the timeouts."""

    trusted_interfaces: list = field(default_factory=lambda: ["lo", "usb*"])
    open_access: bool = False        # true: the OT-2's behaviour, no token needed to change
    max_connections: int = 256       # open HTTP connections in all
    max_connections_per_peer: int = 32
    header_timeout: float = 10.0     # s to send a request head
    idle_timeout: float = 60.0       # s a connection may idle between requests

    def access_settings_problem(self) -> str | None:
        """What is wrong with these settings, or None."""
        if not all(isinstance(p, str) and p for p in self.trusted_interfaces):
            return "trusted_interfaces: expected a list of interface name patterns"
        if not 1 <= self.max_connections_per_peer <= self.max_connections:
            return "max_connections_per_peer: expected 1..max_connections"
        for key in ("header_timeout", "idle_timeout"):
            if not 0 < getattr(self, key) <= 3600:
                return f"{key}: expected (0, 3600] seconds"
        return None


def check_origin(headers, host: str | None, own_names) -> None:
    """Refuse (403 ``cross-origin``) a browser's cross-site request: ``Sec-Fetch-Site``
    other than ``same-origin``/``none``, or an ``Origin`` that is not ``http://<Host>``
    with ``Host`` an IP literal, ``localhost`` or one of ``own_names`` (the robot's host
    name and ``<name>.local``).  This also defeats DNS rebinding, whose ``Host`` is a
    foreign name.  ``headers`` is a case-insensitive mapping."""
    site = headers.get("Sec-Fetch-Site")
    if site and site.lower() not in ("same-origin", "none"):
        raise UpdateError("cross-origin", f"cross-site requests are refused (Sec-Fetch-Site: {site[:40]})")
    origin = headers.get("Origin")
    if origin is None:
        return
    parts = urlsplit(origin.strip().lower())
    hostname = parts.hostname or ""
    if parts.scheme != "http" or parts.netloc != (host or "").lower() or not _own_host(hostname, own_names):
        raise UpdateError("cross-origin", f"requests from {origin[:100]!r} are refused")


def _own_host(hostname: str, own_names) -> bool:
    try:
        ipaddress.ip_address(hostname.strip("[]"))
        return True
    except ValueError:
        return hostname == "localhost" or hostname in own_names


def check_body(headers, media: str | None, has_body: bool, length: int | None,
               upload_types: tuple | None, limit: int) -> None:
    """Refuse a body of the wrong type (415 ``unsupported-media-type``) or larger than
    ``limit`` bytes (413 ``payload-too-large``, from ``Content-Length``, before any byte
    is read).  ``media`` is the declared type without parameters (``None``: no
    ``Content-Type``).  An upload endpoint (``upload_types`` given) takes only those
    types; every other endpoint only ``application/json``, and the types an HTML form can
    send are refused even with an empty body, so a browser too old to send ``Origin``
    still cannot post a form here."""
    if headers.get("Content-Type") is None:
        media = None
    if upload_types is not None:
        if media not in upload_types:
            raise UpdateError("unsupported-media-type", f"the body must be sent as {' or '.join(upload_types)}")
    elif (has_body and media != JSON_TYPE) or media in FORM_TYPES:
        raise UpdateError("unsupported-media-type", f"the body must be {JSON_TYPE}")
    if length is not None and length > limit:
        raise UpdateError("payload-too-large", f"the body is larger than {limit} bytes")


def caller(transport, authorization: str | None, trusted_interfaces: list, tokens: TokenStore,
           *, present: bool = False, open_access: bool = False) -> str:
    """How a caller on ``transport`` may make a state-changing request: the trusted
    interface it arrived on (``"lo"``, ``"usb0"``), ``"token:<id>"`` for a valid Bearer
    token, or ``"open"`` (``open_access``).  ``present``: only a trusted interface will do
    (403 ``bad-interface``).  Raises 401 ``unauthorized`` otherwise."""
    interface = interfaces.arrived_on(
        transport.get_extra_info("peername") if transport else None,
        transport.get_extra_info("sockname") if transport else None,
        trusted_interfaces,
    )
    if interface:
        return interface
    if present:
        raise UpdateError("bad-interface", "only from the robot itself or its USB link")
    presented = bearer_token(authorization)
    record = tokens.verify(presented)
    if record:
        return TOKEN_VIA + record["id"]
    if open_access:
        return OPEN_VIA
    if presented:
        raise UpdateError("unauthorized", "the token is not valid (revoked, or from another robot)")
    raise UpdateError("unauthorized", "send 'Authorization: Bearer <token>' (pair with 'ot2 pair'), "
                                      "or connect over the USB link")


def is_trusted_interface(via: str | None) -> bool:
    """Whether a :func:`caller` answer names a trusted interface (not a token, not open mode)."""
    return bool(via) and via != OPEN_VIA and not via.startswith(TOKEN_VIA)

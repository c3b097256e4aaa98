"""Errors and exit statuses of ``ot2``.

Exit statuses (every command):

====  ==================================================================================
 0    success (every robot, or the card)
 1    a robot failed or refused (HTTP error, busy, dropped connection, rollback, ...), or
      flashing failed (write error, read-back mismatch: the card is bad)
 2    usage error or bad local input: arguments, a bundle that fails local
      verification, an image/bmap that does not match, a name/key/setting that the robot
      would refuse; nothing was sent or written
 3    a robot could not be found (unknown mDNS name) or reached (and no robot failed
      otherwise)
 4    ``ot2 flash`` refused the target (regular file, mounted, holds the running system,
      not removable); ``--force`` overrides
 130  interrupted (Ctrl-C)
====  ==================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130

# error codes that mean "could not get to the robot at all"
UNREACHABLE_CODES = {"unknown-robot", "unreachable", "timeout"}


class ClientError(Exception):
    """A failure with a stable ``code`` (kebab-case) and a one-line ``message``.

    Robot-side errors carry the API's own code (``session-already-active``,
    ``bad-signature``, ...) and the HTTP ``status``.
    """

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    @property
    def exit_status(self) -> int:
        return EXIT_UNREACHABLE if self.code in UNREACHABLE_CODES else EXIT_FAILED

    def as_dict(self) -> dict:
        out = {"error": self.code, "message": self.message}
        if self.status is not None:
            out["status"] = self.status
        return out


class UsageError(ClientError):
    """Bad arguments or local input (exit 2)."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)

    @property
    def exit_status(self) -> int:
        return EXIT_USAGE


def combine(statuses) -> int:
    """One exit status for many robots: any failure 1, else any unreachable 3, else 0."""
    statuses = set(statuses)
    if EXIT_FAILED in statuses:
        return EXIT_FAILED
    if EXIT_UNREACHABLE in statuses:
        return EXIT_UNREACHABLE
    return EXIT_OK

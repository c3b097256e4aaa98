"""The one error type the update server raises for anything a client can cause.

Every :class:`UpdateError` has a stable machine-readable ``code`` (kebab-case, part of the
HTTP API) and a human-readable ``message``.  :data:`HTTP_STATUS` maps codes to HTTP status
codes; an unknown code maps to 400.
"""

HTTP_STATUS = {
    # bundle content (all detected before or while streaming)
    "bad-bundle": 400,
    "bad-manifest": 400,
    "unsigned": 400,
    "bad-signature": 400,
    "untrusted-key": 400,
    "incompatible": 400,
    "hash-mismatch": 400,
    "truncated": 400,
    "extra-data": 400,
    "image-too-large": 413,
    # sessions
    "session-already-active": 409,
    "not-ready": 409,
    "file-already-sent": 409,
    "cancelled": 409,
    "session-expired": 409,
    "no-session": 409,
    "unknown-boot-slot": 409,
    "bad-token": 404,
    # requests
    "bad-request": 400,
    "bad-key": 400,
    "bad-name": 400,
    "key-not-found": 404,
    "bad-interface": 403,
    "unauthorized": 401,
    "cross-origin": 403,
    "downgrade": 409,
    "restart-pending": 409,
    "too-many-keys": 409,
    "too-many-tokens": 409,
    "token-not-found": 404,
    "not-found": 404,
    "method-not-allowed": 405,
    "payload-too-large": 413,
    "unsupported-media-type": 415,
    # the machine, not the client
    "slot-unavailable": 503,
    "boot-env-error": 503,
    "write-failed": 503,
    "internal-error": 500,
}


class UpdateError(Exception):
    """An error with a stable ``code`` and a human ``message``.

    ``status`` is the HTTP status the API answers with (see :data:`HTTP_STATUS`).
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    def as_dict(self) -> dict:
        """``{"error": code, "message": message}``, the API's error body."""
        return {"error": self.code, "message": self.message}

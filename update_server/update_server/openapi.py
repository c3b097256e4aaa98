"""The OpenAPI 3 document served at ``GET /openapi.json``."""

from __future__ import annotations

from .errors import HTTP_STATUS
from .install import STAGES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict:
    """Responses for the given error codes, grouped by HTTP status."""
    by_status: dict = {}
    for code in codes:
        by_status.setdefault(str(HTTP_STATUS[code]), []).append(code)
    return {
        status: _json(_ref("Error"), "error: " + ", ".join(names))
        for status, names in by_status.items()
    }


def _op(summary: str, ok_status: str, ok_schema: str, *errors: str, body: dict | None = None,
        params: list | None = None) -> dict:
    op = {
        "summary": summary,
        "responses": {ok_status: _json(_ref(ok_schema), "success"), **_errors(*errors)},
    }
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _json_body(schema: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


_TOKEN = [{"name": "token", "in": "path", "required": True, "schema": {"type": "string"}}]
_TOKEN_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "the token's id (16 hex digits), as GET /server/tokens lists it"}]
_ALLOW_DOWNGRADE = [{"name": "allow_downgrade", "in": "query", "required": False,
                     "schema": {"type": "boolean"},
                     "description": "install a bundle older than the running system"}]
# refusals of every state-changing endpoint (docs/security.md)
_DENIED = ("unauthorized", "bad-interface", "cross-origin", "unsupported-media-type", "payload-too-large")
_FINGERPRINT = [{
    "name": "fingerprint", "in": "path", "required": True,
    "schema": {"type": "string"}, "description": "SHA256:<base64> as ssh-keygen -l prints it",
}]

_SLOT = {
    "type": "object",
    "properties": {
        "device": {"type": ["string", "null"]},
        "state": {"type": "string", "enum": ["good", "trial", "bad", "inactive"]},
        "version": {"type": ["string", "null"]},
        "tries_left": {"type": "integer", "minimum": 0},
        "pending": {"type": "boolean"},
    },
}

_PROVISIONING = {
    "type": ["object", "null"],
    "description": "report of the last first-boot import of robot.toml (null if there was none)",
    "properties": {
        "time": {"type": "string", "format": "date-time"},
        "status": {"type": "string", "enum": ["applied", "partial", "empty", "rejected"]},
        "applied": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "ssh_authorized_keys": {"type": "array", "items": {"type": "string"},
                                        "description": "fingerprints of the keys added"},
                "wifi": {"type": "object", "properties": {
                    "ssid": {"type": "string"},
                    "psk": {"type": "boolean", "description": "a passphrase was given"},
                    "country": {"type": ["string", "null"]},
                }},
                "timezone": {"type": "string"},
            },
        },
        "problems": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "field": {"type": ["string", "null"]},
                "error": {"type": "string"},
                "message": {"type": "string"},
            },
        }},
        "ignored": {"type": "array", "items": {"type": "string"}, "description": "unknown fields"},
        "removed": {"type": "boolean", "description": "robot.toml was deleted from the boot partition"},
    },
}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "enum": sorted(HTTP_STATUS)},
            "message": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["name", "update_server_version", "booted_slot", "slots", "capabilities"],
        "properties": {
            "name": {"type": "string"},
            "hostname": {"type": "string"},
            "version": {"type": ["string", "null"], "description": "system image version"},
            "update_server_version": {"type": "string"},
            "compatible": {"type": "string"},
            "bootId": {"type": "string"},
            "serialNumber": {"type": ["string", "null"],
                             "description": "the robot's serial number (ot2.serial= on the kernel command line)"},
            "booted_slot": {"type": ["string", "null"], "enum": ["A", "B", None]},
            "boot_order": {"type": "array", "items": {"type": "string", "enum": ["A", "B"]}},
            "slots": {"type": "object", "properties": {"A": _SLOT, "B": _SLOT}},
            "rollback": {
                "type": ["object", "null"],
                "properties": {
                    "failed_slot": {"type": "string"},
                    "failed_version": {"type": ["string", "null"]},
                    "booted_slot": {"type": "string"},
                    "time": {"type": "string", "format": "date-time"},
                },
            },
            "capabilities": {"type": "object", "additionalProperties": {"type": "string"}},
            "rollout": {
                "type": ["object", "null"],
                "description": "the rollout server this robot polls (hawkBit's DDI API; null: none)",
                "properties": {
                    "server": {"type": "string"},
                    "controller_id": {"type": "string"},
                    "status": {"type": "string", "description": "idle, poll failed: ..., installing ..."},
                },
            },
            "robotModel": {"type": "string"},
            "provisioning": _PROVISIONING,
        },
    },
    "Status": {
        "type": "object",
        "required": ["stage", "progress", "bytes_written", "total_bytes", "message"],
        "properties": {
            "token": {"type": "string"},
            "stage": {"type": "string", "enum": list(STAGES)},
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "bytes_written": {"type": "integer", "description": "bytes"},
            "total_bytes": {"type": "integer", "description": "bytes"},
            "message": {"type": "string"},
            "error": {"type": "string"},
            "target_slot": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "boot_order": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Cancel": {
        "type": "object",
        "properties": {"cancelled": {"type": "boolean"}, "message": {"type": "string"}},
    },
    "MarkGood": {
        "type": "object",
        "properties": {
            "booted_slot": {"type": "string"},
            "confirmed": {"type": ["string", "null"], "description": "version confirmed"},
            "boot_order": {"type": "array", "items": {"type": "string"}},
            "tries_left": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "Message": {"type": "object", "properties": {"message": {"type": "string"}}},
    "SshKey": {
        "type": "object",
        "properties": {
            "fingerprint": {"type": "string"},
            "type": {"type": "string"},
            "bits": {"type": "integer"},
            "comment": {"type": "string"},
            "key": {"type": "string"},
        },
    },
    "SshKeyList": {
        "type": "object",
        "properties": {"public_keys": {"type": "array", "items": _ref("SshKey")}},
    },
    "AddSshKey": {
        "type": "object",
        "required": ["key"],
        "properties": {"key": {"type": "string", "description": "ssh-ed25519 AAAA... comment"}},
    },
    "Token": {
        "type": "object",
        "properties": {
            "id": {"type": "string"}, "client": {"type": "string"},
            "created": {"type": "string", "format": "date-time"},
            "via": {"type": "string", "enum": ["button", "trusted-interface"]},
            "token": {"type": "string", "description": "only in the answer that issues it"},
        },
    },
    "TokenList": {"type": "object", "properties": {"tokens": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}}},
    "IssueToken": {"type": "object", "required": ["client"], "properties": {"client": {"type": "string"}}},
    "Revoked": {"type": "object", "properties": {"revoked": {"type": "string"}, "message": {"type": "string"}}},
    "Removed": {
        "type": "object",
        "properties": {"removed": {"type": ["integer", "string"]}, "message": {"type": "string"}},
    },
    "Name": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": "1..63 UTF-8 octets"},
            "hostname": {"type": "string"},
        },
    },
}


def document(version: str) -> dict:
    """The OpenAPI 3.1 document for update server ``version``."""
    bundle_body = {
        "required": True,
        "description": "the bundle (see the README), streamed; or multipart with one file part",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    }
    bundle_errors = ("bad-bundle", "bad-manifest", "unsigned", "bad-signature", "untrusted-key",
                     "incompatible", "hash-mismatch", "truncated", "extra-data",
                     "image-too-large", "cancelled", "bad-token", "file-already-sent")
    health = _op("Robot and update server health", "200", "Health")
    paths = {
        "/health": {"get": health},
        "/server/update/health": {"get": health},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI document"}}}},
        "/server/update/begin": {"post": _op(
            "Start an update session", "201", "Status", "session-already-active",
            "unknown-boot-slot", *_DENIED, params=_ALLOW_DOWNGRADE)},
        "/server/update/{token}/file": {"post": _op(
            "Upload the bundle; answers when installed or failed", "200", "Status",
            *bundle_errors, "downgrade", "write-failed", "internal-error", *_DENIED,
            body=bundle_body, params=_TOKEN + _ALLOW_DOWNGRADE)},
        "/server/update/{token}/status": {"get": _op(
            "Progress of a session", "200", "Status", "bad-token", params=_TOKEN)},
        "/server/update/{token}/commit": {"post": _op(
            "Select the written slot for the next boot", "200", "Status", "bad-token",
            "not-ready", *_DENIED, params=_TOKEN)},
        "/server/update/cancel": {"post": _op(
            "Cancel the active session (body {token} unless on a trusted interface)", "200",
            "Cancel", "bad-token", *_DENIED)},
        "/server/update/mark-good": {"post": _op(
            "Mark the booted slot good (confirms a trial boot); trusted interface only", "200",
            "MarkGood", "unknown-boot-slot", *_DENIED)},
        "/server/restart": {"post": _op("Reboot after 1 s", "200", "Message", "restart-pending", *_DENIED)},
        "/server/ssh_keys": {
            "get": _op("List SSH keys", "200", "SshKeyList", *_DENIED),
            "post": _op("Add an SSH key", "201", "SshKey", "bad-key", "too-many-keys",
                        "bad-request", *_DENIED, body=_json_body("AddSshKey")),
            "delete": _op("Remove every SSH key", "200", "Removed", *_DENIED),
        },
        "/server/ssh_keys/{fingerprint}": {"delete": _op(
            "Remove one SSH key", "200", "Removed", "key-not-found", *_DENIED,
            params=_FINGERPRINT)},
        "/server/name": {
            "get": _op("The robot name", "200", "Name"),
            "post": _op("Rename the robot", "200", "Name", "bad-name", "bad-request", *_DENIED,
                        body=_json_body("Name")),
        },
        "/server/tokens": {
            "get": _op("List paired clients' tokens (never the tokens themselves)", "200",
                       "TokenList", *_DENIED),
            "post": _op("Issue a token; trusted interface only", "201", "Token", "too-many-tokens",
                        "bad-request", *_DENIED, body=_json_body("IssueToken")),
        },
        "/server/tokens/{id}": {"delete": _op(
            "Revoke a token", "200", "Revoked", "token-not-found", *_DENIED, params=_TOKEN_ID)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "OT-2 update server", "version": version},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }

"""First-boot provisioning: ``robot.toml`` on the boot partition, imported into ``/data``.

The file (written by ``ot2 flash --name ... --ssh-key ...`` or by hand on the card's
FAT partition, ``/boot/firmware/robot.toml`` on the robot) may hold::

    name = "lab-robot-7"                       # same rules as POST /server/name
    ssh_authorized_keys = [                    # same rules as POST /server/ssh_keys
        "ssh-ed25519 AAAAC3Nza... me@laptop",
    ]
    timezone = "Europe/Berlin"                 # IANA zone name
    [rollout]                                  # a rollout server (hawkBit's DDI API)
    server = "https://hawkbit.lab.example"     # http(s) URL
    tenant = "DEFAULT"                         # optional (DEFAULT)
    controller_id = "robot-7"                  # optional (the board's serial number)
    target_token = "..."                       # or gateway_token; optional
    [wifi]
    ssid = "Lab network"                       # 1..32 octets
    psk = "secret passphrase"                  # 8..63 ASCII characters or 64 hex digits;
                                               # leave out for an open network
    country = "DE"                             # ISO 3166 regulatory domain (optional)

``update-server provision`` (run by ``ot2-provision.service`` early on boot, before the
update server) reads it once: each field is validated on its own; a valid field is
imported (the name into ``data_dir/update-server/name``, keys added to
``data_dir/ssh/authorized_keys`` -- never removing any --, Wi-Fi into
``data_dir/system/wifi.json`` (0600), the time zone into ``data_dir/system/timezone``, the
rollout server into ``data_dir/update-server/rollout.json`` (0600, read by the update
server's configuration));
a bad field, a bad key or an unknown field is reported and skipped.  Then the file is
deleted from the boot partition (it may hold a Wi-Fi secret) and a report (no secrets)
is left in ``data_dir/update-server/provision.json``, which ``/health`` shows as
``provisioning``.  A file that is not TOML is reported and deleted too; nothing in the
data partition is changed by it.  Provisioning never fails the boot.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import tomllib
from pathlib import Path

from .errors import UpdateError
from .name import NameStore, validate_name
from .sshkeys import KeyStore, parse_key
from .state import atomic_write, now

log = logging.getLogger(__name__)

FILE_NAME = "robot.toml"
DEFAULT_BOOT_DIR = "/boot/firmware"
REPORT_NAME = "provision.json"
MAX_FILE_SIZE = 64 * 1024  # bytes
MAX_KEYS = 64
FIELDS = ("name", "ssh_authorized_keys", "wifi", "timezone", "rollout")
WIFI_FIELDS = ("ssid", "psk", "country")
ROLLOUT_FIELDS = ("server", "tenant", "controller_id", "target_token", "gateway_token")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ZONEINFO = "/usr/share/zoneinfo"
_TZ_RE = re.compile(r"^[A-Za-z0-9_+-]{1,32}(/[A-Za-z0-9_+-]{1,32}){0,3}$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")


# ---------------------------------------------------------------------------------------
# validation (shared with the client, ``ot2 flash``)


def _bad(field: str, message: str) -> UpdateError:
    return UpdateError("bad-field", f"{field}: {message}")


def validate_timezone(value, zoneinfo: str = ZONEINFO) -> str:
    """An IANA zone name (``Europe/Berlin``, ``UTC``); checked against ``zoneinfo`` if present."""
    if not isinstance(value, str) or not _TZ_RE.match(value) or ".." in value:
        raise _bad("timezone", f"{str(value)[:64]!r} is not a time zone name like 'Europe/Berlin'")
    if os.path.isdir(zoneinfo) and not os.path.isfile(os.path.join(zoneinfo, value)):
        raise _bad("timezone", f"unknown time zone {value!r}")
    return value


def _check_table(value, name: str, fields, shape: str) -> None:
    """UpdateError ``bad-field`` unless ``value`` is a table of only ``fields``."""
    if not isinstance(value, dict):
        raise _bad(name, f"must be a table with {shape}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _bad(name, f"unknown field(s) {', '.join(unknown)}")


def validate_wifi(value) -> dict:
    """``{ssid, psk?, country?}``; raises UpdateError ``bad-field``."""
    _check_table(value, "wifi", WIFI_FIELDS, "ssid (and psk, country)")
    ssid = value.get("ssid")
    if not isinstance(ssid, str) or not 1 <= len(ssid.encode("utf-8", "surrogatepass")) <= 32:
        raise _bad("wifi.ssid", "must be 1 to 32 octets")
    if not ssid.isprintable():
        raise _bad("wifi.ssid", "must be printable")
    out = {"ssid": ssid}
    if "psk" in value:
        psk = value["psk"]
        ok = isinstance(psk, str) and (
            _HEX64_RE.match(psk) or (8 <= len(psk) <= 63 and psk.isascii() and psk.isprintable())
        )
        if not ok:
            raise _bad("wifi.psk", "must be 8 to 63 printable ASCII characters or 64 hex digits")
        out["psk"] = psk
    if "country" in value:
        country = value["country"]
        if not isinstance(country, str) or not re.fullmatch(r"[A-Z]{2}", country):
            raise _bad("wifi.country", "must be two capital letters (ISO 3166), e.g. 'DE'")
        out["country"] = country
    return out


def validate_rollout(value) -> dict:
    """``{server, tenant?, controller_id?, target_token? | gateway_token?}`` as the update
    server's ``ddi_*`` settings; raises UpdateError ``bad-field``."""
    from urllib.parse import urlsplit

    _check_table(value, "rollout", ROLLOUT_FIELDS, "server (and tenant, controller_id, a token)")
    server = value.get("server")
    url = urlsplit(server) if isinstance(server, str) and server.isprintable() and " " not in server else None
    if url is None or url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise _bad("rollout.server", "must be an http:// or https:// URL without query")
    out = {"ddi_url": server}
    for field, key in (("tenant", "ddi_tenant"), ("controller_id", "ddi_controller_id")):
        if field in value:
            if not isinstance(value[field], str) or not _ID_RE.match(value[field]):
                raise _bad(f"rollout.{field}", "must be 1 to 64 letters, digits, '.', '_' or '-'")
            out[key] = value[field]
    tokens = [t for t in ("target_token", "gateway_token") if t in value]
    if len(tokens) > 1:
        raise _bad("rollout", "give target_token or gateway_token, not both")
    for field in tokens:
        token = value[field]
        if not isinstance(token, str) or not 1 <= len(token) <= 256 or not token.isascii() \
                or not token.isprintable() or " " in token:
            raise _bad(f"rollout.{field}", "must be 1 to 256 printable ASCII characters without spaces")
        out[f"ddi_{field}"] = token
    return out


def _key_lines(value) -> list:
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise _bad("ssh_authorized_keys", "must be a list of key lines")


def check(data: dict) -> tuple:
    """Validate every field on its own: ``(values, problems, unknown)``.

    ``values`` holds what passed (``ssh_authorized_keys`` as parsed :class:`SshKey`);
    ``problems`` is ``[{field, error, message}]``; ``unknown`` the unknown field names.
    """
    values, problems = {}, []

    def problem(field, e):
        problems.append({"field": field, "error": e.code, "message": e.message})

    unknown = sorted(k for k in data if k not in FIELDS)
    if "name" in data:
        try:
            values["name"] = validate_name(data["name"])
        except UpdateError as e:
            problem("name", e)
    if "ssh_authorized_keys" in data:
        try:
            lines = _key_lines(data["ssh_authorized_keys"])
            if len(lines) > MAX_KEYS:
                raise _bad("ssh_authorized_keys", f"at most {MAX_KEYS} keys")
            keys = []
            for i, line in enumerate(lines):
                try:
                    keys.append(parse_key(line))
                except UpdateError as e:
                    problem(f"ssh_authorized_keys[{i}]", e)
            if keys:
                values["ssh_authorized_keys"] = keys
        except UpdateError as e:
            problem("ssh_authorized_keys", e)
    if "wifi" in data:
        try:
            values["wifi"] = validate_wifi(data["wifi"])
        except UpdateError as e:
            problem(e.message.split(":", 1)[0], e)
    if "timezone" in data:
        try:
            values["timezone"] = validate_timezone(data["timezone"])
        except UpdateError as e:
            problem("timezone", e)
    if "rollout" in data:
        try:
            values["rollout"] = validate_rollout(data["rollout"])
        except UpdateError as e:
            problem(e.message.split(":", 1)[0], e)
    return values, problems, unknown


def parse(raw: bytes) -> dict:
    """The file's TOML table; UpdateError ``bad-file`` if too large, not UTF-8 or not TOML."""
    if len(raw) > MAX_FILE_SIZE:
        raise UpdateError("bad-file", f"{FILE_NAME} is larger than {MAX_FILE_SIZE} bytes")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UpdateError("bad-file", f"{FILE_NAME} is not UTF-8: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UpdateError("bad-file", f"{FILE_NAME} is not TOML: {e}") from None


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F):
            out.append(ch)
        else:
            out.append(f"\\u{ord(ch):04X}")
    return '"' + "".join(out) + '"'


def render(name=None, ssh_keys=(), wifi=None, timezone=None, rollout=None) -> str:
    """A ``robot.toml`` for these settings; UpdateError (``bad-name``, ``bad-key``,
    ``bad-field``) for anything the robot would refuse."""
    data = {}
    if name is not None:
        data["name"] = name
    if ssh_keys:
        data["ssh_authorized_keys"] = list(ssh_keys)
    if wifi is not None:
        data["wifi"] = {k: v for k, v in wifi.items() if v is not None}
    if timezone is not None:
        data["timezone"] = timezone
    if rollout is not None:
        data["rollout"] = {k: v for k, v in rollout.items() if v is not None}
    values, problems, _ = check(data)
    if problems:
        p = problems[0]
        raise UpdateError(p["error"], p["message"] if p["message"].startswith(p["field"])
                          else f"{p['field']}: {p['message']}")
    lines = ["# Read once by the robot on its next boot, imported into /data, then deleted.",
             "# Fields: name, ssh_authorized_keys, timezone, [wifi] ssid/psk/country,",
             "# [rollout] server/tenant/controller_id/target_token/gateway_token."]
    if "name" in values:
        lines.append(f"name = {_toml_string(values['name'])}")
    if "ssh_authorized_keys" in values:
        lines.append("ssh_authorized_keys = [")
        lines += [f"    {_toml_string(k.line)}," for k in values["ssh_authorized_keys"]]
        lines.append("]")
    if "timezone" in values:
        lines.append(f"timezone = {_toml_string(values['timezone'])}")
    if "wifi" in values:
        lines.append("")
        lines.append("[wifi]")
        lines += [f"{k} = {_toml_string(v)}" for k, v in values["wifi"].items()]
    if "rollout" in values:
        lines += ["", "[rollout]"]
        lines += [f"{k} = {_toml_string(v)}" for k, v in data["rollout"].items()]
    text = "\n".join(lines) + "\n"
    assert check(parse(text.encode()))[1] == []  # never write what the robot would refuse
    return text


# ---------------------------------------------------------------------------------------
# import on the robot


def report_path(config) -> Path:
    return Path(config.state_dir) / REPORT_NAME


def read_report(config) -> dict | None:
    """The last provisioning report, or ``None``."""
    try:
        data = json.loads(report_path(config).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove(path: Path, boot_mount: str) -> str | None:
    """Delete ``path`` (remounting ``boot_mount`` rw around it if set); error text or None."""
    remounted = False
    try:
        if boot_mount:
            subprocess.run(["mount", "-o", "remount,rw", boot_mount], check=True,
                           capture_output=True, timeout=30)
            remounted = True
        path.unlink()
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return None
    except FileNotFoundError:
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    finally:
        if remounted:
            subprocess.run(["mount", "-o", "remount,ro", boot_mount], capture_output=True, timeout=30)


def _apply(config, values: dict, problems: list) -> dict:
    applied = {}
    system = Path(config.data_dir) / "system"
    if "name" in values:
        try:
            applied["name"] = NameStore(config.state_dir, config.machine_id_file).set(values["name"])
        except (OSError, UpdateError) as e:
            problems.append({"field": "name", "error": "write-failed", "message": str(e)})
    if "ssh_authorized_keys" in values:
        store = KeyStore(config.ssh_dir)
        added = []
        for key in values["ssh_authorized_keys"]:
            try:
                store.add(key.line)
                added.append(key.fingerprint)
            except (OSError, UpdateError) as e:
                problems.append({"field": "ssh_authorized_keys", "error": "write-failed", "message": str(e)})
        if added:
            applied["ssh_authorized_keys"] = added
    if "wifi" in values:
        try:
            system.mkdir(parents=True, exist_ok=True)
            atomic_write(system / "wifi.json", (json.dumps(values["wifi"], indent=2) + "\n").encode(), mode=0o600)
            applied["wifi"] = {"ssid": values["wifi"]["ssid"], "psk": "psk" in values["wifi"],
                               "country": values["wifi"].get("country")}
        except OSError as e:
            problems.append({"field": "wifi", "error": "write-failed", "message": str(e)})
    if "timezone" in values:
        try:
            system.mkdir(parents=True, exist_ok=True)
            atomic_write(system / "timezone", (values["timezone"] + "\n").encode())
            applied["timezone"] = values["timezone"]
        except OSError as e:
            problems.append({"field": "timezone", "error": "write-failed", "message": str(e)})
    if "rollout" in values:
        rollout = values["rollout"]
        try:
            Path(config.state_dir).mkdir(parents=True, exist_ok=True)
            atomic_write(config.rollout_file,
                         (json.dumps(rollout, indent=2) + "\n").encode(), mode=0o600)
            applied["rollout"] = {"server": rollout["ddi_url"],
                                  "token": "ddi_target_token" in rollout or "ddi_gateway_token" in rollout}
        except OSError as e:
            problems.append({"field": "rollout", "error": "write-failed", "message": str(e)})
    return applied


def run(config, boot_dir: str = DEFAULT_BOOT_DIR) -> dict | None:
    """Import ``boot_dir/robot.toml`` if there is one; returns the report (or ``None``)."""
    path = Path(boot_dir) / FILE_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raw, read_error = None, str(e)
    report = {"time": now(), "file": str(path), "sha256": None, "status": "rejected",
              "applied": {}, "problems": [], "ignored": [], "removed": False}
    if raw is None:
        report["problems"].append({"field": None, "error": "bad-file", "message": read_error})
    else:
        report["sha256"] = hashlib.sha256(raw).hexdigest()
        previous = read_report(config)
        if previous and previous.get("sha256") == report["sha256"] and not previous.get("removed"):
            # imported on an earlier boot but could not be deleted: only retry the delete
            report = dict(previous)
        else:
            try:
                values, problems, unknown = check(parse(raw))
                report["problems"] = problems
                report["ignored"] = unknown
                for field in unknown:
                    problems.append({"field": field, "error": "unknown-field",
                                     "message": f"unknown field {field!r} ignored"})
                report["applied"] = _apply(config, values, problems)
                if report["applied"]:
                    report["status"] = "partial" if problems else "applied"
                elif not problems:
                    report["status"] = "empty"
            except UpdateError as e:
                report["problems"].append({"field": None, "error": e.code, "message": e.message})
    error = _remove(path, config.boot_mount)
    report["removed"] = error is None
    if error:
        report["problems"].append({"field": None, "error": "not-removed",
                                   "message": f"could not delete {path}: {error}"})
    try:
        Path(config.state_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(report_path(config), (json.dumps(report, indent=2) + "\n").encode())
    except OSError as e:
        log.error("cannot write the provisioning report: %s", e)
    for p in report["problems"]:
        log.warning("provisioning: %s: %s", p["field"] or FILE_NAME, p["message"])
    log.info("provisioning from %s: %s (%s)", path, report["status"],
             ", ".join(report["applied"]) or "nothing applied")
    return report


def health_summary(config) -> dict | None:
    """What ``/health`` shows as ``provisioning`` (the report without the file hash)."""
    report = read_report(config)
    if report is None:
        return None
    return {k: report.get(k) for k in ("time", "status", "applied", "problems", "ignored", "removed")}

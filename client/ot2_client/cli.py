"""``ot2``: the command line.  See ``client/README.md`` and :mod:`ot2_client.errors`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from . import __version__
from .errors import (EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ClientError, UsageError,
                     combine)
from .targets import UPDATE_SERVER_PORT


# ---------------------------------------------------------------------------------------
# output


class Out:
    """Where results go: JSON on stdout (``--json``) or rich tables; errors on stderr."""

    def __init__(self, as_json: bool, progress: bool | None):
        from rich.console import Console

        self.json = as_json
        self.console = Console(highlight=False)
        if not self.console.is_terminal:  # piped: no folding of addresses and reasons
            self.console.width = 200
        self.err = Console(stderr=True, highlight=False)
        self.progress = (not as_json and self.err.is_terminal) if progress is None else progress

    def emit(self, data) -> None:
        print(json.dumps(data, indent=2, sort_keys=False))

    def error(self, text: str) -> None:
        self.err.print(f"ot2: error: {text}", markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        if not self.json:
            self.err.print(text, markup=False, highlight=False, soft_wrap=True)

    def table(self, title, columns, rows) -> None:
        from rich.table import Table

        if title:
            self.console.print(title, markup=False)
        t = Table()
        for c in columns:
            t.add_column(c, overflow="fold")
        for row in rows:
            t.add_row(*["" if v is None else str(v) for v in row])
        self.console.print(t)


def _fail(out: Out, robot: str | None, e: ClientError) -> int:
    if out.json:
        out.emit({"robot": robot, "ok": False, **e.as_dict()} if robot else {"ok": False, **e.as_dict()})
    else:
        out.error(f"{robot}: {e.code}: {e.message}" if robot else f"{e.code}: {e.message}")
    return e.exit_status


# ---------------------------------------------------------------------------------------
# robot commands


async def _with_robot(args, spec: str, fn):
    """Resolve ``spec``, open a session, run ``fn(robot)``."""
    import aiohttp

    from .credentials import token_for
    from .robot import Robot
    from .targets import resolve

    target = await resolve(spec, args.port, args.mdns_timeout)
    async with aiohttp.ClientSession() as session:
        return await fn(Robot(session, target, args.timeout, token_for(spec, target.address)))


def _run(coro):
    return asyncio.run(coro)


def cmd_status(args, out: Out) -> int:
    async def one(spec):
        try:
            async def get(robot):
                return robot.target.address, await robot.health()
            address, health = await _with_robot(args, spec, get)
            return {"robot": spec, "address": address, "ok": True, "health": health}, EXIT_OK
        except ClientError as e:
            return {"robot": spec, "ok": False, **e.as_dict()}, e.exit_status

    async def all_():
        return await asyncio.gather(*(one(s) for s in args.robots))

    results = _run(all_())
    status = combine(s for _, s in results)
    if out.json:
        out.emit([r for r, _ in results])
        return status
    rows = {k: [] for k in ("address", "name", "version", "compatible", "booted slot", "boot order",
                            "slot A", "slot B", "rollback", "provisioning", "update server")}
    for r, _ in results:
        h = r.get("health", {})
        if not r["ok"]:
            for k in rows:
                rows[k].append("")
            rows["address"][-1] = r.get("address", "")
            rows["name"][-1] = f"{r['error']}: {r['message']}"
            continue
        rows["address"].append(r["address"])
        rows["name"].append(h.get("name"))
        rows["version"].append(h.get("version"))
        rows["compatible"].append(h.get("compatible"))
        rows["booted slot"].append(h.get("booted_slot"))
        rows["boot order"].append(" ".join(h.get("boot_order") or []) if isinstance(h.get("boot_order"), list) else h.get("boot_order"))
        for slot in "AB":
            s = (h.get("slots") or {}).get(slot) or {}
            rows[f"slot {slot}"].append(f"{s.get('state', '?')} {s.get('version') or ''} ({s.get('tries_left', '?')} tries)")
        rb = h.get("rollback")
        rows["rollback"].append(f"from {rb.get('failed_slot')} ({rb.get('failed_version')})" if isinstance(rb, dict) else "-")
        pv = h.get("provisioning")
        rows["provisioning"].append(pv.get("status") if isinstance(pv, dict) else "-")
        rows["update server"].append(h.get("update_server_version"))
    out.table(None, [""] + [r["robot"] for r, _ in results], [[k] + v for k, v in rows.items()])
    for r, _ in results:
        if not r["ok"]:
            out.error(f"{r['robot']}: {r['error']}: {r['message']}")
    return status


def cmd_discover(args, out: Out) -> int:
    import aiohttp

    from .robot import Robot
    from .targets import Target, browse

    async def run():
        adverts = await browse(args.wait)
        async with aiohttp.ClientSession() as session:
            async def health(ad):
                for address in ad.addresses:
                    robot = Robot(session, Target(ad.name, address, args.port), 5)
                    try:
                        return address, await robot.health()
                    except ClientError:
                        continue
                return (ad.addresses[0] if ad.addresses else None), None
            healths = await asyncio.gather(*(health(a) for a in adverts))
        return list(zip(adverts, healths))

    try:
        found = _run(run())
    except ClientError as e:
        return _fail(out, None, e)
    items = []
    for ad, (address, h) in found:
        h = h or {}
        items.append({"name": ad.name, "address": address, "addresses": ad.addresses,
                      "robotModel": ad.properties.get("robotModel"), "version": h.get("version"),
                      "booted_slot": h.get("booted_slot"), "hostname": h.get("hostname"),
                      "reachable": bool(h)})
    if out.json:
        out.emit(items)
    else:
        out.table(f"{len(items)} robot(s) found", ["name", "address", "version", "booted slot", "model"],
                  [[i["name"], i["address"], i["version"] or "(no update server)", i["booted_slot"],
                    i["robotModel"]] for i in items])
    return EXIT_OK


def cmd_push(args, out: Out) -> int:
    from .bundlecheck import default_keyring, verify_bundle
    from .push import PushOptions, Reporter, RichReporter, exit_status, push

    keyring = args.keyring or default_keyring()
    try:
        info = verify_bundle(args.bundle, keyring)
    except UsageError as e:
        return _fail(out, None, e)
    out.note(f"{args.bundle}: {info.compatible} {info.version}, {info.size / 1e6:.1f} MB, "
             + (f"signed by trusted key {info.key_id[:16]}…" if info.signature_checked
                else f"signature by {info.key_id[:16]}… not checked locally (no keyring; the robot checks it)"))
    opts = PushOptions(jobs=args.jobs, restart=args.restart, wait_timeout=args.wait_timeout,
                       poll_interval=args.poll_interval, port=args.port,
                       mdns_timeout=args.mdns_timeout, request_timeout=args.timeout,
                       allow_downgrade=args.allow_downgrade)
    if out.progress:
        with RichReporter(console=out.err) as reporter:
            results = _run(push(args.robots, info, opts, reporter))
    else:
        results = _run(push(args.robots, info, opts, Reporter()))
    status = exit_status(results)
    if out.json:
        out.emit({"bundle": info.as_dict(), "ok": status == EXIT_OK, "results": [r.as_dict() for r in results]})
        return status
    out.table(f"push {info.version}: {sum(r.ok for r in results)}/{len(results)} succeeded",
              ["robot", "address", "result", "from", "to", "MB/s", "time", "reason"],
              [[r.robot, r.address, "ok" if r.ok else f"FAILED ({r.stage})", r.old_version,
                r.new_version if r.ok else "", f"{r.mb_per_s:.1f}" if r.bytes_sent else "",
                f"{r.seconds:.1f} s", r.message if r.ok else f"{r.error}: {r.message}"] for r in results])
    for r in results:
        if not r.ok:
            out.error(f"{r.robot}: {r.error}: {r.message}")
    return status


def _read_key_arg(text: str | None) -> str:
    from update_server.errors import UpdateError
    from update_server.sshkeys import parse_key

    if text is None:
        for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
            p = Path("~/.ssh").expanduser() / name
            if p.exists():
                text = str(p)
                break
        else:
            raise UsageError("bad-key", "no key given and none in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub)")
    line = text
    if not text.startswith(("ssh-", "ecdsa-")):
        try:
            line = Path(text).expanduser().read_text().strip()
        except OSError as e:
            raise UsageError("bad-key", f"{text}: {e.strerror or e}") from None
    try:
        return parse_key(line).line
    except UpdateError as e:
        raise UsageError(e.code, e.message) from None


def _emit_list(out: Out, robot: str, field: str, items: list, noun: str, columns: list) -> None:
    """A robot's list (keys, tokens): JSON ``{robot, ok, field: items}`` or a table."""
    if out.json:
        out.emit({"robot": robot, "ok": True, field: items})
    else:
        out.table(f"{robot}: {len(items)} {noun}(s)", columns, [[i.get(c) for c in columns] for i in items])


def _emit_result(out: Out, robot: str, result: dict, text: str) -> None:
    """A robot's answer to a change: JSON ``{robot, ok, **result}`` or ``ROBOT: text``."""
    if out.json:
        out.emit({"robot": robot, "ok": True, **result})
    else:
        out.console.print(f"{robot}: {text}", markup=False)


def cmd_keys(args, out: Out) -> int:
    try:
        if args.keys_command == "add":
            key = _read_key_arg(args.key)
            result = _run(_with_robot(args, args.robot, lambda r: r.add_key(key)))
            if out.json:
                out.emit({"robot": args.robot, "ok": True, **result})
            else:
                out.console.print(f"{args.robot}: {result.get('message')}: {result.get('fingerprint')} "
                                  f"{result.get('comment', '')}", markup=False)
        elif args.keys_command == "list":
            keys = _run(_with_robot(args, args.robot, lambda r: r.keys()))
            _emit_list(out, args.robot, "public_keys", keys, "key", ["fingerprint", "type", "bits", "comment"])
        else:
            if args.all:
                result = _run(_with_robot(args, args.robot, lambda r: r.clear_keys()))
            elif args.fingerprint:
                result = _run(_with_robot(args, args.robot, lambda r: r.remove_key(args.fingerprint)))
            else:
                raise UsageError("bad-request", "give a FINGERPRINT or --all")
            _emit_result(out, args.robot, result, str(result.get("message")))
        return EXIT_OK
    except ClientError as e:
        return _fail(out, args.robot, e)


def cmd_name(args, out: Out) -> int:
    from update_server.errors import UpdateError
    from update_server.name import validate_name

    try:
        if args.new_name is not None:
            try:
                validate_name(args.new_name)
            except UpdateError as e:
                raise UsageError(e.code, e.message) from None
            result = _run(_with_robot(args, args.robot, lambda r: r.set_name(args.new_name)))
        else:
            result = _run(_with_robot(args, args.robot, lambda r: r.name()))
    except ClientError as e:
        return _fail(out, args.robot, e)
    if out.json:
        out.emit({"robot": args.robot, "ok": True, **result})
    else:
        out.console.print(f"{result.get('name')} (hostname {result.get('hostname')})", markup=False)
    return EXIT_OK


def cmd_restart(args, out: Out) -> int:
    from .push import PushOptions, _wait_back

    opts = PushOptions(wait_timeout=args.wait_timeout, poll_interval=args.poll_interval,
                       request_timeout=args.timeout)

    async def one(spec):
        async def go(robot):
            before = await robot.health()
            await robot.restart()
            if not args.wait:
                return {"robot": spec, "ok": True, "message": "restarting"}
            after = await _wait_back(robot, before.get("bootId"), "", opts)
            return {"robot": spec, "ok": True, "message": "back", "version": after.get("version"),
                    "booted_slot": after.get("booted_slot")}
        try:
            return await _with_robot(args, spec, go), EXIT_OK
        except ClientError as e:
            return {"robot": spec, "ok": False, **e.as_dict()}, e.exit_status

    async def all_():
        return await asyncio.gather(*(one(s) for s in args.robots))

    results = _run(all_())
    if out.json:
        out.emit([r for r, _ in results])
    else:
        for r, _ in results:
            if r["ok"]:
                extra = f" on {r['version']} (slot {r['booted_slot']})" if "version" in r else ""
                out.console.print(f"{r['robot']}: {r['message']}{extra}", markup=False)
            else:
                out.error(f"{r['robot']}: {r['error']}: {r['message']}")
    return combine(s for _, s in results)


def cmd_pair(args, out: Out) -> int:
    import socket

    import aiohttp

    from .credentials import remember
    from .pairing import pair
    from .robot import Robot
    from .targets import resolve

    label = args.client or f"ot2 on {socket.gethostname()}"

    async def go():
        target = await resolve(args.robot, args.port, args.mdns_timeout)
        async with aiohttp.ClientSession() as session:
            issued = await pair(session, target, label, args.robot_port, args.wait, note=out.note)
            try:
                health = await Robot(session, target, args.timeout).health()
            except ClientError:
                health = {}
        return target, issued, health

    try:
        target, issued, health = _run(go())
    except ClientError as e:
        return _fail(out, args.robot, e)
    path = remember(args.robot, issued["token"], issued["id"], target.address, health.get("name"))
    if out.json:
        out.emit({"robot": args.robot, "ok": True, "id": issued["id"], "via": issued["via"], "file": str(path)})
    else:
        out.console.print(f"{args.robot}: paired ({issued['via']}), token {issued['id']} kept in {path}",
                          markup=False)
    return EXIT_OK


def cmd_tokens(args, out: Out) -> int:
    from .credentials import forget_id

    try:
        if args.tokens_command == "list":
            tokens = _run(_with_robot(args, args.robot, lambda r: r.tokens()))
            _emit_list(out, args.robot, "tokens", tokens, "token", ["id", "client", "created", "via"])
        else:
            result = _run(_with_robot(args, args.robot, lambda r: r.revoke_token(args.id)))
            forget_id(args.id)
            _emit_result(out, args.robot, result, f"{result.get('message')}: {args.id}")
        return EXIT_OK
    except ClientError as e:
        return _fail(out, args.robot, e)


def cmd_flash(args, out: Out) -> int:
    from .flash import flash_command

    return flash_command(args, out)


# ---------------------------------------------------------------------------------------
# parser


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    common.add_argument("--json", action="store_true", default=S, help="machine-readable output on stdout")
    common.add_argument("--port", type=int, default=S,
                        help=f"update server port when ROBOT has none (default {UPDATE_SERVER_PORT})")
    common.add_argument("--timeout", type=float, default=S, help="seconds per HTTP request (default 30)")
    common.add_argument("--mdns-timeout", dest="mdns_timeout", type=float, default=S,
                        help="seconds to wait for an mDNS answer when resolving a name (default 3)")
    common.add_argument("--progress", action=argparse.BooleanOptionalAction, default=S,
                        help="progress bars on stderr (default: when stderr is a terminal)")

    p = argparse.ArgumentParser(
        prog="ot2", parents=[common],
        description="Manage OT-2 robots: discover, status, push updates, SSH keys, names, SD cards. "
                    "ROBOT is a robot name (mDNS), a host, or host:port.",
        epilog="exit status: 0 ok, 1 a robot (or the card) failed, 2 usage or bad local input, "
               "3 robot not found or unreachable, 4 flash target refused (see --force), 130 interrupted",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("discover", parents=[common], help="robots advertised over mDNS")
    d.add_argument("--wait", type=float, default=3.0, help="seconds to listen (default 3)")
    d.set_defaults(func=cmd_discover)

    s = sub.add_parser("status", parents=[common], help="/health of each robot, side by side")
    s.add_argument("robots", nargs="+", metavar="ROBOT")
    s.set_defaults(func=cmd_status)

    pu = sub.add_parser("push", parents=[common], help="verify a bundle, then install it on every robot")
    pu.add_argument("bundle", metavar="BUNDLE")
    pu.add_argument("robots", nargs="+", metavar="ROBOT")
    pu.add_argument("--keyring", help="directory of trusted *.pem keys for the local signature check "
                                      "(default $OT2_KEYRING or ~/.config/ot2/keyring)")
    pu.add_argument("-j", "--jobs", type=int, default=4, help="robots updated at once (default 4)")
    pu.add_argument("--restart", action="store_true",
                    help="restart each robot after the commit and wait until it runs the new version")
    pu.add_argument("--wait-timeout", dest="wait_timeout", type=float, default=900.0,
                    help="seconds to wait for a restarted robot (default 900)")
    pu.add_argument("--poll-interval", dest="poll_interval", type=float, default=2.0, help=S)
    pu.add_argument("--allow-downgrade", dest="allow_downgrade", action="store_true",
                    help="install the bundle even if it is older than the robot's system")
    pu.set_defaults(func=cmd_push)

    pa = sub.add_parser("pair", parents=[common],
                        help="get a token from a robot (USB cable: at once; else press its front button)")
    pa.add_argument("robot", metavar="ROBOT")
    pa.add_argument("--client", help="label the robot lists the token under (default 'ot2 on <host>')")
    pa.add_argument("--robot-port", dest="robot_port", type=int, default=31950,
                    help="the robot server's port, for the button pairing (default 31950)")
    pa.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the button (default 60)")
    pa.set_defaults(func=cmd_pair)

    t = sub.add_parser("tokens", help="paired clients' tokens of a robot")
    ts = t.add_subparsers(dest="tokens_command", metavar="list|revoke", required=True)
    tl = ts.add_parser("list", parents=[common], help="list the tokens (ids and labels)")
    tl.add_argument("robot", metavar="ROBOT")
    tr = ts.add_parser("revoke", parents=[common], help="revoke a token by id")
    tr.add_argument("robot", metavar="ROBOT")
    tr.add_argument("id", metavar="ID")
    t.set_defaults(func=cmd_tokens)

    k = sub.add_parser("keys", help="SSH keys of a robot")
    ks = k.add_subparsers(dest="keys_command", metavar="add|list|rm", required=True)
    ka = ks.add_parser("add", parents=[common], help="add a public key (file or key line; default ~/.ssh/id_*.pub)")
    ka.add_argument("robot", metavar="ROBOT")
    ka.add_argument("key", nargs="?", metavar="KEY", help="public key file or 'ssh-ed25519 AAAA... comment'")
    kl = ks.add_parser("list", parents=[common], help="list the keys")
    kl.add_argument("robot", metavar="ROBOT")
    kr = ks.add_parser("rm", parents=[common], help="remove a key by fingerprint (or --all)")
    kr.add_argument("robot", metavar="ROBOT")
    kr.add_argument("fingerprint", nargs="?", metavar="FINGERPRINT", help="SHA256:...")
    kr.add_argument("--all", action="store_true", help="remove every key")
    k.set_defaults(func=cmd_keys)

    n = sub.add_parser("name", parents=[common], help="show or set the robot's name")
    n.add_argument("robot", metavar="ROBOT")
    n.add_argument("new_name", nargs="?", metavar="NEW")
    n.set_defaults(func=cmd_name)

    r = sub.add_parser("restart", parents=[common], help="restart robots")
    r.add_argument("robots", nargs="+", metavar="ROBOT")
    r.add_argument("--wait", action="store_true", help="wait until each robot is back (new boot id)")
    r.add_argument("--wait-timeout", dest="wait_timeout", type=float, default=900.0)
    r.add_argument("--poll-interval", dest="poll_interval", type=float, default=2.0, help=S)
    r.set_defaults(func=cmd_restart)

    f = sub.add_parser("flash", parents=[common], help="write an image to an SD card, verify it, provision it")
    f.add_argument("image", metavar="IMAGE")
    f.add_argument("device", metavar="DEVICE")
    f.add_argument("--bmap", help="block map (default IMAGE.bmap or IMAGE with .bmap suffix)")
    f.add_argument("--no-bmap", dest="no_bmap", action="store_true", help="write the whole image")
    f.add_argument("--no-bmaptool", dest="no_bmaptool", action="store_true",
                   help="use the built-in writer even when bmaptool is installed")
    f.add_argument("--no-verify", dest="no_verify", action="store_true", help="skip the read-back check")
    f.add_argument("--force", action="store_true",
                   help="write to a regular file, a mounted, system or non-removable device")
    f.add_argument("--name", help="robot name (robot.toml)")
    f.add_argument("--ssh-key", dest="ssh_key", action="append", metavar="FILE",
                   help="public key file to authorize (repeat)")
    f.add_argument("--wifi-ssid", dest="wifi_ssid")
    f.add_argument("--wifi-psk", dest="wifi_psk")
    f.add_argument("--wifi-country", dest="wifi_country", help="two-letter regulatory domain")
    f.add_argument("--timezone", help="IANA time zone, e.g. Europe/Berlin")
    f.add_argument("--rollout-server", dest="rollout_server", metavar="URL",
                   help="a rollout server the robot polls for updates (hawkBit's DDI API: hawkBit, gooseBit)")
    f.add_argument("--rollout-tenant", dest="rollout_tenant", help="its tenant (default DEFAULT)")
    f.add_argument("--rollout-id", dest="rollout_id", help="the robot's controller id (default: its serial number)")
    f.add_argument("--rollout-token", dest="rollout_token", help="the robot's target security token")
    f.set_defaults(func=cmd_flash)
    return p


DEFAULTS = {"json": False, "port": UPDATE_SERVER_PORT, "timeout": 30.0, "mdns_timeout": 3.0, "progress": None}


def main(argv: list | None = None) -> int:
    """Entry point of ``ot2``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    for k, v in DEFAULTS.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = Out(args.json, args.progress)
    try:
        return args.func(args, out)
    except UsageError as e:
        return _fail(out, getattr(args, "robot", None), e)
    except KeyboardInterrupt:
        out.error("interrupted")
        return EXIT_INTERRUPTED

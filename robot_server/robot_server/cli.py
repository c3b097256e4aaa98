"""``robot-server`` command line (also ``python -m robot_server``)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import __version__
from .config import DEFAULT_PATH, ConfigError, load
from .owner import HardwareLock, OwnerError
from .server import RobotServer

log = logging.getLogger("robot_server")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="robot-server",
                                description="OT-2 robot server: motor board, GPIO, HTTP API, TCP bridge")
    p.add_argument("--config", help=f"TOML config file (default {DEFAULT_PATH}, optional)")
    p.add_argument("--port", type=int, help="HTTP port (overrides the config)")
    p.add_argument("--bridge-port", type=int, help="raw TCP bridge port (0: any free port)")
    p.add_argument("--no-bridge", dest="bridge_enabled", action="store_false", default=None,
                   help="do not serve the raw TCP bridge")
    p.add_argument("--channel-port", type=int, help="G-code channel port on 127.0.0.1 (0: any free port)")
    p.add_argument("--serial-port", help="motor board device or pyserial URL")
    p.add_argument("--gpio-backend", choices=("rpi", "sim"))
    p.add_argument("--lock-file")
    p.add_argument("--data-dir")
    p.add_argument("--listen")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (every G-code line)")
    p.add_argument("--version", action="version", version=f"robot-server {__version__}")
    return p.parse_args(argv)


async def serve(server: RobotServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    cfg = server.config
    log.info("robot-server %s: HTTP on %s:%d, bridge on %s, motor board %s, GPIO %s, G-code channel %s",
             __version__, cfg.listen, server.http_port,
             f"{cfg.listen}:{server.bridge_port}" if server.bridge else "off",
             cfg.serial_port, cfg.gpio_backend, server.service.channel.url)
    await stop.wait()
    log.info("stopping")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        cfg = load(args.config, required=args.config is not None)
        for key in ("port", "bridge_port", "channel_port", "bridge_enabled", "serial_port", "gpio_backend", "lock_file", "data_dir", "listen"):
            val = getattr(args, key)
            if val is not None:
                setattr(cfg, key, val)
        cfg.validate()
    except ConfigError as exc:
        print(f"robot-server: config error: {exc}", file=sys.stderr)
        return 2
    try:
        lock = HardwareLock(cfg.lock_file, "robot-server").acquire()
    except OwnerError as exc:
        print(f"robot-server: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create %s: %s", cfg.state_dir, exc)
        try:
            server = RobotServer(cfg)
            asyncio.run(serve(server))
        except OSError as exc:
            print(f"robot-server: cannot listen: {exc}", file=sys.stderr)
            return 1
        except RuntimeError as exc:     # e.g. libgpiod missing off the Pi
            print(f"robot-server: {exc}", file=sys.stderr)
            return 1
    finally:
        lock.release()
    return 0

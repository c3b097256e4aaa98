"""``ot2-modules``: the OT-2's USB hardware modules, announced to ``opentrons``.

On the OT-2, ``opentrons`` finds modules by scanning ``/dev/ot_module_<name><n>`` (names
the udev rules give them), but only with ``RUNNING_ON_PI`` set, which would also hand it
the GPIO lines the robot server keeps. Without it, ``opentrons``' hardware controller asks
a module server for the modules instead (Opentrons/opentrons,
api/src/opentrons/hardware_control/module_control.py, ``listen_module_connection``; the
server's address is the ``OT_EMULATOR_module_server`` setting,
api/src/opentrons/hardware_control/emulation/settings.py). This runs ``opentrons``' own
module server (``ModuleStatusServer``) on loopback and tells it which module devices exist,
rescanning the device directory; ``opentrons`` then opens each device as on the OT-2.

    ot2-modules [--dev /dev] [--host 127.0.0.1] [--port 8989] [--interval 2]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def scan(dev_dir: Path) -> dict[str, str]:
    """``{device path: opentrons module name}`` for the module devices in ``dev_dir``,
    recognised by ``opentrons``' own port matcher (bootloader ports are not modules)."""
    from opentrons.hardware_control.module_control import AttachedModulesControl

    found = {}
    for path in sorted(dev_dir.glob("ot_module_*")):
        module = AttachedModulesControl.get_module_at_port(path.name)
        if module is not None:
            found[str(path)] = module.name
    return found


async def announce(dev_dir: Path, host: str, port: int, interval_s: float) -> None:
    """Serve ``opentrons``' module server on ``host:port`` and keep it told of the module
    devices in ``dev_dir``, rescanning every ``interval_s`` s. Runs until cancelled;
    raises ``OSError`` if the port cannot be bound."""
    from opentrons.hardware_control.emulation.module_server import ModuleStatusServer
    from opentrons.hardware_control.emulation.settings import ModuleServerSettings

    server = ModuleStatusServer(ModuleServerSettings(host=host, port=port))
    serving = asyncio.ensure_future(server.run())
    known: dict[str, str] = {}
    try:
        while not serving.done():
            present = scan(dev_dir)
            for path in known.keys() - present.keys():
                log.info("module gone: %s", path)
                server.on_server_disconnected(identifier=path)
            for path in present.keys() - known.keys():
                log.info("module %s at %s", present[path], path)
                server.on_server_connected(server_type=present[path], client_uri=path, identifier=path)
            known = present
            await asyncio.wait([serving], timeout=interval_s)
        serving.result()                    # a bind failure surfaces here
    finally:
        serving.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ot2-modules", description=__doc__.splitlines()[0])
    p.add_argument("--dev", default="/dev", help="where the udev rules put ot_module_* (default /dev)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8989, help="module server port (opentrons' default, 8989)")
    p.add_argument("--interval", type=float, default=2.0, help="s between scans of the device directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        asyncio.run(announce(Path(args.dev), args.host, args.port, args.interval))
    except OSError as exc:
        print(f"ot2-modules: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

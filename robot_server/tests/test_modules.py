"""Hardware modules on the engine: a protocol using a temperature module and a magnetic
module runs with ``robot-execute`` (``opentrons.execute``, not a simulation) against
``opentrons``' own module emulators and our Smoothieware emulator, and the module
emulators receive the temperature and height the protocol asks for.

Off the OT-2's OS, ``opentrons``' hardware controller learns of attached modules from its
emulation module server instead of scanning ``/dev/ot_module_*`` (Opentrons/opentrons,
api/src/opentrons/hardware_control/module_control.py); the server, the proxies and the
module emulators are ``opentrons.hardware_control.emulation``'s, configured through the
``OT_EMULATOR_*`` settings (api/src/opentrons/hardware_control/emulation/settings.py).
"""
import asyncio
import json
import re
import os
import socket
import subprocess
import sys
import threading
import tty
from pathlib import Path

import pytest
from opentrons.hardware_control.emulation.app import Application
from opentrons.hardware_control.emulation.magdeck import MagDeckEmulator
from opentrons.hardware_control.emulation.module_server.client import ModuleStatusClient
from opentrons.hardware_control.emulation.parser import Parser
from opentrons.hardware_control.emulation.run_emulator import run_emulator_client
from opentrons.hardware_control.emulation.settings import ModuleServerSettings, ProxySettings, Settings
from opentrons.hardware_control.emulation.tempdeck import TempDeckEmulator
from opentrons.hardware_control.modules.magdeck import OFFSET_TO_LABWARE_BOTTOM

from robot_server.emulator import SmoothieEmulator, TcpServer

BIN = Path(sys.executable).parent

PROTOCOL = '''
metadata = {"protocolName": "Cold beads", "apiLevel": "2.15"}


def run(protocol):
    cold = protocol.load_module("temperature module gen2", 3)
    stock = cold.load_labware("opentrons_24_aluminumblock_nest_2ml_snapcap")
    magnet = protocol.load_module("magnetic module gen2", 6)
    beads = magnet.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    rack = protocol.load_labware("opentrons_96_tiprack_300ul", 5)
    pipette = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[rack])

    cold.set_temperature(6)
    pipette.transfer(50, stock["B2"], beads["C3"])
    magnet.engage(height_from_base=10)
    protocol.delay(seconds=1)
    magnet.disengage()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recording:
    """A module emulator that keeps every line it receives (``lines``)."""

    def __init__(self, emulator) -> None:
        self.emulator = emulator
        self.lines: list[str] = []

    def handle(self, line: str):
        self.lines.append(line.strip())
        return self.emulator.handle(line)

    def __getattr__(self, name):
        return getattr(self.emulator, name)



def proxied_modules(tempdeck: Recording, magdeck: Recording, settings: Settings):
    """opentrons' module server and proxies on loopback ports with ``tempdeck`` and
    ``magdeck`` connected to them, in a thread of their own; yields the server's port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = asyncio.run_coroutine_threadsafe(Application(settings).run(), loop)
    emulator_clients = []       # asyncio keeps only weak references to tasks: a lost one is collected

    async def connect() -> None:
        await asyncio.sleep(0.5)            # the proxies are listening
        emulator_clients.extend(
            asyncio.ensure_future(run_emulator_client("127.0.0.1", proxy.emulator_port, emulator))
            for proxy, emulator in ((settings.temperature_proxy, tempdeck), (settings.magdeck_proxy, magdeck)))
        client = await ModuleStatusClient.connect("127.0.0.1", settings.module_server.port, retries=50)
        announced = set()
        while announced != {"tempdeck", "magdeck"}:      # both emulators are in the proxies' pools
            announced |= {c.module_type for c in (await client.read()).connections}
        client.close()

    asyncio.run_coroutine_threadsafe(connect(), loop).result(60)
    yield settings.module_server.port
    app.cancel()
    for task in emulator_clients:
        loop.call_soon_threadsafe(task.cancel)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


class PtyModule:
    """A module emulator behind a pseudo-terminal, as a USB module's tty is; ``link`` is
    made a symlink to the tty (what the udev rules do under /dev)."""

    def __init__(self, emulator: Recording, link: Path) -> None:
        self.emulator = emulator
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        link.symlink_to(os.ttyname(self.slave))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        terminator, buf = self.emulator.get_terminator(), b""
        while True:
            try:
                buf += os.read(self.master, 4096)
            except OSError:                 # closed
                return
            while terminator in buf:
                line, buf = buf.split(terminator, 1)
                reply = self.emulator.handle(line.decode().strip())
                os.write(self.master, (reply.encode() + terminator if reply else b"") + self.emulator.get_ack())

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def announced_modules(tempdeck: Recording, magdeck: Recording, dev: Path):
    """Our ``ot2-modules`` (a real process) announcing ``tempdeck`` and ``magdeck`` on ptys
    named as the udev rules name USB modules; yields the module server's port."""
    dev.mkdir()
    ptys = [PtyModule(tempdeck, dev / "ot_module_tempdeck0"), PtyModule(magdeck, dev / "ot_module_magdeck1")]
    (dev / "ot_module_samba_bootloader0").symlink_to("/dev/null")     # not a module
    port = free_port()
    proc = subprocess.Popen([str(BIN / "ot2-modules"), "--dev", str(dev), "--port", str(port), "--interval", "0.2"],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:                # both announced
        if "magdeck at" in line:
            break
    yield port
    proc.terminate()
    proc.wait(10)
    for p in ptys:
        p.close()


@pytest.fixture(params=["opentrons-proxies", "ot2-modules"])
def module_emulators(request, tmp_path):
    """A temperature module GEN2 and a magnetic module GEN2 (opentrons' emulators), reaching
    opentrons through its own emulation proxies or through ``ot2-modules`` over ptys;
    yields (OT_EMULATOR_* env, tempdeck, magdeck)."""
    proxies = {name: ProxySettings(host="127.0.0.1", emulator_port=free_port(), driver_port=free_port())
               for name in ("heatershaker_proxy", "thermocycler_proxy", "temperature_proxy", "magdeck_proxy")}
    settings = Settings(module_server=ModuleServerSettings(host="127.0.0.1", port=free_port()), **proxies)
    tempdeck = Recording(TempDeckEmulator(Parser(), settings.tempdeck))
    magdeck = Recording(MagDeckEmulator(Parser(), settings.magdeck))
    if request.param == "opentrons-proxies":
        serve = proxied_modules(tempdeck, magdeck, settings)
    else:
        serve = announced_modules(tempdeck, magdeck, tmp_path / "dev")
    port = next(serve)
    yield {"OT_EMULATOR_module_server": json.dumps({"host": "127.0.0.1", "port": port})}, tempdeck, magdeck
    next(serve, None)


def test_temperature_and_magnetic_modules_run_against_emulators(module_emulators, tmp_path):
    env, tempdeck, magdeck = module_emulators
    board = TcpServer(SmoothieEmulator()).start()
    try:
        protocol = tmp_path / "cold_beads.py"
        protocol.write_text(PROTOCOL)
        done = subprocess.run([str(BIN / "robot-execute"), str(protocol)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path,
                              env=dict(os.environ, HOME=str(tmp_path), OT_SMOOTHIE_EMULATOR_URI=board.url, **env))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[:6000]
        assert "Setting Temperature Module temperature to 6.0 °C" in done.stdout
        assert "Engaging Magnetic Module" in done.stdout
    finally:
        board.close()
    assert "M104 S6" in tempdeck.lines, tempdeck.lines              # target temperature, °C
    # the magnets' height above home, mm: above the labware bottom plus GEN2's offset to it
    assert f"G0 Z{10 + OFFSET_TO_LABWARE_BOTTOM['magneticModuleV2']}" in magdeck.lines, magdeck.lines
    assert magdeck.position == 0                                    # disengaged at the end
    assert any(line.startswith("G28.2") for line in board.emulator.log)


UDEV_RULES = Path(__file__).resolve().parents[2] / "overlay/usr/lib/udev/rules.d/95-ot2-modules.rules"


def test_udev_rules_name_modules_as_opentrons_scans_for_them():
    """Every module symlink the image's udev rules create is one opentrons' module scan
    recognises, and every OT-2 module type has one."""
    from opentrons.hardware_control.module_control import AttachedModulesControl

    links = re.findall(r'ATTRS\{idVendor\}=="([0-9a-f]{4})", ATTRS\{idProduct\}=="([0-9a-f]{4})", '
                       r'SYMLINK\+="(ot_module_\w+)%n"', UDEV_RULES.read_text())
    found = {}
    for vendor, product, link in links:
        module = AttachedModulesControl.get_module_at_port(f"{link}0")
        if "bootloader" in link:
            assert module is None, link
        else:
            assert module is not None and module.port == f"/dev/{link}0", link
            found[module.name] = (vendor, product)
    assert set(found) == {"tempdeck", "magdeck", "thermocycler", "heatershaker"}
    assert len(set(found.values())) == len(found)                  # one USB id per module type

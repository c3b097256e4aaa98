"""`make run`/`make run-pi`: build a board's image (cached) and boot it with its servers on localhost.

`--board qemu` (default) is the x86_64 QEMU board; `--board ot2` the Raspberry Pi 3 under
QEMU's raspi3b, booted through U-Boot and boot.scr. The guest's update server, robot
server, raw TCP bridge and SSH are forwarded to fixed ports on 127.0.0.1 (printed on
start); its motor-board UART is wired to the Smoothieware emulator running on the host.
The disk is a copy in build/qemu/ (build/pi/) that persists between runs (delete it, or
pass --fresh, to start from the built image). Ctrl-C powers off.

Exits 1 without starting anything if a port is taken (naming it and, where /proc shows
it, the process holding it), and 1 with the tail of QEMU's log if QEMU dies.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ot2qemu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", choices=("qemu", "ot2"), default="qemu")
    parser.add_argument("--fresh", action="store_true", help="start from the built image, discarding build/qemu/disk.img")
    parser.add_argument("--image", type=Path, help="an image directory built earlier (ci/build-qemu-image.sh, "
                        "ci/build-pi-image.sh) to boot instead of building the checkout's")
    parser.add_argument("--update-port", type=int, default=34000)
    parser.add_argument("--robot-port", type=int, default=31950)
    parser.add_argument("--bridge-port", type=int, default=7887)
    parser.add_argument("--ssh-port", type=int, default=2222)
    parser.add_argument("--jupyter-port", type=int, default=48888)
    parser.add_argument("--uart-port", type=int, default=0, help="host port of the motor-board emulator (0: any free)")
    args = parser.parse_args()

    ports = {"update": args.update_port, "robot": args.robot_port, "bridge": args.bridge_port,
             "ssh": args.ssh_port, "jupyter": args.jupyter_port, "uart": args.uart_port or ot2qemu.free_port()}
    try:
        ot2qemu.check_ports_free(ports)
    except ot2qemu.PortInUse as exc:
        print(f"run-qemu: {exc}; choose another with make run UPDATE_PORT= ROBOT_PORT= "
              f"BRIDGE_PORT= SSH_PORT= JUPYTER_PORT=", file=sys.stderr)
        return 1
    pi = args.board == "ot2"
    image_dir = args.image or ot2qemu.build_image(board=args.board)
    workdir = ot2qemu.ROOT / "build" / ("pi" if pi else "qemu")
    disk = workdir / ot2qemu.board_meta(args.board)["IMAGE_NAME"]
    if args.fresh or not disk.exists():
        ot2qemu.copy_disk(image_dir, workdir, args.board)
    guest = ot2qemu.Guest(disk, workdir, ports, board=args.board, firmware=image_dir)
    # SIGTERM (e.g. from `timeout`) powers off like Ctrl-C instead of leaving QEMU behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    guest.boot()
    print(f"booting {disk} (console: {guest.console}) ...", flush=True)
    try:
        health = guest.wait_healthy(timeout=900)
        print(f"up in {time.monotonic() - started:.0f} s: {health.get('name')} version {health.get('version')}, "
              f"slot {health.get('booted_slot')}")
        print(f"  update server   http://127.0.0.1:{ports['update']}/health")
        print(f"  robot server    http://127.0.0.1:{ports['robot']}/health")
        print(f"  raw TCP bridge  127.0.0.1:{ports['bridge']}")
        print(f"  SSH             ssh -p {ports['ssh']} root@127.0.0.1 (add your key first: "
              f"curl -X POST -H 'Content-Type: application/json' -d '{{\"key\": \"...\"}}' "
              f"http://127.0.0.1:{ports['update']}/server/ssh_keys)")
        if not pi:
            print(f"  Jupyter         http://127.0.0.1:{ports['jupyter']}/ (token: ssh ... journalctl -u ot2-jupyter)")
        print(f"  motor board     Smoothieware emulator on 127.0.0.1:{ports['uart']} (guest {'/dev/ttyAMA0' if pi else '/dev/ttyS1'})")
        print("Ctrl-C powers the robot off.", flush=True)
        while guest.running:
            time.sleep(1)
        if guest.qemu.returncode:
            raise RuntimeError(f"QEMU stopped (exit {guest.qemu.returncode})")
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError) as exc:
        print(f"run-qemu: {exc}; QEMU's log ({guest.workdir / 'qemu.log'}) ends:\n{guest.qemu_log_tail()}",
              file=sys.stderr)
        return 1
    finally:
        guest.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A serial balance on a pseudo-terminal, for trying the balance protocol without one.

    python balance_emulator.py            # prints the pty path, e.g. /dev/pts/5
    BALANCE_PORT=/dev/pts/5 robot-execute protocol_with_balance.py

Answers ``S`` with the current weight (``S S      12.3456 g``); every read adds
``increment`` grams (default 0.1 g, about 100 uL of water), so consecutive weighings grow.
"""
from __future__ import annotations

import os
import select
import threading
import tty


class BalanceEmulator:
    def __init__(self, start_g: float = 10.0, increment_g: float = 0.1) -> None:
        self.weight = start_g
        self.increment = increment_g
        self.requests = 0
        self.master, slave = os.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "BalanceEmulator":
        self._thread.start()
        return self

    def _serve(self) -> None:
        buf = b""
        while not self._stop:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if not r:
                continue
            try:
                buf += os.read(self.master, 1024)
            except OSError:
                return
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = line.strip().decode("ascii", "replace")
                if cmd == "S":
                    self.requests += 1
                    self.weight += self.increment
                    reply = f"S S {self.weight:12.4f} g\r\n"
                else:
                    reply = "ES\r\n"           # syntax error, MT-SICS style
                os.write(self.master, reply.encode())

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=1)
        os.close(self.master)
        os.close(self._slave)


if __name__ == "__main__":
    emu = BalanceEmulator().start()
    print(emu.path, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        emu.close()

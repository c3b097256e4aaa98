"""A protocol that weighs each dispense on a serial balance and logs the weights to /data.

The balance hangs on a USB-serial adapter (``/dev/ttyUSB0``, 9600 8N1) and speaks the
MT-SICS subset most lab balances understand: ``S`` -> ``S S      12.3456 g`` (a stable
weight). The protocol opens it only on the robot; when simulating it logs nothing and
opens nothing. Weights go to ``/data/user/balance-weights.csv`` (``/data`` survives
updates; fetch it with ``scp -O root@robot:/data/user/balance-weights.csv .``).

Environment overrides (for testing): ``BALANCE_PORT``, ``BALANCE_LOG``.
"""
import csv
import os
import time

from opentrons import protocol_api

metadata = {"protocolName": "Gravimetric check with a serial balance", "apiLevel": "2.15"}

BALANCE_PORT = os.environ.get("BALANCE_PORT", "/dev/ttyUSB0")
BALANCE_LOG = os.environ.get("BALANCE_LOG", "/data/user/balance-weights.csv")


class Balance:
    """A balance answering ``S`` with ``S S <value> <unit>`` (MT-SICS)."""

    def __init__(self, port):
        import serial           # pyserial, on the robot image
        self.ser = serial.Serial(port, 9600, timeout=2)

    def weigh(self):
        """The stable weight in grams."""
        self.ser.reset_input_buffer()
        self.ser.write(b"S\r\n")
        line = self.ser.readline().decode("ascii", "replace").split()
        if len(line) < 4 or line[0] != "S" or line[1] != "S":
            raise RuntimeError(f"balance answered {' '.join(line)!r}")
        value, unit = float(line[2]), line[3]
        return value / 1000.0 if unit == "mg" else value

    def close(self):
        self.ser.close()


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    trough = protocol.load_labware("nest_12_reservoir_15ml", 2)
    vessel = protocol.load_labware("nest_1_reservoir_195ml", 3)     # sits on the balance
    pipette = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    balance = None if protocol.is_simulating() else Balance(BALANCE_PORT)
    rows = []
    try:
        pipette.pick_up_tip()
        tare = balance.weigh() if balance else 0.0
        for i, volume in enumerate((50, 100, 200)):
            pipette.aspirate(volume, trough["A1"])
            pipette.dispense(volume, vessel["A1"].top(-5))
            pipette.blow_out()
            protocol.delay(seconds=1)                  # let the balance settle
            if balance:
                grams = balance.weigh() - tare
                rows.append({"step": i, "volume_ul": volume, "grams": round(grams, 5), "time": time.time()})
                protocol.comment(f"{volume} uL weighed {grams:.4f} g")
        pipette.drop_tip()
    finally:
        if balance:
            balance.close()
    if rows:
        os.makedirs(os.path.dirname(BALANCE_LOG), exist_ok=True)
        new = not os.path.exists(BALANCE_LOG)
        with open(BALANCE_LOG, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "volume_ul", "grams", "time"])
            if new:
                writer.writeheader()
            writer.writerows(rows)

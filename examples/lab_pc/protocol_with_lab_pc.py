"""A protocol that tells the lab PC where it is between steps and waits for its go-ahead.

The lab PC runs ``lab_pc_server.py``. The HTTP calls are made only when the protocol runs
on the robot (``protocol.is_simulating()`` is false), so simulating it (``robot-simulate``,
the upload analysis, ``opentrons_simulate``) never touches the lab PC. Uses only the
standard library (urllib), so nothing needs to be installed on the robot.

Set the lab PC's address below, or with the environment variable ``LAB_PC_URL``.
"""
import json
import os
import time
import urllib.request

from opentrons import protocol_api

metadata = {"protocolName": "Transfer with lab PC checkpoints", "apiLevel": "2.15"}

LAB_PC_URL = os.environ.get("LAB_PC_URL", "http://192.168.1.100:8080")
POLL_S = 1.0          # s between polls while the lab PC says "wait"
GIVE_UP_S = 600.0     # s without a go-ahead before the protocol fails


def tell_lab_pc(protocol, step, **data):
    """POST the step to the lab PC until it answers proceed (only on the robot)."""
    if protocol.is_simulating():
        return
    deadline = time.monotonic() + GIVE_UP_S
    body = json.dumps({"step": step, "data": data}).encode()
    while True:
        req = urllib.request.Request(LAB_PC_URL + "/update", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            reply = json.loads(resp.read())
        if reply.get("proceed", reply.get("done")):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab PC did not release step {step!r} within {GIVE_UP_S:g} s")
        protocol.delay(seconds=POLL_S)


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    trough = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    pipette = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    for i, well in enumerate(plate.columns()[0][:3]):
        pipette.pick_up_tip()
        pipette.aspirate(50, trough["A1"])
        tell_lab_pc(protocol, "done-aspirating", well=well.well_name, index=i)
        pipette.dispense(50, well)
        tell_lab_pc(protocol, "done-dispensing", well=well.well_name, index=i)
        pipette.drop_tip()
    tell_lab_pc(protocol, "finished")

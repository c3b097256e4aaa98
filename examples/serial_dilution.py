"""Serial dilution across row A of a 96-well plate (OT-2 Python Protocol API v2).

Runs unchanged with the OT-2's ``opentrons_simulate`` and with ``robot-simulate`` /
``robot-execute`` from ot2-robot-server.
"""
from opentrons import protocol_api

metadata = {"protocolName": "Serial dilution", "author": "ot2-edge examples", "apiLevel": "2.15"}


def run(protocol: protocol_api.ProtocolContext):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    row = plate.rows()[0]
    # diluent into every well of row A
    p300.transfer(100, reservoir["A1"], row, new_tip="once")
    # sample into A1, then carry 100 uL down the row, mixing each time
    p300.pick_up_tip()
    p300.aspirate(100, reservoir["A2"])
    p300.dispense(100, row[0])
    for src, dst in zip(row[:-1], row[1:]):
        p300.aspirate(100, src)
        p300.dispense(100, dst)
        p300.mix(3, 50)
    p300.blow_out(dst.top())
    p300.drop_tip()
    protocol.comment("Serial dilution done")

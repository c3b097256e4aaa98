"""API 2.20, nozzle layouts: an 8-channel P300 picking up single tips from the back of the
rack (SINGLE, starting at H1), then all eight again."""
from opentrons.protocol_api import SINGLE, ALL

metadata = {"protocolName": "Single-nozzle 8-channel", "apiLevel": "2.20"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 2)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 3)
    p300m = protocol.load_instrument("p300_multi_gen2", "left")

    p300m.configure_nozzle_layout(style=SINGLE, start="H1", tip_racks=[tips])
    for well in ("A1", "B2", "C3"):
        p300m.pick_up_tip()
        p300m.aspirate(60, reservoir["A1"])
        p300m.dispense(60, plate[well])
        p300m.drop_tip()
    p300m.configure_nozzle_layout(style=ALL, tip_racks=[tips])
    p300m.pick_up_tip(tips["A12"])
    p300m.aspirate(100, reservoir["A2"])
    p300m.dispense(100, plate["A12"])
    p300m.drop_tip()

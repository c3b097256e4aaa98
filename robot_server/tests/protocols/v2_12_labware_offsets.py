"""API 2.12, labware offsets set in the protocol (set_offset) before liquid handling."""
metadata = {"protocolName": "Labware offsets", "apiLevel": "2.12"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    tips.set_offset(x=0.1, y=-0.2, z=0.0)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 2)
    plate.set_offset(x=-0.5, y=0.3, z=1.2)
    reservoir = protocol.load_labware("nest_1_reservoir_195ml", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    p300.transfer(75, reservoir["A1"], plate.wells()[:8])

"""API 2.4, an 8-channel pipette: one column of a reservoir into every column of a plate."""
metadata = {"protocolName": "8-channel plate fill", "apiLevel": "2.4"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    p300m = protocol.load_instrument("p300_multi_gen2", "left", tip_racks=[tips])

    p300m.transfer(100, reservoir["A1"], plate.rows()[0], new_tip="once")
    p300m.pick_up_tip()
    for column in plate.rows()[0][::3]:
        p300m.mix(2, 80, column)
    p300m.return_tip()

"""API 2.11, a temperature module GEN2 with a 96-well aluminium block and an 8-channel P20."""
metadata = {"protocolName": "Cold plate, 8-channel", "apiLevel": "2.11"}


def run(protocol):
    temp = protocol.load_module("temperature module gen2", 3)
    plate = temp.load_labware("opentrons_96_aluminumblock_nest_wellplate_100ul")
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    tips = protocol.load_labware("opentrons_96_filtertiprack_20ul", 1)
    p20m = protocol.load_instrument("p20_multi_gen2", "left", tip_racks=[tips])

    temp.set_temperature(8)
    p20m.transfer(18, reservoir["A1"], plate.rows()[0][:6], new_tip="always")
    p20m.transfer(36, reservoir["A2"], plate.rows()[0][6:8])
    temp.deactivate()

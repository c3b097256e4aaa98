"""API 2.1, a temperature module (GEN1) cooling a tube block; distribute from one tube to
a column with a disposal volume."""
metadata = {"protocolName": "Cold distribute", "apiLevel": "2.1"}


def run(protocol):
    tempdeck = protocol.load_module("tempdeck", 1)
    tubes = tempdeck.load_labware("opentrons_24_aluminumblock_nest_1.5ml_snapcap")
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 2)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    tempdeck.set_temperature(4)
    p300.distribute(30, tubes["A1"], plate.columns()[0], disposal_volume=20)
    p300.distribute([10, 20, 30, 40], tubes["B1"], plate.columns()[1][:4])
    tempdeck.deactivate()

"""API 2.24, well access: rows and columns by name, wells by name, iterating a tube rack
and a reservoir."""
metadata = {"protocolName": "Well access", "apiLevel": "2.24"}


def run(protocol):
    tubes = protocol.load_labware("opentrons_24_tuberack_nest_1.5ml_screwcap", 1)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 2)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "left", tip_racks=[tips])

    rows = plate.rows_by_name()
    columns = tubes.columns_by_name()
    for tube, well in zip(columns["1"], rows["C"]):
        p300.transfer(30, tube, well)
    p300.transfer(25, tubes.wells_by_name()["D6"], [plate["H1"], plate["H12"]])

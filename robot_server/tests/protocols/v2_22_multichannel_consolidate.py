"""API 2.22, an 8-channel P20 consolidating columns with volumes over the tip and mixing."""
metadata = {"protocolName": "8-channel pooling", "apiLevel": "2.22"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    plate = protocol.load_labware("nest_96_wellplate_100ul_pcr_full_skirt", 2)
    pool = protocol.load_labware("nest_96_wellplate_2ml_deep", 3)
    p20m = protocol.load_instrument("p20_multi_gen2", "left", tip_racks=[tips])

    p20m.consolidate(8, plate.rows()[0][:4], pool["A1"])
    p20m.transfer(35, plate["A5"], pool["A2"], mix_after=(3, 15))

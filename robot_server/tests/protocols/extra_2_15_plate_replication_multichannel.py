"""API 2.15, plate replication with two 8-channel pipettes: a P300 and a P20 copying a
source plate into two destination plates."""
metadata = {"protocolName": "Plate replication", "apiLevel": "2.15"}


def run(protocol):
    tips300 = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    tips20 = protocol.load_labware("opentrons_96_filtertiprack_20ul", 4)
    source = protocol.load_labware("nest_96_wellplate_2ml_deep", 2)
    copies = [protocol.load_labware("nest_96_wellplate_200ul_flat", slot) for slot in (3, 5)]
    p300m = protocol.load_instrument("p300_multi_gen2", "left", tip_racks=[tips300])
    p20m = protocol.load_instrument("p20_multi_gen2", "right", tip_racks=[tips20])

    for copy in copies:
        p300m.transfer(150, source.rows()[0][:2], copy.rows()[0][:2], new_tip="always")
        p20m.transfer(5, source.rows()[0][2:4], copy.rows()[0][2:4], new_tip="always", mix_after=(1, 10))

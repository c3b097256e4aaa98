"""API 2.5, volumes larger than the tip: a P20 moving 50 uL is split the way the OT-2
splits it, in transfer, distribute and consolidate."""
metadata = {"protocolName": "Volumes over the tip", "apiLevel": "2.5"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    tubes = protocol.load_labware("opentrons_24_tuberack_nest_1.5ml_snapcap", 2)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 3)
    p20 = protocol.load_instrument("p20_single_gen2", "right", tip_racks=[tips])

    p20.transfer(50, tubes["A1"], plate["A1"])
    p20.transfer(47.5, tubes["A2"], plate.wells()[1:4], new_tip="always")
    p20.distribute(25, tubes["A3"], plate.wells()[4:7])
    p20.consolidate(30, plate.wells()[8:10], tubes["D6"])

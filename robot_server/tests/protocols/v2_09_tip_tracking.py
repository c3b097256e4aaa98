"""API 2.9, tip tracking: a starting tip, explicit tip locations, returning tips, and
resetting the tip racks."""
metadata = {"protocolName": "Tip tracking", "apiLevel": "2.9"}


def run(protocol):
    rack_a = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    rack_b = protocol.load_labware("opentrons_96_tiprack_20ul", 4)
    plate = protocol.load_labware("nest_96_wellplate_100ul_pcr_full_skirt", 2)
    p20 = protocol.load_instrument("p20_single_gen2", "left", tip_racks=[rack_a, rack_b])

    p20.starting_tip = rack_a["H12"]
    for well in plate.wells()[:3]:
        p20.pick_up_tip()
        p20.aspirate(5, plate["A12"])
        p20.dispense(5, well)
        p20.drop_tip()
    p20.pick_up_tip(rack_b["C3"])
    p20.return_tip()
    p20.reset_tipracks()
    p20.pick_up_tip()
    p20.drop_tip(rack_b["A1"].top())

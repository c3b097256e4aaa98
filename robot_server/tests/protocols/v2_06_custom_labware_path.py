"""API 2.6, custom labware found on the labware path (-L): our 6-vial rack and 24-trough plate."""
metadata = {"protocolName": "Custom labware from the path", "apiLevel": "2.6"}


def run(protocol):
    vials = protocol.load_labware("ot2edge_6_vialrack_4000ul", 1)
    troughs = protocol.load_labware("ot2edge_24_troughplate_1500ul", 2)
    tips = protocol.load_labware("opentrons_96_tiprack_1000ul", 3)
    p1000 = protocol.load_instrument("p1000_single_gen2", "right", tip_racks=[tips])

    for i, vial in enumerate(vials.wells()):
        p1000.transfer(900, vial, troughs.columns()[i][:2], new_tip="always", blow_out=True)
    p1000.pick_up_tip()
    p1000.aspirate(500, troughs["D6"].bottom(1))
    p1000.dispense(500, vials["B3"].top(-5))
    p1000.drop_tip()

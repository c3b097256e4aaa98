"""API 2.10, flow rates and positions: faster and slower aspirates, dispenses and
blow-outs, moves to the top, bottom and centre of wells, rail lights and homing."""
metadata = {"protocolName": "Flow rates and positions", "apiLevel": "2.10"}


def run(protocol):
    protocol.set_rail_lights(True)
    tips = protocol.load_labware("opentrons_96_tiprack_1000ul", 1)
    tubes = protocol.load_labware("opentrons_15_tuberack_falcon_15ml_conical", 2)
    p1000 = protocol.load_instrument("p1000_single_gen2", "right", tip_racks=[tips])

    p1000.flow_rate.aspirate = 150
    p1000.flow_rate.dispense = 300
    p1000.flow_rate.blow_out = 500
    p1000.pick_up_tip()
    p1000.move_to(tubes["A1"].top(10))
    p1000.aspirate(800, tubes["A1"].bottom(5))
    p1000.dispense(400, tubes["B1"].center())
    p1000.dispense(400, tubes["C1"].top(-10), rate=0.5)
    p1000.blow_out(tubes["C1"].top())
    p1000.drop_tip()
    protocol.home()
    protocol.set_rail_lights(False)

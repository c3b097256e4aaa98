"""API 2.0, GEN1 pipettes: single aspirate/dispense steps, mix, blow-out, touch-tip, air gap,
pause, delay and comment."""
metadata = {"protocolName": "GEN1 pipettes, basic steps", "apiLevel": "2.0"}


def run(protocol):
    tips300 = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    tips10 = protocol.load_labware("opentrons_96_tiprack_10ul", 4)
    reservoir = protocol.load_labware("usascientific_12_reservoir_22ml", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    p300 = protocol.load_instrument("p300_single", "right", tip_racks=[tips300])
    p10 = protocol.load_instrument("p10_single", "left", tip_racks=[tips10])

    protocol.comment("Buffer into A1..A3")
    p300.pick_up_tip()
    for well in plate.rows()[0][:3]:
        p300.aspirate(150, reservoir["A1"])
        p300.air_gap(20)
        p300.dispense(170, well)
        p300.blow_out(well.top())
    p300.drop_tip()

    protocol.pause("Check the buffer, then resume")
    p10.pick_up_tip()
    p10.aspirate(8, reservoir["A2"].bottom(2))
    p10.dispense(8, plate["A1"])
    p10.mix(4, 10, plate["A1"])
    p10.touch_tip()
    p10.drop_tip()
    protocol.delay(seconds=30)
    protocol.comment("Done")

"""API 2.5, run control: comments, pauses, delays in seconds and minutes, homing and
rail lights between liquid steps."""
metadata = {"protocolName": "Run control", "apiLevel": "2.5"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    tubes = protocol.load_labware("opentrons_6_tuberack_falcon_50ml_conical", 2)
    p300 = protocol.load_instrument("p300_single_gen2", "left", tip_racks=[tips])

    protocol.comment("Step 1: warm up")
    protocol.set_rail_lights(True)
    protocol.delay(seconds=5)
    protocol.pause("Load the 50 mL tubes")
    p300.pick_up_tip()
    for i in range(3):
        p300.aspirate(250, tubes["A1"].bottom(10))
        p300.dispense(250, tubes["B1"].top(-20))
        protocol.delay(seconds=2, msg=f"settling {i}")
    p300.blow_out()
    p300.drop_tip()
    protocol.delay(minutes=1, seconds=30)
    protocol.home()
    protocol.set_rail_lights(False)
    protocol.comment("Step 2: done")

"""API 2.25, distribute and consolidate with air gaps, touch-tips and blow-outs into the trash."""
metadata = {"protocolName": "Air-gapped distribute", "apiLevel": "2.25"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    p300.distribute(50, reservoir["A3"], plate.columns()[2], air_gap=10, touch_tip=True,
                    disposal_volume=0, blow_out=True, blowout_location="trash")
    p300.consolidate(40, plate.columns()[2][:4], reservoir["A4"], air_gap=5)

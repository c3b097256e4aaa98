"""API 2.2, a magnetic module (GEN1): engage, pull supernatant from a column into one
reservoir well with consolidate, disengage."""
metadata = {"protocolName": "Magnetic bead wash", "apiLevel": "2.2"}


def run(protocol):
    magdeck = protocol.load_module("magdeck", 4)
    plate = magdeck.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    waste = protocol.load_labware("nest_12_reservoir_15ml", 5)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 6)
    p300 = protocol.load_instrument("p300_single_gen2", "left", tip_racks=[tips])

    magdeck.engage(height=12)
    protocol.delay(minutes=2)
    p300.consolidate(60, plate.columns()[0], waste["A12"])
    p300.consolidate([20, 25, 30], plate.wells()[8:11], waste["A11"], new_tip="always")
    magdeck.disengage()

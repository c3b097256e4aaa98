"""API 2.23, magnetic module GEN2 on the engine: engage by height above the labware
bottom and by offset, with bead washes."""
metadata = {"protocolName": "Bead clean-up", "apiLevel": "2.23"}


def run(protocol):
    mag = protocol.load_module("magnetic module gen2", 1)
    plate = mag.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    for wash in range(2):
        mag.engage(height_from_base=5)
        protocol.delay(seconds=60, msg=f"beads settle, wash {wash + 1}")
        p300.transfer(80, plate["A1"].bottom(0.5), reservoir["A12"].top())
        mag.disengage()
        p300.transfer(80, reservoir["A1"], plate["A1"], mix_after=(5, 60))
    mag.engage(offset=-1)
    mag.disengage()

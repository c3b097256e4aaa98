"""API 2.8, transfer options: mix before and after, touch-tip, blow-out, air gap, new tip
every time, and a well addressed by offsets from its centre."""
from opentrons.types import Location

metadata = {"protocolName": "Transfer options", "apiLevel": "2.8"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    source = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    p300.transfer(120, source["A1"], plate.columns()[0][:4], mix_before=(2, 100), mix_after=(3, 60),
                  touch_tip=True, blow_out=True, air_gap=15, new_tip="always")
    p300.pick_up_tip()
    corner = source["A3"].from_center_cartesian(0.5, 0.5, -0.8)
    p300.aspirate(50, Location(corner, source["A3"]))
    p300.dispense(50, plate["H12"].bottom(3))
    p300.touch_tip(plate["H12"], v_offset=-2, radius=0.8)
    p300.drop_tip()

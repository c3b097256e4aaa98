"""API 2.3, a thermocycler (GEN1): master mix into a PCR plate, then a cycling profile."""
metadata = {"protocolName": "PCR setup and cycling", "apiLevel": "2.3"}


def run(protocol):
    tc = protocol.load_module("thermocycler")
    plate = tc.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    mix = protocol.load_labware("opentrons_24_tuberack_nest_1.5ml_snapcap", 1)
    tips = protocol.load_labware("opentrons_96_filtertiprack_20ul", 2)
    p20 = protocol.load_instrument("p20_single_gen2", "left", tip_racks=[tips])

    tc.open_lid()
    tc.set_block_temperature(4)
    p20.transfer(15, mix["A1"], plate.wells()[:6], new_tip="always")
    tc.close_lid()
    tc.set_lid_temperature(105)
    tc.set_block_temperature(95, hold_time_seconds=180)
    profile = [{"temperature": 95, "hold_time_seconds": 15},
               {"temperature": 60, "hold_time_seconds": 30},
               {"temperature": 72, "hold_time_seconds": 45}]
    tc.execute_profile(steps=profile, repetitions=5, block_max_volume=25)
    tc.set_block_temperature(4)
    tc.deactivate_lid()
    tc.open_lid()

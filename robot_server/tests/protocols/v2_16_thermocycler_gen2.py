"""API 2.16, a thermocycler GEN2 with lid and block profiles, on the engine."""
metadata = {"protocolName": "Thermocycler GEN2 cycling", "apiLevel": "2.16"}


def run(protocol):
    tc = protocol.load_module("thermocycler module gen2")
    plate = tc.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    tubes = protocol.load_labware("opentrons_24_aluminumblock_nest_1.5ml_snapcap", 1)
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 2)
    p20 = protocol.load_instrument("p20_single_gen2", "right", tip_racks=[tips])

    tc.open_lid()
    p20.transfer(12, tubes["A1"], plate.columns()[0], new_tip="always")
    tc.close_lid()
    tc.set_lid_temperature(100)
    tc.execute_profile(steps=[{"temperature": 98, "hold_time_seconds": 10},
                              {"temperature": 55, "hold_time_seconds": 20}], repetitions=3, block_max_volume=20)
    tc.set_block_temperature(12, hold_time_minutes=1)
    tc.deactivate()

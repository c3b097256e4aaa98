"""API 2.13, every OT-2 module type at once: temperature, magnetic, thermocycler and
heater-shaker."""
metadata = {"protocolName": "All modules", "apiLevel": "2.13"}


def run(protocol):
    temp = protocol.load_module("temperature module", 3)
    mag = protocol.load_module("magnetic module", 9)
    tc = protocol.load_module("thermocycler module")
    hs = protocol.load_module("heaterShakerModuleV1", 1)
    tubes = temp.load_labware("opentrons_24_aluminumblock_nest_1.5ml_snapcap")
    beads = mag.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    pcr = tc.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    deep = hs.load_labware("opentrons_96_deep_well_adapter_nest_wellplate_2ml_deep")
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 5)
    p20 = protocol.load_instrument("p20_single_gen2", "right", tip_racks=[tips])

    temp.set_temperature(4)
    tc.open_lid()
    hs.close_labware_latch()
    p20.transfer(5, tubes["A1"], [beads["A1"], pcr["A1"], deep["A1"]], new_tip="always")
    mag.engage(height=8)
    hs.set_and_wait_for_shake_speed(500)
    hs.deactivate_shaker()
    tc.close_lid()
    tc.set_block_temperature(37, hold_time_seconds=10)
    tc.open_lid()
    mag.disengage()
    temp.deactivate()

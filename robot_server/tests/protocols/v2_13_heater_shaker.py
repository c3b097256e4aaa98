"""API 2.13, a heater-shaker: latch, heat, shake, stop, with a deep-well plate on an adapter."""
metadata = {"protocolName": "Heater-shaker lysis", "apiLevel": "2.13"}


def run(protocol):
    hs = protocol.load_module("heaterShakerModuleV1", 1)
    plate = hs.load_labware("opentrons_96_deep_well_adapter_nest_wellplate_2ml_deep")
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 5)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 6)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    hs.open_labware_latch()
    hs.close_labware_latch()
    p300.transfer(200, reservoir["A1"], plate.wells()[:3])
    hs.set_target_temperature(37)
    hs.wait_for_temperature()
    hs.set_and_wait_for_shake_speed(1200)
    protocol.delay(minutes=5)
    hs.deactivate_shaker()
    hs.deactivate_heater()
    hs.open_labware_latch()

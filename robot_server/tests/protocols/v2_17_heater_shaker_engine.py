"""API 2.17, a heater-shaker on the engine: heat and shake a flat plate on its adapter."""
metadata = {"protocolName": "Heater-shaker incubation", "apiLevel": "2.17"}


def run(protocol):
    hs = protocol.load_module("heaterShakerModuleV1", 3)
    adapter = hs.load_adapter("opentrons_96_flat_bottom_adapter")
    plate = adapter.load_labware("nest_96_wellplate_200ul_flat")
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 4)
    p300 = protocol.load_instrument("p300_single_gen2", "left", tip_racks=[tips])

    hs.close_labware_latch()
    p300.distribute(40, reservoir["A1"], plate.rows()[0][:4])
    hs.set_and_wait_for_temperature(37)
    hs.set_and_wait_for_shake_speed(800)
    protocol.delay(minutes=1)
    hs.deactivate_shaker()
    hs.deactivate_heater()
    hs.open_labware_latch()

"""API 2.8, two temperature modules of the same model and a magnetic module, so that
robot-simulate has to take three modules as attached, two of them alike."""
metadata = {"protocolName": "Two cold blocks", "apiLevel": "2.8"}


def run(protocol):
    cold = protocol.load_module("temperature module gen2", 1)
    warm = protocol.load_module("temperature module gen2", 3)
    mag = protocol.load_module("magnetic module gen2", 4)
    cold_tubes = cold.load_labware("opentrons_24_aluminumblock_nest_1.5ml_snapcap")
    warm_tubes = warm.load_labware("opentrons_24_aluminumblock_nest_1.5ml_snapcap")
    plate = mag.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 2)
    p20 = protocol.load_instrument("p20_single_gen2", "left", tip_racks=[tips])

    cold.set_temperature(4)
    warm.set_temperature(37)
    p20.transfer(10, cold_tubes["A1"], warm_tubes["A1"])
    p20.transfer(10, warm_tubes["A1"], plate["A1"])
    mag.engage()
    mag.disengage()
    cold.deactivate()
    warm.deactivate()

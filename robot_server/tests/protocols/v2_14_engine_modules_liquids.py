"""API 2.14 (the first level on the Protocol Engine): temperature and magnetic modules,
liquids defined and loaded into wells."""
metadata = {"protocolName": "Engine: modules and liquids", "apiLevel": "2.14"}


def run(protocol):
    temp = protocol.load_module("temperature module gen2", 1)
    tubes = temp.load_labware("opentrons_24_aluminumblock_nest_1.5ml_snapcap")
    mag = protocol.load_module("magnetic module gen2", 4)
    plate = mag.load_labware("nest_96_wellplate_100ul_pcr_full_skirt")
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 2)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    beads = protocol.define_liquid("beads", "magnetic beads in buffer", "#7a5cff")
    tubes["A1"].load_liquid(beads, 1200)
    temp.set_temperature(10)
    p300.transfer(50, tubes["A1"], plate.columns()[0][:4], mix_before=(3, 150), new_tip="always")
    mag.engage(height_from_base=6)
    protocol.delay(seconds=90)
    mag.disengage()
    temp.deactivate()

"""API 2.27, the newest level opentrons 8.8.2 accepts: liquids, a serial dilution with
mixing, and comments formatted by the protocol."""
metadata = {"protocolName": "Serial dilution, newest level", "apiLevel": "2.27"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    diluent = protocol.define_liquid("diluent", "PBS", "#33aaff")
    reservoir["A1"].load_liquid(diluent, 10000)
    row = plate.rows()[1]
    p300.transfer(100, reservoir["A1"], row[1:], new_tip="once")
    p300.transfer(200, reservoir["A2"], row[0])
    p300.transfer(100, row[:10], row[1:11], mix_after=(3, 50), new_tip="always")
    protocol.comment(f"dilution over {len(row) - 1} wells, factor {2 ** 10}")

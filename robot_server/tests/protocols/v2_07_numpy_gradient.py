"""API 2.7, numpy in a protocol: a linear gradient of diluent volumes across a row."""
import numpy as np

metadata = {"protocolName": "numpy gradient", "apiLevel": "2.7"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "left", tip_racks=[tips])

    diluent = np.linspace(20, 180, 12).round(1)
    sample = 200 - diluent
    p300.transfer(diluent.tolist(), reservoir["A1"], plate.rows()[0])
    p300.transfer(sample.tolist(), reservoir["A2"], plate.rows()[0], new_tip="always", mix_after=(2, 50))
    protocol.comment(f"total diluent {float(diluent.sum()):.1f} uL")

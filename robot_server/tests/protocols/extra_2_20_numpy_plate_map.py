"""API 2.20, numpy plate map: a concentration matrix decides the volume per well, and
empty cells are skipped; the deck is set with a runtime boolean."""
import numpy as np

metadata = {"protocolName": "numpy plate map", "apiLevel": "2.20"}


def add_parameters(parameters):
    parameters.add_bool(variable_name="use_filter_tips", display_name="Filter tips", default=False)


def run(protocol):
    tip_name = "opentrons_96_filtertiprack_200ul" if protocol.params.use_filter_tips \
        else "opentrons_96_tiprack_300ul"
    tips = protocol.load_labware(tip_name, 1)
    stock = protocol.load_labware("opentrons_24_tuberack_nest_2ml_snapcap", 2)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    target = np.array([[10, 0, 25], [50, 100, 0]], dtype=float)      # uM
    volumes = np.where(target > 0, 200 * target / 100, 0)             # uL of a 100 uM stock
    for (r, c), volume in np.ndenumerate(volumes):
        if volume:
            p300.transfer(float(volume), stock["A1"], plate.rows()[r][c])
    protocol.comment(f"{int(np.count_nonzero(volumes))} wells filled")

"""API 2.21, nozzle layouts: an 8-channel P20 using four nozzles (PARTIAL_COLUMN) to fill
half columns."""
from opentrons.protocol_api import PARTIAL_COLUMN

metadata = {"protocolName": "Partial-column 8-channel", "apiLevel": "2.21"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    plate = protocol.load_labware("nest_96_wellplate_100ul_pcr_full_skirt", 2)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 3)
    p20m = protocol.load_instrument("p20_multi_gen2", "right")

    p20m.configure_nozzle_layout(style=PARTIAL_COLUMN, start="H1", end="E1", tip_racks=[tips])
    for column in ("1", "2", "3"):
        p20m.pick_up_tip()
        p20m.aspirate(15, reservoir["A1"])
        p20m.dispense(15, plate["A" + column])
        p20m.mix(2, 10)
        p20m.drop_tip()

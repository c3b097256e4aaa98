"""API 2.15, requirements naming the robot type, and a labware moved by hand
(move_labware without a gripper pauses for the user)."""
requirements = {"robotType": "OT-2", "apiLevel": "2.15"}
metadata = {"protocolName": "Manual labware move"}


def run(protocol):
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 1)
    plate = protocol.load_labware("nest_96_wellplate_200ul_flat", 2)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 3)
    p20 = protocol.load_instrument("p20_single_gen2", "left", tip_racks=[tips])

    p20.transfer(10, reservoir["A1"], plate.wells()[:2])
    protocol.move_labware(plate, 5, use_gripper=False)
    p20.transfer(10, reservoir["A2"], plate.wells()[2:4])

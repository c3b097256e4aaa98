"""API 2.19, a choice parameter picking the pipette, distribute with a disposal volume,
and labware offsets (set_offset is back on the engine from 2.18)."""
metadata = {"protocolName": "Parameterised distribute", "apiLevel": "2.19"}


def add_parameters(parameters):
    parameters.add_str(variable_name="pipette", display_name="Pipette", default="p300_single_gen2",
                       choices=[{"display_name": "P300", "value": "p300_single_gen2"},
                                {"display_name": "P1000", "value": "p1000_single_gen2"}])
    parameters.add_int(variable_name="columns", display_name="Columns", default=3, minimum=1, maximum=12)


def run(protocol):
    tip_name = "opentrons_96_tiprack_300ul" if protocol.params.pipette == "p300_single_gen2" \
        else "opentrons_96_tiprack_1000ul"
    tips = protocol.load_labware(tip_name, 1)
    plate = protocol.load_labware("corning_96_wellplate_360ul_flat", 2)
    plate.set_offset(x=0.2, y=0.1, z=-0.4)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 3)
    pipette = protocol.load_instrument(protocol.params.pipette, "left", tip_racks=[tips])

    for column in plate.columns()[:protocol.params.columns]:
        pipette.distribute(45, reservoir["A1"], column, disposal_volume=15, blow_out=True)

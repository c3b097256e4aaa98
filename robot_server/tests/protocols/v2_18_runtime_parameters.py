"""API 2.18, runtime parameters: an integer, a float, a boolean and a choice decide the run."""
metadata = {"protocolName": "Runtime parameters", "apiLevel": "2.18"}


def add_parameters(parameters):
    parameters.add_int(variable_name="samples", display_name="Samples", default=6, minimum=1, maximum=12)
    parameters.add_float(variable_name="volume", display_name="Volume", default=42.5, minimum=5, maximum=200,
                         unit="uL")
    parameters.add_bool(variable_name="mix", display_name="Mix after", default=True)
    parameters.add_str(variable_name="plate", display_name="Plate", default="nest_96_wellplate_200ul_flat",
                       choices=[{"display_name": "NEST flat", "value": "nest_96_wellplate_200ul_flat"},
                                {"display_name": "Corning flat", "value": "corning_96_wellplate_360ul_flat"}])


def run(protocol):
    params = protocol.params
    plate = protocol.load_labware(params.plate, 1)
    reservoir = protocol.load_labware("nest_12_reservoir_15ml", 2)
    tips = protocol.load_labware("opentrons_96_tiprack_300ul", 3)
    p300 = protocol.load_instrument("p300_single_gen2", "right", tip_racks=[tips])

    protocol.comment(f"{params.samples} samples of {params.volume} uL")
    p300.transfer(params.volume, reservoir["A1"], plate.wells()[:params.samples],
                  mix_after=(2, 20) if params.mix else None, new_tip="always")

"""API 2.26, custom labware from a definition the protocol builds and loads itself."""
import json

metadata = {"protocolName": "Inline custom labware", "apiLevel": "2.26"}


def strip_definition():
    """An 8-well strip of 200 uL wells along a row, our own labware."""
    wells = {f"A{i + 1}": {"depth": 20.0, "diameter": 5.5, "shape": "circular", "totalLiquidVolume": 200,
                           "x": 14.38 + 9 * i, "y": 42.74, "z": 5.0} for i in range(8)}
    return json.loads(json.dumps({
        "ordering": [[name] for name in wells], "brand": {"brand": "ot2-edge tests"},
        "metadata": {"displayName": "ot2-edge 8 Well Strip 200 uL", "displayCategory": "wellPlate",
                     "displayVolumeUnits": "µL", "tags": []},
        "dimensions": {"xDimension": 127.76, "yDimension": 85.48, "zDimension": 25.0},
        "wells": wells, "groups": [{"metadata": {}, "wells": list(wells)}],
        "parameters": {"format": "irregular", "isTiprack": False, "isMagneticModuleCompatible": False,
                       "loadName": "ot2edge_8_strip_200ul"},
        "namespace": "custom_beta", "version": 1, "schemaVersion": 2,
        "cornerOffsetFromSlot": {"x": 0, "y": 0, "z": 0}}))


def run(protocol):
    strip = protocol.load_labware_from_definition(strip_definition(), 1)
    tips = protocol.load_labware("opentrons_96_tiprack_20ul", 2)
    p20 = protocol.load_instrument("p20_single_gen2", "left", tip_racks=[tips])

    p20.transfer(12, strip["A1"], strip.wells()[1:], new_tip="once", touch_tip=True)

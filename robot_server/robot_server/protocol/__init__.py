"""Python protocols for the robot: the OT-2 Python Protocol API v2 subset (``context``),
labware/pipette/deck definitions (``labware``, ``definitions/``), loading and running
protocol files with line-numbered errors (``loader``), motion backends (``hardware``),
the ``robot-simulate`` / ``robot-execute`` commands (``cli``) and the server's protocol
store and runs (``runs``)."""
from .context import InstrumentContext, ProtocolContext, RunControl
from .errors import ProtocolAPIError, ProtocolFailure, ProtocolStopped
from .loader import load_protocol, run_protocol, simulate

__all__ = ["InstrumentContext", "ProtocolContext", "RunControl", "ProtocolAPIError", "ProtocolFailure",
           "ProtocolStopped", "load_protocol", "run_protocol", "simulate"]

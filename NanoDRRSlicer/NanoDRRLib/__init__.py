"""NanoDRR's headless Slicer logic: MRML nodes in, DRR volume nodes out.

Runs inside Slicer and with the ``slicer-core`` wheel alone (no Qt, no ``slicer.mrmlScene``: the
scene is always taken from the nodes). See ``logic.NanoDRRLogic`` for the entry points and
docs/geometry.md for the conventions.
"""

from .carm import isocenter
from .errors import NanoDRRError
from .geometry import DETECTOR_PRESETS, CArmGeometry
from .live import LiveRenderController
from .logic import NanoDRRLogic, resolveDevice
from .output import conventionalDisplayArray, detectorIJKToRAS, geometryFromNode, readAttributes
from .scene_io import loadScene, loadSegmentation, loadVolume, readStructureNames, saveScene

# isort: split
# The session layer, on top of the above: the workflow, its parameter-node binding, the views.
from . import parameters, views, workflow  # noqa: F401 (NanoDRRLib.workflow, … for the module)
from .parameters import ParameterBinding
from .workflow import NanoDRRWorkflow

__all__ = [
    "DETECTOR_PRESETS",
    "CArmGeometry",
    "LiveRenderController",
    "NanoDRRError",
    "NanoDRRLogic",
    "NanoDRRWorkflow",
    "ParameterBinding",
    "conventionalDisplayArray",
    "detectorIJKToRAS",
    "geometryFromNode",
    "isocenter",
    "loadScene",
    "loadSegmentation",
    "loadVolume",
    "readAttributes",
    "readStructureNames",
    "resolveDevice",
    "saveScene",
]

"""Poses: rotation parameterizations ↔ SE(3) (``convert``) and point transforms, as nanodrr 0.1.7's
``geometry``; ``to_parameters`` (the inverse of ``convert``) is ours."""

from .se3 import Parameterization, convert, to_parameters
from .transform import transform_point

__all__ = ["Parameterization", "convert", "to_parameters", "transform_point"]

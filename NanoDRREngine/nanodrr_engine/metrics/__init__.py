"""Registration metrics: nanodrr 0.1.7's image similarities and pose distance (same names, defaults
and numbers), plus the target registration and projection errors of a pose (ours)."""

from .errors import projection_error, target_registration_error
from .geodesic import DoubleGeodesicSE3
from .ncc import (
    GradientNormalizedCrossCorrelation2d,
    MultiscaleNormalizedCrossCorrelation2d,
    NormalizedCrossCorrelation2d,
)

__all__ = [
    "DoubleGeodesicSE3",
    "GradientNormalizedCrossCorrelation2d",
    "MultiscaleNormalizedCrossCorrelation2d",
    "NormalizedCrossCorrelation2d",
    "projection_error",
    "target_registration_error",
]

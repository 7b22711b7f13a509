"""CT subjects, HU → μ conversion, file reading and the built-in phantom."""

from .preprocess import HU_BONE, MU_BONE, MU_WATER, hu_to_mu
from .subject import Subject

__all__ = ["HU_BONE", "MU_BONE", "MU_WATER", "Subject", "hu_to_mu"]

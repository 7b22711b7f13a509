"""CT subjects, HU → μ conversion, file reading (CTs and X-rays) and the built-in phantom."""

from .preprocess import HU_BONE, MU_BONE, MU_WATER, hu_to_mu
from .subject import Subject
from .xray import XRay, preprocess_xray, read_xray

__all__ = ["HU_BONE", "MU_BONE", "MU_WATER", "Subject", "XRay", "hu_to_mu", "preprocess_xray", "read_xray"]

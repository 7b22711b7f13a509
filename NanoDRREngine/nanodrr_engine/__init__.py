"""NanoDRR engine: fast, differentiable digitally reconstructed radiographs in PyTorch.

Drop-in for ``nanodrr`` 0.1.7's public API (same conventions and numbers), with fused CPU/GPU
kernels, chunked memory use and input validation. Conventions: ``docs/geometry.md``.
"""

from .camera import carm_to_rt_inv, invert_rt_inv, make_k_inv, make_rt_inv, rt_inv_to_carm
from .data import HU_BONE, MU_BONE, MU_WATER, Subject, hu_to_mu
from .drr import DRR, available_backends, render
from .registration import Registration

__version__ = "0.2.0"

__all__ = [
    "DRR",
    "HU_BONE",
    "MU_BONE",
    "MU_WATER",
    "Registration",
    "Subject",
    "available_backends",
    "carm_to_rt_inv",
    "hu_to_mu",
    "invert_rt_inv",
    "make_k_inv",
    "make_rt_inv",
    "render",
    "rt_inv_to_carm",
]

"""Camera intrinsics, extrinsics, clinical C-arm angles and resampling between intrinsics."""

from .carm import carm_to_rt_inv, rt_inv_to_carm, to_display
from .extrinsics import invert_rt_inv, make_rt_inv
from .intrinsics import make_k_inv
from .resample import resample

__all__ = [
    "carm_to_rt_inv",
    "invert_rt_inv",
    "make_k_inv",
    "make_rt_inv",
    "resample",
    "rt_inv_to_carm",
    "to_display",
]

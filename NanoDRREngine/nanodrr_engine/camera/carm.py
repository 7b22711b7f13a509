"""Clinical C-arm angles (DICOM XA positioner) ↔ camera-to-world poses.

DICOM gives where the *detector* is: primary angle + = LAO (detector toward the patient's left),
secondary angle + = CRAN (detector toward the head); at (0, 0) the detector is anterior and the
beam runs posterior → anterior. The source sits at
``isocenter + SOD · (sin P · cos S, −cos P · cos S, −sin S)`` in RAS.

The pose is kept a proper rotation, ``make_rt_inv((P + 180, −S, 0), (0, SOD, 0), "AP", isocenter)``,
so a Slicer transform node holding it never mirrors what is placed under it. Its images are seen
from the source; :func:`to_display` flips columns for the conventional view from the detector
(head up, patient's right on the viewer's left).
"""

from __future__ import annotations

import math

import torch

from .._validation import as_matrix, check_positive
from .extrinsics import make_rt_inv


def carm_to_rt_inv(primary, secondary, sod: float, isocenter=None) -> torch.Tensor:
    """Camera-to-world matrix ``[4, 4]`` (or ``[B, 4, 4]`` for tensor angles) for DICOM angles in degrees."""
    check_positive(sod, "sod")
    p = torch.as_tensor(primary, dtype=torch.float64)
    s = torch.as_tensor(secondary, dtype=torch.float64)
    p, s = torch.broadcast_tensors(p, s)
    rotation = torch.stack([p + 180.0, -s, torch.zeros_like(p)], dim=-1)
    translation = torch.tensor([0.0, float(sod), 0.0], dtype=torch.float64).expand_as(rotation)
    iso = None if isocenter is None else torch.as_tensor(isocenter, dtype=torch.float64)
    return make_rt_inv(rotation, translation, "AP", iso)


def rt_inv_to_carm(rt_inv, isocenter=None) -> tuple[float, float, float]:
    """``(primary, secondary, sod)`` of a single camera-to-world matrix, from its source position."""
    m = as_matrix(rt_inv, "rt_inv", (4, 4), dtype=torch.float64)
    if m.ndim != 2:
        raise ValueError(f"rt_inv: expected one [4, 4] matrix, got shape {list(m.shape)}")
    d = m[:3, 3].clone()
    if isocenter is not None:
        d = d - torch.as_tensor(isocenter, dtype=torch.float64)
    sod = float(d.norm())
    if sod <= 0:
        raise ValueError("rt_inv: the source sits on the isocenter; no C-arm angles are defined")
    secondary = -math.degrees(math.asin(max(-1.0, min(1.0, float(d[2]) / sod))))
    primary = math.degrees(math.atan2(float(d[0]), -float(d[1])))
    return primary, secondary, sod


def to_display(img: torch.Tensor) -> torch.Tensor:
    """Flip image columns (``[..., H, W]``) from the source's view to the conventional detector view."""
    return img.flip(-1)

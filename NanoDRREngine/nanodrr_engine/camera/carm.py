"""Clinical C-arm angles (DICOM XA positioner) ↔ camera-to-world poses.

DICOM gives where the *detector* is: primary angle + = LAO (detector toward the patient's left),
secondary angle + = CRAN (detector toward the head); at (0, 0) the detector is anterior and the
beam runs posterior → anterior. The source sits at
``isocenter + SOD · (sin P · cos S, −cos P · cos S, −sin S)`` in RAS.

Valid ranges (DICOM PS3.3 C.8.7.5): primary −180…180°, secondary −90…90°; other angles are refused,
since e.g. (0, 95) is the pose (180, 85) turned upside down and no angle pair could report it.

The pose is kept a proper rotation, ``make_rt_inv((P + 180, −S, 0), (0, SOD, 0), "AP", isocenter)``,
so a Slicer transform node holding it never mirrors what is placed under it. Its images are seen
from the source; :func:`to_display` flips columns for the conventional view from the detector
(head up, patient's right on the viewer's left).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jaxtyping import Float

from .._validation import check_positive, check_rigid
from .extrinsics import ORIENTATIONS, make_rt_inv, real_matrix

#: DICOM positioner ranges in degrees: (PositionerPrimaryAngle, PositionerSecondaryAngle).
PRIMARY_RANGE = (-180.0, 180.0)
SECONDARY_RANGE = (-90.0, 90.0)
# Below this cos(secondary) the beam runs along the head–foot axis and the beam alone fixes no
# primary angle: it is read from the detector's in-plane orientation instead.
_POLE = 1e-9
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _angles(value, name: str, limits: tuple[float, float]) -> torch.Tensor:
    t = real_matrix(value, name, (), dtype=torch.float64)
    lo, hi = limits
    if t.numel() and not bool(((t >= lo) & (t <= hi)).all()):
        bad = t[(t < lo) | (t > hi)].reshape(-1)[0].item()
        raise ValueError(f"{name}: must be in [{lo:g}, {hi:g}] degrees (DICOM), got {bad:g}")
    return t


def carm_to_rt_inv(
    primary: float | Float[torch.Tensor, "*#batch"],
    secondary: float | Float[torch.Tensor, "*#batch"],
    sod: float,
    isocenter: Float[torch.Tensor, "3"] | Sequence[float] | None = None,
) -> Float[torch.Tensor, "*batch 4 4"]:
    """Camera-to-world matrix ``[4, 4]`` (or ``[B, 4, 4]`` for tensor angles) for DICOM angles in degrees.

    ``primary`` must lie in [−180, 180] and ``secondary`` in [−90, 90] (ValueError otherwise).
    """
    if isinstance(sod, bool):
        raise TypeError("sod: expected a number of mm, got a boolean")
    sod_t = real_matrix(sod, "sod", (), dtype=torch.float64)
    check_positive(sod_t, "sod")
    if bool((sod_t > _FLOAT32_MAX).any()):
        raise ValueError(f"sod: {float(sod_t.max()):g} mm is out of range (poses are rendered in float32)")
    p = _angles(primary, "primary", PRIMARY_RANGE)
    s = _angles(secondary, "secondary", SECONDARY_RANGE)
    p, s = torch.broadcast_tensors(p, s)
    rotation = torch.stack([p + 180.0, -s, torch.zeros_like(p)], dim=-1)
    translation = torch.tensor([0.0, float(sod), 0.0], dtype=torch.float64).expand_as(rotation)
    iso = None if isocenter is None else real_matrix(isocenter, "isocenter", (3,), dtype=torch.float64)
    return make_rt_inv(rotation, translation, "AP", iso)


def rt_inv_to_carm(
    rt_inv: Float[torch.Tensor, "4 4"], isocenter: Float[torch.Tensor, "3"] | Sequence[float] | None = None
) -> tuple[float, float, float]:
    """``(primary, secondary, sod)`` of a single rigid camera-to-world matrix.

    The inverse of :func:`carm_to_rt_inv` on its whole range: the angles come from the C-arm's
    orientation (its beam direction), ``sod`` is the source's distance from ``isocenter``. Returned
    ranges: primary in (−180, 180] (−180 and 180 are one pose and read back as 180), secondary in
    [−90, 90]. At |secondary| = 90 the beam runs along the head–foot axis and the primary angle is the
    detector's in-plane orientation (the one :func:`carm_to_rt_inv` gives it). A pose that is not of
    that form keeps its beam's angles and loses its roll about the beam. A mirrored pose
    (determinant −1, e.g. ``make_rt_inv(..., "PA")``) reports the angles of the proper pose with the
    same source and beam, whose images are its images with the columns flipped.
    """
    m = real_matrix(rt_inv, "rt_inv", (4, 4), dtype=torch.float64)
    if m.ndim != 2:
        raise ValueError(f"rt_inv: expected one [4, 4] matrix, got shape {list(m.shape)}")
    check_rigid(m, "rt_inv")
    r = m[:3, :3]
    if float(torch.linalg.det(r)) < 0:
        r = r * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # flip camera x: same source and beam
    o = torch.tensor(ORIENTATIONS["AP"], dtype=torch.float64)[:3, :3]
    e = (r @ o.T).tolist()  # Rz(P + 180) · Rx(−S) · Ry(roll)
    horizontal = math.hypot(e[0][1], e[1][1])  # cos(secondary)
    b = math.atan2(e[2][1], horizontal)
    a = math.atan2(-e[0][1], e[1][1]) if horizontal > _POLE else math.atan2(e[1][0], e[0][0])
    primary = math.degrees(a) - 180.0
    if primary <= -180.0:
        primary += 360.0
    secondary = -math.degrees(b) + 0.0  # + 0.0: no −0
    d = m[:3, 3].clone()
    if isocenter is not None:
        d = d - real_matrix(isocenter, "isocenter", (3,), dtype=torch.float64)
    sod = float(d.norm())
    if not sod > 0:
        raise ValueError("rt_inv: the source sits on the isocenter; no C-arm angles are defined")
    return primary, secondary, sod


def to_display(img: torch.Tensor) -> torch.Tensor:
    """Flip image columns (``[..., H, W]``) from the source's view to the conventional detector view."""
    return img.flip(-1)

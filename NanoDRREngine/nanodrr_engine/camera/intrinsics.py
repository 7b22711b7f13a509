"""Pinhole intrinsics from C-arm parameters (Hartley–Zisserman, as in nanodrr)."""

from __future__ import annotations

import torch

from .._validation import check_pixels, check_positive


def make_k_inv(
    sdd: float,
    delx: float,
    dely: float,
    x0: float,
    y0: float,
    height: int,
    width: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Inverse intrinsic matrix K⁻¹ of a detector.

    fx = sdd/Δx, fy = sdd/Δy, cx = x0/Δx + W/2, cy = y0/Δy + H/2.

    Args:
        sdd: source-to-detector distance (mm).
        delx, dely: pixel spacing along columns / rows (mm).
        x0, y0: principal-point offset from the detector centre (mm).
        height, width: detector size in pixels.

    Returns:
        ``[1, 3, 3]`` K⁻¹.
    """
    check_positive(sdd, "sdd")
    check_positive(delx, "delx")
    check_positive(dely, "dely")
    height = check_pixels(height, "height")
    width = check_pixels(width, "width")
    for name, v in (("x0", x0), ("y0", y0)):
        if not torch.isfinite(torch.as_tensor(v, dtype=torch.float64)).all():
            raise ValueError(f"{name}: must be finite, got {v!r}")
    fx, fy = sdd / delx, sdd / dely
    cx, cy = x0 / delx + width / 2.0, y0 / dely + height / 2.0
    return torch.tensor(
        [[[1.0 / fx, 0.0, -cx / fx], [0.0, 1.0 / fy, -cy / fy], [0.0, 0.0, 1.0]]], dtype=dtype, device=device
    )

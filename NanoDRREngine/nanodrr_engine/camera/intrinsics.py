"""Pinhole intrinsics from C-arm parameters (Hartley–Zisserman, as in nanodrr)."""

from __future__ import annotations

import torch
from jaxtyping import Float

from .._validation import as_device, as_number, check_dtype, check_k_inv, check_length, check_pixels


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
) -> Float[torch.Tensor, "1 3 3"]:
    """Inverse intrinsic matrix K⁻¹ of a detector.

    fx = sdd/Δx, fy = sdd/Δy, cx = x0/Δx + W/2, cy = y0/Δy + H/2.

    Args:
        sdd: source-to-detector distance (mm).
        delx, dely: pixel spacing along columns / rows (mm).
        x0, y0: principal-point offset from the detector centre (mm).
        height, width: detector size in pixels.

    Returns:
        ``[1, 3, 3]`` K⁻¹.

    Raises:
        TypeError: a parameter that is not a real number (``True``, ``"1020"``, ``[1.0]``), a non-floating
            ``dtype``, a ``device`` that is not one.
        ValueError: a distance out of the range the ray geometry in ``dtype`` can square (float32:
            1.1e-19 to 1.8e19 mm), a detector side that is not a whole number in [1, 2³¹ − 1], a device
            this machine lacks, or a K⁻¹ too ill-conditioned to tell its pixels' rays apart.
    """
    geometry = check_dtype(dtype) or torch.get_default_dtype()
    device = as_device(device)
    sdd, delx, dely, x0, y0 = (
        as_number(v, n) for n, v in (("sdd", sdd), ("delx", delx), ("dely", dely), ("x0", x0), ("y0", y0))
    )
    for name, v in (("sdd", sdd), ("delx", delx), ("dely", dely)):
        check_length(v, name, geometry)
    for name, v in (("x0", x0), ("y0", y0)):
        check_length(v, name, geometry, positive=False)
    height = check_pixels(height, "height")
    width = check_pixels(width, "width")
    fx, fy = sdd / delx, sdd / dely
    cx, cy = x0 / delx + width / 2.0, y0 / dely + height / 2.0
    k_inv = torch.tensor(
        [[[1.0 / fx, 0.0, -cx / fx], [0.0, 1.0 / fy, -cy / fy], [0.0, 0.0, 1.0]]], dtype=dtype, device=device
    )
    check_k_inv(k_inv, f"k_inv of sdd={sdd:g}, delx={delx:g}, dely={dely:g}, x0={x0:g}, y0={y0:g}")
    return k_inv

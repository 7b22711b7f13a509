"""Resample images between detector intrinsics (nanodrr 0.1.7's ``camera.resample``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import as_matrix

__all__ = ["resample"]


def resample(img: torch.Tensor, k_inv_old: torch.Tensor, k_inv_new: torch.Tensor) -> torch.Tensor:
    """Warp images ``[B, C, H, W]`` taken with intrinsics ``k_inv_old`` to what ``k_inv_new`` would see
    from the same source (same size, bilinear, zeros outside), e.g. another pixel spacing or principal
    point.

    Each new pixel centre p' = (u + ½, v + ½, 1) maps to p = K_old·K_new⁻¹·p' in the old image, whose
    pixel (i, j) has its centre at (i + ½, j + ½), the renderer's convention (docs/geometry.md).
    nanodrr 0.1.7 maps pixel indices instead (p = H·(u, v, 1)): the same image when the homography
    only shifts the principal point, but a shift of (h − 1)/2 old pixels when it scales by h (the new
    pixel spacing over the old), so its output and a render with ``k_inv_new`` disagree; here they agree.

    Args:
        img: ``[B, C, H, W]`` images (floating point).
        k_inv_old, k_inv_new: ``[B | 1, 3, 3]`` (or ``[3, 3]``) inverse intrinsics of the images and of
            the wanted view.
    """
    if not isinstance(img, torch.Tensor) or not img.is_floating_point() or img.ndim != 4:
        raise ValueError(
            f"img: expected a floating-point tensor [B, C, H, W], got {getattr(img, 'shape', img)!r}"
        )
    B, _, H, W = img.shape
    geo = torch.float32 if img.device.type == "mps" else torch.float64
    k_old = as_matrix(k_inv_old, "k_inv_old", (3, 3), dtype=geo, device=img.device)
    k_new = as_matrix(k_inv_new, "k_inv_new", (3, 3), dtype=geo, device=img.device)
    k_old, k_new = (k.reshape(-1, 3, 3) for k in (k_old, k_new))
    for name, k in (("k_inv_old", k_old), ("k_inv_new", k_new)):
        if k.shape[0] not in (1, B):
            raise ValueError(f"{name}: batch size {k.shape[0]} does not match the images' ({B})")
        if not bool((torch.linalg.det(k).abs() > 0).all()):
            raise ValueError(f"{name}: is singular")
    homography = torch.linalg.inv(k_old) @ k_new  # new pixel coordinates → old
    v, u = torch.meshgrid(
        torch.arange(H, dtype=geo, device=img.device) + 0.5,
        torch.arange(W, dtype=geo, device=img.device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    src = pix @ homography.transpose(-1, -2)  # [B | 1, H·W, 3]
    xy = src[..., :2] / src[..., 2:]
    size = torch.tensor([W, H], dtype=geo, device=img.device)
    grid = (2.0 * xy / size - 1.0).reshape(-1, H, W, 2).expand(B, H, W, 2)  # align_corners=False
    return F.grid_sample(img, grid.to(img.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)

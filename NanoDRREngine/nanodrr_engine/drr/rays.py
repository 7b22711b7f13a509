"""Ray geometry: detector pixels in camera space, and each ray's samples in voxel space."""

from __future__ import annotations

import torch


def make_tgt(k_inv: torch.Tensor, sdd: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel centres on the detector plane z = sdd, in camera coordinates.

    Args:
        k_inv: ``[B, 3, 3]``. sdd: ``[B]``.

    Returns:
        ``[B, H·W, 3]``, row-major over (v, u): pixel (u, v) ↦ sdd · K⁻¹ · (u + ½, v + ½, 1).
    """
    dtype, device = k_inv.dtype, k_inv.device
    v, u = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    uv1 = torch.stack([u, v, torch.ones_like(u)], dim=-1).reshape(-1, 3)
    return sdd[:, None, None] * torch.einsum("bij,nj->bni", k_inv, uv1)


def make_src(orthographic: bool, tgt: torch.Tensor, sdd: torch.Tensor) -> torch.Tensor:
    """Ray origins: the camera centre ``[B, 1, 3]``, or each pixel's foot on z = 0 ``[B, N, 3]``."""
    if orthographic:
        return tgt - torch.stack([torch.zeros_like(sdd), torch.zeros_like(sdd), sdd], dim=-1)[:, None, :]
    return torch.zeros(tgt.shape[0], 1, 3, dtype=tgt.dtype, device=tgt.device)


def sample_geometry(
    cam_to_voxel: torch.Tensor,
    src: torch.Tensor,
    tgt: torch.Tensor,
    shape: tuple[int, int, int],
    n_samples: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip rays to the trilinear support and place ``n_samples`` midpoint samples on each.

    The support of the interpolated volume is the voxel-index box [−1, S] per axis (slab method).

    Args:
        cam_to_voxel: ``[B, 4, 4]`` camera → voxel-index transform (world_to_voxel · rt_inv).
        src: ``[B, N | 1, 3]`` and tgt ``[B, N, 3]``: ray ends in camera coordinates (mm).
        shape: volume ``(K, J, I)``.

    Returns:
        ``start [B, N, 3]`` first sample (voxel coordinates), ``delta [B, N, 3]`` increment per
        sample, ``step [B, N]`` step length in mm (0 for rays that miss). Differentiable.
    """
    length = (tgt - src).norm(dim=-1)  # mm: camera-to-world is rigid
    R, t = cam_to_voxel[:, None, :3, :3], cam_to_voxel[:, None, :3, 3]
    a = (R @ src.unsqueeze(-1)).squeeze(-1) + t
    b = (R @ tgt.unsqueeze(-1)).squeeze(-1) + t
    a, b = torch.broadcast_tensors(a, b)
    ray = b - a
    k, j, i = shape
    hi = torch.tensor([i, j, k], dtype=ray.dtype, device=ray.device)
    tiny = torch.finfo(ray.dtype).tiny ** 0.5
    safe = torch.where(ray.abs() < tiny, torch.full_like(ray, tiny), ray)
    ta, tb = (-1.0 - a) / safe, (hi - a) / safe
    t0 = torch.minimum(ta, tb).amax(dim=-1).clamp(0.0, 1.0)
    t1 = torch.maximum(ta, tb).amin(dim=-1).clamp(0.0, 1.0)
    t1 = torch.maximum(t1, t0)
    frac = (t1 - t0) / n_samples
    start = a + (t0 + 0.5 * frac).unsqueeze(-1) * ray
    delta = frac.unsqueeze(-1) * ray
    step = length * frac
    return start, delta, step

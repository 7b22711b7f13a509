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
    length, a, ray, t0, t1 = _clipped_rays(cam_to_voxel, src, tgt, shape)
    frac = (t1 - t0) / n_samples
    start = a + (t0 + 0.5 * frac).unsqueeze(-1) * ray
    delta = frac.unsqueeze(-1) * ray
    step = length * frac
    return start, delta, step


def slice_geometry(
    cam_to_voxel: torch.Tensor,
    src: torch.Tensor,
    tgt: torch.Tensor,
    shape: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joseph's sampling: one sample on each voxel plane the ray crosses along its dominant axis.

    The dominant axis ``m`` is the one along which the ray crosses the most voxel planes (largest
    ``|ray|`` in voxel units), so every axis gets at least one sample per voxel. Samples sit where the
    ray meets the planes ``m = c`` (integers ``0 … S_m−1``) inside its clipped segment; there the
    trilinear interpolant reduces to a bilinear one in the other two axes, and each sample stands for
    the ray length between two planes. The zero planes just outside the volume make this the
    trapezoid rule of the zero-padded interpolant along the ray.

    Args:
        cam_to_voxel, src, tgt, shape: as for :func:`sample_geometry`.

    Returns:
        ``start [B, N, 3]`` first sample (its ``m`` coordinate an exact integer), ``delta [B, N, 3]``
        (its ``m`` component exactly ±1), ``step [B, N]`` mm between planes (0 for rays that cross
        none) and ``count [B, N]`` int32 samples per ray. Differentiable in start, delta and step.
    """
    length, a, ray, t0, t1 = _clipped_rays(cam_to_voxel, src, tgt, shape)
    k, j, i = shape
    planes = torch.tensor([i, j, k], dtype=ray.dtype, device=ray.device).expand_as(ray)
    m = ray.abs().argmax(dim=-1, keepdim=True)  # first of equals, as the kernels' tie-break
    rm = ray.gather(-1, m).squeeze(-1)
    am = a.gather(-1, m).squeeze(-1)
    last_plane = planes.gather(-1, m).squeeze(-1) - 1.0
    e0, e1 = am + t0 * rm, am + t1 * rm  # the dominant coordinate at the segment's ends
    lo = torch.minimum(e0, e1).ceil().clamp(min=0.0)
    hi = torch.maximum(e0, e1).floor().clamp(max=last_plane)
    count = (hi - lo + 1.0).clamp(min=0.0)
    crosses = (count > 0) & (rm != 0) & (t1 > t0)  # t1 == t0: the ray misses (or grazes) the box
    first = torch.where(rm > 0, lo, hi).detach()
    abs_rm = torch.where(crosses, rm.abs(), torch.ones_like(rm))
    t_first = torch.where(crosses, (first - am) / torch.where(crosses, rm, torch.ones_like(rm)), t0)
    on_m = torch.zeros_like(ray, dtype=torch.bool).scatter_(-1, m, True)
    start = torch.where(on_m, first.unsqueeze(-1), a + t_first.unsqueeze(-1) * ray)
    delta = ray / abs_rm.unsqueeze(-1)
    step = torch.where(crosses, length / abs_rm, torch.zeros_like(length))
    return start, delta, step, torch.where(crosses, count, 0.0).to(torch.int32)


def _clipped_rays(cam_to_voxel, src, tgt, shape):
    """``(length [B, N] mm, a [B, N, 3] voxel start, ray = b − a, t0, t1)``: each ray clipped (as
    fractions ``t`` of ``a → b``) to the trilinear support, the voxel-index box [−1, S] per axis."""
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
    return length, a, ray, t0, t1

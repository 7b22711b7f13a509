"""Reference backend: ``grid_sample`` over chunks of rays (the semantics every kernel must match).

Chunking bounds memory: at most ``MAX_SAMPLES_PER_CHUNK`` samples are materialised at a time,
and with autograd each chunk is checkpointed, so a 1024×1024 render stays within a few hundred MB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

#: Samples held in memory at once (~40 bytes each, forward and backward).
MAX_SAMPLES_PER_CHUNK = 1 << 20


def raymarch(
    vol: torch.Tensor,
    lab: torch.Tensor | None,
    n_classes: int,
    start: torch.Tensor,
    delta: torch.Tensor,
    step: torch.Tensor,
    n_samples: int,
    soft_labels: bool = False,
    count: torch.Tensor | None = None,
    width: int = 0,
) -> torch.Tensor:
    """See :mod:`nanodrr_engine.drr.backends` for the contract. Returns ``[B, C, N]`` float32.

    ``soft_labels`` routes each of the 8 trilinear neighbours' μ to that voxel's own label
    (anti-aliased, pose-differentiable channels), as nanodrr's ``soft_labels=True``.
    ``count [B, N]`` (the slice-march contract) keeps only samples ``s < count`` of each ray.
    ``width`` (the image width) is the contract's and ignored here.
    """
    if count is not None and soft_labels:
        raise ValueError("soft_labels: not available with per-ray sample counts (method='joseph')")
    B, N, _ = start.shape
    vol = vol.float() if vol.dtype != torch.float64 else vol
    size = torch.tensor(vol.shape[::-1], dtype=start.dtype, device=start.device)  # (I, J, K)
    s = torch.arange(n_samples, dtype=start.dtype, device=start.device)
    rays = B * N
    start, delta, step = start.reshape(rays, 3), delta.reshape(rays, 3), step.reshape(rays)
    count = torch.full((rays,), n_samples, device=start.device) if count is None else count.reshape(rays)
    per_chunk = max(1, MAX_SAMPLES_PER_CHUNK // n_samples)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (vol, start, delta, step))

    def march(start_c, delta_c, step_c, count_c):
        pts = start_c[:, None, :] + s[None, :, None] * delta_c[:, None, :]  # [R, S, 3]
        if soft_labels and n_classes > 1:
            return _soft(vol, lab, n_classes, pts) * step_c[:, None]
        grid = (2.0 * pts + 1.0) / size - 1.0
        mu = F.grid_sample(
            vol[None, None].to(grid.dtype),
            grid[None, None],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[0, 0, 0]  # [R, S]
        kept = s[None, :] < count_c[:, None]
        mu = torch.where(kept, mu, 0.0)
        if n_classes == 1:
            return (mu.sum(-1) * step_c)[:, None]
        channel = torch.where(kept, _nearest_label(lab, pts, n_classes), n_classes)
        out = torch.zeros(mu.shape[0], n_classes + 1, dtype=mu.dtype, device=mu.device)
        out.scatter_add_(1, channel, mu)
        return out[:, :n_classes] * step_c[:, None]

    outs = []
    for lo in range(0, rays, per_chunk):
        args = tuple(t[lo : lo + per_chunk] for t in (start, delta, step, count))
        outs.append(checkpoint(march, *args, use_reentrant=False) if grad else march(*args))
    out = torch.cat(outs) if outs else start.new_zeros(0, n_classes)
    return out.to(torch.promote_types(out.dtype, torch.float32)).reshape(B, N, n_classes).transpose(1, 2)


def _nearest_label(lab: torch.Tensor, pts: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Channel of each sample: its nearest voxel's label (half to even), 0 outside, ``C`` = dropped."""
    K, J, I = lab.shape
    idx = torch.round(pts).long()  # round half to even, as grid_sample(mode="nearest")
    x, y, z = idx.unbind(-1)
    inside = (x >= 0) & (x < I) & (y >= 0) & (y < J) & (z >= 0) & (z < K)
    flat = (z.clamp(0, K - 1) * J + y.clamp(0, J - 1)) * I + x.clamp(0, I - 1)
    label = torch.where(inside, lab.reshape(-1)[flat].long(), 0)
    return torch.where((label >= 0) & (label < n_classes), label, n_classes)


def _soft(vol: torch.Tensor, lab: torch.Tensor, n_classes: int, pts: torch.Tensor) -> torch.Tensor:
    """Σ over samples of each trilinear neighbour's weighted μ, routed to its own label: ``[R, C]``."""
    K, J, I = vol.shape
    flat_vol, flat_lab = vol.reshape(-1), lab.reshape(-1)
    base = pts.floor()
    frac = pts - base
    base = base.long()
    out = torch.zeros(pts.shape[0], n_classes + 1, dtype=vol.dtype, device=vol.device)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                off = torch.tensor([dx, dy, dz], device=pts.device)
                c = base + off
                w = torch.where(off.bool(), frac, 1.0 - frac).prod(-1)
                x, y, z = c.unbind(-1)
                inside = (x >= 0) & (x < I) & (y >= 0) & (y < J) & (z >= 0) & (z < K)
                flat = (z.clamp(0, K - 1) * J + y.clamp(0, J - 1)) * I + x.clamp(0, I - 1)
                label = flat_lab[flat].long()
                channel = torch.where(inside & (label >= 0) & (label < n_classes), label, n_classes)
                out.scatter_add_(1, channel, torch.where(inside, w * flat_vol[flat], 0.0))
    return out[:, :n_classes]

"""Joseph's partial end segments: the exact weights where a ray starts or ends inside the volume.

Joseph's rule (docs/geometry.md) is the trapezoid rule of the plane samples f(c) along the dominant axis:
μ along the ray is taken piecewise linear between planes, and every plane inside the clipped segment
weighs one step. That is exact where the segment ends on the zero padding (rays entering and leaving
through the volume's faces), but a *physical* end of the ray inside the volume — the source (t = 0) or
the detector pixel (t = 1), as with interventional C-arms, CBCT or a source placed inside the CT — cuts
a plane interval short. Integrating the piecewise-linear model exactly adds, per such end,

    step · ( d²/2 · f(outer) − (1 − d)²/2 · f(inner) ),

where ``inner`` is the first plane inside the segment from that end, ``outer`` the plane just beyond it
and d ∈ [0, 1) the end's distance to ``inner`` in planes. It is additive per end and exact also for
segments that cross one plane or none. This module computes that correction in torch for every backend
(differentiable w.r.t. the volume and the pose; labelmap samples go to their nearest voxel's label), and
only when an O(1) test says some ray end can lie inside the support box: ordinary renders skip it.
"""

from __future__ import annotations

import numpy as np
import torch

from .backends.torch_ref import _nearest_label


def may_end_inside(cam_to_voxel: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, shape) -> bool:
    """Whether a source or a detector pixel can lie inside the trilinear support box [−1, S] (cheap test:
    the box's corners against the sources' and the detector's depth range in each camera frame)."""
    k, j, i = shape
    corners = np.array([[x, y, z, 1.0] for x in (-1.0, i) for y in (-1.0, j) for z in (-1.0, k)]).T
    depth = np.linalg.inv(cam_to_voxel.detach().double().cpu().numpy()) @ corners  # [B, 4, 8]
    near, far = depth[:, 2].min(-1), depth[:, 2].max(-1)
    with torch.no_grad():
        ranges = torch.stack(
            [*torch.aminmax(src[..., 2].flatten(1), dim=-1), *torch.aminmax(tgt[..., 2].flatten(1), dim=-1)]
        )
    lo_src, hi_src, lo_tgt, hi_tgt = ranges.double().cpu().numpy()
    source = (hi_src > near) & (lo_src < far)
    detector = (hi_tgt > near) & (lo_tgt < far)
    return bool((source | detector).any())


def end_correction(vol, lab, n_classes: int, cam_to_voxel, src, tgt, shape) -> torch.Tensor:
    """``[B, C, N]`` to add to Joseph's render for rays whose source or detector end lies inside the box."""
    k, j, i = shape
    dtype = torch.float64 if vol.device.type != "mps" else torch.float32
    m4 = cam_to_voxel.to(dtype)
    R, t = m4[:, None, :3, :3], m4[:, None, :3, 3]
    a = (R @ src.to(dtype).unsqueeze(-1)).squeeze(-1) + t
    b = (R @ tgt.to(dtype).unsqueeze(-1)).squeeze(-1) + t
    a, b = torch.broadcast_tensors(a, b)
    ray = b - a
    length = (tgt.to(dtype) - src.to(dtype)).norm(dim=-1).expand(ray.shape[:2])
    size = torch.tensor([i, j, k], dtype=dtype, device=vol.device)
    m = ray.abs().argmax(dim=-1, keepdim=True)  # first of equals, as slice_geometry and the kernels
    rm = ray.gather(-1, m).squeeze(-1)
    am = a.gather(-1, m).squeeze(-1)
    moving = rm != 0
    safe_rm = torch.where(moving, rm, torch.ones_like(rm))
    step = torch.where(moving, length / safe_rm.abs(), torch.zeros_like(length))
    forward = rm > 0

    def inside(p):
        return ((p > -1.0) & (p < size)).all(-1) & moving

    e0, e1 = am, am + rm  # the dominant coordinate at the source and at the detector pixel (t = 0, 1)
    # start end: the first plane met travelling from the source; end: the last plane before the detector
    inner0 = torch.where(forward, e0.ceil(), e0.floor())
    d0 = (inner0 - e0).abs()
    inner1 = torch.where(forward, e1.floor(), e1.ceil())
    d1 = (e1 - inner1).abs()
    sign = torch.where(forward, 1.0, -1.0).to(dtype)
    planes = torch.stack([inner0 - sign, inner0, inner1, inner1 + sign], dim=-1).detach()  # [B, N, 4]
    zero = torch.zeros_like(d0)
    w0 = torch.where(inside(a), torch.ones_like(d0), zero)
    w1 = torch.where(inside(b), torch.ones_like(d1), zero)
    weights = torch.stack(
        [w0 * d0**2 / 2, -w0 * (1 - d0) ** 2 / 2, -w1 * (1 - d1) ** 2 / 2, w1 * d1**2 / 2], dim=-1
    ) * step.unsqueeze(-1)  # [B, N, 4]

    # the ray's point on each plane (its dominant coordinate exactly the plane index)
    tt = (planes - am.unsqueeze(-1)) / safe_rm.unsqueeze(-1)
    pts = a.unsqueeze(-2) + tt.unsqueeze(-1) * ray.unsqueeze(-2)  # [B, N, 4, 3]
    on_m = torch.zeros_like(pts, dtype=torch.bool).scatter_(
        -1, m.unsqueeze(-2).expand(*m.shape[:-1], 4, 1), True
    )
    pts = torch.where(on_m, planes.unsqueeze(-1), pts)
    B, N = pts.shape[:2]
    mu = _trilinear(vol, pts.reshape(B * N * 4, 3)).reshape(B, N, 4)
    contrib = mu * weights
    if n_classes == 1:
        return contrib.sum(-1).unsqueeze(1).to(torch.promote_types(vol.dtype, torch.float32))
    channel = _nearest_label(lab, pts.reshape(B * N * 4, 3), n_classes).reshape(B * N, 4)
    out = torch.zeros(B * N, n_classes + 1, dtype=contrib.dtype, device=contrib.device)
    out = out.scatter_add(1, channel, contrib.reshape(B * N, 4))
    out = out[:, :n_classes].reshape(B, N, n_classes).transpose(1, 2)
    return out.to(torch.promote_types(vol.dtype, torch.float32))


def _trilinear(vol: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``[P]`` of ``vol`` ``[K, J, I]`` at voxel coordinates ``pts`` ``[P, 3]`` (i, j, k),
    zero outside (grid_sample's rule), gathering only the 8 neighbours: converting or copying the whole
    volume on every render would cost more than the render."""
    k, j, i = vol.shape
    base = pts.floor()
    frac = pts - base
    base = base.long()
    flat = vol.reshape(-1)
    out = torch.zeros(pts.shape[0], dtype=pts.dtype, device=pts.device)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                x, y, z = base[:, 0] + dx, base[:, 1] + dy, base[:, 2] + dz
                valid = (x >= 0) & (x < i) & (y >= 0) & (y < j) & (z >= 0) & (z < k)
                index = torch.where(valid, (z * j + y) * i + x, torch.zeros_like(x))
                value = torch.where(valid, flat[index].to(pts.dtype), torch.zeros_like(out))
                wx = frac[:, 0] if dx else 1 - frac[:, 0]
                wy = frac[:, 1] if dy else 1 - frac[:, 1]
                wz = frac[:, 2] if dz else 1 - frac[:, 2]
                out = out + value * wx * wy * wz
    return out

"""Registration errors of an estimated pose against a known one (not in nanodrr): the mean target
registration error in 3D and the mean projection error on the detector, both in mm.

They are metrics of poses, like :class:`DoubleGeodesicSE3`, so they live here; they need no volume
and no renderer, and stay differentiable (usable as supervised losses).
"""

from __future__ import annotations

import torch

from .._validation import as_matrix, check_positive, check_rigid

__all__ = ["projection_error", "target_registration_error"]


def _camera_points(rt_inv: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """World points ``[..., N, 3]`` in the camera frame of camera-to-world ``[..., 4, 4]``: Rᵀ(p − t)."""
    return (points - rt_inv[..., None, :3, 3]) @ rt_inv[..., :3, :3]


def _inputs(rt_inv_a, rt_inv_b, points):
    a = as_matrix(rt_inv_a, "rt_inv_a", (4, 4))
    b = as_matrix(rt_inv_b, "rt_inv_b", (4, 4), device=a.device)
    p = as_matrix(points, "points", (3,), device=a.device)
    if p.ndim < 2 or p.shape[-2] < 1:
        raise ValueError(f"points: expected shape [..., N, 3] with N >= 1, got {list(p.shape)}")
    check_rigid(a, "rt_inv_a")
    check_rigid(b, "rt_inv_b")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), p.dtype)
    return a.to(dtype), b.to(dtype), p.to(dtype)


def target_registration_error(rt_inv_a, rt_inv_b, points) -> torch.Tensor:
    """Mean distance (mm) between world points seen by two camera-to-world poses (mTRE).

    Each point p is expressed in both camera frames, ``rt_inv_a⁻¹·p`` and ``rt_inv_b⁻¹·p``, and the
    distances are averaged: the mean displacement of the points between the patient positions that the
    two poses imply (e.g. ground truth vs registered).

    Args:
        rt_inv_a, rt_inv_b: rigid camera-to-world poses ``[..., 4, 4]`` (e.g. ``[B, 4, 4]``).
        points: world points (mm) ``[..., N, 3]``, e.g. ``[N, 3]`` shared by all poses, or ``[B, N, 3]``.

    Returns:
        The mean distance per pose, shaped as the broadcast batch (``[B]``; a 0-d tensor for one pose).
    """
    a, b, p = _inputs(rt_inv_a, rt_inv_b, points)
    d = _camera_points(a, p) - _camera_points(b, p)
    return torch.linalg.vector_norm(d, dim=-1).mean(-1)


def projection_error(rt_inv_a, rt_inv_b, points, sdd) -> torch.Tensor:
    """Mean distance (mm, on the detector plane) between the projections of world points by two poses.

    A point at camera coordinates (x, y, z) projects to sdd·(x/z, y/z) on the detector (z = sdd); this
    is the distance between those two detector points, averaged over the points. Pixels: divide by the
    pixel spacing (the intrinsics' principal point shifts both projections alike and cancels).

    Args:
        rt_inv_a, rt_inv_b: rigid camera-to-world poses ``[..., 4, 4]``.
        points: world points (mm) ``[..., N, 3]``; every point must lie in front of both sources (z > 0).
        sdd: source-to-detector distance (mm), a number or one per pose (``[B]``).

    Returns:
        The mean projection distance per pose, shaped as the broadcast batch.

    Raises:
        ValueError: a point at or behind either source (it has no projection), or bad poses / sdd.
    """
    a, b, p = _inputs(rt_inv_a, rt_inv_b, points)
    check_positive(sdd, "sdd")
    s = torch.as_tensor(sdd, dtype=p.dtype, device=p.device)
    ca, cb = _camera_points(a, p), _camera_points(b, p)
    for name, c in (("rt_inv_a", ca), ("rt_inv_b", cb)):
        behind = int((c[..., 2] <= 0).sum())
        if behind:
            raise ValueError(
                f"points: {behind} point(s) lie at or behind the source of {name}; they have no projection"
            )
    if s.ndim:
        s = s[..., None, None]
    d = s * (ca[..., :2] / ca[..., 2:] - cb[..., :2] / cb[..., 2:])
    return torch.linalg.vector_norm(d, dim=-1).mean(-1)

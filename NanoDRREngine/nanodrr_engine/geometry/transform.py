"""Homogeneous transforms of points (nanodrr 0.1.7's ``geometry.transform_point``)."""

from __future__ import annotations

import torch

__all__ = ["transform_point"]


def transform_point(xform: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Apply homogeneous transforms ``[B, *, N+1, N+1]`` to points ``[B, *, N]`` → ``[B, *, N]``.

    The points get a homogeneous 1 and the result is divided by its last coordinate (projective
    transforms work too). As nanodrr's ``einsum("b...ij,b...j->b...i")``, the dimensions between the
    batch and the matrix broadcast, right-aligned, and a batch of 1 broadcasts against B: one pose
    ``[B, 4, 4]`` moves a cloud ``[B, P, 3]``, one cloud ``[1, 3]`` is seen by B poses.
    """
    for name, t in (("xform", xform), ("v", v)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {type(t).__name__}")
    n = v.shape[-1] if v.ndim else 0
    if v.ndim < 2 or n < 1:
        raise ValueError(f"v: expected shape [B, ..., N], got {list(v.shape)}")
    if xform.ndim < 3 or tuple(xform.shape[-2:]) != (n + 1, n + 1):
        raise ValueError(
            f"xform: expected shape [B, ..., {n + 1}, {n + 1}] for {n}-D points, got {list(xform.shape)}"
        )
    dtype = torch.promote_types(xform.dtype, v.dtype)
    xform, v = xform.to(dtype), v.to(dtype)
    mid_x, mid_v = xform.ndim - 3, v.ndim - 2
    if mid_x < mid_v:
        xform = xform.reshape(xform.shape[0], *(1,) * (mid_v - mid_x), *xform.shape[1:])
    elif mid_v < mid_x:
        v = v.reshape(v.shape[0], *(1,) * (mid_x - mid_v), *v.shape[1:])
    num = (xform[..., :n, :n] @ v[..., None])[..., 0] + xform[..., :n, n]
    den = (xform[..., n, :n] * v).sum(-1, keepdim=True) + xform[..., n, n : n + 1]
    return num / den

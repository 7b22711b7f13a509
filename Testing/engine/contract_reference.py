"""Independent readings of the ray-march contract (``nanodrr_engine.drr.backends``) for kernel tests.

Written from the contract, not from any kernel: a brute-force float64 NumPy version for values and
an explicit-trilinear torch version whose autograd gives reference gradients.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch


def numpy_raymarch(vol, lab, n_classes, start, delta, step, n_samples):
    """Brute-force float64 NumPy reading of the contract: ``[B, C, N]``."""
    vol = np.asarray(vol, dtype=np.float64)
    start, delta, step = (np.asarray(t, dtype=np.float64) for t in (start, delta, step))
    D, H, W = vol.shape
    size = np.array([W, H, D])  # per (i, j, k)
    s = np.arange(n_samples, dtype=np.float64)[None, None, :, None]
    p = start[:, :, None, :] + s * delta[:, :, None, :]  # [B, N, S, 3]
    lo = np.floor(p)
    f = p - lo
    mu = np.zeros(p.shape[:-1])
    for corner in itertools.product((0, 1), repeat=3):
        idx = lo.astype(np.int64) + np.array(corner)
        w = np.prod(np.where(np.array(corner) == 1, f, 1 - f), axis=-1)
        inside = np.all((idx >= 0) & (idx < size), axis=-1)
        c = np.clip(idx, 0, size - 1)
        mu += w * np.where(inside, vol[c[..., 2], c[..., 1], c[..., 0]], 0.0)
    B, N = step.shape
    if n_classes == 1:
        return (step * mu.sum(-1))[:, None, :]
    r = np.round(p).astype(np.int64)  # NumPy rounds half to even, like grid_sample's nearest mode
    inside = np.all((r >= 0) & (r < size), axis=-1)
    c = np.clip(r, 0, size - 1)
    label = np.where(inside, np.asarray(lab).astype(np.int64)[c[..., 2], c[..., 1], c[..., 0]], 0)
    out = np.zeros((B, n_classes, N))
    for k in range(n_classes):
        out[:, k] = step * np.where(label == k, mu, 0.0).sum(-1)
    return out


def torch_raymarch(vol, lab, n_classes, start, delta, step, n_samples, count=None):
    """Differentiable torch reading of the contract with explicit trilinear weights (for autograd).

    Computes in ``start``'s dtype (use float64 for reference gradients). ``count [B, N]``: each ray
    keeps only its samples ``s < count`` (Joseph's per-ray sample counts).
    """
    D, H, W = vol.shape
    size = torch.tensor([W, H, D], device=start.device)
    s = torch.arange(n_samples, device=start.device, dtype=start.dtype)[None, None, :, None]
    p = start[:, :, None, :] + s * delta[:, :, None, :]  # [B, N, S, 3]
    lo = p.detach().floor()
    f = p - lo  # carries the gradient w.r.t. the position
    flat = vol.reshape(-1).to(start.dtype)
    mu = torch.zeros(p.shape[:-1], dtype=start.dtype, device=start.device)
    for corner in itertools.product((0, 1), repeat=3):
        cvec = torch.tensor(corner, device=start.device)
        idx = lo.long() + cvec
        w = torch.where(cvec == 1, f, 1 - f).prod(-1)
        inside = ((idx >= 0) & (idx < size)).all(-1)
        c = torch.minimum(idx.clamp(min=0), size - 1)
        mu = mu + w * flat[(c[..., 2] * H + c[..., 1]) * W + c[..., 0]] * inside
    if count is not None:
        mu = mu * (s[..., 0] < count[:, :, None].to(s.dtype))
    if n_classes == 1:
        return (step * mu.sum(-1))[:, None, :]
    r = torch.round(p.detach()).long()
    inside = ((r >= 0) & (r < size)).all(-1)
    c = torch.minimum(r.clamp(min=0), size - 1)
    label = torch.where(inside, lab.long()[c[..., 2], c[..., 1], c[..., 0]], 0)
    onehot = torch.stack([label == k for k in range(n_classes)], dim=1)  # [B, C, N, S]
    return step[:, None, :] * (onehot * mu[:, None]).sum(-1)

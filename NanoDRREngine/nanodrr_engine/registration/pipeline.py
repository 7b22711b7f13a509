"""``register``: find the C-arm pose that makes the DRR match an X-ray (coarse to fine, one rigid correction).

The unknown is one rigid motion of the patient, shared by every view (biplane or sequential shots of
fixed relative geometry): with the first view's initial camera frame as reference and c the isocenter
in that frame, the perturbation T = [R(ω) | R(ω)·t] (rotation vector ω, translation t: nanodrr's ``so3_log``) about c moves every
view as ``pose_b = W · rt_inv_b``, W = rt_inv_0 · Tr(c) · T · Tr(−c) · rt_inv_0⁻¹. For one view this is
exactly :class:`Registration`'s pose.

Schedule: detector pixels binned by integer factors (coarse to fine: the DRR's intrinsics become
K⁻¹ · diag(f, f, 1), the X-ray is average-pooled f × f, so each coarse pixel is the mean of the fine
pixels it covers), Adam on (ω, t), the learning rate halved when the loss stops improving
(``patience`` iterations) and a level left at its ``decays``-th plateau or after ``max_iterations``;
the next, finer level goes on at half the learning rate the coarser one ended with (its steps are
finer; restarting at the full rate undid the coarse fit and cost 3× the iterations on the chest CT).
Multiple starts run the coarsest level briefly from each start and keep the best.

Similarity (maximised): the mean of a global NCC, a patch NCC and a gradient NCC (Sobel), each weighted
by the mask; the loss is 1 − similarity (0 for a perfect match).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from jaxtyping import Float, Shaped

from .._validation import as_matrix, check_rigid
from ..data.subject import Subject
from ..drr.render import METHODS, render
from ..geometry.se3 import rotation_to_matrix
from ..metrics.ncc import sobel_gradients

__all__ = ["RegistrationResult", "register", "similarity"]


@dataclass
class RegistrationResult:
    """What :func:`register` found.

    Attributes:
        rt_inv: ``[B, 4, 4]`` registered camera-to-world poses.
        correction: ``[4, 4]`` the world-frame rigid motion W applied to every initial pose.
        loss: final loss (1 − similarity) at the finest level; ``initial_loss`` the same at the start.
        iterations: optimiser steps in all; ``render_equivalents``: forward + backward renders counted
            in units of one full-resolution render of all views.
        seconds: wall time; ``history``: one dict per step (level ``factor``, ``loss``, ``lr_scale``,
            ``seconds`` since the start, and the ``correction`` W evaluated at that step, ``[4, 4]`` on the CPU).
        stop_reason: "converged" (the loss plateaued ``decays`` times at the finest level) or
            "max_iterations".
    """

    rt_inv: torch.Tensor
    correction: torch.Tensor
    loss: float
    initial_loss: float
    iterations: int
    render_equivalents: float
    seconds: float
    stop_reason: str
    history: list[dict] = field(default_factory=list, repr=False)


def similarity(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B]`` mean of global, patch and gradient NCC of ``x`` and ``y`` ``[B, 1, H, W]`` under ``weight``."""
    g = _weighted_ncc(x, y, weight)
    p = _patch_ncc(x, y, weight, patch)
    gx, gy = sobel_gradients(x, 1.0), sobel_gradients(y, 1.0)
    w2 = weight.expand_as(gx)
    grad = _weighted_ncc(gx, gy, w2)
    return (g + p + grad) / 3.0


def register(
    subject: Subject,
    target: Float[torch.Tensor, "batch 1 height width"],
    k_inv: Float[torch.Tensor, "*#batch 3 3"],
    sdd: float | Float[torch.Tensor, "*#batch"],
    rt_inv: Float[torch.Tensor, "batch 4 4"],
    height: int,
    width: int,
    *,
    mask: Shaped[torch.Tensor, "#batch 1 height width"] | None = None,
    channel_weights: Sequence[float] | Float[torch.Tensor, "channels"] | None = None,  # noqa: F821
    factors: Sequence[int] | None = None,
    lr: tuple[float, float] = (0.02, 2.0),
    max_iterations: int = 100,
    patience: int = 5,
    decays: int = 2,
    starts: int | torch.Tensor = 1,
    start_spread: tuple[float, float] = (10.0, 15.0),
    start_iterations: int = 25,
    seed: int = 0,
    method: str = "joseph",
    backend: str = "auto",
    n_samples: int = 250,
    progress: Callable[[float, str], object] | None = None,
) -> RegistrationResult:
    """Register ``target`` X-ray(s) to ``subject``: the rigid correction of ``rt_inv`` that maximises similarity.

    Args:
        subject: the CT (a labelmap subject renders channels; see ``channel_weights``).
        target: ``[B, 1, H, W]`` X-rays in the DRR's units (line integrals, e.g. from ``preprocess_xray``),
            as seen from the source.
        k_inv: ``[B | 1, 3, 3]`` inverse intrinsics; sdd: mm, a number or ``[B]``.
        rt_inv: ``[B, 4, 4]`` initial camera-to-world poses of the B views (their relative geometry is kept).
        height, width: detector size (pixels) = the target's.
        mask: ``[B | 1, 1, H, W]`` pixels to compare (True/1 = use; e.g. ``preprocess_xray``'s mask).
        channel_weights: ``[C]`` weights of the rendered labelmap channels (e.g. bone 1, soft tissue 0.2: register
            on bone); default: their sum, the plain DRR.
        factors: binning factors coarse to fine (default: from 8, 4, 2 those leaving ≥ 32 pixels a side, then 1).
        lr: Adam learning rates of the rotation (radians) and translation (mm).
        max_iterations, patience, decays: the schedule per level (see the module docstring).
        starts: how many starts (the initial pose plus random perturbations of up to ``start_spread``
            = (degrees, mm), seeded by ``seed``), or a ``[S, 6]`` tensor of perturbations (ω rad, t mm).
        method, backend, n_samples: as :func:`render` (Joseph by default: the fastest pose gradients on CPU).
        progress: ``progress(fraction, message)`` after each step; raise from it to cancel (the exception
            propagates and nothing is returned).
    """
    t0 = time.perf_counter()
    if not isinstance(subject, Subject):
        raise TypeError(f"subject: expected a nanodrr_engine Subject, got {type(subject).__name__}")
    device = subject.world_to_voxel.device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    rt = as_matrix(rt_inv, "rt_inv", (4, 4), dtype=dtype, device=device).detach().reshape(-1, 4, 4)
    check_rigid(rt, "rt_inv")
    B = rt.shape[0]
    k = as_matrix(k_inv, "k_inv", (3, 3), dtype=dtype, device=device).detach().reshape(-1, 3, 3)
    if k.shape[0] not in (1, B):
        raise ValueError(f"k_inv: batch size {k.shape[0]} does not match rt_inv's ({B})")
    s = torch.as_tensor(sdd, dtype=dtype, device=device).reshape(-1)
    if s.shape[0] not in (1, B) or not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sdd: expected one positive finite distance or {B}, got {s.tolist()}")
    y = _check_target(target, B, height, width, device)
    w = _check_mask(mask, B, height, width, device)
    if not bool((_masked_std(y, w) > 0).all()):
        raise ValueError(
            "target: an X-ray is constant (or all zero) where the mask is on: nothing to register to"
        )
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    cw = None
    if channel_weights is not None:
        cw = torch.as_tensor(channel_weights, dtype=torch.float32, device=device).reshape(-1)
        if cw.numel() != subject.n_classes or not bool(torch.isfinite(cw).all()):
            raise ValueError(
                f"channel_weights: expected {subject.n_classes} finite weights, got {cw.tolist()}"
            )
    levels = _factors(factors, height, width)
    for name, v in (("max_iterations", max_iterations), ("patience", patience), ("decays", decays)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a whole number >= 1, got {v!r}")
    lr_rot, lr_xyz = (float(v) for v in lr)
    if not (lr_rot > 0 and lr_xyz > 0 and math.isfinite(lr_rot) and math.isfinite(lr_xyz)):
        raise ValueError(f"lr: expected two positive finite learning rates, got {lr!r}")
    if progress is not None and not callable(progress):
        raise TypeError("progress: must be callable or None")
    inits = _starts(starts, start_spread, seed, dtype, device)

    pivot = torch.linalg.inv(rt[0]) @ torch.cat([subject.isocenter.to(device, dtype), rt.new_ones(1)])
    c = pivot[:3]

    def correction(rot: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
        T = torch.eye(4, dtype=dtype, device=device)
        R = rotation_to_matrix(rot, "so3_log")
        T = torch.cat([torch.cat([R, (R @ (xyz - c) + c)[:, None]], dim=1), T[3:]], dim=0)
        return rt[0] @ T @ torch.linalg.inv(rt[0])

    pooled = {f: _pool(y, w, f) for f in levels}
    full = height * width

    def loss_at(f: int, rot, xyz) -> torch.Tensor:
        yt, wt = pooled[f]
        h, wd = yt.shape[-2:]
        kf = k @ torch.diag(torch.tensor([float(f), float(f), 1.0], dtype=dtype, device=device))
        img = render(
            subject, kf, correction(rot, xyz) @ rt, s, h, wd, n_samples, method=method, backend=backend
        )
        img = (
            (img * cw[None, :, None, None]).sum(1, keepdim=True)
            if cw is not None
            else img.sum(1, keepdim=True)
        )
        patch = max(4, min(h, wd) // 8)
        return 1.0 - similarity(img.to(yt.dtype), yt, wt, patch).mean()

    history: list[dict] = []
    counters = {"iterations": 0, "renders": 0.0}
    budget = len(levels) * max_iterations + (len(inits) - 1) * start_iterations

    def run(f: int, rot0, xyz0, iterations: int, stop_on_plateau: bool, scale0: float = 1.0):
        rot = torch.nn.Parameter(rot0.clone())
        xyz = torch.nn.Parameter(xyz0.clone())
        opt = torch.optim.Adam(
            [{"params": [rot], "lr": lr_rot * scale0}, {"params": [xyz], "lr": lr_xyz * scale0}]
        )
        best = (math.inf, rot0.clone(), xyz0.clone())
        stale, scale, decayed, reason = 0, scale0, 0, "max_iterations"
        h, wd = pooled[f][0].shape[-2:]
        for _ in range(iterations):
            opt.zero_grad()
            loss = loss_at(f, rot, xyz)
            loss.backward()
            value = float(loss.detach())
            counters["iterations"] += 1
            counters["renders"] += h * wd / full
            history.append(
                {
                    "factor": f,
                    "loss": value,
                    "lr_scale": scale,
                    "seconds": time.perf_counter() - t0,
                    "correction": correction(rot.detach(), xyz.detach()).cpu(),
                }
            )
            if value < best[0] - 1e-5:
                best, stale = (value, rot.detach().clone(), xyz.detach().clone()), 0
            else:
                stale += 1
            if progress is not None:
                progress(min(1.0, counters["iterations"] / budget), f"level ×{f}: loss {value:.4f}")
            if stop_on_plateau and stale >= patience:
                decayed += 1
                if decayed >= decays:
                    reason = "converged"
                    scale *= 0.5
                    break
                scale *= 0.5
                for group in opt.param_groups:
                    group["lr"] *= 0.5
                stale = 0
            opt.step()
        return best, reason, scale

    with torch.no_grad():
        zero = torch.zeros(3, dtype=dtype, device=device)
        initial_loss = float(loss_at(levels[-1], zero, zero))
    if len(inits) > 1:
        candidates = [run(levels[0], r, t, start_iterations, False)[0] for r, t in inits]
        _, rot, xyz = min(candidates, key=lambda b: b[0])
    else:
        rot, xyz = inits[0]
    reason = "max_iterations"
    scale = 1.0  # each level starts at the learning rate the coarser one ended with
    for f in levels:
        (_, rot, xyz), reason, scale = run(f, rot, xyz, max_iterations, True, scale)
    with torch.no_grad():
        W = correction(rot, xyz)
        final = float(loss_at(levels[-1], rot, xyz))
    return RegistrationResult(
        rt_inv=(W @ rt).detach(),
        correction=W.detach(),
        loss=final,
        initial_loss=initial_loss,
        iterations=counters["iterations"],
        render_equivalents=counters["renders"],
        seconds=time.perf_counter() - t0,
        stop_reason=reason,
        history=history,
    )


def _check_target(target, B: int, height: int, width: int, device) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target: expected a tensor [B, 1, H, W], got {type(target).__name__}")
    if tuple(target.shape) != (B, 1, height, width):
        raise ValueError(f"target: expected shape [{B}, 1, {height}, {width}], got {list(target.shape)}")
    y = target.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("target: contains NaN or infinite values")
    return y


def _check_mask(mask, B: int, height: int, width: int, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(B, 1, height, width, device=device)
    m = torch.as_tensor(mask, device=device)
    if m.ndim != 4 or m.shape[0] not in (1, B) or tuple(m.shape[1:]) != (1, height, width):
        raise ValueError(f"mask: expected shape [{B} or 1, 1, {height}, {width}], got {list(m.shape)}")
    m = m.float().expand(B, 1, height, width)
    if not bool(torch.isfinite(m).all()) or bool((m < 0).any()) or not bool((m.flatten(1).sum(1) > 0).all()):
        raise ValueError("mask: needs finite non-negative weights and at least one pixel per view")
    return m


def _factors(factors, height: int, width: int) -> list[int]:
    if factors is None:
        return [f for f in (8, 4, 2) if min(height, width) // f >= 32] + [1]
    levels = list(factors)
    if not levels or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in levels):
        raise ValueError(f"factors: expected whole binning factors >= 1, coarse to fine, got {factors!r}")
    if any(min(height, width) // f < 4 for f in levels):
        raise ValueError(f"factors: {max(levels)} leaves fewer than 4 pixels on a side of {height}×{width}")
    return levels


def _starts(starts, spread, seed: int, dtype, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    zero = torch.zeros(3, dtype=dtype, device=device)
    if isinstance(starts, torch.Tensor):
        if starts.ndim != 2 or starts.shape[1] != 6 or not bool(torch.isfinite(starts).all()):
            raise ValueError(f"starts: expected finite perturbations [S, 6], got {list(starts.shape)}")
        p = starts.to(device=device, dtype=dtype)
        return [(r[:3], r[3:]) for r in p]
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise ValueError(f"starts: expected a whole number >= 1 or a [S, 6] tensor, got {starts!r}")
    g = torch.Generator().manual_seed(int(seed))
    out = [(zero, zero)]
    for _ in range(starts - 1):
        axis = torch.randn(3, generator=g, dtype=torch.float64)
        angle = math.radians(spread[0]) * float(torch.rand(1, generator=g, dtype=torch.float64))
        rot = (axis / axis.norm() * angle).to(device, dtype)
        xyz = (spread[1] * (2 * torch.rand(3, generator=g, dtype=torch.float64) - 1)).to(device, dtype)
        out.append((rot, xyz))
    return out


def _pool(y: torch.Tensor, w: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and mask binned f × f (the bottom/right remainder dropped, as the level's detector is)."""
    if f == 1:
        return y, w
    h, wd = y.shape[-2] // f * f, y.shape[-1] // f * f
    wy = F.avg_pool2d((y * w)[..., :h, :wd], f)
    ww = F.avg_pool2d(w[..., :h, :wd], f)
    return torch.where(ww > 0, wy / ww.clamp(min=1e-12), torch.zeros_like(wy)), ww


def _masked_std(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    n = w.flatten(1).sum(1)
    m = (w * y).flatten(1).sum(1) / n
    return ((w * (y - m[:, None, None, None]) ** 2).flatten(1).sum(1) / n).sqrt()


def _weighted_ncc(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``[B]`` NCC over all channels and pixels, each pixel weighted by ``w``."""
    x, y, w = x.flatten(1), y.flatten(1), w.flatten(1)
    n = w.sum(1, keepdim=True)
    dx = x - (w * x).sum(1, keepdim=True) / n
    dy = y - (w * y).sum(1, keepdim=True) / n
    cov = (w * dx * dy).sum(1)
    return cov / ((w * dx * dx).sum(1) * (w * dy * dy).sum(1) + eps).sqrt()


def _patch_ncc(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, p: int, eps: float = 1e-10) -> torch.Tensor:
    """``[B]`` NCC in non-overlapping p × p patches, averaged with the patches' weights."""
    h, wd = x.shape[-2] // p * p, x.shape[-1] // p * p
    if h == 0 or wd == 0:
        return _weighted_ncc(x, y, w)
    x, y, w = x[..., :h, :wd], y[..., :h, :wd], w[..., :h, :wd]

    def mean(t):
        return F.avg_pool2d(t, p)

    sw = mean(w)
    safe = sw.clamp(min=1e-12)
    mx, my = mean(w * x) / safe, mean(w * y) / safe
    vx = (mean(w * x * x) / safe - mx * mx).clamp(min=0)
    vy = (mean(w * y * y) / safe - my * my).clamp(min=0)
    cov = mean(w * x * y) / safe - mx * my
    ncc = cov / (vx * vy + eps).sqrt()
    return (sw * ncc).flatten(1).sum(1) / sw.flatten(1).sum(1).clamp(min=1e-12)

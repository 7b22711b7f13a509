"""Fused camera-ray march (numba): from camera rays straight to images, no per-ray tensors.

``render`` builds each ray's samples (``start``, ``delta``, ``step`` of
:func:`~nanodrr_engine.drr.rays.sample_geometry`) in torch, where autograd reaches them. Renders whose
only gradient is the pose's (2D/3D registration) and renders without gradients do not need them as
tensors: here each chunk of rays gets its geometry computed in float64 (the same clipping and midpoint
samples, rounded to float32 as ``render`` hands them to the kernel) into a small buffer just before the
ray march (:mod:`.march`) runs on it: the same images, bit for bit, as that march on float64 torch geometry.
The backward recomputes the chunk's geometry, takes the march's per-ray gradients and applies the
chain rule of the geometry by hand, down to ``∂L/∂(camera → voxel matrix)``, summed per thread.

Why: the torch geometry materialises per-ray tensors; fused, a render needs little beyond its output
(measured in ``docs/performance.md``, "CPU kernel design").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._contract import check_march_args, check_pose_only_grad, check_ray_count
from ..fused_op import fused_op
from .intrinsics import FM, IMPORT_ERROR, is_available, njit, prange
from .march import (
    EMPTY_LAB,
    NO_COUNT,
    bwd_rays_chunk,
    kernel_labels,
    kernel_volume,
    labels_rays,
    plain_rays,
    schedule,
    vol_np,
)

#: ``sqrt(float64 tiny)``: ray components below it are treated as this (as ``rays._clipped_rays``).
_TINY = math.sqrt(np.finfo(np.float64).tiny)


@njit(fastmath=FM, cache=True)
def to_voxel(M, s, t):
    """Camera-space ray ``s → t`` (mm; float32 or float64) in voxel coordinates, in float64:
    ``(ax, ay, az, bx, by, bz, length mm)``."""
    s0, s1, s2 = np.float64(s[0]), np.float64(s[1]), np.float64(s[2])
    t0, t1, t2 = np.float64(t[0]), np.float64(t[1]), np.float64(t[2])
    ax = M[0, 0] * s0 + M[0, 1] * s1 + M[0, 2] * s2 + M[0, 3]
    ay = M[1, 0] * s0 + M[1, 1] * s1 + M[1, 2] * s2 + M[1, 3]
    az = M[2, 0] * s0 + M[2, 1] * s1 + M[2, 2] * s2 + M[2, 3]
    bx = M[0, 0] * t0 + M[0, 1] * t1 + M[0, 2] * t2 + M[0, 3]
    by = M[1, 0] * t0 + M[1, 1] * t1 + M[1, 2] * t2 + M[1, 3]
    bz = M[2, 0] * t0 + M[2, 1] * t1 + M[2, 2] * t2 + M[2, 3]
    length = math.sqrt((t0 - s0) ** 2 + (t1 - s1) ** 2 + (t2 - s2) ** 2)
    return ax, ay, az, bx, by, bz, length


@njit(fastmath=FM, cache=True)
def clip_to_box(ax, ay, az, rx, ry, rz, D, H, W):
    """``(t0, t1)``, ``0 ≤ t0 ≤ t1 ≤ 1``: the part of ``a + t·r`` inside the trilinear support, the
    voxel-index box ``[−1, S]`` per axis (slab method, as ``rays._clipped_rays``)."""
    t0 = -np.inf
    t1 = np.inf
    for p, r, size in ((ax, rx, W), (ay, ry, H), (az, rz, D)):
        safe = _TINY if abs(r) < _TINY else r
        ta = (-1.0 - p) / safe
        tb = (size - p) / safe
        t0 = max(t0, min(ta, tb))
        t1 = min(t1, max(ta, tb))
    t0 = min(max(t0, 0.0), 1.0)
    t1 = min(max(t1, 0.0), 1.0)
    return t0, max(t1, t0)


@njit(fastmath=FM, cache=True, inline="always")
def ray_ends(M, src, tgt, b, i):
    """Pixel ``i`` of image ``b``: ``(index of its matrix in M, source, target)``, broadcasting the
    batch of ``M [B | 1]``, ``src [B | 1, N | 1]`` and ``tgt [B | 1, N]``."""
    sb = src[b if src.shape[0] > 1 else 0]
    return b if M.shape[0] > 1 else 0, sb[i if sb.shape[0] > 1 else 0], tgt[b if tgt.shape[0] > 1 else 0, i]


@njit(fastmath=FM, cache=True)
def _camera_rays(M, src, tgt, N, D, H, W, n, r0, end, start, delta, step):
    """``sample_geometry`` of rays ``r0 ≤ r < end`` (pixel ``r % N`` of image ``r // N``) into
    ``start[r − r0]``, ``delta[r − r0]``, ``step[r − r0]`` (float32); non-finite rays get NaN."""
    for r in range(r0, end):
        b = r // N
        i = r - b * N
        bm, s, t = ray_ends(M, src, tgt, b, i)
        ax, ay, az, bx, by, bz, length = to_voxel(M[bm], s, t)
        k = r - r0
        if not (
            math.isfinite(ax + ay + az) and math.isfinite(bx + by + bz) and math.isfinite(length)
        ):  # the march outputs NaN for a ray with step != 0 and non-finite samples
            for c in range(3):
                start[k, c] = np.nan
                delta[k, c] = np.nan
            step[k] = np.nan
            continue
        rx, ry, rz = bx - ax, by - ay, bz - az
        t0, t1 = clip_to_box(ax, ay, az, rx, ry, rz, D, H, W)
        frac = (t1 - t0) / n
        th = t0 + 0.5 * frac
        start[k, 0] = ax + th * rx
        start[k, 1] = ay + th * ry
        start[k, 2] = az + th * rz
        delta[k, 0] = frac * rx
        delta[k, 1] = frac * ry
        delta[k, 2] = frac * rz
        step[k] = length * frac


@njit(fastmath=FM, cache=True)
def _ray_buffers(chunk):
    """One chunk's ``start``, ``delta``, ``step`` (float32, as the march takes them)."""
    return np.empty((chunk, 3), np.float32), np.empty((chunk, 3), np.float32), np.empty(chunk, np.float32)


@njit(fastmath=FM, cache=True)
def _chunk_rays(M, src, tgt, N, D, H, W, n, R, ck, chunk, rays):
    """``_camera_rays`` of chunk ``ck`` into ``rays`` (``_ray_buffers``); returns its first ray and size."""
    r0 = ck * chunk
    m = min(R, r0 + chunk) - r0
    _camera_rays(M, src, tgt, N, D, H, W, n, r0, r0 + m, rays[0], rays[1], rays[2])
    return r0, m


@njit(parallel=True, fastmath=FM, cache=True)
def _fwd_camera(vol, lab, C, D, H, W, M, src, tgt, N, n, out, n_groups, chunk):
    """``out``: the ray march of every camera ray, chunk by chunk (scheduled as ``march._fwd_rays``);
    flat ``[B, C, N]``, zeroed when there are labels (``lab`` is None for one channel)."""
    R = out.shape[0] // C
    n_chunks = (R + chunk - 1) // chunk
    for g in prange(n_groups):
        rays = _ray_buffers(chunk)
        for ck in range(g, n_chunks, n_groups):
            r0, m = _chunk_rays(M, src, tgt, N, D, H, W, n, R, ck, chunk, rays)
            if lab is not None:  # resolved at compile time
                labels_rays(vol, lab, D, H, W, C, N, rays[0], rays[1], rays[2], n, NO_COUNT, 0, m, out, r0)
            else:
                plain_rays(vol, D, H, W, rays[0], rays[1], rays[2], n, NO_COUNT, 0, m, out, r0)


@njit(fastmath=FM, cache=True)
def _slab_grad(p, r, size, lo_side):
    """``(t, ∂t/∂p, ∂t/∂r)`` of the slab bound of one axis that is the entry (``lo_side``) or the exit."""
    safe = _TINY if abs(r) < _TINY else r
    ta = (-1.0 - p) / safe
    tb = (size - p) / safe
    t = min(ta, tb) if lo_side else max(ta, tb)
    return t, -1.0 / safe, (0.0 if abs(r) < _TINY else -t / safe)


@njit(fastmath=FM, cache=True)
def _pose_grad(M, s, t, D, H, W, n, gs, gd, gst, acc):
    """Add ``∂L/∂M`` (rows 0-2 of the camera → voxel matrix) of one ray to ``acc[12]``, given
    ``∂L/∂start`` (``gs``), ``∂L/∂delta`` (``gd``), ``∂L/∂step`` (``gst``).

    The chain rule of ``_camera_rays`` (as torch's autograd differentiates ``sample_geometry``: the
    entry and exit are the binding slab bounds, clamps pass gradients on [0, 1], a tie of
    ``max(t1, t0)`` splits it; ties between axes, a measure-zero set, take the first axis).
    """
    ax, ay, az, bx, by, bz, length = to_voxel(M, s, t)
    a = (ax, ay, az)
    ray = (bx - ax, by - ay, bz - az)
    sizes = (W, H, D)
    T0 = -np.inf
    T1 = np.inf
    k0 = k1 = 0
    for k in range(3):
        lo, _, _ = _slab_grad(a[k], ray[k], sizes[k], True)
        hi, _, _ = _slab_grad(a[k], ray[k], sizes[k], False)
        if lo > T0:
            T0, k0 = lo, k
        if hi < T1:
            T1, k1 = hi, k
    t0 = min(max(T0, 0.0), 1.0)
    t1c = min(max(T1, 0.0), 1.0)
    t1 = max(t1c, t0)
    frac = (t1 - t0) / n
    th = t0 + 0.5 * frac
    g_th = gs[0] * ray[0] + gs[1] * ray[1] + gs[2] * ray[2]
    g_frac = 0.5 * g_th + gd[0] * ray[0] + gd[1] * ray[1] + gd[2] * ray[2] + gst * length
    g_t0 = g_th - g_frac / n
    g_t1 = g_frac / n
    if t1c > t0:
        g_t1c = g_t1
    elif t1c < t0:
        g_t1c = 0.0
        g_t0 += g_t1
    else:
        g_t1c = 0.5 * g_t1
        g_t0 += 0.5 * g_t1
    g_a = [gs[0], gs[1], gs[2]]
    g_r = [gs[0] * th + gd[0] * frac, gs[1] * th + gd[1] * frac, gs[2] * th + gd[2] * frac]
    if T0 >= 0.0 and T0 <= 1.0:
        _, dp, dr = _slab_grad(a[k0], ray[k0], sizes[k0], True)
        g_a[k0] += g_t0 * dp
        g_r[k0] += g_t0 * dr
    if T1 >= 0.0 and T1 <= 1.0:
        _, dp, dr = _slab_grad(a[k1], ray[k1], sizes[k1], False)
        g_a[k1] += g_t1c * dp
        g_r[k1] += g_t1c * dr
    for i in range(3):  # a = M·s, b = M·t, ray = b − a
        ga = g_a[i] - g_r[i]
        for j in range(3):
            acc[4 * i + j] += ga * np.float64(s[j]) + g_r[i] * np.float64(t[j])
        acc[4 * i + 3] += ga + g_r[i]


@njit(parallel=True, fastmath=FM, cache=True)
def _bwd_camera(vol, lab, C, D, H, W, n, M, src, tgt, N, gout, n_groups, chunk, dM):
    """``dM[g, b]``: group ``g``'s part of ``∂L/∂M[b]`` (rows 0-2, flat), for the output gradient
    ``gout`` (flat ``[B, C, N]``); ``lab`` has size 0 for one channel."""
    R = gout.shape[0] // C
    n_chunks = (R + chunk - 1) // chunk
    for g in prange(n_groups):
        rays = _ray_buffers(chunk)
        dstart, ddelta = np.empty((chunk, 3), np.float64), np.empty((chunk, 3), np.float64)
        dstep = np.empty(chunk, np.float64)
        for ck in range(g, n_chunks, n_groups):
            r0, m = _chunk_rays(M, src, tgt, N, D, H, W, n, R, ck, chunk, rays)
            bwd_rays_chunk(vol, lab, C, N, D, H, W, gout, rays[0], rays[1], rays[2], n, NO_COUNT, dstart, ddelta,
                           dstep, True, True, 0, m, r0)  # fmt: skip
            for k in range(m):
                r = r0 + k
                b = r // N
                i = r - b * N
                bm, s, t = ray_ends(M, src, tgt, b, i)
                _pose_grad(M[bm], s, t, D, H, W, n, dstart[k], ddelta[k], dstep[k], dM[g, bm])


def camera_arrays(cam_to_voxel: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor):
    """NumPy views for the kernels: the transform in float64, the ray ends as they are when float32
    or float64 (a float64 copy of ``tgt`` would cost 6 MB at 512×512; the kernels promote per ray)."""
    m = cam_to_voxel.detach().to(torch.float64).contiguous().numpy()
    s, t = (
        x.detach().contiguous().numpy()
        if x.dtype in (torch.float32, torch.float64)
        else x.detach().double().numpy()
        for x in (src, tgt)
    )
    if s.dtype != t.dtype:  # one kernel per dtype pair is enough
        s = s.astype(np.float64)
        t = t.astype(np.float64)
    return m, s, t


def raymarch_rays(
    vol: torch.Tensor,
    lab: torch.Tensor | None,
    n_classes: int,
    cam_to_voxel: torch.Tensor,
    src: torch.Tensor,
    tgt: torch.Tensor,
    n_samples: int,
) -> torch.Tensor:
    """The ray march of camera rays, geometry and march fused, differentiable w.r.t. ``cam_to_voxel`` only.

    Args:
        vol: ``[D, H, W]`` μ on the CPU (float32, float16 or bfloat16 read natively).
        lab: ``[D, H, W]`` integer labels, or ``None`` (required when ``n_classes > 1``).
        n_classes: ``C >= 1`` output channels.
        cam_to_voxel: ``[B | 1, 4, 4]``. src: ``[B | 1, N | 1, 3]``; tgt: ``[B | 1, N, 3]`` (camera mm).
        n_samples: ``S >= 1`` midpoint samples per ray.

    Returns:
        ``[B, C, N]`` float32: ``march.raymarch`` on :func:`~nanodrr_engine.drr.rays.sample_geometry`.
    """
    if not is_available():
        raise RuntimeError(f"numba backend: numba could not be imported ({IMPORT_ERROR!r})")
    check_march_args(vol, lab, n_classes, n_samples)
    check_pose_only_grad(vol=vol, src=src, tgt=tgt)
    vol = kernel_volume(vol)
    lab = kernel_labels(lab, n_classes)
    check_ray_count(camera_batch(cam_to_voxel, src, tgt), tgt.shape[1], n_classes, "tgt")
    return _rays_op(vol.detach().contiguous(), lab, n_classes, cam_to_voxel, src, tgt, n_samples)


def _rays_impl(vol, lab, n_classes, cam_to_voxel, src, tgt, n_samples):
    B = camera_batch(cam_to_voxel, src, tgt)
    N = tgt.shape[1]
    m, s, t = camera_arrays(cam_to_voxel, src, tgt)
    out = (torch.zeros if n_classes > 1 else torch.empty)(B, n_classes, N, dtype=torch.float32)
    D, H, W = vol.shape
    lab_np = None if lab is None else lab.reshape(-1).numpy()
    _fwd_camera(
        vol_np(vol), lab_np, n_classes, D, H, W, m, s, t, N, n_samples, out.view(-1).numpy(), *schedule(B * N)
    )
    return out


def pose_gradient(grad, cam_to_voxel, src, tgt, backward_kernel, *args) -> torch.Tensor:
    """``∂loss/∂cam_to_voxel`` ``[B | 1, 4, 4]`` from ``backward_kernel(*args, m, s, t, N, g, groups, chunk,
    dM)``, which adds each thread group's ``3 × 4`` partials of camera ``b`` into ``dM[group, b]``."""
    N = tgt.shape[1]
    m, s, t = camera_arrays(cam_to_voxel, src, tgt)
    groups, chunk = schedule(grad.shape[0] * N)
    dM = np.zeros((groups, m.shape[0], 12), np.float64)
    g = grad.detach().to(torch.float32).contiguous().view(-1).numpy()
    backward_kernel(*args, m, s, t, N, g, groups, chunk, dM)
    out = torch.zeros(m.shape[0], 4, 4, dtype=torch.float64)
    out[:, :3, :] = torch.from_numpy(dM.sum(axis=0)).view(-1, 3, 4)  # groups summed in a fixed order
    return out.to(cam_to_voxel.dtype)


def camera_batch(cam_to_voxel: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor) -> int:
    """The number of images of broadcast camera rays ``[B | 1, ...]``."""
    return max(cam_to_voxel.shape[0], src.shape[0], tgt.shape[0])


def pose_op(name: str, args: str, forward, kernel_args):
    """A fused CPU op of camera rays (``args`` name ``vol``, ``cam_to_voxel``, ``src``, ``tgt`` and maybe
    ``n_classes``) giving ``[B, C, N]`` float32, differentiable w.r.t. ``cam_to_voxel`` only: its backward
    is :func:`pose_gradient` of ``kernel_args(*inputs) = (kernel, *its arguments)``."""
    names = [arg.strip().rsplit(" ", 1)[1] for arg in args.split(",")]

    def fake(*inputs):
        x = dict(zip(names, inputs, strict=True))
        B, C = camera_batch(x["cam_to_voxel"], x["src"], x["tgt"]), x.get("n_classes", 1)
        return x["vol"].new_empty(B, C, x["tgt"].shape[1], dtype=torch.float32)

    def backward(grad, *inputs, needs):
        x = dict(zip(names, inputs, strict=True))
        return [pose_gradient(grad, x["cam_to_voxel"], x["src"], x["tgt"], *kernel_args(*inputs))]

    return fused_op(name, args, forward, fake, backward, differentiable=("cam_to_voxel",), device_types="cpu")


# Opaque to torch.compile, as the other numba ops; gradients to cam_to_voxel only.
_rays_op = pose_op(
    "numba_raymarch_rays",
    "Tensor vol, Tensor? lab, int n_classes, Tensor cam_to_voxel, Tensor src, Tensor tgt, int n_samples",
    _rays_impl,
    lambda vol, lab, n_classes, cam_to_voxel, src, tgt, n_samples: (
        (
            _bwd_camera,
            vol_np(vol),
            EMPTY_LAB if lab is None else lab.reshape(-1).numpy(),
            n_classes,
            *vol.shape,
            n_samples,
        )
    ),
)

"""Fused CPU slice march (numba): Joseph's method, the fast path of ``method="joseph"``.

Contract (the torch reference is ``torch_ref.raymarch(..., count=count)`` on the samples of
:func:`~nanodrr_engine.drr.rays.slice_geometry`): ``out[r] = step[r] · Σ_{s < count[r]} μ(start[r] +
s·delta[r])`` with zero-padded trilinear μ, i.e. the ray march with a per-ray sample count. Every
sample lies on a voxel plane of the ray's dominant axis ``m`` (``start[m]`` an integer, ``delta[m] =
±1``), where trilinear interpolation is bilinear: on j- and k-planes a sample reads two 8-byte voxel
pairs along i instead of four. On i-planes the in-plane neighbours are not adjacent in memory; four
single-voxel gathers measured ~1.6× slower than the general trilinear loop with its pair loads, so
those rays (and any ray not of plane form) take the trilinear loop of :mod:`.numba_cpu`.

:func:`slicemarch_rays` fuses the geometry (float64, per ray) with the march: the torch geometry
costs 4-10 ms for a 256×256 image on 2 cores, more than a tenth of the render.

Measured (2-core VM, 512×512×133 chest CT, medians, ray march = the 500-sample numba kernel with its
ray-pair and segment optimisations, same run): 200×200 48 vs 57 ms; 256×256 through the Slicer logic
4-13 % faster (live C-arm update 63 vs 72 ms); 512×512 no gain (238 vs 236 ms), where the ray march's
ray pairs reuse more cache. The march is bound by gather latency, not bandwidth: float16 voxels and a
plane-by-plane sweep of ray blocks (L1-resident planes) were measured and gave nothing.

Forward only: ``render`` sends gradient-requiring and labelmap renders to the torch reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._contract import check_volume
from .numba_cpu import (
    _F0,
    _FM,
    _FMV,
    _IMPORT_ERROR,
    _NAN,
    _add32,
    _finite_ray,
    _flat32,
    _ld_pair,
    _ray_interior,
    _sample_checked,
    _sum_inner,
    _threads,
    _vol_np,
    _wide_vectors,
    is_available,
    njit,
    prange,
)


@njit(fastmath=_FMV, cache=True)
def _inner_j(vol, H, W, x0, y0, z0, dx, dy, dz, s0, s1):
    """Σ μ over interior samples on j-planes (``y`` integer): bilinear in (i, k), two pair loads."""
    _wide_vectors()
    acc = _F0
    HW = H * W
    for s in range(s0, s1):
        sf = np.float32(s)
        x = x0 + sf * dx
        z = z0 + sf * dz
        fx = np.floor(x)
        fz = np.floor(z)
        tx = x - fx
        tz = z - fz
        i = _flat32(fx, y0 + sf * dy, fz, H, W)
        a0, a1 = _ld_pair(vol, i)
        b0, b1 = _ld_pair(vol, _add32(i, HW))
        c0 = a0 + tx * (a1 - a0)
        c1 = b0 + tx * (b1 - b0)
        acc += c0 + tz * (c1 - c0)
    return acc


@njit(fastmath=_FMV, cache=True)
def _inner_k(vol, H, W, x0, y0, z0, dx, dy, dz, s0, s1):
    """Σ μ over interior samples on k-planes (``z`` integer): bilinear in (i, j), two pair loads."""
    _wide_vectors()
    acc = _F0
    for s in range(s0, s1):
        sf = np.float32(s)
        x = x0 + sf * dx
        y = y0 + sf * dy
        fx = np.floor(x)
        fy = np.floor(y)
        tx = x - fx
        ty = y - fy
        i = _flat32(fx, fy, z0 + sf * dz, H, W)
        a0, a1 = _ld_pair(vol, i)
        b0, b1 = _ld_pair(vol, _add32(i, W))
        c0 = a0 + tx * (a1 - a0)
        c1 = b0 + tx * (b1 - b0)
        acc += c0 + ty * (c1 - c0)
    return acc


@njit(fastmath=_FM, cache=True)
def _slice_ray(vol, D, H, W, x0, y0, z0, dx, dy, dz, n):
    """Σ μ over samples ``[0, n)`` of one ray: checked ends, bilinear (or trilinear) interior."""
    a, b = _ray_interior(x0, y0, z0, dx, dy, dz, D, H, W, n)
    acc = _F0
    for s in range(0, a):
        sf = np.float32(s)
        acc += _sample_checked(vol, D, H, W, x0 + sf * dx, y0 + sf * dy, z0 + sf * dz)
    if b > a:
        ax, ay, az = abs(dx), abs(dy), abs(dz)
        if ay > ax and ay >= az and ay == 1.0 and y0 == np.floor(y0):
            acc += _inner_j(vol, H, W, x0, y0, z0, dx, dy, dz, a, b)
        elif az > ax and az >= ay and az == 1.0 and z0 == np.floor(z0):
            acc += _inner_k(vol, H, W, x0, y0, z0, dx, dy, dz, a, b)
        else:  # not on planes: the general trilinear loop
            acc += _sum_inner(vol, H, W, x0, y0, z0, dx, dy, dz, a, b)
    for s in range(max(a, b), n):
        sf = np.float32(s)
        acc += _sample_checked(vol, D, H, W, x0 + sf * dx, y0 + sf * dy, z0 + sf * dz)
    return acc


@njit(fastmath=_FM, cache=True)
def _slice_setup(ax, ay, az, bx, by, bz, D, H, W):
    """Joseph's samples of the ray ``a → b`` (voxel coordinates, float64), as ``slice_geometry``.

    Returns ``(x0, y0, z0, dx, dy, dz, mm per sample per mm of ray, count)``.
    """
    rx, ry, rz = bx - ax, by - ay, bz - az
    t0, t1 = 0.0, 1.0
    for p, r, size in ((ax, rx, W), (ay, ry, H), (az, rz, D)):
        if abs(r) < 1e-150:
            if not (p >= -1.0 and p <= size):
                return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
            continue
        ta = (-1.0 - p) / r
        tb = (size - p) / r
        t0 = max(t0, min(ta, tb))
        t1 = min(t1, max(ta, tb))
    t0 = min(max(t0, 0.0), 1.0)
    t1 = min(max(t1, 0.0), 1.0)
    if not t1 > t0:  # misses (or grazes) the box
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    # the dominant axis: the first of the largest |ray| (as torch's argmax)
    if abs(rx) >= abs(ry) and abs(rx) >= abs(rz):
        rm, am, last = rx, ax, W - 1.0
    elif abs(ry) >= abs(rz):
        rm, am, last = ry, ay, H - 1.0
    else:
        rm, am, last = rz, az, D - 1.0
    e0 = am + t0 * rm
    e1 = am + t1 * rm
    lo = max(np.ceil(min(e0, e1)), 0.0)
    hi = min(np.floor(max(e0, e1)), last)
    if hi < lo or rm == 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    first = lo if rm > 0 else hi
    tf = (first - am) / rm
    x0, y0, z0 = ax + tf * rx, ay + tf * ry, az + tf * rz
    if rm == rx:
        x0 = first
    elif rm == ry:
        y0 = first
    else:
        z0 = first
    inv = 1.0 / abs(rm)
    return x0, y0, z0, rx * inv, ry * inv, rz * inv, inv, int(hi - lo) + 1


@njit(fastmath=_FM, cache=True)
def _slice_ray_from_camera(vol, D, H, W, M, s, t):
    """Joseph's line integral along camera-space ``s → t`` (``M``: camera → voxel, float64)."""
    ax = M[0, 0] * s[0] + M[0, 1] * s[1] + M[0, 2] * s[2] + M[0, 3]
    ay = M[1, 0] * s[0] + M[1, 1] * s[1] + M[1, 2] * s[2] + M[1, 3]
    az = M[2, 0] * s[0] + M[2, 1] * s[1] + M[2, 2] * s[2] + M[2, 3]
    bx = M[0, 0] * t[0] + M[0, 1] * t[1] + M[0, 2] * t[2] + M[0, 3]
    by = M[1, 0] * t[0] + M[1, 1] * t[1] + M[1, 2] * t[2] + M[1, 3]
    bz = M[2, 0] * t[0] + M[2, 1] * t[1] + M[2, 2] * t[2] + M[2, 3]
    length = math.sqrt((t[0] - s[0]) ** 2 + (t[1] - s[1]) ** 2 + (t[2] - s[2]) ** 2)
    x0, y0, z0, dx, dy, dz, inv, cnt = _slice_setup(ax, ay, az, bx, by, bz, D, H, W)
    if cnt <= 0:
        return _F0
    if not (_finite_ray(x0, y0, z0, dx, dy, dz) and math.isfinite(length)):
        return _NAN
    acc = _slice_ray(
        vol, D, H, W, np.float32(x0), np.float32(y0), np.float32(z0),
        np.float32(dx), np.float32(dy), np.float32(dz), np.int64(cnt),
    )  # fmt: skip
    return np.float32(length * inv) * acc


@njit(parallel=True, fastmath=_FM, cache=True)
def _fwd_slice_rays(vol, D, H, W, cam_to_voxel, src, tgt, out, n_groups, chunk):
    """``out[b, n]``: Joseph's line integral along ``src[b|0, n|0] → tgt[b|0, n]`` (camera mm).

    Geometry per ray in float64 (as ``slice_geometry``), marched at once. Contiguous chunks of
    rays (neighbours share cache lines) are dealt round-robin to one group per thread, which
    balances the image's uneven work (a static split of the image in halves does not: ~20 % slower).
    """
    B, N = out.shape
    R = B * N
    n_chunks = (R + chunk - 1) // chunk
    for g in prange(n_groups):
        for ck in range(g, n_chunks, n_groups):
            for r in range(ck * chunk, min(R, ck * chunk + chunk)):
                b = r // N
                n = r - b * N
                out[b, n] = _slice_ray_from_camera(
                    vol, D, H, W,
                    cam_to_voxel[b if cam_to_voxel.shape[0] > 1 else 0],
                    src[b if src.shape[0] > 1 else 0, n if src.shape[1] > 1 else 0],
                    tgt[b if tgt.shape[0] > 1 else 0, n],
                )  # fmt: skip


def slicemarch_rays(
    vol: torch.Tensor, cam_to_voxel: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor
) -> torch.Tensor:
    """Joseph's render straight from camera rays, geometry and march fused (no per-ray tensors).

    Args:
        vol: ``[D, H, W]`` μ on the CPU (float32, float16 or bfloat16).
        cam_to_voxel: ``[B | 1, 4, 4]``. src: ``[B | 1, N | 1, 3]``; tgt: ``[B | 1, N, 3]`` (camera mm).

    Returns:
        ``[B, 1, N]`` float32: ``torch_ref.raymarch(..., count=)`` on :func:`~nanodrr_engine.drr.rays.slice_geometry`.
    """
    if not is_available():
        raise RuntimeError(f"numba backend: numba could not be imported ({_IMPORT_ERROR!r})")
    check_volume(vol)
    if vol.device.type != "cpu":
        raise ValueError(f"vol: the numba backend runs on CPU tensors, got device {vol.device}")
    if vol.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        vol = vol.float()
    B = max(cam_to_voxel.shape[0], src.shape[0], tgt.shape[0])
    N = tgt.shape[1]
    m, s, t = (x.detach().to(torch.float64).contiguous().numpy() for x in (cam_to_voxel, src, tgt))
    out = torch.empty(B, 1, N, dtype=torch.float32)
    D, H, W = vol.shape
    threads = _threads()
    _fwd_slice_rays(
        _vol_np(vol.detach().contiguous()), D, H, W, m, s, t, out.view(B, N).numpy(),
        threads, max(64, -(-B * N // (8 * threads))),
    )  # fmt: skip
    return out

"""Fused CPU slice march (numba): Joseph's method, the fast path of ``method="joseph"``.

Contract (the torch reference is ``torch_ref.raymarch(..., count=count)`` on the samples of
:func:`~nanodrr_engine.drr.rays.slice_geometry`): ``out[r] = step[r] · Σ_{s < count[r]} μ(start[r] +
s·delta[r])`` with zero-padded trilinear μ, i.e. the ray march with a per-ray sample count. Every
sample lies on a voxel plane of the ray's dominant axis ``m`` (``start[m]`` an integer, ``delta[m] =
±1``), where trilinear interpolation is bilinear: on j- and k-planes a sample reads two voxel pairs
along i instead of four (:mod:`.sampling`'s ``bilinear_j`` / ``bilinear_k``). On i-planes the in-plane
neighbours are not adjacent in memory; four single-voxel gathers cost as much as the trilinear loop's
four pair gathers, so those rays (and any ray not of plane form) take the trilinear sampler.

Design (why, with the measurements: ``docs/performance.md``, "CPU kernel design"):

- Geometry and march are fused per ray (float64 geometry).
- Four neighbouring rays of an image row whose samples lie on planes of one axis, in one direction,
  march in lockstep (index ``t`` = ray 0's sample; the others restart at ray 0's first plane): their
  samples on a plane read mostly the same cache lines, and four independent gathers hide each other's
  latency. A chunk's quads march segment by segment (``SEGMENT`` samples of all of them, then the
  next), so the voxels of a segment stay in L2 while the next image rows' rays read them again.
- The interior reads 16-bit fixed-point codes of μ (``code = round(μ / scale)``, ``scale = max μ /
  65535``, computed once per volume and cached, see :func:`fixed_point_codes`): half the bytes and half
  the gather instructions of float32; each voxel is off by at most ``scale / 2``. Rays' checked ends
  read the float volume.

Labelmaps (``_labels_rays_chunk``): the runs of equal nearest labels along each ray are summed and
flushed once into their channel (:mod:`.labels`), neighbouring rays in lockstep pairs (restarted at a
common plane as the quads are), a chunk's pairs segment by segment. The pairs' planes are read as the
plain march reads them (the plane's sampler on the fixed-point codes), plus one nearest-label read per
sample; the rest of a ray (its checked ends and the part outside the pair's common interior) takes the
trilinear float32 labelmap march (``labels.labels_range``).

Pose gradients of plain renders (2D/3D registration, :func:`slicemarch_pose_differentiable`): the
backward recomputes each ray's geometry, marches it once more on float voxels for Σμ, Σ∇μ and Σ s·∇μ
(``sampling.grad_range``) and applies the geometry's chain rule by hand down to the camera → voxel
matrix; neighbouring rays go in lockstep pairs, a chunk's pairs segment by segment. Volume gradients and
labelmaps with gradients take ``march.raymarch`` on ``slice_geometry``'s samples with per-ray counts
(``render._joseph``).
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict

import numpy as np
import torch

from .._contract import check_march_args, check_pose_only_grad, check_ray_count
from .camera import camera_arrays, camera_batch, clip_to_box, pose_op, ray_ends, to_voxel
from .intrinsics import F0, FM, IMPORT_ERROR, MIN_COMMON, NAN, is_available, njit, prange
from .labels import channel0_index, flush, labels_range
from .lockstep import (
    finish,
    lockstep_buffers,
    lockstep_grad_sums,
    lockstep_labels,
    lockstep_sums,
    ray_tuple,
    store_sums,
)
from .march import kernel_labels, kernel_volume, schedule, vol_np
from .sampling import (
    NO_PLANE,
    finite_ray,
    grad_range,
    ray_interior,
    sum_range,
)

#: Rays marched in lockstep.
_LANES = 4
_quad_sums = lockstep_sums(_LANES)
#: Largest fixed-point code.
_CODE_MAX = 65535
#: Volumes (by identity) whose fixed-point codes are kept.
_CACHED_VOLUMES = 2


# ---------------------------------------------------------------------------------------------
# Rays
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FM, cache=True)
def _plane_axis(p):
    """0 / 1 / 2 when every sample of ray ``p`` lies on an i- / j- / k-plane, else ``NO_PLANE``."""
    ax, ay, az = abs(p[3]), abs(p[4]), abs(p[5])
    if ax >= ay and ax >= az and ax == 1.0 and p[0] == np.floor(p[0]):
        return 0
    if ay > ax and ay >= az and ay == 1.0 and p[1] == np.floor(p[1]):
        return 1
    if az > ax and az >= ay and az == 1.0 and p[2] == np.floor(p[2]):
        return 2
    return NO_PLANE


@njit(fastmath=FM, cache=True)
def _slice_ray(vol, code, q, D, H, W, p, n):
    """Σ μ over samples ``[0, n)`` of one ray ``p`` (float32)."""
    a, b = ray_interior(p, D, H, W, n)
    return sum_range(vol, code, q, D, H, W, p, _plane_axis(p), 0, n, a, b)


@njit(fastmath=FM, cache=True)
def _slice_setup(ax, ay, az, bx, by, bz, D, H, W):
    """Joseph's samples of the ray ``a → b`` (voxel coordinates, float64), as ``slice_geometry``.

    Returns ``(x0, y0, z0, dx, dy, dz, mm per sample per mm of ray, count)``.
    """
    rx, ry, rz = bx - ax, by - ay, bz - az
    t0, t1 = clip_to_box(ax, ay, az, rx, ry, rz, D, H, W)
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


@njit(fastmath=FM, cache=True)
def _joseph_ray(D, H, W, M, s, t):
    """Joseph's samples of camera-space ``s → t`` (``M``: camera → voxel, float64), with what the pose
    gradient needs: ``(a, r, length, p, inv, n)`` (voxel start ``a = M·s`` and ray ``r = M·(t − s)``,
    float64; mm; ``p`` = (x0, y0, z0, dx, dy, dz) in float32; 1/|r_m|; the sample count, 0 for a miss
    and -1 for a non-finite ray)."""
    ax, ay, az, bx, by, bz, length = to_voxel(M, s, t)
    x0, y0, z0, dx, dy, dz, inv, cnt = _slice_setup(ax, ay, az, bx, by, bz, D, H, W)
    if cnt > 0 and not (finite_ray((x0, y0, z0, dx, dy, dz)) and math.isfinite(length)):
        cnt = -1
    p = (np.float32(x0), np.float32(y0), np.float32(z0), np.float32(dx), np.float32(dy), np.float32(dz))
    return (ax, ay, az), (bx - ax, by - ay, bz - az), length, p, inv, np.int64(cnt)


@njit(fastmath=FM, cache=True)
def _camera_ray(D, H, W, M, s, t):
    """``_joseph_ray``'s ``(p, mm per sample, n)``: what the forward marches."""
    _, _, length, p, inv, cnt = _joseph_ray(D, H, W, M, s, t)
    return p, np.float32(length * inv), cnt


@njit(fastmath=FM, cache=True)
def _ray_of(D, H, W, cam_to_voxel, src, tgt, b, n):
    """``_camera_ray`` of pixel ``n`` of image ``b`` (broadcasting the batch and the source)."""
    bm, s, t = ray_ends(cam_to_voxel, src, tgt, b, n)
    return _camera_ray(D, H, W, cam_to_voxel[bm], s, t)


@njit(fastmath=FM, cache=True)
def _single(vol, code, q, D, H, W, cam_to_voxel, src, tgt, out, r, N):
    b = r // N
    p, scale, cnt = _ray_of(D, H, W, cam_to_voxel, src, tgt, b, r - b * N)
    out[r] = finish(_slice_ray(vol, code, q, D, H, W, p, cnt) if cnt > 0 else F0, scale, cnt)


@njit(fastmath=FM, cache=True)
def _setup_lockstep(D, H, W, cam_to_voxel, src, tgt, r, N, k, buffers):
    """Geometry of rays ``r, r + 1, ...`` (one per lane) into row ``k`` of ``buffers``; whether they march
    in lockstep.

    They do when their samples lie on planes of one axis, in one direction, in one image: lockstep
    index ``t`` is ray 0's sample index, ray ``j``'s sample ``t - OF[k, j]`` lies on the same plane, and
    ``PL[k, j]`` is ray ``j`` restarted at ray 0's first plane (its plane coordinate stays an exact
    integer). ``LH[k]`` is the common interior in lockstep indices (empty when they do not, or when it
    is too short to be worth it).
    """
    P, PL, SC, CN, AB, OF, LH, AX = buffers
    lanes = P.shape[1]
    axis = NO_PLANE
    ok = (r % N) + lanes <= N
    for j in range(lanes):
        b = (r + j) // N
        p, scale, cnt = _ray_of(D, H, W, cam_to_voxel, src, tgt, b, r + j - b * N)
        for c in range(6):
            P[k, j, c] = p[c]
        SC[k, j] = scale
        CN[k, j] = cnt
        a = _plane_axis(p)
        if j == 0:
            axis = a
        ok = ok and cnt > 0 and a != NO_PLANE and a == axis and p[a + 3] == P[k, 0, a + 3]
    AX[k] = axis
    lo = 0
    hi = 0
    if ok:
        hi = 1 << 62
        sign = np.float64(P[k, 0, axis + 3])
        for j in range(lanes):
            a, e = ray_interior(ray_tuple(P, k, j), D, H, W, CN[k, j])
            o = int((np.float64(P[k, j, axis]) - np.float64(P[k, 0, axis])) * sign)
            AB[k, j, 0] = a
            AB[k, j, 1] = e
            OF[k, j] = o
            for c in range(3):
                PL[k, j, c] = np.float32(np.float64(P[k, j, c]) - o * np.float64(P[k, j, c + 3]))
                PL[k, j, c + 3] = P[k, j, c + 3]
            lo = max(lo, a + o)
            hi = min(hi, e + o)
    if hi - lo < MIN_COMMON:
        lo = hi = 0
    LH[k, 0] = lo
    LH[k, 1] = hi
    return hi > lo


@njit(fastmath=FM, cache=True)
def _slice_rays_chunk(vol, code, q, D, H, W, cam_to_voxel, src, tgt, N, out, r0, end):
    """``out[r]`` for the rays ``r0 ≤ r < end``: Joseph's line integral along ``src[b|0, n|0] → tgt[b|0,
    n]`` (camera mm) of pixel ``n = r % N`` of image ``b``. ``vol``: the float voxels (read by the rays'
    checked ends); ``code``: what the interior reads (``vol`` itself with ``q`` None, or fixed-point codes
    of scale ``q``). The chunk's quads of neighbouring rays are set up first, then marched together
    segment by segment over their common interior; each ray's checked ends follow."""
    nq = (end - r0) // _LANES
    buffers = lockstep_buffers(nq, _LANES)
    P, _, SC, CN, _, _, _, _ = buffers
    for k in range(nq):
        if not _setup_lockstep(D, H, W, cam_to_voxel, src, tgt, r0 + _LANES * k, N, k, buffers):
            for j in range(_LANES):
                cnt = CN[k, j]
                acc = _slice_ray(vol, code, q, D, H, W, ray_tuple(P, k, j), cnt) if cnt > 0 else F0
                out[r0 + _LANES * k + j] = finish(acc, SC[k, j], cnt)
    for r in range(r0 + _LANES * nq, end):
        _single(vol, code, q, D, H, W, cam_to_voxel, src, tgt, out, r, N)
    store_sums(out, r0, buffers, _quad_sums(vol, code, q, D, H, W, buffers))


@njit(fastmath=FM, cache=True)
def _labels_one(vol, lab, D, H, W, C, N, p, scale, cnt, out, base):
    """One ray's channels (``_camera_ray``'s ``p, scale, cnt``) into the flat ``[B, C, N]`` ``out``
    (zeroed) from ``base``: each run of equal nearest labels is summed, then flushed once."""
    if cnt < 0:  # non-finite ray
        for c in range(C):
            out[base + c * N] = NAN
        return
    if cnt == 0:
        return
    a, e = ray_interior(p, D, H, W, cnt)
    cur, acc = labels_range(vol, lab, D, H, W, C, N, p, 0, cnt, a, e, np.int64(-1), F0, out, base, scale)
    flush(out, base, N, C, cur, scale, acc)


@njit(fastmath=FM, cache=True)
def _labels_rays_chunk(vol, code, q, lab, D, H, W, C, N, cam_to_voxel, src, tgt, out, r0, end):
    """Rays ``r0 ≤ r < end`` into the flat ``[B, C, N]`` ``out`` (zeroed). Neighbouring rays go in
    pairs, in lockstep over their common interior, all the chunk's pairs one ``RUN_BUF`` segment after
    the other (the segment's voxels and labels stay in L2 for the next image rows' rays, as in
    ``march.labels_rays``); each pair's open runs wait in between."""
    n_pairs = (end - r0) // 2
    buffers = lockstep_buffers(n_pairs, 2)
    P, _, SC, CN, _, _, _, _ = buffers
    for k in range(n_pairs):
        if not _setup_lockstep(D, H, W, cam_to_voxel, src, tgt, r0 + 2 * k, N, k, buffers):
            for j in range(2):
                base = channel0_index(r0 + 2 * k + j, N, C)
                _labels_one(vol, lab, D, H, W, C, N, ray_tuple(P, k, j), SC[k, j], CN[k, j], out, base)
    if r0 + 2 * n_pairs < end:
        r = end - 1
        b = r // N
        p, scale, cnt = _ray_of(D, H, W, cam_to_voxel, src, tgt, b, r - b * N)
        _labels_one(vol, lab, D, H, W, C, N, p, scale, cnt, out, channel0_index(r, N, C))
    lockstep_labels(vol, code, q, lab, D, H, W, C, N, buffers, out, r0)


@njit(parallel=True, fastmath=FM, cache=True)
def _fwd_slices(vol, code, q, lab, D, H, W, C, N, cam_to_voxel, src, tgt, out, n_groups, chunk):
    """``out[(b·C + c)·N + n]``: Joseph's line integral along pixel ``n``'s ray of image ``b`` through the
    voxels labelled ``c`` (nearest label; ``out`` zeroed), or through all of them (``lab`` None, one
    channel). Contiguous chunks of rays (neighbours share cache lines) are dealt round-robin to one group
    per thread, which balances the image's uneven work."""
    R = out.shape[0] // C
    for g in prange(n_groups):
        for ck in range(g, (R + chunk - 1) // chunk, n_groups):
            r0, end = ck * chunk, min(R, ck * chunk + chunk)
            if lab is None:  # resolved at compile time
                _slice_rays_chunk(vol, code, q, D, H, W, cam_to_voxel, src, tgt, N, out, r0, end)
            else:
                _labels_rays_chunk(vol, code, q, lab, D, H, W, C, N, cam_to_voxel, src, tgt, out, r0, end)


# ---------------------------------------------------------------------------------------------
# Pose gradient (registration): the camera → voxel matrix only
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FM, cache=True)
def _pose_chain(a, r, length, p, inv, s, t, g, sums, acc):
    """Add ``∂L/∂M`` (rows 0-2 of the camera → voxel matrix, flat) of one ray to ``acc[12]``, given
    ``g = ∂L/∂out`` of its pixel and its march's ``sums`` = (Σμ, Σ∇μ, Σ s·∇μ) on float voxels.

    The geometry's chain rule is ``slice_geometry``'s under autograd: with the dominant axis ``m``,
    ``start_c = a_c + τ·r_c``, ``τ = (first − a_m) / r_m``, for the other axes (``start_m = first``: a
    plane, constant), ``delta_c = r_c / |r_m|`` (``delta_m = ±1``) and ``step = ‖t − s‖ / |r_m|``; the
    plane range (first, count) is piecewise constant.
    """
    sm, gx, gy, gz, sx, sy, sz = sums
    step = length * inv
    gw = np.float64(g) * step
    g_start = (gw * gx, gw * gy, gw * gz)
    g_delta = (gw * sx, gw * sy, gw * sz)
    m = 0 if abs(r[0]) >= abs(r[1]) and abs(r[0]) >= abs(r[2]) else (1 if abs(r[1]) >= abs(r[2]) else 2)
    rm = r[m]
    tau = (np.float64(p[m]) - a[m]) / rm
    g_a = [0.0, 0.0, 0.0]
    g_r = [0.0, 0.0, 0.0]
    g_r[m] = -np.float64(g) * np.float64(sm) * step / rm  # step = length / |r_m|
    for c in range(3):
        if c == m:
            continue
        g_a[c] += g_start[c]
        g_a[m] -= g_start[c] * r[c] / rm
        g_r[c] += g_start[c] * tau + g_delta[c] * inv
        g_r[m] -= (g_start[c] * tau * r[c] + g_delta[c] * r[c] * inv) / rm
    for i in range(3):  # a = M·s, r = M·t − M·s
        ga = g_a[i] - g_r[i]
        for j in range(3):
            acc[4 * i + j] += ga * np.float64(s[j]) + g_r[i] * np.float64(t[j])
        acc[4 * i + 3] += ga + g_r[i]


@njit(fastmath=FM, cache=True)
def _pose_ray(vol, D, H, W, M, src, tgt, N, gout, r, dM):
    """``_pose_chain`` of ray ``r`` (pixel ``r % N`` of image ``r // N``) on its own, into ``dM[b]``."""
    b = r // N
    bm, s, t = ray_ends(M, src, tgt, b, r - b * N)
    a, ray, length, p, inv, cnt = _joseph_ray(D, H, W, M[bm], s, t)
    if cnt > 0 and gout[r] != 0.0:
        lo, hi = ray_interior(p, D, H, W, cnt)
        sums = grad_range(vol, D, H, W, p, 0, cnt, lo, hi)
        _pose_chain(a, ray, length, p, inv, s, t, gout[r], sums, dM[bm])


@njit(fastmath=FM, cache=True)
def _pose_rays_chunk(vol, D, H, W, M, src, tgt, N, gout, r0, end, dM):
    """``_pose_chain`` of rays ``r0 ≤ r < end`` into ``dM[b]`` (their images' matrices). Neighbouring
    rays go in pairs, in lockstep over their common interior when their samples lie on planes of one
    axis in one direction (``_setup_lockstep``), all the chunk's pairs one ``SEGMENT`` after the other
    (as the forward's quads)."""
    n_pairs = (end - r0) // 2
    buffers = lockstep_buffers(n_pairs, 2)
    LH = buffers[6]
    for k in range(n_pairs):
        if not _setup_lockstep(D, H, W, M, src, tgt, r0 + 2 * k, N, k, buffers):
            _pose_ray(vol, D, H, W, M, src, tgt, N, gout, r0 + 2 * k, dM)
            _pose_ray(vol, D, H, W, M, src, tgt, N, gout, r0 + 2 * k + 1, dM)
    if r0 + 2 * n_pairs < end:
        _pose_ray(vol, D, H, W, M, src, tgt, N, gout, end - 1, dM)
    SUMS = lockstep_grad_sums(vol, D, H, W, buffers)
    for k in range(n_pairs):
        for j in range(2 if LH[k, 1] > LH[k, 0] else 0):
            r = r0 + 2 * k + j
            b = r // N
            bm, s, t = ray_ends(M, src, tgt, b, r - b * N)
            a, rr, length, x, inv, _ = _joseph_ray(D, H, W, M[bm], s, t)
            sums = (SUMS[k, j, 0], SUMS[k, j, 1], SUMS[k, j, 2], SUMS[k, j, 3], SUMS[k, j, 4], SUMS[k, j, 5],
                    SUMS[k, j, 6])  # fmt: skip
            if gout[r] != 0.0:
                _pose_chain(a, rr, length, x, inv, s, t, gout[r], sums, dM[bm])


@njit(parallel=True, fastmath=FM, cache=True)
def _bwd_slice_camera(vol, D, H, W, M, src, tgt, N, gout, n_groups, chunk, dM):
    """``dM[g, b]``: group ``g``'s part of ``∂L/∂M[b]`` (rows 0-2, flat) for the output gradient
    ``gout`` (flat ``[B, N]``); each group sums its chunks' rays in a fixed order (reproducible)."""
    R = gout.shape[0]
    n_chunks = (R + chunk - 1) // chunk
    for g in prange(n_groups):
        for ck in range(g, n_chunks, n_groups):
            _pose_rays_chunk(
                vol, D, H, W, M, src, tgt, N, gout, ck * chunk, min(R, ck * chunk + chunk), dM[g]
            )


def _pose_forward(vol, cam_to_voxel, src, tgt, fixed_point):
    return slicemarch_rays(vol, cam_to_voxel, src, tgt, fixed_point)


# Joseph's plain render, differentiable w.r.t. cam_to_voxel (forward: _fwd_slices).
_pose_op = pose_op(
    "numba_slicemarch_pose",
    "Tensor vol, Tensor cam_to_voxel, Tensor src, Tensor tgt, bool fixed_point",
    _pose_forward,
    lambda vol, cam_to_voxel, src, tgt, fixed_point: (
        (_bwd_slice_camera, vol_np(kernel_volume(vol).detach().contiguous()), *vol.shape)
    ),
)


def slicemarch_pose_differentiable(
    vol: torch.Tensor,
    cam_to_voxel: torch.Tensor,
    src: torch.Tensor,
    tgt: torch.Tensor,
    fixed_point: bool = True,
) -> torch.Tensor:
    """:func:`slicemarch_rays` (plain) with autograd to ``cam_to_voxel`` (2D/3D registration).

    The backward recomputes each ray's geometry and reads float voxels (the forward's fixed-point reads
    are within ~5e-6 of them). ``vol``, ``src`` and ``tgt`` must not require grad: ``render`` sends such
    renders to the torch reference, which differentiates w.r.t. everything.
    """
    check_pose_only_grad(vol=vol, src=src, tgt=tgt)
    return _pose_op(vol, cam_to_voxel, src, tgt, fixed_point)


# ---------------------------------------------------------------------------------------------
# Fixed-point codes
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, fastmath=FM, cache=True)
def _encode(flat, inv_scale, out):
    for i in prange(flat.size):
        out[i] = np.uint16(min(np.floor(np.float32(flat[i]) * inv_scale + np.float32(0.5)), _CODE_MAX))


#: view key → (weak reference to the base tensor, its in-place version, codes, scale)
_codes_cache: OrderedDict[tuple, tuple] = OrderedDict()


def fixed_point_codes(vol: torch.Tensor) -> tuple[np.ndarray, float] | None:
    """``(codes, scale)`` with ``vol ≈ scale · codes`` (uint16, round to nearest), or None.

    Only for float32 volumes whose values are all finite and ≥ 0 (μ) and not all 0. The codes of the
    last few volumes are cached, keyed by the tensor that owns the memory (held weakly: a freed μ
    volume never matches a new one at the same address), the view into it and its in-place version
    counter, so a live series of renders of one subject encodes once. They take half the volume's
    memory; encoding is a small fraction of one render (``docs/performance.md``).
    """
    if vol.dtype != torch.float32 or vol.device.type != "cpu":
        return None
    base = vol if vol._base is None else vol._base
    key = (id(base), vol.storage_offset(), tuple(vol.shape), vol.stride())
    hit = _codes_cache.get(key)
    if hit is not None:
        ref, version, codes, scale = hit
        if ref() is base and version == vol._version:
            _codes_cache.move_to_end(key)
            return codes, scale
        del _codes_cache[key]
    lo, hi = torch.aminmax(vol.detach())
    lo, hi = float(lo), float(hi)
    if not (lo >= 0.0 and 0.0 < hi < math.inf):  # NaN fails too
        return None
    scale = hi / _CODE_MAX
    codes = np.empty(vol.numel(), np.uint16)
    _encode(vol_np(vol.detach().contiguous()), np.float32(1.0 / scale), codes)
    # the entry goes with the volume: a freed μ volume's codes are not kept until evicted
    ref = weakref.ref(base, lambda _, key=key: _codes_cache.pop(key, None))
    _codes_cache[key] = (ref, vol._version, codes, scale)
    while len(_codes_cache) > _CACHED_VOLUMES:
        _codes_cache.popitem(last=False)
    return codes, scale


@torch.compiler.disable  # dynamo cannot trace numba's dispatcher: run eagerly inside compiled code
def slicemarch_rays(
    vol: torch.Tensor,
    cam_to_voxel: torch.Tensor,
    src: torch.Tensor,
    tgt: torch.Tensor,
    fixed_point: bool = True,
    lab: torch.Tensor | None = None,
    n_classes: int = 1,
) -> torch.Tensor:
    """Joseph's render straight from camera rays, geometry and march fused (no per-ray tensors).

    Args:
        vol: ``[D, H, W]`` μ on the CPU (float32, float16 or bfloat16).
        cam_to_voxel: ``[B | 1, 4, 4]``. src: ``[B | 1, N | 1, 3]``; tgt: ``[B | 1, N, 3]`` (camera mm).
        fixed_point: read a float32 volume's interior as 16-bit fixed-point codes (see the module
            docstring; ignored where :func:`fixed_point_codes` declines the volume).
        lab: ``[D, H, W]`` integer labels, required when ``n_classes > 1`` (nearest label per sample;
            labels outside ``[0, n_classes)`` are dropped).
        n_classes: ``C >= 1`` output channels.

    Returns:
        ``[B, C, N]`` float32: ``torch_ref.raymarch(..., count=)`` on :func:`~nanodrr_engine.drr.rays.slice_geometry`.
    """
    if not is_available():
        raise RuntimeError(f"numba backend: numba could not be imported ({IMPORT_ERROR!r})")
    check_march_args(vol, lab, n_classes, 1)
    vol = kernel_volume(vol)
    lab = kernel_labels(lab, n_classes)
    B = camera_batch(cam_to_voxel, src, tgt)
    N = tgt.shape[1]
    check_ray_count(B, N, n_classes, "tgt")
    m, s, t = camera_arrays(cam_to_voxel, src, tgt)
    D, H, W = vol.shape
    flat = vol_np(vol.detach().contiguous())
    groups, chunk = schedule(B * N)
    fixed = fixed_point_codes(vol) if fixed_point else None
    code, q = (flat, None) if fixed is None else (fixed[0], np.float32(fixed[1]))
    out = (torch.zeros if lab is not None else torch.empty)(B, n_classes, N, dtype=torch.float32)
    lab_np = None if lab is None else lab.reshape(-1).numpy()
    _fwd_slices(flat, code, q, lab_np, D, H, W, n_classes, N, m, s, t, out.view(-1).numpy(), groups, chunk)
    return out

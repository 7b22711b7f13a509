"""Fused CPU ray march (numba): the contract op of :mod:`nanodrr_engine.drr.backends`.

Parallel over rays, each ray's running sums in registers, so no per-sample tensor is ever built.
Public API: :func:`raymarch` (a ``torch.library`` custom op with autograd, opaque to
``torch.compile``). Why each choice was made, with the measurements: ``docs/performance.md``,
"CPU kernel design".

- Rays come in contiguous chunks dealt round-robin to one group per thread (balances the image's
  uneven work); neighbouring rays are marched in pairs over their common interior (they read the same
  cache lines), a chunk's pairs segment by segment so that a segment's voxels stay in L2 for the next
  image rows. The samplers and interior loops are :mod:`.sampling`'s, the labelmap runs :mod:`.labels`'.
- float16 / bfloat16 volumes are read natively (converted per load), never copied.
- Per-ray sample counts (``count``, Joseph's slices) replace ``n`` ray by ray in every kernel.

Backward: the per-ray gradients (``start``, ``delta``, ``step``) use the same split march with the
analytic gradient of the interpolant; with labels, runs of equal labels share one output gradient.
The volume gradient is a scatter made race-free and deterministic by slabs: each slab of the volume
is owned by one task, which marches only the samples whose corners touch it, so each voxel sums its
contributions in ray order whatever the thread count (bitwise reproducible, no per-thread copies).

Rays with ``step == 0`` output 0 and get zero start/delta gradients (their dstep, Σ g·μ, is still
computed, as the contract says). Non-finite ``start``/``delta`` give NaN outputs and zero gradients,
never out-of-bounds reads.
"""

from __future__ import annotations

import numpy as np
import torch

from .._contract import check_raymarch_args, check_sample_counts
from ..fused_op import fused_op
from .intrinsics import (
    F0,
    FM,
    IMPORT_ERROR,
    MARGIN,
    MIN_COMMON,
    NAN,
    is_available,
    load_unchecked,
    njit,
    numba,
    prange,
    store_unchecked,
)
from .labels import channel0_index, flush, label_at, labels_range, run_end
from .lockstep import lockstep_grad_sums, lockstep_labels, lockstep_sums, store_sums, trilinear_buffers
from .sampling import (
    add7,
    finite_ray,
    grad_range,
    ray_interior,
    sample_checked,
    sample_interval,
    sum_range,
)

__all__ = ["raymarch"]

#: "No per-ray sample counts": every ray has ``n`` samples.
NO_COUNT = np.zeros(0, np.int64)
EMPTY_LAB = np.zeros(0, np.uint8)
_pair_sums = lockstep_sums(2)


@njit(fastmath=FM, cache=True, inline="always")
def ray_sample_count(cnt, n, r):
    """Ray ``r``'s sample count: ``cnt[r]`` (per-ray counts, Joseph's slices; each ≤ n) or ``n``."""
    return cnt[r] if cnt.size > 0 else n


@njit(fastmath=FM, cache=True)
def _ray(start, delta, step, r):
    """Ray ``r`` as (x0, y0, z0, dx, dy, dz), and whether it is marched (step != 0, finite)."""
    p = (start[r, 0], start[r, 1], start[r, 2], delta[r, 0], delta[r, 1], delta[r, 2])
    return p, step[r] != 0 and finite_ray(p)


@njit(fastmath=FM, cache=True, inline="always")
def _setup_pair(start, delta, step, cnt, n, D, H, W, r0, k, buffers):
    """Rays ``r0 + 2k`` and ``r0 + 2k + 1`` into row ``k`` of the lockstep buffers; whether they march in
    lockstep: both are marched and their common interior is long enough."""
    P, _, SC, CN, AB, _, LH, _ = buffers  # trilinear_buffers: PL is P
    lo, hi = 0, 1 << 62
    for j in range(2):
        r = r0 + 2 * k + j
        p, ok = _ray(start, delta, step, r)
        for c in range(6):
            P[k, j, c] = p[c]
        SC[k, j], CN[k, j] = step[r], ray_sample_count(cnt, n, r)
        AB[k, j, 0], AB[k, j, 1] = ray_interior(p, D, H, W, CN[k, j]) if ok else (0, 0)
        lo, hi = max(lo, AB[k, j, 0]), min(hi, AB[k, j, 1]) if ok else 0
    LH[k, 0], LH[k, 1] = (lo, hi) if hi - lo >= MIN_COMMON else (0, 0)
    return LH[k, 1] > LH[k, 0]


@njit(fastmath=FM, cache=True)
def _plain_single(vol, D, H, W, start, delta, step, n, cnt, r, out, o):
    n = ray_sample_count(cnt, n, r)
    p, ok = _ray(start, delta, step, r)
    if not ok:
        out[r + o] = F0 if step[r] == 0 else NAN
        return
    a, b = ray_interior(p, D, H, W, n)
    out[r + o] = step[r] * sum_range(vol, vol, None, D, H, W, p, None, 0, n, a, b)


@njit(fastmath=FM, cache=True)
def plain_rays(vol, D, H, W, start, delta, step, n, cnt, r0, end, out, o):
    """``out[r + o] = step[r] · Σ_s μ(start[r] + s·delta[r])`` for the rays ``r0 ≤ r < end``.

    Consecutive rays are marched in pairs over their common interior, one ``SEGMENT`` of all the
    pairs after the other: the voxels a segment reads stay in L2 while the next image row's rays,
    which read many of them again, come by.
    """
    n_pairs = (end - r0) // 2
    buffers = trilinear_buffers(n_pairs, 2)
    for k in range(n_pairs):
        if not _setup_pair(start, delta, step, cnt, n, D, H, W, r0, k, buffers):
            for r in range(r0 + 2 * k, r0 + 2 * k + 2):
                _plain_single(vol, D, H, W, start, delta, step, n, cnt, r, out, o)
    if r0 + 2 * n_pairs < end:
        _plain_single(vol, D, H, W, start, delta, step, n, cnt, end - 1, out, o)
    store_sums(out, r0 + o, buffers, _pair_sums(vol, vol, None, D, H, W, buffers))


@njit(fastmath=FM, cache=True)
def _labels_single(vol, lab, D, H, W, C, N, start, delta, step, n, cnt, r, out, o):
    n = ray_sample_count(cnt, n, r)
    p, ok = _ray(start, delta, step, r)
    base = channel0_index(r + o, N, C)
    if not ok:
        if step[r] != 0:  # non-finite geometry
            for c in range(C):
                out[base + c * N] = NAN
        return
    a, b = ray_interior(p, D, H, W, n)
    cur, acc = labels_range(vol, lab, D, H, W, C, N, p, 0, n, a, b, np.int64(-1), F0, out, base, step[r])
    flush(out, base, N, C, cur, step[r], acc)


@njit(fastmath=FM, cache=True)
def labels_rays(vol, lab, D, H, W, C, N, start, delta, step, n, cnt, r0, end, out, o):
    """The labelmap forward of the rays ``r0 ≤ r < end``, whose outputs are those of ray ``r + o``.

    Ray pairs and segments as in ``plain_rays`` (a segment is one ``RUN_BUF`` chunk; each pair's
    open runs wait in between).
    """
    n_pairs = (end - r0) // 2
    buffers = trilinear_buffers(n_pairs, 2)
    for k in range(n_pairs):
        if not _setup_pair(start, delta, step, cnt, n, D, H, W, r0, k, buffers):
            for r in range(r0 + 2 * k, r0 + 2 * k + 2):
                _labels_single(vol, lab, D, H, W, C, N, start, delta, step, n, cnt, r, out, o)
    if r0 + 2 * n_pairs < end:
        _labels_single(vol, lab, D, H, W, C, N, start, delta, step, n, cnt, end - 1, out, o)
    lockstep_labels(vol, vol, None, lab, D, H, W, C, N, buffers, out, r0 + o)


@njit(parallel=True, fastmath=FM, cache=True)
def _fwd_rays(vol, lab, D, H, W, C, N, start, delta, step, n, cnt, out, n_groups, chunk):
    """``out[(b·C + c)·N + i] = step · Σ_s μ(p_s)·[label(p_s) == c]`` (flat; zeroed when there are labels,
    ``lab`` None for one channel) in contiguous chunks of rays dealt round-robin to ``n_groups`` groups."""
    R = step.shape[0]
    for g in prange(n_groups):
        for ck in range(g, (R + chunk - 1) // chunk, n_groups):
            r0, end = ck * chunk, min(R, ck * chunk + chunk)
            if lab is None:  # resolved at compile time
                plain_rays(vol, D, H, W, start, delta, step, n, cnt, r0, end, out, 0)
            else:
                labels_rays(vol, lab, D, H, W, C, N, start, delta, step, n, cnt, r0, end, out, 0)


@njit(fastmath=FM, cache=True)
def _bwd_single(
    vol, lab, C, N, D, H, W, gout, start, delta, step, n, cnt, dstart, ddelta, dstep, pos, need_step, r, o
):
    """``_bwd_rays`` for ray ``r`` alone (its output gradient is that of ray ``r + o``)."""
    n = ray_sample_count(cnt, n, r)
    has_lab = lab.size > 0
    st = step[r]
    sums = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p = (start[r, 0], start[r, 1], start[r, 2], delta[r, 0], delta[r, 1], delta[r, 2])
    if st == 0 and p[3] == 0 and p[4] == 0 and p[5] == 0:
        # render's missed rays: all samples on one point (outside), one evaluation
        if need_step and finite_ray(p):
            lbl = label_at(lab, D, H, W, p[0], p[1], p[2]) if has_lab else np.int64(0)
            if lbl >= 0 and lbl < C:
                gw = np.float64(gout[channel0_index(r + o, N, C) + lbl * N])
                sums = (gw * n * sample_checked(vol, D, H, W, p[0], p[1], p[2]), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    elif (st != 0 or need_step) and finite_ray(p):
        pos_r = pos and st != 0
        a, b = ray_interior(p, D, H, W, n)
        base = channel0_index(r + o, N, C)
        cur = label_at(lab, D, H, W, p[0], p[1], p[2]) if has_lab else np.int64(0)
        s0 = 0
        while s0 < n:
            e, nxt = run_end(lab, D, H, W, p, s0 + 1, n, a, b, cur) if has_lab else (n, np.int64(-1))
            if cur >= 0 and cur < C:
                w = np.float64(gout[base + cur * N])
                if w != 0.0:
                    if pos_r:
                        u = grad_range(vol, D, H, W, p, s0, e, a, b)
                        sums = add7(
                            sums, (w * u[0], w * u[1], w * u[2], w * u[3], w * u[4], w * u[5], w * u[6])
                        )
                    else:
                        m = w * sum_range(vol, vol, None, D, H, W, p, None, s0, e, a, b)
                        sums = (sums[0] + m, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
            cur = nxt
            s0 = e
    _bwd_store(dstart, ddelta, dstep, pos, need_step, r, st, sums)


@njit(fastmath=FM, cache=True)
def _bwd_store(dstart, ddelta, dstep, pos, need_step, r, st, sums):
    """Write ray ``r``'s gradients from its weighted sums (Σgμ, Σg∇μ, Σ s·g∇μ)."""
    if need_step:
        dstep[r] = sums[0]
    if pos:
        for c in range(3):
            dstart[r, c] = st * sums[1 + c]
            ddelta[r, c] = st * sums[4 + c]


@njit(fastmath=FM, cache=True)
def bwd_rays_chunk(
    vol, lab, C, N, D, H, W, gout, start, delta, step, n, cnt, dstart, ddelta, dstep, pos, need_step, r0, end, o
):  # fmt: skip
    """``_bwd_rays`` for the rays ``r0 ≤ r < end``, whose output gradients are those of ray ``r + o``.
    Plain renders march neighbouring rays in pairs, segment by segment, as the forward does."""
    n_pairs = (end - r0) // 2 if lab.size == 0 else 0
    buffers = trilinear_buffers(n_pairs, 2)
    for k in range(n_pairs + 1):  # the last: every ray with labels, else an odd last ray
        if k == n_pairs or not _setup_pair(start, delta, step, cnt, n, D, H, W, r0, k, buffers):
            for r in range(r0 + 2 * k, end if k == n_pairs else r0 + 2 * k + 2):
                _bwd_single(vol, lab, C, N, D, H, W, gout, start, delta, step, n, cnt, dstart, ddelta, dstep,
                            pos, need_step, r, o)  # fmt: skip
    if pos:
        sums = lockstep_grad_sums(vol, D, H, W, buffers)
    else:  # Σ g·μ only
        sums = np.zeros((n_pairs, 2, 7), np.float32)
        sums[:, :, 0] = _pair_sums(vol, vol, None, D, H, W, buffers)
    LH = buffers[6]
    for k in range(n_pairs):
        for j in range(2 if LH[k, 1] > LH[k, 0] else 0):
            r, s, w = r0 + 2 * k + j, sums[k, j], np.float64(gout[r0 + 2 * k + j + o])
            total = (w * s[0], w * s[1], w * s[2], w * s[3], w * s[4], w * s[5], w * s[6])
            _bwd_store(dstart, ddelta, dstep, pos, need_step, r, step[r], total)


@njit(parallel=True, fastmath=FM, cache=True)
def _bwd_rays(
    vol, lab, C, N, D, H, W, gout, start, delta, step, n, cnt, dstart, ddelta, dstep, pos, need_step, n_groups,
    chunk,
):  # fmt: skip
    """Per-ray gradients: dstep = Σ g·μ, dstart = step·Σ g·∇μ, ddelta = step·Σ s·g·∇μ.

    ``g`` is the output gradient of the channel each sample goes to (constant along a run).
    ``lab`` has size 0 for plain renders (``C == 1``); ``pos`` says whether dstart/ddelta are needed
    (else only the cheaper Σ g·μ is computed), ``need_step`` whether dstep is (the only gradient a
    ray with step == 0 can have). ``gout`` is the flat ``[B, C, N]`` output gradient.
    """
    R = step.shape[0]
    n_chunks = (R + chunk - 1) // chunk
    for g in prange(n_groups):
        for ck in range(g, n_chunks, n_groups):
            r0 = ck * chunk
            bwd_rays_chunk(vol, lab, C, N, D, H, W, gout, start, delta, step, n, cnt, dstart, ddelta, dstep,
                           pos, need_step, r0, min(R, r0 + chunk), 0)  # fmt: skip


@njit(fastmath=FM, cache=True)
def _corner_weights(w, tx, ty, tz):
    """``w`` times the 8 trilinear weights, ordered (z, y, x) as corners 000, 001, ..., 111."""
    w0 = w - w * tz
    w1 = w * tz
    w00 = w0 - w0 * ty
    w01 = w0 * ty
    w10 = w1 - w1 * ty
    w11 = w1 * ty
    return (
        w00 - w00 * tx, w00 * tx, w01 - w01 * tx, w01 * tx,
        w10 - w10 * tx, w10 * tx, w11 - w11 * tx, w11 * tx,
    )  # fmt: skip


@njit(fastmath=FM, cache=True)
def _slab_range(p0, d, lo, hi, n):
    """Samples ``[a, b)`` (a superset, with margin) whose corners' coordinate can lie in [lo, hi)."""
    m = MARGIN + 1e-6 * (abs(p0) + n * abs(d))
    return sample_interval(p0, d, lo - 1.0 - m, hi + m, n)


@njit(parallel=True, fastmath=FM, cache=True)
def _bwd_vol(lab, C, N, D, H, W, gout, start, delta, step, n, cnt, axis, slab, n_workers, dvol):
    """dvol[v] += Σ_rays Σ_s step·g·w_v(p_s) (trilinear weight of voxel v), race-free.

    The volume is cut into slabs of ``slab`` planes along ``axis`` (0, 1, 2 = k, j, i); worker
    ``t`` owns slabs t, t + n_workers, ... and writes only corners inside the slab it is on.
    """
    R = step.shape[0]
    has_lab = lab.size > 0
    size = D if axis == 0 else (H if axis == 1 else W)
    n_slabs = (size + slab - 1) // slab
    HW = H * W
    for t in prange(n_workers):
        for sl in range(t, n_slabs, n_workers):
            lo = sl * slab
            hi = min(size, lo + slab)
            for r in range(R):
                st = step[r]
                if st == 0:
                    continue
                x0, y0, z0 = start[r, 0], start[r, 1], start[r, 2]
                dx, dy, dz = delta[r, 0], delta[r, 1], delta[r, 2]
                if not finite_ray((x0, y0, z0, dx, dy, dz)):
                    continue
                n_r = ray_sample_count(cnt, n, r)
                if axis == 0:
                    sa, sb = _slab_range(np.float64(z0), np.float64(dz), lo, hi, n_r)
                elif axis == 1:
                    sa, sb = _slab_range(np.float64(y0), np.float64(dy), lo, hi, n_r)
                else:
                    sa, sb = _slab_range(np.float64(x0), np.float64(dx), lo, hi, n_r)
                base = channel0_index(r, N, C)
                g_plain = gout[base]
                for s in range(sa, sb):
                    sf = np.float32(s)
                    x = x0 + sf * dx
                    y = y0 + sf * dy
                    z = z0 + sf * dz
                    if has_lab:
                        lbl = label_at(lab, D, H, W, x, y, z)
                        if lbl < 0 or lbl >= C:
                            continue
                        gw = gout[base + lbl * N]
                    else:
                        gw = g_plain
                    if gw == 0:
                        continue
                    fx = np.floor(x)
                    fy = np.floor(y)
                    fz = np.floor(z)
                    if not (fx >= -1.0 and fx < W and fy >= -1.0 and fy < H and fz >= -1.0 and fz < D):
                        continue
                    w = st * gw
                    tx = x - fx
                    ty = y - fy
                    tz = z - fz
                    ix = int(fx)
                    iy = int(fy)
                    iz = int(fz)
                    ia = iz if axis == 0 else (iy if axis == 1 else ix)
                    # The same weights on both paths below (the path taken depends on the slab layout,
                    # i.e. on the thread count, and results must not).
                    wts = _corner_weights(w, tx, ty, tz)
                    if (
                        ix >= 0 and ix < W - 1 and iy >= 0 and iy < H - 1 and iz >= 0 and iz < D - 1
                        and ia >= lo and ia + 1 < hi
                    ):  # fmt: skip
                        # all 8 corners inside the volume and this slab: no per-corner checks
                        i = (iz * H + iy) * W + ix
                        store_unchecked(dvol, i, load_unchecked(dvol, i) + wts[0])
                        store_unchecked(dvol, i + 1, load_unchecked(dvol, i + 1) + wts[1])
                        store_unchecked(dvol, i + W, load_unchecked(dvol, i + W) + wts[2])
                        store_unchecked(dvol, i + W + 1, load_unchecked(dvol, i + W + 1) + wts[3])
                        store_unchecked(dvol, i + HW, load_unchecked(dvol, i + HW) + wts[4])
                        store_unchecked(dvol, i + HW + 1, load_unchecked(dvol, i + HW + 1) + wts[5])
                        store_unchecked(dvol, i + HW + W, load_unchecked(dvol, i + HW + W) + wts[6])
                        store_unchecked(dvol, i + HW + W + 1, load_unchecked(dvol, i + HW + W + 1) + wts[7])
                        continue
                    for cz in range(2):
                        kz = iz + cz
                        if kz < 0 or kz >= D or (axis == 0 and (kz < lo or kz >= hi)):
                            continue
                        for cy in range(2):
                            ky = iy + cy
                            if ky < 0 or ky >= H or (axis == 1 and (ky < lo or ky >= hi)):
                                continue
                            for cx in range(2):
                                kx = ix + cx
                                if kx < 0 or kx >= W or (axis == 2 and (kx < lo or kx >= hi)):
                                    continue
                                k = (kz * H + ky) * W + kx
                                store_unchecked(dvol, k, load_unchecked(dvol, k) + wts[4 * cz + 2 * cy + cx])


# ---------------------------------------------------------------------------------------------
# torch glue
# ---------------------------------------------------------------------------------------------

_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def kernel_labels(lab: torch.Tensor | None, n_classes: int) -> torch.Tensor | None:
    """The labels as the kernels read them: ``None`` for one channel (every sample goes to channel 0),
    else contiguous, in a dtype the label loads handle (bool, uint16/32/64 and tiny maps are widened
    once to int64: the 32-bit word loads of 8/16-bit labels need 4 bytes)."""
    if n_classes == 1:
        return None
    if lab.dtype not in _LABEL_DTYPES or lab.numel() < 4:
        lab = lab.to(torch.int64)
    return lab.detach().contiguous()


def kernel_volume(vol: torch.Tensor) -> torch.Tensor:
    """``vol`` in a dtype the kernels read: float32, float16 or bfloat16 (others are cast); a named error
    unless it is on the CPU."""
    if vol.device.type != "cpu":
        raise ValueError(f"vol: the numba backend runs on CPU tensors, got device {vol.device}")
    return vol if vol.dtype in (torch.float32, torch.float16, torch.bfloat16) else vol.float()


def _threads() -> int:
    return int(numba.get_num_threads())


def vol_np(vol: torch.Tensor) -> np.ndarray:
    """Flat numpy view of a float32 / float16 / bfloat16 volume (16-bit kinds as their bits)."""
    flat = vol.detach().reshape(-1)
    if flat.dtype == torch.float16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy()
    return flat.numpy()


def _lab_np(lab: torch.Tensor | None) -> np.ndarray:
    return EMPTY_LAB if lab is None else lab.reshape(-1).numpy()


def _geometry_np(start, delta, step):
    return (
        start.detach().reshape(-1, 3).numpy(),
        delta.detach().reshape(-1, 3).numpy(),
        step.detach().reshape(-1).numpy(),
    )


def schedule(n_rays: int) -> tuple[int, int]:
    """``(n_groups, chunk)``: one group per thread, ~8 contiguous chunks of rays per group."""
    threads = _threads()
    return threads, max(64, -(-n_rays // (8 * threads)))


def _count_np(count: torch.Tensor | None) -> np.ndarray:
    return NO_COUNT if count is None else count.reshape(-1).numpy()


def _forward_impl(vol, lab, n_classes, start, delta, step, n_samples, count):
    D, H, W = vol.shape
    B, N = step.shape
    st, de, sp = _geometry_np(start, delta, step)
    cnt = _count_np(count)
    out = (torch.zeros if lab is not None else torch.empty)(B, n_classes, N, dtype=torch.float32)
    lab_np = None if lab is None else lab.reshape(-1).numpy()
    _fwd_rays(
        vol_np(vol),
        lab_np,
        D,
        H,
        W,
        n_classes,
        N,
        st,
        de,
        sp,
        n_samples,
        cnt,
        out.view(-1).numpy(),
        *schedule(B * N),
    )
    return out


def _backward_impl(grad, vol, lab, n_classes, start, delta, step, n_samples, count, needs):
    need_vol, need_start, need_delta, need_step = needs
    need_pos = need_start or need_delta  # one kernel gives both
    D, H, W = vol.shape
    B, N = step.shape
    st, de, sp = _geometry_np(start, delta, step)
    cnt = _count_np(count)
    g = grad.detach().to(torch.float32).contiguous().view(-1).numpy()
    C = n_classes if lab is not None else 1
    dvol = dstart = ddelta = dstep = None
    if need_pos or need_step:
        dstep64 = np.empty(B * N if need_step else 0, np.float64)
        dstart64 = np.empty((B * N, 3) if need_pos else (0, 3), np.float64)
        ddelta64 = np.empty((B * N, 3) if need_pos else (0, 3), np.float64)
        _bwd_rays(
            vol_np(vol), _lab_np(lab), C, N, D, H, W, g, st, de, sp, n_samples, cnt,
            dstart64, ddelta64, dstep64, need_pos, bool(need_step), *schedule(B * N),
        )  # fmt: skip
        if need_step:
            dstep = torch.from_numpy(dstep64).to(torch.float32).view(B, N)
        if need_pos:
            dstart = torch.from_numpy(dstart64).to(torch.float32).view(B, N, 3)
            ddelta = torch.from_numpy(ddelta64).to(torch.float32).view(B, N, 3)
    if need_vol:
        sizes = (D, H, W)
        workers = _threads()
        # Slabs of contiguous memory (along k) when there are enough of them, else the longest axis.
        axis = 0 if D >= 16 * workers else int(np.argmax(sizes))
        slab = max(2, -(-sizes[axis] // (8 * workers)))
        # np.zeros is calloc: pages are zeroed lazily (huge pages where the OS allows), in parallel
        # with the scatter, instead of a serial memset of the whole volume.
        dv = np.zeros(D * H * W, np.float32)
        _bwd_vol(_lab_np(lab), C, N, D, H, W, g, st, de, sp, n_samples, cnt, axis, slab, workers, dv)
        dvol = torch.from_numpy(dv).view(D, H, W).to(vol.dtype)
    return dvol, dstart, ddelta, dstep


def _forward_fake(vol, lab, n_classes, start, delta, step, n_samples, count):
    return start.new_empty(step.shape[0], n_classes, step.shape[1])


# Opaque to torch.compile (the fake kernel gives the output's shape); gradients to vol and the rays.
_raymarch_op = fused_op(
    "numba_raymarch",
    "Tensor vol, Tensor? lab, int n_classes, Tensor start, Tensor delta, Tensor step, int n_samples, Tensor? count",
    _forward_impl,
    _forward_fake,
    _backward_impl,
    differentiable=("vol", "start", "delta", "step"),
    device_types="cpu",
)


def raymarch(
    vol: torch.Tensor,
    lab: torch.Tensor | None,
    n_classes: int,
    start: torch.Tensor,
    delta: torch.Tensor,
    step: torch.Tensor,
    n_samples: int,
    count: torch.Tensor | None = None,
    width: int = 0,
) -> torch.Tensor:
    """Fused numba ray march; see :mod:`nanodrr_engine.drr.backends` for the exact contract.

    Args:
        vol: ``[D, H, W]`` μ (float32, float16 or bfloat16 read natively; other floats are cast).
        lab: ``[D, H, W]`` integer labels, or ``None`` (required when ``n_classes > 1``).
        n_classes: ``C >= 1`` output channels.
        start: ``[B, N, 3]`` voxel coordinates (i, j, k) of each ray's first sample.
        delta: ``[B, N, 3]`` voxel-coordinate step between samples.
        step: ``[B, N]`` step length in mm (0: the ray is skipped).
        n_samples: ``S >= 1`` samples per ray.
        count: ``[B, N]`` integer per-ray sample counts in ``[0, S]`` (ray ``r`` keeps its samples
            ``s < count[r]``: Joseph's slices, ``torch_ref.raymarch(count=)``), or ``None``.
        width: the image width (the contract's; ignored: rays are scheduled in flat chunks).

    Returns:
        ``[B, C, N]`` float32 line integrals, differentiable w.r.t. vol, start, delta and step.
    """
    if not is_available():
        raise RuntimeError(f"numba backend: numba could not be imported ({IMPORT_ERROR!r})")
    check_raymarch_args(vol, lab, n_classes, start, delta, step, n_samples)
    check_sample_counts(count, *step.shape, n_samples, vol.device)
    vol = kernel_volume(vol).contiguous()
    lab = kernel_labels(lab, n_classes)
    start, delta, step = (t.to(torch.float32).contiguous() for t in (start, delta, step))
    if count is not None:
        count = count.detach().to(torch.int64).contiguous()
    return _raymarch_op(vol, lab, n_classes, start, delta, step, n_samples, count)

"""Neighbouring rays marched in lockstep: the skeleton shared by the ray march and Joseph's drivers.

A chunk's rays are set up in groups of ``lanes`` neighbours, one row ``k`` of :func:`lockstep_buffers`
each (the drivers' set-ups fill them: ``march._setup_pair``, ``joseph._setup_lockstep``). A group whose
rays share a common interior ``LH[k]`` marches it in lockstep: they read mostly the same cache lines,
and independent gathers hide each other's latency. All the chunk's groups march one segment after the
other, so the voxels a segment reads stay in L2 while the next image rows' rays, which read many of
them again, come by; each ray's other samples (its checked ends and the rest of its interior) follow
on their own. Lockstep index ``t`` is lane 0's sample index; lane ``j``'s sample ``t − OF[k, j]`` lies
where ``PL[k, j]``, its ray restarted at lane 0's first sample, puts sample ``t`` (``OF`` is 0 for the
ray march, Joseph's planes for Joseph).
"""

from __future__ import annotations

import functools

import numpy as np

from .intrinsics import F0, FM, IMPORT_ERROR, NAN, RUN_BUF, SEGMENT, njit
from .labels import channel0_index, flush, labels_interior, labels_range
from .sampling import add7, grad_range, interior_grad_sum, interior_sum, scaled, sum_range


@njit(fastmath=FM, cache=True)
def lockstep_buffers(n, lanes):
    """Per group of ``lanes`` neighbouring rays: rays ``P``, rays restarted for the lockstep ``PL``,
    output scales (mm per sample) ``SC``, sample counts ``CN``, interiors ``AB``, lockstep offsets
    ``OF``, common interiors ``LH`` (lockstep indices; empty: no lockstep) and plane axes ``AX``."""
    return (
        np.empty((n, lanes, 6), np.float32), np.empty((n, lanes, 6), np.float32), np.empty((n, lanes), np.float32),
        np.empty((n, lanes), np.int64), np.empty((n, lanes, 2), np.int64), np.zeros((n, lanes), np.int64),
        np.zeros((n, 2), np.int64), np.zeros(n, np.int64),
    )  # fmt: skip


@njit(fastmath=FM, cache=True)
def trilinear_buffers(n, lanes):
    """``lockstep_buffers`` of groups at lockstep offsets 0 and on no planes: ``PL`` is ``P`` itself and
    ``AX`` is None, so the skeleton's loops call the trilinear sampler without a branch (specialised at
    compile time, as ``q is None``)."""
    P = np.empty((n, lanes, 6), np.float32)
    return (
        P, P, np.empty((n, lanes), np.float32), np.empty((n, lanes), np.int64), np.empty((n, lanes, 2), np.int64),
        np.zeros((n, lanes), np.int64), np.zeros((n, 2), np.int64), None,
    )  # fmt: skip


def plane_of(AX, k):  # pragma: no cover - jitted only
    """Group ``k``'s plane axis: ``AX[k]``, or None when ``AX`` is (``trilinear_buffers``)."""
    raise NotImplementedError


if IMPORT_ERROR is None:
    from numba import types
    from numba.extending import overload

    @overload(plane_of, inline="always")
    def _plane_of(AX, k):
        if isinstance(AX, types.NoneType):
            return lambda AX, k: None
        return lambda AX, k: AX[k]


@njit(fastmath=FM, cache=True, inline="always")
def ray_tuple(P, k, j):
    """Lane ``j`` of group ``k`` of ``P`` or ``PL`` as a ray ``(x0, y0, z0, dx, dy, dz)``."""
    return (P[k, j, 0], P[k, j, 1], P[k, j, 2], P[k, j, 3], P[k, j, 4], P[k, j, 5])


@njit(fastmath=FM, cache=True, inline="always")
def _two_rays(PL, k):
    return ray_tuple(PL, k, 0), ray_tuple(PL, k, 1)


@njit(fastmath=FM, cache=True, inline="always")
def _four_rays(PL, k):
    return ray_tuple(PL, k, 0), ray_tuple(PL, k, 1), ray_tuple(PL, k, 2), ray_tuple(PL, k, 3)


@njit(fastmath=FM, cache=True, inline="always")
def segment_part(LH, k, sg, size):
    """The part ``[s0, s1)`` of group ``k``'s common interior in the segment of ``size`` from ``sg``."""
    return max(LH[k, 0], sg), min(LH[k, 1], sg + size)


@njit(fastmath=FM, cache=True)
def finish(acc, scale, n):
    """A ray's line integral from its sum: NaN for a non-finite ray (``n < 0``), 0 for a miss."""
    if n < 0:
        return NAN
    return scale * acc if n > 0 else F0


@njit(fastmath=FM, cache=True)
def store_sums(out, first, buffers, tot):
    """``out[first + lanes·k + j]``: the line integrals of the lockstep groups' rays from ``tot``."""
    _, _, SC, CN, _, _, LH, _ = buffers
    lanes = SC.shape[1]
    for k in range(LH.shape[0]):
        for j in range(lanes if LH[k, 1] > LH[k, 0] else 0):
            out[first + lanes * k + j] = finish(tot[k, j], SC[k, j], CN[k, j])


@functools.cache
def lockstep_sums(lanes):
    """``tot[k, j]``: Σ μ over all samples of lane ``j`` of each lockstep group ``k`` (``lanes``: 2 or 4),
    its interior read from ``code`` (scale ``q``, :func:`~.sampling.sum_range`), its ends from ``vol``."""
    rays_of = _two_rays if lanes == 2 else _four_rays

    @njit(fastmath=FM)
    def sums(vol, code, q, D, H, W, buffers):
        P, PL, _, CN, AB, OF, LH, AX = buffers
        n = LH.shape[0]
        tot = np.zeros((n, lanes), np.float32)
        for sg in range(0, np.max(LH[:, 1]) if n else 0, SEGMENT):
            for k in range(n):
                s0, s1 = segment_part(LH, k, sg, SEGMENT)
                if s1 > s0:
                    part = interior_sum(code, H, W, rays_of(PL, k), s0, s1, q, plane_of(AX, k))
                    for j in range(lanes):
                        tot[k, j] += part[j]
        for k in range(n):
            lo, hi = LH[k, 0], LH[k, 1]
            for j in range(lanes if hi > lo else 0):
                p, a, e, o = (
                    ray_tuple(P, k, j),
                    AB[k, j, 0],
                    AB[k, j, 1],
                    OF[k, j],
                )  # lockstep: [lo - o, hi - o)
                ax = plane_of(AX, k)
                acc = scaled(tot[k, j], q) + sum_range(vol, code, q, D, H, W, p, ax, 0, lo - o, a, e)
                tot[k, j] = acc + sum_range(vol, code, q, D, H, W, p, ax, hi - o, CN[k, j], a, e)
        return tot

    return sums


@njit(fastmath=FM, cache=True)
def lockstep_labels(vol, code, q, lab, D, H, W, C, N, buffers, out, first):
    """The labelmap forward of the lockstep pairs' rays (ray ``first + 2k + j`` of the flat ``[B, C, N]``
    ``out``, zeroed): runs of equal nearest labels summed and flushed once, the segments one ``RUN_BUF``
    chunk each (a pair's open runs wait in between)."""
    P, PL, SC, CN, AB, OF, LH, AX = buffers
    n = LH.shape[0]
    runs = np.full((n, 2), -1, np.int64)  # open runs' labels ...
    accs = np.zeros((n, 2), np.float32)  # ... and sums
    for k in range(n):
        for j in range(2 if LH[k, 1] > LH[k, 0] else 0):  # the samples before the lockstep part
            runs[k, j], accs[k, j] = labels_range(
                vol, lab, D, H, W, C, N, ray_tuple(P, k, j), 0, LH[k, 0] - OF[k, j], AB[k, j, 0], AB[k, j, 1],
                runs[k, j], accs[k, j], out, channel0_index(first + 2 * k + j, N, C), SC[k, j],
            )  # fmt: skip
    for sg in range(0, np.max(LH[:, 1]) if n else 0, RUN_BUF):
        for k in range(n):
            s0, s1 = segment_part(LH, k, sg, RUN_BUF)
            if s1 > s0:
                r = first + 2 * k
                (runs[k, 0], runs[k, 1]), (accs[k, 0], accs[k, 1]) = labels_interior(
                    code, q, lab, H, W, C, N, plane_of(AX, k), _two_rays(PL, k), s0, s1, (runs[k, 0], runs[k, 1]),
                    (accs[k, 0], accs[k, 1]), out, (channel0_index(r, N, C), channel0_index(r + 1, N, C)),
                    (SC[k, 0], SC[k, 1]),
                )  # fmt: skip
    for k in range(n):
        for j in range(2 if LH[k, 1] > LH[k, 0] else 0):
            base = channel0_index(first + 2 * k + j, N, C)
            cur, acc = labels_range(
                vol, lab, D, H, W, C, N, ray_tuple(P, k, j), LH[k, 1] - OF[k, j], CN[k, j], AB[k, j, 0],
                AB[k, j, 1], runs[k, j], accs[k, j], out, base, SC[k, j],
            )  # fmt: skip
            flush(out, base, N, C, cur, SC[k, j], acc)


@njit(fastmath=FM, cache=True)
def lockstep_grad_sums(vol, D, H, W, buffers):
    """``sums[k, j]`` = (Σμ, Σ∇μ, Σ s·∇μ) over all samples of lane ``j`` of each lockstep pair ``k``
    (float voxels; ``s`` the lane's own sample index)."""
    P, PL, _, CN, AB, OF, LH, _ = buffers
    n = LH.shape[0]
    sums = np.zeros((n, 2, 7), np.float32)
    for k in range(n):
        for j in range(2 if LH[k, 1] > LH[k, 0] else 0):  # the samples outside the lockstep part
            x, a, e, o = ray_tuple(P, k, j), AB[k, j, 0], AB[k, j, 1], OF[k, j]
            ends = add7(
                grad_range(vol, D, H, W, x, 0, LH[k, 0] - o, a, e),
                grad_range(vol, D, H, W, x, LH[k, 1] - o, CN[k, j], a, e),
            )
            for v in range(7):
                sums[k, j, v] = ends[v]
    for sg in range(0, np.max(LH[:, 1]) if n else 0, SEGMENT):
        for k in range(n):
            s0, s1 = segment_part(LH, k, sg, SEGMENT)
            if s1 > s0:
                lock_p, lock_q = interior_grad_sum(vol, H, W, _two_rays(PL, k), s0, s1)
                fo = np.float32(OF[k, 1])  # q's sample index is t − o: Σ (t − o)·∇μ = Σ t·∇μ − o·Σ∇μ
                for v in range(7):
                    sums[k, 0, v] += lock_p[v]
                    sums[k, 1, v] += lock_q[v] - (fo * lock_q[v - 3] if v >= 4 and fo != 0 else F0)
    return sums

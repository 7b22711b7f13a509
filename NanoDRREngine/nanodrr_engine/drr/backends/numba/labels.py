"""Labelmap marches: each ray's samples go to the channel of their nearest label, in runs.

Along a ray the nearest label changes rarely, so a ray is a sequence of runs of equal labels, each
summed and flushed once into its channel of the flat ``[B, C, N]`` output (``base`` = the ray's
channel-0 index). Interior chunks of up to ``RUN_BUF`` samples get μ and labels computed vectorised
into stack buffers (:func:`lanes_labels`, specialised by sampler, reader and lanes as
:func:`~.sampling.lanes_sum`); vector compares of neighbouring labels then find the changes, so only
the runs are visited (:func:`scan_runs`). Labels outside ``[0, C)`` are dropped.
"""

from __future__ import annotations

import functools

import numpy as np

from .intrinsics import (
    F0,
    FM,
    FMV,
    IMPORT_ERROR,
    RUN_BUF,
    change_bits,
    cttz,
    flat_index32,
    load_at_pointer,
    load_label,
    load_unchecked,
    njit,
    stack_f32,
    stack_i32,
    store_at_pointer,
    wide_vectors,
)
from .sampling import NO_PLANE, SAMPLERS, position, sample_checked, scaled

#: Samples per vectorised label-change search in the backward (16-64 within 10%).
CHANGE_SEARCH = 32


@njit(fastmath=FM, cache=True, inline="always")
def channel0_index(r, N, C):
    """Flat index of ray ``r``'s channel 0 in a ``[B, C, N]`` output."""
    return (r // N) * C * N + r % N


@njit(fastmath=FM, cache=True, inline="always")
def flush(out, base, N, C, cur, scale, acc):
    """Add a finished run (label ``cur``, sum ``acc``) to its channel, if kept."""
    if cur >= 0 and cur < C:
        out[base + cur * N] += scale * acc


@njit(fastmath=FM, cache=True)
def label_at(lab, D, H, W, x, y, z):
    """Label of the voxel nearest (x, y, z) (round half to even), 0 outside the volume."""
    rx = np.rint(x)
    ry = np.rint(y)
    rz = np.rint(z)
    if rx >= 0.0 and rx <= W - 1 and ry >= 0.0 and ry <= H - 1 and rz >= 0.0 and rz <= D - 1:
        return np.int64(load_unchecked(lab, (int(rz) * H + int(ry)) * W + int(rx)))
    return np.int64(0)


@njit(fastmath=FMV, cache=True, inline="always")
def label_inner(lab, H, W, C, p, sf):
    """Nearest label at an interior sample, dropped labels mapped to -1 or C (fits in int32)."""
    x, y, z = position(p, sf)
    lbl = load_label(lab, flat_index32(np.rint(x), np.rint(y), np.rint(z), H, W))
    return min(max(lbl, -1), C)


@njit(fastmath=FMV, cache=True)
def _first_change(lab, H, W, p, s0, s1, cur):
    """First interior sample in ``[s0, s1)`` whose label differs from ``cur`` (``s1`` if none).

    A min-reduction without early exit, so it vectorises; callers use short chunks.
    """
    wide_vectors()
    first = s1
    for s in range(s0, s1):
        x, y, z = position(p, np.float32(s))
        i = flat_index32(np.rint(x), np.rint(y), np.rint(z), H, W)
        first = min(first, s if load_label(lab, i) != cur else s1)
    return first


@njit(fastmath=FM, cache=True)
def run_end(lab, D, H, W, p, s, n, a, b, cur):
    """``(e, label_e)``: the first sample ``e >= s`` whose label is not ``cur`` (``(n, -1)`` if none).

    ``[a, b)`` is the ray's interior, searched without bounds checks in vectorised chunks.
    """
    while s < n:
        if s >= a and s < b:
            e = min(b, s + CHANGE_SEARCH)
            c = _first_change(lab, H, W, p, s, e, cur)
            if c == e:
                s = e
                continue
            s = c
        x, y, z = position(p, np.float32(s))
        lbl = label_at(lab, D, H, W, x, y, z)
        if lbl != cur:
            return s, lbl
        s += 1
    return n, np.int64(-1)


@njit(fastmath=FMV, cache=True)
def _sum_buf(mu, j, k):
    """``Σ mu[j:k]`` (vectorised: no chain of dependent float additions)."""
    acc = F0
    for i in range(j, k):
        acc += load_at_pointer(mu, i)
    return acc


@njit(fastmath=FM, cache=True)
def scan_runs(mu, lb, m, cur, acc, out, base, N, C, scale):
    """Add ``m`` buffered samples to the open run ``(cur, acc)``, flushing each finished run.

    ``lb[0]`` is the open run's label (clamped like the others), ``lb[1 + i]`` sample i's, and
    ``lb[m + 1:]`` repeats the last one. Label changes come as bit masks from vector compares
    (64 samples at a time), so only the runs are visited, each summed in one go (a sample-by-sample
    scan, or ``acc += mu[j]`` per sample, would be bound by the latency of the float additions).
    """
    j = 0
    for w in range(0, m, 64):
        bits = change_bits(lb, w + 1)
        while bits != 0:
            t = w + np.int64(cttz(bits))
            bits &= bits - np.uint64(1)
            flush(out, base, N, C, cur, scale, acc + _sum_buf(mu, j, t))
            cur = np.int64(load_at_pointer(lb, t + 1))
            acc = F0
            j = t
    return cur, acc + _sum_buf(mu, j, m)


@njit(fastmath=FM, cache=True, inline="always")
def _buffer_labels(lb, cur, C):
    store_at_pointer(lb, 0, min(max(cur, -1), C))


@njit(fastmath=FM, cache=True, inline="always")
def _pad_labels(lb, m):
    """Repeat the last of ``m`` buffered labels up to the buffer's end (no change there)."""
    last = load_at_pointer(lb, m)
    for i in range(m + 1, RUN_BUF + 1):
        store_at_pointer(lb, i, last)


@functools.cache
def lanes_labels(sample, lanes):
    """Interior samples ``[s0, s1)`` (at most ``RUN_BUF``) of ``lanes`` (1, 2) rays in lockstep: μ and
    labels into stack buffers, then their runs scanned. ``curs, accs`` are the lanes' open runs
    (tuples of ``lanes``); returns them continued."""

    @njit(fastmath=FMV)
    def loop(code, q, lab, H, W, C, N, rays, s0, s1, curs, accs, out, bases, scales):
        wide_vectors()
        mu0 = stack_f32()
        lb0 = stack_i32()
        mu1 = stack_f32()
        lb1 = stack_i32()
        _buffer_labels(lb0, curs[0], C)
        if lanes > 1:
            _buffer_labels(lb1, curs[1], C)
        for s in range(s0, s1):
            sf = np.float32(s)
            store_at_pointer(mu0, s - s0, scaled(sample(code, H, W, rays[0], sf, q), q))
            store_at_pointer(lb0, s - s0 + 1, label_inner(lab, H, W, C, rays[0], sf))
            if lanes > 1:
                store_at_pointer(mu1, s - s0, scaled(sample(code, H, W, rays[1], sf, q), q))
                store_at_pointer(lb1, s - s0 + 1, label_inner(lab, H, W, C, rays[1], sf))
        m = s1 - s0
        _pad_labels(lb0, m)
        c0, a0 = scan_runs(mu0, lb0, m, curs[0], accs[0], out, bases[0], N, C, scales[0])
        if lanes > 1:
            _pad_labels(lb1, m)
            c1, a1 = scan_runs(mu1, lb1, m, curs[1], accs[1], out, bases[1], N, C, scales[1])
            return (c0, c1), (a0, a1)
        return (c0,), (a0,)

    return loop


def labels_interior(
    code, q, lab, H, W, C, N, axis, rays, s0, s1, curs, accs, out, bases, scales
):  # pragma: no cover
    """``lanes_labels`` of the sampler of plane ``axis`` (None: trilinear, chosen at compile time), for as
    many lanes as ``rays`` holds."""
    raise NotImplementedError


if IMPORT_ERROR is None:
    from numba import types
    from numba.extending import overload

    @overload(labels_interior, jit_options={"fastmath": FM})
    def _labels_interior(code, q, lab, H, W, C, N, axis, rays, s0, s1, curs, accs, out, bases, scales):
        lanes = len(rays)
        anywhere = lanes_labels(SAMPLERS[NO_PLANE], lanes)
        if isinstance(axis, types.NoneType):  # no plane, known while compiling: no branch
            return lambda code, q, lab, H, W, C, N, axis, rays, s0, s1, curs, accs, out, bases, scales: (
                anywhere(code, q, lab, H, W, C, N, rays, s0, s1, curs, accs, out, bases, scales)
            )
        on_j, on_k = (lanes_labels(SAMPLERS[a], lanes) for a in (1, 2))

        def impl(code, q, lab, H, W, C, N, axis, rays, s0, s1, curs, accs, out, bases, scales):
            if axis == 1:
                return on_j(code, q, lab, H, W, C, N, rays, s0, s1, curs, accs, out, bases, scales)
            if axis == 2:
                return on_k(code, q, lab, H, W, C, N, rays, s0, s1, curs, accs, out, bases, scales)
            return anywhere(code, q, lab, H, W, C, N, rays, s0, s1, curs, accs, out, bases, scales)

        return impl


@njit(fastmath=FM, cache=True)
def labels_range(vol, lab, D, H, W, C, N, p, sa, sb, a, b, cur, acc, out, base, scale):
    """Samples ``[sa, sb)`` of ray ``p`` (float voxels) in order, continuing the open run ``(cur, acc)``.

    ``[a, b)`` is the ray's interior (vectorised chunks); other samples are checked one by one.
    """
    s = sa
    while s < sb:
        if s >= a and s < b:
            e = min(min(b, sb), s + RUN_BUF)
            (cur,), (acc,) = labels_interior(
                vol, None, lab, H, W, C, N, None, (p,), s, e, (cur,), (acc,), out, (base,), (scale,)
            )
            s = e
            continue
        x, y, z = position(p, np.float32(s))
        lj = label_at(lab, D, H, W, x, y, z)
        if lj != cur:
            flush(out, base, N, C, cur, scale, acc)
            cur = lj
            acc = F0
        acc += sample_checked(vol, D, H, W, x, y, z)
        s += 1
    return cur, acc

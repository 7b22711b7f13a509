"""Zero-padded trilinear sampling along rays, written once.

A ray is ``p = (x0, y0, z0, dx, dy, dz)`` (float32 voxel coordinates), its sample ``s`` at
``p[:3] + s·p[3:]``. Each ray splits into the samples whose 8 trilinear corners are all inside the
volume (:func:`ray_interior`: an analytic interval with an inward margin for float32 rounding) and
the few at its ends. The ends take a checked scalar path; the interior a branch-free loop that LLVM
vectorises across samples.

The interior loops come from one factory, :func:`lanes_sum` (and :func:`lanes_grad_sum` for the
gradient), specialised at compile time by

- the *sampler*: :func:`trilinear` anywhere, or :func:`bilinear_j` / :func:`bilinear_k` for rays
  whose samples all lie on j- or k-planes (Joseph's slices: two voxel pairs instead of four);
- the *reader*: ``q is None`` reads float voxels, else 16-bit fixed-point codes of scale ``q``
  (numba prunes the other branch);
- the number of *lanes*: 1, 2 or 4 neighbouring rays marched in lockstep (they read mostly the same
  cache lines, and independent gathers hide each other's latency).

:func:`interior_sum` and :func:`interior_grad_sum` pick the specialisation from their arguments' types
while the caller compiles, so callers write one call whatever the lanes or reader.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .intrinsics import (
    F0,
    FM,
    FMV,
    IMPORT_ERROR,
    MARGIN,
    add32,
    flat_index32,
    load_code_pair,
    load_pair,
    load_unchecked,
    njit,
    to_f32,
    wide_vectors,
)

#: "Not on planes of one axis" (Joseph's plane axes are 0, 1, 2 = i, j, k), known only at run time. An
#: ``axis`` of None says so at compile time: the trilinear loop is then called without a branch.
NO_PLANE = -1


# ---------------------------------------------------------------------------------------------
# Where a ray is inside
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FM, cache=True)
def sample_interval(p0, d, lo, hi, n):
    """Samples ``[a, b)`` of ``[0, n)`` whose coordinate ``p0 + s·d`` lies in ``[lo, hi]`` (float64;
    ``a == b == n`` if none)."""
    if hi < lo:
        return n, n
    if d == 0.0:
        if p0 >= lo and p0 <= hi:
            return 0, n
        return n, n
    t0 = (lo - p0) / d
    t1 = (hi - p0) / d
    if t0 > t1:
        t0, t1 = t1, t0
    a = max(0.0, np.ceil(t0))
    b = min(float(n), np.floor(t1) + 1.0)
    if not b > a:
        return n, n
    return int(a), int(b)


@njit(fastmath=FM, cache=True)
def axis_interior(p0, d, size, n):
    """Samples whose coordinate lies safely inside ``[0, size - 1)``: an inward margin covers float32
    rounding of the positions, so every corner read by the unchecked loop is provably inside."""
    m = MARGIN + 1e-6 * (abs(p0) + n * abs(d))
    return sample_interval(p0, d, m, size - 1.0 - m, n)


@njit(fastmath=FM, cache=True)
def ray_interior(p, D, H, W, n):
    """Samples ``[a, b)`` of ray ``p`` whose 8 corners are all inside (``a == b == n`` if none)."""
    a0, b0 = axis_interior(np.float64(p[0]), np.float64(p[3]), W, n)
    a1, b1 = axis_interior(np.float64(p[1]), np.float64(p[4]), H, n)
    a2, b2 = axis_interior(np.float64(p[2]), np.float64(p[5]), D, n)
    a = max(a0, max(a1, a2))
    b = min(b0, min(b1, b2))
    if b <= a:
        return n, n
    return a, b


@njit(fastmath=FM, cache=True)
def finite_ray(p):
    return (
        math.isfinite(p[0])
        and math.isfinite(p[1])
        and math.isfinite(p[2])
        and math.isfinite(p[3])
        and math.isfinite(p[4])
        and math.isfinite(p[5])
    )


@njit(fastmath=FMV, cache=True, inline="always")
def position(p, sf):
    """Sample ``sf`` of ray ``p``: ``(x, y, z)`` = ``p[:3] + sf·p[3:]``."""
    return p[0] + sf * p[3], p[1] + sf * p[4], p[2] + sf * p[5]


# ---------------------------------------------------------------------------------------------
# Trilinear interpolation of 8 corners: ``c`` = (c000, c001, ..., c111, tx, ty, tz), corners
# ordered (z, y, x), t the fractional offsets.
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FMV, cache=True, inline="always")
def lerp3(c):
    c00 = c[0] + c[8] * (c[1] - c[0])
    c01 = c[2] + c[8] * (c[3] - c[2])
    c10 = c[4] + c[8] * (c[5] - c[4])
    c11 = c[6] + c[8] * (c[7] - c[6])
    c0 = c00 + c[9] * (c01 - c00)
    c1 = c10 + c[9] * (c11 - c10)
    return c0 + c[10] * (c1 - c0)


@njit(fastmath=FMV, cache=True, inline="always")
def lerp3_grad(c):
    """The interpolant and its gradient ``(μ, dμ/dx, dμ/dy, dμ/dz)``: piecewise, one-sided at voxel
    boundaries (via floor), as ``grid_sample``'s backward."""
    d00 = c[1] - c[0]
    d01 = c[3] - c[2]
    d10 = c[5] - c[4]
    d11 = c[7] - c[6]
    tx, ty, tz = c[8], c[9], c[10]
    c00 = c[0] + tx * d00
    c01 = c[2] + tx * d01
    c10 = c[4] + tx * d10
    c11 = c[6] + tx * d11
    c0 = c00 + ty * (c01 - c00)
    c1 = c10 + ty * (c11 - c10)
    e0 = d00 + ty * (d01 - d00)
    e1 = d10 + ty * (d11 - d10)
    vz = c1 - c0
    return c0 + tz * vz, e0 + tz * (e1 - e0), (c01 - c00) + tz * ((c11 - c10) - (c01 - c00)), vz


# ---------------------------------------------------------------------------------------------
# Checked samples (any position: the ray's ends)
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FM, cache=True)
def corners_checked(vol, D, H, W, x, y, z):
    """The 8 corners around (x, y, z) and the offsets (``lerp3``'s ``c``), 0 for corners outside.

    Branch-free apart from the far-outside test: indices are clamped into the volume (so every
    load is safe) and the values of corners outside are replaced by 0.
    """
    fx = np.floor(x)
    fy = np.floor(y)
    fz = np.floor(z)
    tx = x - fx
    ty = y - fy
    tz = z - fz
    if not (fx >= -1.0 and fx < W and fy >= -1.0 and fy < H and fz >= -1.0 and fz < D):
        return F0, F0, F0, F0, F0, F0, F0, F0, tx, ty, tz
    ix = int(fx)
    iy = int(fy)
    iz = int(fz)
    x0 = ix >= 0
    x1 = ix < W - 1
    y0 = iy >= 0
    y1 = iy < H - 1
    z0 = iz >= 0
    z1 = iz < D - 1
    jx0 = max(ix, 0)
    jx1 = min(ix + 1, W - 1)
    r00 = (max(iz, 0) * H + max(iy, 0)) * W
    r01 = (max(iz, 0) * H + min(iy + 1, H - 1)) * W
    r10 = (min(iz + 1, D - 1) * H + max(iy, 0)) * W
    r11 = (min(iz + 1, D - 1) * H + min(iy + 1, H - 1)) * W
    c000 = to_f32(load_unchecked(vol, r00 + jx0)) if z0 and y0 and x0 else F0
    c001 = to_f32(load_unchecked(vol, r00 + jx1)) if z0 and y0 and x1 else F0
    c010 = to_f32(load_unchecked(vol, r01 + jx0)) if z0 and y1 and x0 else F0
    c011 = to_f32(load_unchecked(vol, r01 + jx1)) if z0 and y1 and x1 else F0
    c100 = to_f32(load_unchecked(vol, r10 + jx0)) if z1 and y0 and x0 else F0
    c101 = to_f32(load_unchecked(vol, r10 + jx1)) if z1 and y0 and x1 else F0
    c110 = to_f32(load_unchecked(vol, r11 + jx0)) if z1 and y1 and x0 else F0
    c111 = to_f32(load_unchecked(vol, r11 + jx1)) if z1 and y1 and x1 else F0
    return c000, c001, c010, c011, c100, c101, c110, c111, tx, ty, tz


@njit(fastmath=FM, cache=True)
def sample_checked(vol, D, H, W, x, y, z):
    """Zero-padded trilinear μ at (x, y, z) (any position)."""
    return lerp3(corners_checked(vol, D, H, W, x, y, z))


@njit(fastmath=FM, cache=True)
def grad_checked(vol, D, H, W, x, y, z):
    """Zero-padded trilinear μ and its gradient at (x, y, z) (any position)."""
    return lerp3_grad(corners_checked(vol, D, H, W, x, y, z))


# ---------------------------------------------------------------------------------------------
# Interior samplers (all corners inside: no checks). ``code`` holds float voxels when ``q`` is
# None (float32, or float16 / bfloat16 bits) and 16-bit fixed-point codes of scale ``q`` otherwise.
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FMV, cache=True, inline="always")
def pair(code, i, q):
    """Voxels ``i`` and ``i + 1`` as float32, with one load (vectorises to gathers)."""
    if q is None:
        return load_pair(code, i)
    return load_code_pair(code, i)


@njit(fastmath=FM, cache=True, inline="always")
def scaled(acc, q):
    """A sum of interior reads in μ units."""
    if q is None:
        return acc
    return acc * q


@njit(fastmath=FMV, cache=True, inline="always")
def interior_corners(code, H, W, p, sf, q):
    """``lerp3``'s corners at sample ``sf`` of ray ``p``: four pair loads."""
    x, y, z = position(p, sf)
    fx = np.floor(x)
    fy = np.floor(y)
    fz = np.floor(z)
    i = flat_index32(fx, fy, fz, H, W)
    c000, c001 = pair(code, i, q)
    c010, c011 = pair(code, add32(i, W), q)
    c100, c101 = pair(code, add32(i, H * W), q)
    c110, c111 = pair(code, add32(i, H * W + W), q)
    return c000, c001, c010, c011, c100, c101, c110, c111, x - fx, y - fy, z - fz


@njit(fastmath=FMV, cache=True, inline="always")
def trilinear(code, H, W, p, sf, q):
    """μ at an interior sample, anywhere."""
    return lerp3(interior_corners(code, H, W, p, sf, q))


@njit(fastmath=FMV, cache=True, inline="always")
def trilinear_grad(code, H, W, p, sf, q):
    """μ and its gradient at an interior sample."""
    return lerp3_grad(interior_corners(code, H, W, p, sf, q))


def _plane_sampler(axis):
    """μ at an interior sample on a plane of ``axis`` (1: j, 2: k): bilinear in i and the other axis
    ``u``, two pair loads (``axis`` is a compile-time constant)."""

    @njit(fastmath=FMV, inline="always")
    def sample(code, H, W, p, sf, q):
        x, y, z = position(p, sf)
        u = z if axis == 1 else y
        fx = np.floor(x)
        fu = np.floor(u)
        i = flat_index32(fx, y, fu, H, W) if axis == 1 else flat_index32(fx, fu, z, H, W)
        a0, a1 = pair(code, i, q)
        b0, b1 = pair(code, add32(i, H * W if axis == 1 else W), q)
        c0 = a0 + (x - fx) * (a1 - a0)
        c1 = b0 + (x - fx) * (b1 - b0)
        return c0 + (u - fu) * (c1 - c0)

    return sample


bilinear_j = _plane_sampler(1)
bilinear_k = _plane_sampler(2)


@njit(fastmath=FMV, cache=True, inline="always")
def add7(u, v):
    return (u[0] + v[0], u[1] + v[1], u[2] + v[2], u[3] + v[3], u[4] + v[4], u[5] + v[5], u[6] + v[6])


#: The sampler for each plane axis (``NO_PLANE`` and i-planes: trilinear).
SAMPLERS = {NO_PLANE: trilinear, 0: trilinear, 1: bilinear_j, 2: bilinear_k}


# ---------------------------------------------------------------------------------------------
# Interior loops, generated (not compiled from the cache: they are closures; callers are)
# ---------------------------------------------------------------------------------------------


@functools.cache
def lanes_sum(sample, lanes):
    """``(Σ_s sample(ray j, s) for j < 4)`` over ``[s0, s1)`` for ``lanes`` (1, 2, 4) rays in
    lockstep; the unused lanes are 0 (the ``lanes`` tests are compile-time constants)."""

    @njit(fastmath=FMV)
    def loop(code, H, W, rays, s0, s1, q):
        wide_vectors()
        a0 = a1 = a2 = a3 = F0
        for s in range(s0, s1):
            sf = np.float32(s)
            a0 += sample(code, H, W, rays[0], sf, q)
            if lanes > 1:
                a1 += sample(code, H, W, rays[1], sf, q)
            if lanes > 2:
                a2 += sample(code, H, W, rays[2], sf, q)
                a3 += sample(code, H, W, rays[3], sf, q)
        return a0, a1, a2, a3

    return loop


@functools.cache
def lanes_grad_sum(lanes):
    """``(Σμ, Σ∇μ, Σ s·∇μ)`` (7 floats) of each of ``lanes`` (1, 2) rays over ``[s0, s1)`` (float
    voxels); the second is zeros for one lane."""

    @njit(fastmath=FMV)
    def loop(vol, H, W, rays, s0, s1):
        wide_vectors()
        acc0 = acc1 = (F0, F0, F0, F0, F0, F0, F0)
        for s in range(s0, s1):
            sf = np.float32(s)
            m, vx, vy, vz = trilinear_grad(vol, H, W, rays[0], sf, None)
            acc0 = add7(acc0, (m, vx, vy, vz, sf * vx, sf * vy, sf * vz))
            if lanes > 1:
                m, vx, vy, vz = trilinear_grad(vol, H, W, rays[1], sf, None)
                acc1 = add7(acc1, (m, vx, vy, vz, sf * vx, sf * vy, sf * vz))
        return acc0, acc1

    return loop


def interior_sum(code, H, W, rays, s0, s1, q, axis):  # pragma: no cover - jitted only
    """``lanes_sum`` of the sampler of plane ``axis`` (a runtime value: a branch outside the loop; None:
    trilinear, no branch), for as many lanes as ``rays`` holds: 4 raw sums (apply ``scaled``)."""
    raise NotImplementedError


def interior_grad_sum(vol, H, W, rays, s0, s1):  # pragma: no cover - jitted only
    """``lanes_grad_sum`` for as many lanes as ``rays`` holds."""
    raise NotImplementedError


if IMPORT_ERROR is None:
    from numba import types
    from numba.extending import overload

    @overload(interior_sum, jit_options={"fastmath": FM})
    def _interior_sum(code, H, W, rays, s0, s1, q, axis):
        lanes = len(rays)
        anywhere = lanes_sum(SAMPLERS[NO_PLANE], lanes)
        if isinstance(axis, types.NoneType):  # no plane, known while compiling: no branch
            return lambda code, H, W, rays, s0, s1, q, axis: anywhere(code, H, W, rays, s0, s1, q)
        on_j, on_k = (lanes_sum(SAMPLERS[a], lanes) for a in (1, 2))

        def impl(code, H, W, rays, s0, s1, q, axis):
            if axis == 1:
                return on_j(code, H, W, rays, s0, s1, q)
            if axis == 2:
                return on_k(code, H, W, rays, s0, s1, q)
            return anywhere(code, H, W, rays, s0, s1, q)

        return impl

    @overload(interior_grad_sum, jit_options={"fastmath": FM})
    def _interior_grad_sum(vol, H, W, rays, s0, s1):
        loop = lanes_grad_sum(len(rays))
        return lambda vol, H, W, rays, s0, s1: loop(vol, H, W, rays, s0, s1)


# ---------------------------------------------------------------------------------------------
# Sums over any range of samples
# ---------------------------------------------------------------------------------------------


@njit(fastmath=FM, cache=True)
def sum_range(vol, code, q, D, H, W, p, axis, sa, sb, a, b):
    """Σ μ over samples ``[sa, sb)`` of ray ``p``; ``[a, b)`` is its interior, read from ``code``
    (scale ``q``) with the sampler of plane ``axis`` (see ``interior_sum``); the rest is checked and
    reads ``vol``."""
    acc = F0
    for s in range(sa, min(sb, a)):
        x, y, z = position(p, np.float32(s))
        acc += sample_checked(vol, D, H, W, x, y, z)
    lo = max(sa, a)
    hi = min(sb, b)
    if hi > lo:
        acc += scaled(interior_sum(code, H, W, (p,), lo, hi, q, axis)[0], q)
    for s in range(max(sa, b), sb):
        x, y, z = position(p, np.float32(s))
        acc += sample_checked(vol, D, H, W, x, y, z)
    return acc


@njit(fastmath=FM, cache=True)
def grad_range(vol, D, H, W, p, sa, sb, a, b):
    """``(Σμ, Σ∇μ, Σ s·∇μ)`` (7 floats) over samples ``[sa, sb)`` of ray ``p`` (float voxels);
    ``[a, b)`` as in ``sum_range``."""
    sums = (F0, F0, F0, F0, F0, F0, F0)
    lo = max(sa, a)
    hi = min(sb, b)
    if hi > lo:
        sums = interior_grad_sum(vol, H, W, (p,), lo, hi)[0]
    for part in range(2):  # the checked samples before and after the interior
        for s in range(sa if part == 0 else max(sa, b), min(sb, a) if part == 0 else sb):
            sf = np.float32(s)
            x, y, z = position(p, sf)
            m, vx, vy, vz = grad_checked(vol, D, H, W, x, y, z)
            sums = add7(sums, (m, vx, vy, vz, sf * vx, sf * vy, sf * vz))
    return sums

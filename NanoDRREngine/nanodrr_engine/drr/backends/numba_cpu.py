"""Fused CPU ray march (numba): the product's CPU path.

Implements the ``raymarch`` contract of :mod:`nanodrr_engine.drr.backends` with numba kernels that
are parallel over rays and keep each ray's running sum in a register, so no per-sample tensor is
ever built.

WIP version 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # numba is optional: the module must import (and ``is_available`` answer) without it.
    import numba
    from llvmlite import ir as _llvm_ir
    from numba import njit, prange, types
    from numba.extending import intrinsic, overload

    _IMPORT_ERROR: Exception | None = None
except Exception as exc:  # pragma: no cover - exercised only where numba is missing or broken
    numba = None
    _IMPORT_ERROR = exc
    prange = range

    def njit(*args, **kwargs):
        """Stand-in decorator: leaves the kernels as plain (never called) Python functions."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


def is_available() -> bool:
    """Whether numba imported, i.e. whether this backend can run (never raises)."""
    return _IMPORT_ERROR is None


# ---------------------------------------------------------------------------------------------
# Scalar helpers (inlined into the kernels by LLVM)
# ---------------------------------------------------------------------------------------------

_FM = {"nsz", "arcp", "contract", "afn"}  # no 'reassoc' (keeps p = start + s*delta exact), no 'nnan'
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


def _to_f32(x):  # pragma: no cover - replaced by the overload below inside jitted code
    """Promote one stored voxel value to float32 (float32, float16 bits or bfloat16 bits)."""
    raise NotImplementedError


if _IMPORT_ERROR is None:

    @intrinsic
    def _half_bits_to_f32(typingctx, bits):
        """IEEE half stored as uint16 -> float32 (one ``vcvtph2ps`` with F16C)."""
        if bits != types.uint16:
            return None

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], _llvm_ir.HalfType()), _llvm_ir.FloatType())

        return types.float32(bits), codegen

    @intrinsic
    def _bf16_bits_to_f32(typingctx, bits):
        """bfloat16 stored as int16 -> float32 (the upper half of the float32 bit pattern)."""
        if bits != types.int16:
            return None

        def codegen(context, builder, signature, args):
            wide = builder.shl(
                builder.zext(args[0], _llvm_ir.IntType(32)), _llvm_ir.Constant(_llvm_ir.IntType(32), 16)
            )
            return builder.bitcast(wide, _llvm_ir.FloatType())

        return types.float32(bits), codegen

    @overload(_to_f32, inline="always")
    def _to_f32_impl(x):
        if isinstance(x, types.Float):
            return lambda x: np.float32(x)
        if x == types.uint16:
            return lambda x: _half_bits_to_f32(x)
        if x == types.int16:
            return lambda x: _bf16_bits_to_f32(x)
        return None


@njit(fastmath=_FM, cache=True)
def _corners(vol, x, y, z, D, H, W):
    """The 8 trilinear corner values around (x, y, z) (0 outside the volume) and the weights."""
    fx = math.floor(x)
    fy = math.floor(y)
    fz = math.floor(z)
    tx = x - fx
    ty = y - fy
    tz = z - fz
    ix = int(fx)
    iy = int(fy)
    iz = int(fz)
    HW = H * W
    if ix >= 0 and ix < W - 1 and iy >= 0 and iy < H - 1 and iz >= 0 and iz < D - 1:
        i = (iz * H + iy) * W + ix
        c000 = _to_f32(vol[i])
        c001 = _to_f32(vol[i + 1])
        c010 = _to_f32(vol[i + W])
        c011 = _to_f32(vol[i + W + 1])
        c100 = _to_f32(vol[i + HW])
        c101 = _to_f32(vol[i + HW + 1])
        c110 = _to_f32(vol[i + HW + W])
        c111 = _to_f32(vol[i + HW + W + 1])
    else:
        c000 = _ZERO
        c001 = _ZERO
        c010 = _ZERO
        c011 = _ZERO
        c100 = _ZERO
        c101 = _ZERO
        c110 = _ZERO
        c111 = _ZERO
        vx0 = ix >= 0 and ix < W
        vx1 = ix >= -1 and ix < W - 1
        vy0 = iy >= 0 and iy < H
        vy1 = iy >= -1 and iy < H - 1
        vz0 = iz >= 0 and iz < D
        vz1 = iz >= -1 and iz < D - 1
        if vz0:
            if vy0:
                i = (iz * H + iy) * W + ix
                if vx0:
                    c000 = _to_f32(vol[i])
                if vx1:
                    c001 = _to_f32(vol[i + 1])
            if vy1:
                i = (iz * H + iy + 1) * W + ix
                if vx0:
                    c010 = _to_f32(vol[i])
                if vx1:
                    c011 = _to_f32(vol[i + 1])
        if vz1:
            if vy0:
                i = ((iz + 1) * H + iy) * W + ix
                if vx0:
                    c100 = _to_f32(vol[i])
                if vx1:
                    c101 = _to_f32(vol[i + 1])
            if vy1:
                i = ((iz + 1) * H + iy + 1) * W + ix
                if vx0:
                    c110 = _to_f32(vol[i])
                if vx1:
                    c111 = _to_f32(vol[i + 1])
    return c000, c001, c010, c011, c100, c101, c110, c111, tx, ty, tz


@njit(fastmath=_FM, cache=True)
def _trilinear(vol, x, y, z, D, H, W):
    c000, c001, c010, c011, c100, c101, c110, c111, tx, ty, tz = _corners(vol, x, y, z, D, H, W)
    c00 = c000 + tx * (c001 - c000)
    c01 = c010 + tx * (c011 - c010)
    c10 = c100 + tx * (c101 - c100)
    c11 = c110 + tx * (c111 - c110)
    c0 = c00 + ty * (c01 - c00)
    c1 = c10 + ty * (c11 - c10)
    return c0 + tz * (c1 - c0)


@njit(parallel=True, fastmath=_FM, cache=True)
def _fwd_plain(vol, D, H, W, start, delta, step, n_samples, out, block):
    R = step.shape[0]
    nblk = (R + block - 1) // block
    for b in prange(nblk):
        for r in range(b * block, min(R, (b + 1) * block)):
            st = step[r]
            if st == 0:
                out[r] = _ZERO
                continue
            x0 = start[r, 0]
            y0 = start[r, 1]
            z0 = start[r, 2]
            dx = delta[r, 0]
            dy = delta[r, 1]
            dz = delta[r, 2]
            acc = _ZERO
            for s in range(n_samples):
                sf = np.float32(s)
                acc += _trilinear(vol, x0 + sf * dx, y0 + sf * dy, z0 + sf * dz, D, H, W)
            out[r] = acc * st


def raymarch(vol, lab, n_classes, start, delta, step, n_samples):
    """WIP."""
    D, H, W = vol.shape
    B, N, _ = start.shape
    out = torch.empty(B, 1, N, dtype=torch.float32)
    v = vol.detach().contiguous()
    if v.dtype == torch.float16:
        vn = v.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    elif v.dtype == torch.bfloat16:
        vn = v.view(torch.int16).numpy().reshape(-1)
    else:
        vn = v.numpy().reshape(-1)
    _fwd_plain(
        vn,
        D,
        H,
        W,
        start.detach().reshape(-1, 3).numpy(),
        delta.detach().reshape(-1, 3).numpy(),
        step.detach().reshape(-1).numpy(),
        n_samples,
        out.view(-1).numpy(),
        64,
    )
    return out

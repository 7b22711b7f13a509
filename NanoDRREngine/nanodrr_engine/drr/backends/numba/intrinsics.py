"""Low-level numba building blocks shared by every CPU kernel: LLVM intrinsics for unchecked and
packed loads, stack buffers, bit scans, and the fast-math flag sets.

Each intrinsic exists because numba's own code for it would not vectorise (bounds checks, 64-bit
index arithmetic, byte gathers x86 does not have) or would not fit in registers. This module must
import, and :func:`is_available` answer, where numba is missing.
"""

from __future__ import annotations

import numpy as np

try:  # numba is optional: this module must import (and ``is_available`` answer) without it.
    import numba
    from llvmlite import ir as _ir
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic, overload

    IMPORT_ERROR: Exception | None = None
except Exception as exc:  # pragma: no cover - only where numba is missing or broken
    numba = None
    IMPORT_ERROR = exc
    prange = range

    def njit(*args, **kwargs):
        """Stand-in decorator: the kernels stay plain Python functions that are never called."""
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda f: f


def is_available() -> bool:
    """Whether numba imported, i.e. whether this backend can run (never raises)."""
    return IMPORT_ERROR is None


#: No 'reassoc' (sample positions p = start + s·delta stay exactly as written) and no 'nnan' /
#: 'ninf' (the finiteness checks that guard memory accesses must survive).
FM = {"nsz", "arcp", "contract", "afn"}
#: The vectorised inner loops also need 'reassoc' to vectorise their sums.
FMV = {"nsz", "arcp", "contract", "afn", "reassoc"}
F0 = np.float32(0.0)
NAN = np.float32(np.nan)
#: Sample positions may be off by rounding; the inner (unchecked) loop keeps this far from edges.
MARGIN = 0.01
#: Samples per chunk of the forward labelmap march (stack buffers of μ and labels; 32-256 measured,
#: 128 best by ~5%).
RUN_BUF = 128
#: Samples per segment when a chunk's ray pairs or quads are marched segment by segment
#: (64-128 within 1%, 256 ~5% slower: the segment's voxels must stay in L2).
SEGMENT = 128
#: Shortest common interior (samples) worth a lockstep march of neighbouring rays.
MIN_COMMON = 16


def to_f32(x):  # pragma: no cover - replaced by the overload below inside jitted code
    """Promote one stored voxel value (float32, float16 bits or bfloat16 bits) to float32."""
    raise NotImplementedError


if IMPORT_ERROR is None:
    _I32 = _ir.IntType(32)
    _I64 = _ir.IntType(64)

    def _as_i64(builder, value, ty):
        if ty.bitwidth == 64:
            return value
        return builder.sext(value, _I64) if ty.signed else builder.zext(value, _I64)

    def _as_i32(builder, value, ty):
        if ty.bitwidth > 32:
            return builder.trunc(value, _I32)
        if ty.bitwidth < 32:
            return builder.sext(value, _I32) if ty.signed else builder.zext(value, _I32)
        return value

    @intrinsic
    def load_unchecked(typingctx, arr, idx):
        """``arr.flat[idx]`` without wraparound or bounds checks (callers check ``idx``)."""
        if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(a.data, [_as_i64(builder, args[1], sig.args[1])], inbounds=True)
            return builder.load(ptr)

        return arr.dtype(arr, idx), codegen

    @intrinsic
    def load_label(typingctx, arr, idx):
        """``arr.flat[idx]`` as int64, for 8/16-bit arrays via an aligned-agnostic 32-bit load.

        x86 has no byte or word gathers: reading the 32-bit word that holds the element (moved
        back from the end of the array so that it never reads past it) vectorises to one dword
        gather. Needs ``arr.size * itemsize >= 4`` (callers ensure it).
        """
        if not isinstance(arr, types.Array) or not isinstance(arr.dtype, types.Integer):
            return None
        if not isinstance(idx, types.Integer):
            return None
        dtype = arr.dtype

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            i = _as_i32(builder, args[1], sig.args[1])
            bits = dtype.bitwidth
            if bits >= 32:
                v = builder.load(builder.gep(a.data, [builder.sext(i, _I64)], inbounds=True))
            else:
                per_word = 32 // bits
                last = builder.trunc(builder.sub(a.nitems, _ir.Constant(_I64, per_word)), _I32)
                j = builder.select(builder.icmp_signed(">", i, last), last, i)
                shift = builder.mul(builder.sub(i, j), _ir.Constant(_I32, bits))
                ptr = builder.gep(a.data, [builder.sext(j, _I64)], inbounds=True)
                word = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=1)
                v = builder.trunc(builder.lshr(word, shift), _ir.IntType(bits))
            if bits == 64:
                return v
            return builder.sext(v, _I64) if dtype.signed else builder.zext(v, _I64)

        return types.int64(arr, idx), codegen

    @intrinsic
    def load_pair(typingctx, arr, idx):
        """``(arr.flat[idx], arr.flat[idx + 1])`` as float32 with one load (vectorises to gathers)."""
        if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
            return None
        dtype = arr.dtype
        if dtype not in (types.float32, types.uint16, types.int16):
            return None

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(a.data, [_as_i64(builder, args[1], sig.args[1])], inbounds=True)
            f32 = _ir.FloatType()
            if dtype == types.float32:
                v = builder.load(builder.bitcast(ptr, _I64.as_pointer()), align=4)
                lo = builder.trunc(v, _I32)
                hi = builder.trunc(builder.lshr(v, _ir.Constant(_I64, 32)), _I32)
                lo, hi = builder.bitcast(lo, f32), builder.bitcast(hi, f32)
            elif dtype == types.uint16:  # IEEE half bits
                v = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=2)
                i16 = _ir.IntType(16)
                lo = builder.trunc(v, i16)
                hi = builder.trunc(builder.lshr(v, _ir.Constant(_I32, 16)), i16)
                # scalar ops only (no <2 x half>), so that the loop vectoriser can widen them
                lo = builder.fpext(builder.bitcast(lo, _ir.HalfType()), f32)
                hi = builder.fpext(builder.bitcast(hi, _ir.HalfType()), f32)
            else:  # bfloat16 bits: the upper half of a float32
                v = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=2)
                lo = builder.bitcast(builder.shl(v, _ir.Constant(_I32, 16)), f32)
                hi = builder.bitcast(builder.and_(v, _ir.Constant(_I32, 0xFFFF0000)), f32)
            return context.make_tuple(builder, sig.return_type, [lo, hi])

        return types.UniTuple(types.float32, 2)(arr, idx), codegen

    @intrinsic
    def load_code_pair(typingctx, arr, idx):
        """``(arr.flat[idx], arr.flat[idx + 1])`` of a uint16 array of fixed-point codes, as float32
        integers, with one 32-bit load (vectorises to dword gathers; the caller applies the scale)."""
        if (
            not isinstance(arr, types.Array)
            or arr.dtype != types.uint16
            or not isinstance(idx, types.Integer)
        ):
            return None

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(a.data, [_as_i64(builder, args[1], sig.args[1])], inbounds=True)
            v = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=2)
            lo = builder.and_(v, _ir.Constant(_I32, 0xFFFF))
            hi = builder.lshr(v, _ir.Constant(_I32, 16))
            f32 = _ir.FloatType()
            lo, hi = builder.sitofp(lo, f32), builder.sitofp(hi, f32)  # both < 2**16: exact
            return context.make_tuple(builder, sig.return_type, [lo, hi])

        return types.UniTuple(types.float32, 2)(arr, idx), codegen

    @intrinsic
    def wide_vectors(typingctx):
        """Let LLVM vectorise the calling function with 512-bit registers where the CPU has them.

        On AVX-512 CPUs LLVM prefers 256-bit vectors by default; 512-bit gathers make the inner
        loops ~15% faster here. Harmless elsewhere (the widest legal vectors are used).
        """

        def codegen(context, builder, sig, args):
            # A string attribute: llvmlite's AttributeSet only admits its known names, hence set.add.
            try:
                set.add(builder.function.attributes, '"prefer-vector-width"="512"')
            except Exception:  # pragma: no cover - a future llvmlite: just the default width
                pass
            return context.get_dummy_value()

        return types.none(), codegen

    @intrinsic
    def store_unchecked(typingctx, arr, idx, val):
        """``arr.flat[idx] = val`` without wraparound or bounds checks (callers check ``idx``)."""

        def codegen(context, builder, sig, args):
            a = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.gep(a.data, [_as_i64(builder, args[1], sig.args[1])], inbounds=True)
            builder.store(context.cast(builder, args[2], sig.args[2], sig.args[0].dtype), ptr)
            return context.get_dummy_value()

        return types.none(arr, idx, val), codegen

    @intrinsic
    def stack_f32(typingctx):
        """A ``RUN_BUF``-float buffer on the caller's stack (no heap, provably alias-free)."""

        def codegen(context, builder, sig, args):
            return cgutils.alloca_once(builder, _ir.FloatType(), size=RUN_BUF)

        return types.CPointer(types.float32)(), codegen

    @intrinsic
    def stack_i32(typingctx):
        """A ``RUN_BUF + 1``-int32 buffer on the caller's stack (labels after the previous one)."""

        def codegen(context, builder, sig, args):
            return cgutils.alloca_once(builder, _I32, size=RUN_BUF + 1)

        return types.CPointer(types.int32)(), codegen

    @intrinsic
    def change_bits(typingctx, ptr, j):
        """Bit ``i`` set where ``ptr[j + i] != ptr[j + i - 1]``, for i < 64 (4 vector compares)."""

        def codegen(context, builder, sig, args):
            p = args[0]
            j = _as_i64(builder, args[1], sig.args[1])
            vec = _ir.VectorType(_I32, 16)
            one = _ir.Constant(_I64, 1)
            res = _ir.Constant(_I64, 0)
            for k in range(4):
                off = builder.add(j, _ir.Constant(_I64, 16 * k))
                cur = builder.load(builder.bitcast(builder.gep(p, [off]), vec.as_pointer()), align=4)
                prev = builder.gep(p, [builder.sub(off, one)])
                prev = builder.load(builder.bitcast(prev, vec.as_pointer()), align=4)
                bits = builder.bitcast(builder.icmp_unsigned("!=", cur, prev), _ir.IntType(16))
                res = builder.or_(res, builder.shl(builder.zext(bits, _I64), _ir.Constant(_I64, 16 * k)))
            return res

        return types.uint64(ptr, j), codegen

    @intrinsic
    def cttz(typingctx, x):
        """Trailing zero bits of a non-zero uint64."""

        def codegen(context, builder, sig, args):
            return builder.cttz(args[0], _ir.Constant(_ir.IntType(1), 1))

        return types.uint64(x), codegen

    @intrinsic
    def store_at_pointer(typingctx, ptr, idx, val):
        """``ptr[idx] = val`` (raw pointer store)."""

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[2], sig.args[2], sig.args[0].dtype)
            builder.store(v, builder.gep(args[0], [_as_i64(builder, args[1], sig.args[1])], inbounds=True))
            return context.get_dummy_value()

        return types.none(ptr, idx, val), codegen

    @intrinsic
    def load_at_pointer(typingctx, ptr, idx):
        """``ptr[idx]`` (raw pointer load)."""

        def codegen(context, builder, sig, args):
            return builder.load(builder.gep(args[0], [_as_i64(builder, args[1], sig.args[1])], inbounds=True))

        return ptr.dtype(ptr, idx), codegen

    @intrinsic
    def flat_index32(typingctx, fx, fy, fz, h, w):
        """``(int(fz)·h + int(fy))·w + int(fx)`` in int32 (dword gathers; volume < 2**31 voxels)."""

        def codegen(context, builder, sig, args):
            x, y, z = (builder.fptosi(v, _I32) for v in args[:3])
            hh = _as_i32(builder, args[3], sig.args[3])
            ww = _as_i32(builder, args[4], sig.args[4])
            zy = builder.add(builder.mul(z, hh, flags=["nsw"]), y, flags=["nsw"])
            return builder.add(builder.mul(zy, ww, flags=["nsw"]), x, flags=["nsw"])

        return types.int32(fx, fy, fz, h, w), codegen

    @intrinsic
    def add32(typingctx, a, b):
        """``a + b`` kept in int32 (numba would widen to int64)."""

        def codegen(context, builder, sig, args):
            lhs = _as_i32(builder, args[0], sig.args[0])
            rhs = _as_i32(builder, args[1], sig.args[1])
            return builder.add(lhs, rhs, flags=["nsw"])

        return types.int32(a, b), codegen

    @intrinsic
    def _half_bits_to_f32(typingctx, bits):
        def codegen(context, builder, sig, args):
            return builder.fpext(builder.bitcast(args[0], _ir.HalfType()), _ir.FloatType())

        return types.float32(bits), codegen

    @intrinsic
    def _bf16_bits_to_f32(typingctx, bits):
        def codegen(context, builder, sig, args):
            wide = builder.shl(builder.zext(args[0], _I32), _ir.Constant(_I32, 16))
            return builder.bitcast(wide, _ir.FloatType())

        return types.float32(bits), codegen

    @overload(to_f32)
    def _to_f32_impl(x):
        if isinstance(x, types.Float):
            return lambda x: np.float32(x)
        if x == types.uint16:
            return lambda x: _half_bits_to_f32(x)
        if x == types.int16:
            return lambda x: _bf16_bits_to_f32(x)
        return None

else:  # pragma: no cover - the kernels are never compiled without numba
    load_unchecked = load_label = load_pair = load_code_pair = store_unchecked = store_at_pointer = (
        load_at_pointer
    ) = None
    flat_index32 = add32 = stack_f32 = stack_i32 = wide_vectors = change_bits = cttz = None

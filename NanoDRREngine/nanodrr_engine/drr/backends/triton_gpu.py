"""Fused Triton ray-march kernels (CUDA), forward and backward.

Implements the ``raymarch`` contract of :mod:`nanodrr_engine.drr.backends` in one pass over the
samples: each program marches a block of rays with the running sums in registers, so nothing of
size ``[B, S, N]`` is ever materialised. The op is registered with ``torch.library`` (forward,
backward and fake kernels), so autograd differentiates it and ``torch.compile`` treats it as opaque.

Set ``TRITON_INTERPRET=1`` before the first ``import triton`` to run the kernels on CPU tensors
(slow; this is how the tests check them without a GPU).

Design notes:

- One program owns ``BLOCK`` rays; every ray owns its output row, so the forward needs no atomics.
- With a labelmap, a lane keeps the running sum of its current label in a register and adds it to
  ``out[b, label, n]`` only when a sample with μ ≠ 0 changes label (rays cross few boundaries).
- Launches with too few programs to fill the GPU split the sample range into ``SPLIT`` chunks
  written to separate partial buffers and summed in torch (deterministic, no atomics).
- Rays with ``step == 0`` (rays that miss the volume) are masked off, and a block whose rays all
  miss skips its loop. Their gradients are therefore 0, including ``d/dstep``, which the contract
  would give as ``Σ_s μ(p_s)``: for a ray that misses, μ is 0 along it anyway.
- The backward recomputes the samples; ``d/dvol`` uses relaxed ``atomic_add`` (8 per sample, skipped
  where the upstream gradient is 0), the ray gradients stay in registers.
- Optional ``count`` (Joseph's slices): each ray masks its samples ``s >= count``, and a block stops at
  its largest count.
- Optional ``width``: when the rays are an image of this many columns, a program takes a
  ``BLOCK // 16 × 16`` pixel tile instead of ``BLOCK`` consecutive pixels of a row, which keeps its
  samples closer together in the volume (better cache reuse of the trilinear gathers).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from ._contract import check_raymarch_args, check_sample_counts
from .fused_op import fused_op

try:
    import triton
    import triton.language as tl
except ImportError:  # optional dependency: the module must still import so is_available() can say no
    triton = None
    tl = None

    def _jit(fn):
        return fn
else:
    _jit = triton.jit

__all__ = ["is_available", "raymarch"]

#: Rays per program and warps per program (not autotuned: tuning needs the target GPU).
_BLOCK = 128
_WARPS = 4
#: Tile width (pixels) of a program when the image width is known.
_TILE_W = 16
#: Aim for at least this many programs per SM before splitting the sample range.
_PROGRAMS_PER_SM = 8
#: Never split into more chunks than this, nor into chunks of fewer samples than this.
_MAX_SPLIT = 16
_MIN_CHUNK = 16
#: Cap on the float32 elements of the forward's partial buffer ``[SPLIT, B, C, N]``.
_MAX_PARTIAL = 1 << 24


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def is_available() -> bool:
    """Whether Triton is importable and can run here (a CUDA device, or interpreter mode)."""
    if triton is None:
        return False
    try:
        return _interpreting() or torch.cuda.is_available()
    except Exception:  # a broken CUDA install must not break backend discovery
        return False


# ---------------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------------


@_jit
def _ray_block(N, IW, B_TILES, BLOCK: tl.constexpr, TW: tl.constexpr):
    """Batch index, ray indices ``[BLOCK]`` and lane mask of this program's block of rays."""
    pid = tl.program_id(0)
    b = pid // B_TILES
    blk = pid % B_TILES
    lane = tl.arange(0, BLOCK)
    if TW > 0:
        TH: tl.constexpr = BLOCK // TW
        IH = N // IW
        tiles_w = tl.cdiv(IW, TW)
        row = (blk // tiles_w) * TH + lane // TW
        col = (blk % tiles_w) * TW + lane % TW
        n = row * IW + col
        m = (row < IH) & (col < IW)
    else:
        n = blk * BLOCK + lane
        m = n < N
    return b, n, m


@_jit
def _round_half_even(x):
    """``torch.round`` (ties to even, as ``grid_sample(mode="nearest")``) as int32, exact in fp32."""
    r = tl.floor(x)
    f = x - r  # exact: x and floor(x) are close in magnitude
    ri = r.to(tl.int32)
    up = (f > 0.5) | ((f == 0.5) & ((ri & 1) == 1))
    return ri + up.to(tl.int32)


@_jit
def _march_setup(
    start_ptr, delta_ptr, step_ptr, count_ptr, base, m, SPLIT: tl.constexpr, HAS_COUNT: tl.constexpr, S, chunk
):
    """Load a block's rays, their sample counts (``S`` each without ``count``) and the block's sample
    range ``[s_lo, s_hi)`` (empty if every ray misses, cut at the block's largest count)."""
    st = tl.load(step_ptr + base, mask=m, other=0.0)
    act = m & (st != 0.0)
    if HAS_COUNT:
        cnt = tl.load(count_ptr + base, mask=act, other=0).to(tl.int32)
    else:
        cnt = tl.zeros_like(st).to(tl.int32) + S
    sx = tl.load(start_ptr + base * 3 + 0, mask=act, other=0.0)
    sy = tl.load(start_ptr + base * 3 + 1, mask=act, other=0.0)
    sz = tl.load(start_ptr + base * 3 + 2, mask=act, other=0.0)
    dx = tl.load(delta_ptr + base * 3 + 0, mask=act, other=0.0)
    dy = tl.load(delta_ptr + base * 3 + 1, mask=act, other=0.0)
    dz = tl.load(delta_ptr + base * 3 + 2, mask=act, other=0.0)
    if SPLIT > 1:
        k = tl.program_id(1)
        s_lo = k * chunk
        s_hi = tl.minimum(s_lo + chunk, S)
    else:
        s_lo = 0
        s_hi = S
    any_hit = tl.max(act.to(tl.int32), axis=0)
    s_hi = tl.maximum(s_lo + (s_hi - s_lo) * any_hit, s_lo)
    if HAS_COUNT:
        s_hi = tl.maximum(tl.minimum(s_hi, tl.max(tl.where(act, cnt, 0), axis=0)), s_lo)
    return st, act, cnt, sx, sy, sz, dx, dy, dz, s_lo, s_hi


@_jit
def _cell(x, size_f, size):
    """Clamped position, its cell's lower corner (int32), fraction, and the in-bounds masks of the
    cell's two corners along one axis. Clamping to [-2, size + 1] changes no weight (the cell is
    all padding there) and keeps the int32 conversion in range."""
    xc = tl.minimum(tl.maximum(x, -2.0), size_f + 1.0)
    x0 = tl.floor(xc)
    i = x0.to(tl.int32)
    in0 = (i >= 0) & (i < size)
    in1 = (i >= -1) & (i < size - 1)
    return xc, i, xc - x0, in0, in1


@_jit
def _corners(vol_ptr, idx, W, HW, m00, m01, m10, m11, inx0, inx1):
    """The 8 trilinear corners of the cells at ``idx`` as float32, 0 where masked (outside)."""
    p = vol_ptr + idx
    v000 = tl.load(p, mask=m00 & inx0, other=0.0).to(tl.float32)
    v001 = tl.load(p + 1, mask=m00 & inx1, other=0.0).to(tl.float32)
    v010 = tl.load(p + W, mask=m01 & inx0, other=0.0).to(tl.float32)
    v011 = tl.load(p + W + 1, mask=m01 & inx1, other=0.0).to(tl.float32)
    v100 = tl.load(p + HW, mask=m10 & inx0, other=0.0).to(tl.float32)
    v101 = tl.load(p + HW + 1, mask=m10 & inx1, other=0.0).to(tl.float32)
    v110 = tl.load(p + HW + W, mask=m11 & inx0, other=0.0).to(tl.float32)
    v111 = tl.load(p + HW + W + 1, mask=m11 & inx1, other=0.0).to(tl.float32)
    return v000, v001, v010, v011, v100, v101, v110, v111


@_jit
def _nearest_label(lab_ptr, xc, yc, zc, live, D, H, W):
    """The label of the voxel nearest each sample (int32; 0 outside the volume)."""
    rx = _round_half_even(xc)
    ry = _round_half_even(yc)
    rz = _round_half_even(zc)
    inl = live & (rx >= 0) & (rx < W) & (ry >= 0) & (ry < H) & (rz >= 0) & (rz < D)
    return tl.load(lab_ptr + (rz * H + ry) * W + rx, mask=inl, other=0).to(tl.int32)


@_jit
def _fwd_kernel(
    vol_ptr,
    lab_ptr,
    start_ptr,
    delta_ptr,
    step_ptr,
    count_ptr,
    out_ptr,
    B,
    N,
    C,
    D,
    H,
    W,
    S,
    chunk,
    IW,
    B_TILES,
    HAS_LAB: tl.constexpr,
    HAS_COUNT: tl.constexpr,
    SPLIT: tl.constexpr,
    TW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out[k, b, c, n]`` = partial sum of the contract over the k-th chunk of samples."""
    b, n, m = _ray_block(N, IW, B_TILES, BLOCK, TW)
    base = b * N + n
    st, act, cnt, sx, sy, sz, dx, dy, dz, s_lo, s_hi = _march_setup(
        start_ptr, delta_ptr, step_ptr, count_ptr, base, m, SPLIT, HAS_COUNT, S, chunk
    )
    if SPLIT > 1:
        out_base = (tl.program_id(1) * B + b) * C * N + n
    else:
        out_base = b * C * N + n
    Wf = W * 1.0
    Hf = H * 1.0
    Df = D * 1.0
    HW = H * W

    acc = tl.zeros([BLOCK], dtype=tl.float32)
    cur = tl.zeros([BLOCK], dtype=tl.int32)
    for s in range(s_lo, s_hi):
        live = act & (s < cnt)  # the ray's own samples only
        sf = s * 1.0
        xc, ix, fx, inx0, inx1 = _cell(sx + sf * dx, Wf, W)
        yc, iy, fy, iny0, iny1 = _cell(sy + sf * dy, Hf, H)
        zc, iz, fz, inz0, inz1 = _cell(sz + sf * dz, Df, D)
        m00 = live & inz0 & iny0
        m01 = live & inz0 & iny1
        m10 = live & inz1 & iny0
        m11 = live & inz1 & iny1
        v000, v001, v010, v011, v100, v101, v110, v111 = _corners(
            vol_ptr, (iz * H + iy) * W + ix, W, HW, m00, m01, m10, m11, inx0, inx1
        )
        c00 = v000 + fx * (v001 - v000)
        c01 = v010 + fx * (v011 - v010)
        c10 = v100 + fx * (v101 - v100)
        c11 = v110 + fx * (v111 - v110)
        c0 = c00 + fy * (c01 - c00)
        c1 = c10 + fy * (c11 - c10)
        val = c0 + fz * (c1 - c0)
        if HAS_LAB:
            cls = _nearest_label(lab_ptr, xc, yc, zc, live, D, H, W)
            ok = live & (cls >= 0) & (cls < C) & (val != 0.0)
            # A sample of another label flushes the run: each lane owns row n, so no atomics
            flush = ok & (cls != cur) & (acc != 0.0)
            q = out_ptr + out_base + cur * N
            tl.store(q, tl.load(q, mask=flush, other=0.0) + acc * st, mask=flush)
            change = ok & (cls != cur)
            acc = tl.where(change, 0.0, acc) + tl.where(ok, val, 0.0)
            cur = tl.where(change, cls, cur)
        else:
            acc += val

    if HAS_LAB:
        flush = m & (acc != 0.0)
        q = out_ptr + out_base + cur * N
        tl.store(q, tl.load(q, mask=flush, other=0.0) + acc * st, mask=flush)
    else:
        tl.store(out_ptr + out_base, acc * st, mask=m)


@_jit
def _bwd_kernel(
    vol_ptr,
    lab_ptr,
    start_ptr,
    delta_ptr,
    step_ptr,
    count_ptr,
    go_ptr,
    gvol_ptr,
    gstart_ptr,
    gdelta_ptr,
    gstep_ptr,
    B,
    N,
    C,
    D,
    H,
    W,
    S,
    chunk,
    IW,
    B_TILES,
    HAS_LAB: tl.constexpr,
    HAS_COUNT: tl.constexpr,
    NEED_VOL: tl.constexpr,
    NEED_RAY: tl.constexpr,
    SPLIT: tl.constexpr,
    TW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Gradients of the contract: ``gvol`` (atomics), and per ray the k-th chunk's partial
    ``gstart = step Σ g_s ∇μ``, ``gdelta = step Σ s g_s ∇μ``, ``gstep = Σ g_s μ`` with
    ``g_s = go[b, label_s, n]``."""
    b, n, m = _ray_block(N, IW, B_TILES, BLOCK, TW)
    base = b * N + n
    st, act, cnt, sx, sy, sz, dx, dy, dz, s_lo, s_hi = _march_setup(
        start_ptr, delta_ptr, step_ptr, count_ptr, base, m, SPLIT, HAS_COUNT, S, chunk
    )
    go_base = b * C * N + n
    Wf = W * 1.0
    Hf = H * 1.0
    Df = D * 1.0
    HW = H * W

    # Upstream gradient of the sample's channel, reloaded only when the label changes
    g = tl.load(go_ptr + go_base, mask=act, other=0.0)
    gcls = tl.zeros([BLOCK], dtype=tl.int32)
    a_x = tl.zeros([BLOCK], dtype=tl.float32)
    a_y = tl.zeros([BLOCK], dtype=tl.float32)
    a_z = tl.zeros([BLOCK], dtype=tl.float32)
    b_x = tl.zeros([BLOCK], dtype=tl.float32)
    b_y = tl.zeros([BLOCK], dtype=tl.float32)
    b_z = tl.zeros([BLOCK], dtype=tl.float32)
    a_s = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(s_lo, s_hi):
        live = act & (s < cnt)  # the ray's own samples only
        sf = s * 1.0
        xc, ix, fx, inx0, inx1 = _cell(sx + sf * dx, Wf, W)
        yc, iy, fy, iny0, iny1 = _cell(sy + sf * dy, Hf, H)
        zc, iz, fz, inz0, inz1 = _cell(sz + sf * dz, Df, D)
        if HAS_LAB:
            cls = _nearest_label(lab_ptr, xc, yc, zc, live, D, H, W)
            reload = live & (cls != gcls)
            g_new = tl.load(go_ptr + go_base + cls * N, mask=reload & (cls >= 0) & (cls < C), other=0.0)
            g = tl.where(reload, g_new, g)
            gcls = tl.where(reload, cls, gcls)
        idx = (iz * H + iy) * W + ix
        m00 = live & inz0 & iny0
        m01 = live & inz0 & iny1
        m10 = live & inz1 & iny0
        m11 = live & inz1 & iny1
        if NEED_RAY:
            v000, v001, v010, v011, v100, v101, v110, v111 = _corners(
                vol_ptr, idx, W, HW, m00, m01, m10, m11, inx0, inx1
            )
            e00 = v001 - v000
            e01 = v011 - v010
            e10 = v101 - v100
            e11 = v111 - v110
            c00 = v000 + fx * e00
            c01 = v010 + fx * e01
            c10 = v100 + fx * e10
            c11 = v110 + fx * e11
            c0 = c00 + fy * (c01 - c00)
            c1 = c10 + fy * (c11 - c10)
            val = c0 + fz * (c1 - c0)
            # Analytic trilinear derivatives (floor cell, as grid_sample's backward)
            gx = g * ((e00 + fy * (e01 - e00)) + fz * ((e10 + fy * (e11 - e10)) - (e00 + fy * (e01 - e00))))
            gy = g * ((c01 - c00) + fz * ((c11 - c10) - (c01 - c00)))
            gz = g * (c1 - c0)
            a_x += gx
            a_y += gy
            a_z += gz
            b_x += sf * gx
            b_y += sf * gy
            b_z += sf * gz
            a_s += g * val
        if NEED_VOL:
            gs = g * st
            nz = gs != 0.0
            q = gvol_ptr + idx
            wx1 = fx
            wx0 = 1.0 - fx
            w00 = gs * (1.0 - fy) * (1.0 - fz)
            w01 = gs * fy * (1.0 - fz)
            w10 = gs * (1.0 - fy) * fz
            w11 = gs * fy * fz
            tl.atomic_add(q, w00 * wx0, mask=nz & m00 & inx0, sem="relaxed")
            tl.atomic_add(q + 1, w00 * wx1, mask=nz & m00 & inx1, sem="relaxed")
            tl.atomic_add(q + W, w01 * wx0, mask=nz & m01 & inx0, sem="relaxed")
            tl.atomic_add(q + W + 1, w01 * wx1, mask=nz & m01 & inx1, sem="relaxed")
            tl.atomic_add(q + HW, w10 * wx0, mask=nz & m10 & inx0, sem="relaxed")
            tl.atomic_add(q + HW + 1, w10 * wx1, mask=nz & m10 & inx1, sem="relaxed")
            tl.atomic_add(q + HW + W, w11 * wx0, mask=nz & m11 & inx0, sem="relaxed")
            tl.atomic_add(q + HW + W + 1, w11 * wx1, mask=nz & m11 & inx1, sem="relaxed")

    if NEED_RAY:
        if SPLIT > 1:
            pbase = tl.program_id(1) * B * N + base
        else:
            pbase = base
        tl.store(gstart_ptr + pbase * 3 + 0, st * a_x, mask=m)
        tl.store(gstart_ptr + pbase * 3 + 1, st * a_y, mask=m)
        tl.store(gstart_ptr + pbase * 3 + 2, st * a_z, mask=m)
        tl.store(gdelta_ptr + pbase * 3 + 0, st * b_x, mask=m)
        tl.store(gdelta_ptr + pbase * 3 + 1, st * b_y, mask=m)
        tl.store(gdelta_ptr + pbase * 3 + 2, st * b_z, mask=m)
        tl.store(gstep_ptr + pbase, a_s, mask=m)


# ---------------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return _PROGRAMS_PER_SM * 132  # interpreter: behave like an H100, so the split path gets exercised


def _layout(B: int, N: int, width: int) -> tuple[int, int]:
    """``(programs per batch item, tile width)``: 2-D pixel tiles when the image width is known."""
    if width > 0 and N % width == 0 and _BLOCK % _TILE_W == 0:
        return triton.cdiv(width, _TILE_W) * triton.cdiv(N // width, _BLOCK // _TILE_W), _TILE_W
    return triton.cdiv(N, _BLOCK), 0


def _split(device: torch.device, programs: int, n_samples: int, partial_elems: int) -> int:
    """Sample-range chunks: a launch with fewer programs than the GPU holds trades a partial-sum
    buffer (``partial_elems`` floats per chunk) for parallelism."""
    target = _target_programs(device)
    if programs <= 0 or programs >= target:
        return 1
    split = min(triton.cdiv(target, programs), _MAX_SPLIT, max(1, n_samples // _MIN_CHUNK))
    split = max(1, min(split, _MAX_PARTIAL // max(partial_elems, 1)))
    return triton.cdiv(n_samples, triton.cdiv(n_samples, split))  # no empty chunk


def _launch(
    kernel, split, vol, lab, n_classes, start, delta, step, n_samples, width, count, *buffers, **flags
):
    """Run ``kernel`` on the rays, ``split`` programs per block of them (one per chunk of samples), with
    the output ``buffers`` after the inputs and ``flags`` after the common compile-time ones."""
    B, N, _ = start.shape
    tiles, tw = _layout(B, N, width)
    if N == 0 or B == 0:
        return
    kernel[(B * tiles, split)](
        vol, lab.contiguous() if n_classes > 1 else vol, start, delta, step, step if count is None else count,
        *buffers, B, N, n_classes, *vol.shape, n_samples, triton.cdiv(n_samples, split), max(width, 1), tiles,
        HAS_LAB=n_classes > 1, HAS_COUNT=count is not None, SPLIT=split, TW=tw, BLOCK=_BLOCK, num_warps=_WARPS,
        **flags,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# torch.library op
# ---------------------------------------------------------------------------------------------------


def _forward_impl(
    vol: Tensor,
    lab: Tensor | None,
    n_classes: int,
    start: Tensor,
    delta: Tensor,
    step: Tensor,
    n_samples: int,
    width: int,
    count: Tensor | None,
) -> Tensor:
    B, N, _ = start.shape
    C = n_classes
    split = _split(start.device, B * _layout(B, N, width)[0], n_samples, B * C * N)
    alloc = torch.zeros if C > 1 else torch.empty  # labelled runs are added into `out`
    out = alloc((split, B, C, N) if split > 1 else (B, C, N), device=start.device, dtype=torch.float32)
    _launch(_fwd_kernel, split, vol, lab, C, start, delta, step, n_samples, width, count, out)
    return out.sum(dim=0) if split > 1 else out


def _forward_fake(vol, lab, n_classes, start, delta, step, n_samples, width, count):
    B, N, _ = start.shape
    return start.new_empty((B, n_classes, N), dtype=torch.float32)


def _backward_impl(
    grad: Tensor,
    vol: Tensor,
    lab: Tensor | None,
    n_classes: int,
    start: Tensor,
    delta: Tensor,
    step: Tensor,
    n_samples: int,
    width: int,
    count: Tensor | None,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    need_vol, need_ray = needs[0], any(needs[1:])  # one kernel gives every ray gradient
    B, N, _ = start.shape
    split = _split(start.device, B * _layout(B, N, width)[0], n_samples, 0) if need_ray else 1
    grad = grad.to(torch.float32).contiguous()
    gvol = torch.zeros(vol.shape, device=vol.device, dtype=torch.float32) if need_vol else start.new_empty(0)
    lead = (split,) if split > 1 else ()
    gstart = start.new_empty((*lead, B, N, 3) if need_ray else 0)
    gdelta = start.new_empty((*lead, B, N, 3) if need_ray else 0)
    gstep = start.new_empty((*lead, B, N) if need_ray else 0)
    if need_vol or need_ray:
        _launch(
            _bwd_kernel, split, vol, lab, n_classes, start, delta, step, n_samples, width, count, grad,
            gvol if need_vol else grad, *((gstart, gdelta, gstep) if need_ray else (grad, grad, grad)),
            NEED_VOL=need_vol, NEED_RAY=need_ray,
        )  # fmt: skip
    if need_ray and split > 1:
        gstart, gdelta, gstep = gstart.sum(dim=0), gdelta.sum(dim=0), gstep.sum(dim=0)
    if need_vol:
        gvol = gvol.to(vol.dtype)
    return gvol, gstart, gdelta, gstep


# Opaque to torch.compile (the fake kernel gives the output's shape); gradients to vol and the rays.
_raymarch_op = fused_op(
    "triton_raymarch",
    "Tensor vol, Tensor? lab, int n_classes, Tensor start, Tensor delta, Tensor step, int n_samples, "
    "int width, Tensor? count",
    _forward_impl,
    _forward_fake,
    _backward_impl,
    differentiable=("vol", "start", "delta", "step"),
)


# ---------------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------------

_VOL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(vol, lab, n_classes, start, delta, step, n_samples, width, count) -> None:
    if triton is None:
        raise RuntimeError("triton backend: triton is not installed")
    check_raymarch_args(vol, lab, n_classes, start, delta, step, n_samples)
    check_sample_counts(count, *step.shape, n_samples, vol.device)
    if vol.dtype not in _VOL_DTYPES:
        raise ValueError(f"vol: expected one of {_VOL_DTYPES}, got {vol.dtype}")
    if n_classes > 1 and lab.dtype == torch.bool:
        raise ValueError(f"lab: expected an integer dtype, got {lab.dtype}")
    if not isinstance(width, int) or width < 0:
        raise ValueError(f"width: expected an int >= 0, got {width!r}")
    if vol.device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"vol: the triton backend needs CUDA tensors (got {vol.device}); "
            "set TRITON_INTERPRET=1 before importing triton to run it on CPU"
        )


def raymarch(
    vol: Tensor,
    lab: Tensor | None,
    n_classes: int,
    start: Tensor,
    delta: Tensor,
    step: Tensor,
    n_samples: int,
    *,
    width: int = 0,
    count: Tensor | None = None,
) -> Tensor:
    """Fused ray march; see :mod:`nanodrr_engine.drr.backends` for the contract.

    Args:
        vol: ``[D, H, W]`` μ, float32/float16/bfloat16 (read natively, summed in float32).
        lab: ``[D, H, W]`` integer labels, or ``None`` when ``n_classes == 1`` (ignored then).
        n_classes: ``C``, output channels.
        start: ``[B, N, 3]`` voxel coordinates ``(i, j, k)`` of the first sample.
        delta: ``[B, N, 3]`` voxel-coordinate increment per sample.
        step: ``[B, N]`` step length in mm (0: ray skipped).
        n_samples: ``S >= 1``.
        width: optional image width when the ``N`` rays are a row-major image of ``width`` columns;
            only changes which rays share a program (2-D tiles, better cache reuse), not the result.
        count: ``[B, N]`` integer per-ray sample counts in ``[0, S]`` (ray ``r`` keeps its samples
            ``s < count[r]``: Joseph's slices), or ``None``.

    Returns:
        ``[B, C, N]`` float32.
    """
    _check(vol, lab, n_classes, start, delta, step, n_samples, width, count)
    if count is not None:
        count = count.detach().to(torch.int32).contiguous()
    return _raymarch_op(
        vol.contiguous(),
        lab if n_classes > 1 else None,
        n_classes,
        start.float().contiguous(),
        delta.float().contiguous(),
        step.float().contiguous(),
        n_samples,
        width,
        count,
    )

"""``render``: camera geometry in torch, ray marching in a swappable backend."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Float

from .. import budget
from .._validation import (
    as_matrix,
    check_bool,
    check_choice,
    check_k_inv,
    check_length,
    check_pixels,
    check_rigid,
)
from ..data.subject import Subject
from ..names import METHODS
from .backends import BACKENDS, select_backend
from .joseph_ends import end_correction, may_end_inside
from .rays import make_src, make_tgt, sample_geometry, slice_geometry

#: Volume samples per chunk when a render runs in chunks (a progress callback, or large work), per
#: backend (:attr:`~.backends.Backend.chunk_samples`), so that a chunk takes well under half a second.
CHUNK_SAMPLES = {name: b.chunk_samples for name, b in BACKENDS.items()}
#: Renders of more chunks than this are chunked without a callback too: Ctrl-C then interrupts them
#: between chunks (a kernel call cannot be interrupted), and torch geometry is held a chunk at a time.
AUTO_CHUNKS = 32
#: Chunks that split an image row start at multiples of this many rays (the kernels' ray pairs/quads).
_ALIGN = 64


def render(
    subject: Subject,
    k_inv: Float[torch.Tensor, "*#batch 3 3"],
    rt_inv: Float[torch.Tensor, "*#batch 4 4"],
    sdd: float | Float[torch.Tensor, "*#batch"],
    height: int,
    width: int,
    n_samples: int = 500,
    soft_labels: bool = False,
    orthographic: bool = False,
    src: Float[torch.Tensor, "#batch #rays 3"] | None = None,
    tgt: Float[torch.Tensor, "#batch rays 3"] | None = None,
    backend: str = "auto",
    method: str = "raymarch",
    progress: Callable[[float], object] | None = None,
) -> Float[torch.Tensor, "batch channels height width"]:
    """Render DRRs: the line integral ∫μ ds along each pixel's ray (no exponential).

    Args:
        subject: the volume (and optional labelmap).
        k_inv: ``[B, 3, 3]`` (or ``[3, 3]``) inverse intrinsics, one per image or shared.
        rt_inv: ``[B, 4, 4]`` (or ``[4, 4]``) rigid camera-to-world poses.
        sdd: source-to-detector distance (mm), scalar or ``[B]``.
        height, width: detector size in pixels.
        n_samples: samples per ray, evenly spaced midpoints on the part of the ray inside the volume.
        soft_labels: route trilinear neighbours to their own labels (reference backend only).
        orthographic: parallel beams (each ray starts at its pixel's foot on z = 0).
        src, tgt: precomputed ray ends in camera coordinates (``DRR`` caches them).
        backend: ``"auto"`` (fastest available), ``"numba"``, ``"triton"`` or ``"torch"`` (reference).
        method: ``"raymarch"`` (the reference semantics: ``n_samples`` midpoints per ray, as nanodrr)
            or ``"joseph"`` (one sample per voxel plane along each ray's dominant axis, bilinear on
            the plane; ``n_samples`` is ignored). Joseph's method is as accurate against exact line
            integrals and reads half the voxels per sample: the fastest CPU path (numba) for renders
            without gradients (plain or labelmap) and plain renders with pose gradients (registration);
            its other gradients (volume, labelmaps) and GPUs run the fused ray march on its samples.
        progress: ``progress(fraction)``, called after each chunk of rays with the fraction done. With
            it the rays are rendered in chunks that take well under half a second each (``CHUNK_SAMPLES``;
            renders of more than ``AUTO_CHUNKS`` chunks always are), each ray as in one call (pixels are
            independent; the CPU kernels' ray pairs may round the last bit differently, and gradients
            are summed chunk by chunk). An exception it raises cancels the render and propagates.

    Returns:
        ``[B, C, H, W]``: C = ``subject.n_classes`` channels (1 without a labelmap); the channels sum to
        the plain render. Differentiable w.r.t. the pose, the volume and the μ parameters.

    Raises:
        WorkBudgetError: a ``ValueError``: the request's samples or memory exceed the work budget
            (:mod:`nanodrr_engine.budget`); checked before anything is allocated.
    """
    if not isinstance(subject, Subject):
        raise TypeError(f"subject: expected a nanodrr_engine Subject, got {type(subject).__name__}")
    height = check_pixels(height, "height")
    width = check_pixels(width, "width")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples: must be an integer >= 1, got {n_samples!r}")
    check_choice(method, "method", METHODS)
    check_choice(backend, "backend", ("auto", *BACKENDS))
    soft_labels = check_bool(soft_labels, "soft_labels")
    orthographic = check_bool(orthographic, "orthographic")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: must be callable or None, got {type(progress).__name__}")

    device = subject.world_to_voxel.device
    rt_inv = as_matrix(rt_inv, "rt_inv", (4, 4), device=device)
    dtype = torch.float64 if rt_inv.dtype == torch.float64 else torch.float32  # geometry never in half
    rt_inv = rt_inv.to(dtype)
    if rt_inv.ndim == 2:
        rt_inv = rt_inv.unsqueeze(0)
    check_rigid(rt_inv, "rt_inv")

    vol = subject.image[0, 0]
    C = subject.n_classes
    if tgt is None:
        k_inv = as_matrix(k_inv, "k_inv", (3, 3), dtype=dtype, device=device)
        k_inv = k_inv.unsqueeze(0) if k_inv.ndim == 2 else k_inv
        check_k_inv(k_inv)  # an all-zero or singular k_inv would render a zero image
        check_length(sdd, "sdd", dtype)  # before the cast: 1e300 is out of range, not infinite
        sdd_t = torch.as_tensor(sdd, dtype=dtype, device=device).reshape(-1)
        B = max(rt_inv.shape[0], k_inv.shape[0], sdd_t.shape[0])
        inputs = (vol, rt_inv, k_inv, sdd_t)
    else:
        tgt = tgt.to(device=device, dtype=dtype)
        if tgt.ndim != 3 or tgt.shape[1] != height * width:
            raise ValueError(f"tgt: expected [B, {height * width}, 3], got {list(tgt.shape)}")
        if src is None:
            raise ValueError("src: must be given together with tgt")
        B = max(rt_inv.shape[0], tgt.shape[0], src.shape[0])
        inputs = (vol, rt_inv, src, tgt)
    grads = _needs_grad(*inputs)
    cost = budget.estimate(
        B, height, width, n_samples, method, subject.shape, C, dtype.itemsize, orthographic, grads,
        _needs_grad(vol),
    )  # fmt: skip
    budget.check(cost)  # before the rays are made

    if tgt is None:
        tgt = make_tgt(k_inv, sdd_t, height, width)
        if src is None:
            src = make_src(orthographic, tgt, sdd_t)
    src = src.to(device=device, dtype=dtype)

    B = max(rt_inv.shape[0], tgt.shape[0], src.shape[0])
    for name, t in (("rt_inv", rt_inv), ("k_inv/tgt", tgt), ("src", src)):
        if t.shape[0] not in (1, B):
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the others ({B})")

    cam_to_voxel = subject.world_to_voxel.to(dtype) @ rt_inv
    lab = subject.label[0, 0] if (subject.label is not None and C > 1) else None
    soft = soft_labels and lab is not None
    if method == "joseph" and soft:
        raise ValueError("soft_labels: not available with method='joseph'")
    march = (vol, lab, C, subject.shape, n_samples, soft, backend, method, width)
    chunk = None
    if progress is not None or cost.samples > AUTO_CHUNKS * min(CHUNK_SAMPLES.values()):
        chunk = CHUNK_SAMPLES["torch" if soft else select_backend(backend, device, vol.dtype).name]
    if chunk is None or (progress is None and cost.samples <= AUTO_CHUNKS * chunk):
        out = _render_rays(*march, cam_to_voxel, src, tgt)
    else:
        rays = max(1, chunk // max(1, cost.samples_per_ray))
        out = _render_chunks(march, cam_to_voxel, src, tgt, B, width, rays, progress)
    return out.reshape(B, C, height, width)


def _render_rays(vol, lab, C, shape, n_samples, soft, backend, method, width, cam_to_voxel, src, tgt):
    """``[B, C, N]``: the rays ``src → tgt`` (camera mm) marched by the path for this call; Joseph's
    render adds the exact weights of partial end segments where a source or detector pixel lies inside
    the volume (:mod:`.joseph_ends`; skipped otherwise)."""
    out = _march(vol, lab, C, shape, n_samples, soft, backend, method, width, cam_to_voxel, src, tgt)
    if method == "joseph" and may_end_inside(cam_to_voxel, src, tgt, shape):
        B = max(cam_to_voxel.shape[0], src.shape[0], tgt.shape[0])
        out = out + end_correction(vol, lab, C, cam_to_voxel.expand(B, 4, 4), src, tgt, shape).to(out.dtype)
    return out


def _march(vol, lab, C, shape, n_samples, soft, backend, method, width, cam_to_voxel, src, tgt):
    """The chosen backend's fast path for this call (the kernels that make their samples from the camera
    rays: on CPU every render without gradients w.r.t. the volume or the rays, Joseph's with labels only
    without any gradient), else its op on the method's per-ray samples (the ray march's midpoints or
    Joseph's plane crossings with per-ray counts)."""
    B = max(cam_to_voxel.shape[0], tgt.shape[0], src.shape[0])
    if soft:
        if backend not in ("auto", "torch"):
            raise ValueError(
                f"backend: soft_labels=True is implemented by the 'torch' backend only, not {backend!r}"
            )
        start, delta, step = sample_geometry(cam_to_voxel.expand(B, 4, 4), src, tgt, shape, n_samples)
        reference = BACKENDS["torch"].load()
        return reference(vol, lab, C, start.float(), delta.float(), step.float(), n_samples, soft_labels=True)
    chosen = select_backend(backend, vol.device, vol.dtype)
    fast = chosen.fast_path(
        method,
        labels=lab is not None,
        pose_grad=_needs_grad(cam_to_voxel),
        other_grad=_needs_grad(vol, src, tgt),
    )
    if fast is not None:
        return fast(vol, lab, C, cam_to_voxel, src, tgt, n_samples)
    if method == "joseph":
        start, delta, step, count = slice_geometry(cam_to_voxel.expand(B, 4, 4), src, tgt, shape)
        n_samples = max(1, int(count.max())) if count.numel() else 1
        float32 = True  # Joseph's samples are marched in float32 by every backend
    else:
        start, delta, step = sample_geometry(cam_to_voxel.expand(B, 4, 4), src, tgt, shape, n_samples)
        count, float32 = None, chosen.float32_rays
    if float32:
        start, delta, step = start.float(), delta.float(), step.float()
    return chosen.load()(vol, lab, C, start, delta, step, n_samples, count=count, width=width)


def _render_chunks(march, cam_to_voxel, src, tgt, B, width, rays, progress) -> torch.Tensor:
    """``[B, C, N]`` rendered in blocks of about ``rays`` rays (whole images, whole rows, or aligned
    pieces of a row), ``progress(fraction)`` after each; under autograd each block is its own node."""
    N = tgt.shape[1]
    if rays >= N:
        per = rays // N
        blocks = [(b, min(B, b + per), 0, N) for b in range(0, B, per)]
    else:
        if rays >= width:  # whole rows, a multiple of 4 rays: the CPU kernels pair (quad) rays from there
            m = 4 // math.gcd(width, 4)
            step = max(m, rays // width // m * m) * width
        else:
            step = max(_ALIGN, rays // _ALIGN * _ALIGN)
        blocks = [(b, b + 1, n, min(N, n + step)) for b in range(B) for n in range(0, N, step)]
    out = None
    done = 0
    for b0, b1, n0, n1 in blocks:
        part = _render_rays(
            *march, _rows(cam_to_voxel, b0, b1), _rows(src, b0, b1, n0, n1), _rows(tgt, b0, b1, n0, n1)
        )
        if out is None:
            out = torch.empty(B, part.shape[1], N, dtype=part.dtype, device=part.device)
        out[b0:b1, :, n0:n1] = part
        done += (b1 - b0) * (n1 - n0)
        if progress is not None:
            if part.device.type == "cuda":  # the fraction done, and a cancel that stops the work
                torch.cuda.synchronize(part.device)
            elif part.device.type == "mps":
                torch.mps.synchronize()
            progress(done / (B * N))
    return out


def _rows(t: torch.Tensor, b0: int, b1: int, n0: int | None = None, n1: int | None = None) -> torch.Tensor:
    """Images ``b0:b1`` (unless ``t`` is shared by all) and pixels ``n0:n1`` (unless shared) of ``t``."""
    t = t if t.shape[0] == 1 else t[b0:b1]
    return t if n0 is None or t.shape[1] == 1 else t[:, n0:n1]


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will want gradients w.r.t. any of ``tensors`` (which decides the fused CPU paths:
    they differentiate w.r.t. the pose only, Joseph's for plain renders only)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

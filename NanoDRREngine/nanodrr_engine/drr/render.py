"""``render``: camera geometry in torch, ray marching in a swappable backend."""

from __future__ import annotations

import torch

from .._validation import as_matrix, check_pixels, check_rigid
from ..data.subject import Subject
from .backends import resolve_backend
from .rays import make_src, make_tgt, sample_geometry, slice_geometry

#: Sampling methods: the reference ray march, and Joseph's one-sample-per-voxel-plane.
METHODS = ("raymarch", "joseph")


def render(
    subject: Subject,
    k_inv: torch.Tensor,
    rt_inv: torch.Tensor,
    sdd: float | torch.Tensor,
    height: int,
    width: int,
    n_samples: int = 500,
    soft_labels: bool = False,
    orthographic: bool = False,
    src: torch.Tensor | None = None,
    tgt: torch.Tensor | None = None,
    backend: str = "auto",
    method: str = "raymarch",
) -> torch.Tensor:
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

    Returns:
        ``[B, C, H, W]``: C = ``subject.n_classes`` channels (1 without a labelmap); the channels sum to
        the plain render. Differentiable w.r.t. the pose, the volume and the μ parameters.
    """
    if not isinstance(subject, Subject):
        raise TypeError(f"subject: expected a nanodrr_engine Subject, got {type(subject).__name__}")
    height = check_pixels(height, "height")
    width = check_pixels(width, "width")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples: must be an integer >= 1, got {n_samples!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")

    device = subject.world_to_voxel.device
    rt_inv = as_matrix(rt_inv, "rt_inv", (4, 4), device=device)
    dtype = torch.float64 if rt_inv.dtype == torch.float64 else torch.float32  # geometry never in half
    rt_inv = rt_inv.to(dtype)
    if rt_inv.ndim == 2:
        rt_inv = rt_inv.unsqueeze(0)
    check_rigid(rt_inv, "rt_inv")

    if tgt is None:
        k_inv = as_matrix(k_inv, "k_inv", (3, 3), dtype=dtype, device=device)
        k_inv = k_inv.unsqueeze(0) if k_inv.ndim == 2 else k_inv
        sdd_t = torch.as_tensor(sdd, dtype=dtype, device=device).reshape(-1)
        if not bool(torch.isfinite(sdd_t).all()) or not bool((sdd_t > 0).all()):
            raise ValueError(f"sdd: must be positive and finite, got {sdd_t.tolist()}")
        tgt = make_tgt(k_inv, sdd_t, height, width)
        if src is None:
            src = make_src(orthographic, tgt, sdd_t)
    else:
        tgt = tgt.to(device=device, dtype=dtype)
        if tgt.ndim != 3 or tgt.shape[1] != height * width:
            raise ValueError(f"tgt: expected [B, {height * width}, 3], got {list(tgt.shape)}")
        if src is None:
            raise ValueError("src: must be given together with tgt")
    src = src.to(device=device, dtype=dtype)

    B = max(rt_inv.shape[0], tgt.shape[0], src.shape[0])
    for name, t in (("rt_inv", rt_inv), ("k_inv/tgt", tgt), ("src", src)):
        if t.shape[0] not in (1, B):
            raise ValueError(f"{name}: batch size {t.shape[0]} does not match the others ({B})")

    cam_to_voxel = subject.world_to_voxel.to(dtype) @ rt_inv
    vol = subject.image[0, 0]
    C = subject.n_classes
    lab = subject.label[0, 0] if (subject.label is not None and C > 1) else None
    soft = soft_labels and lab is not None
    if method == "joseph":
        if soft:
            raise ValueError("soft_labels: not available with method='joseph'")
        out = _joseph(vol, lab, C, cam_to_voxel, src, tgt, subject.shape, backend, width)
        return out.reshape(B, C, height, width)

    if not soft:
        name, op = resolve_backend(backend, device, vol.dtype)
        if name == "numba" and not _needs_grad(vol, src, tgt):
            # geometry fused into the march (and its pose gradient into the backward kernel)
            from .backends.numba_camera import raymarch_rays

            out = raymarch_rays(vol, lab, C, cam_to_voxel, src, tgt, n_samples)
            return out.reshape(B, C, height, width)
    start, delta, step = sample_geometry(cam_to_voxel.expand(B, 4, 4), src, tgt, subject.shape, n_samples)
    if soft:
        if backend not in ("auto", "torch"):
            raise ValueError(
                f"backend: soft_labels=True is implemented by the 'torch' backend only, not {backend!r}"
            )
        from .backends.torch_ref import raymarch as ref

        out = ref(vol, lab, C, start.float(), delta.float(), step.float(), n_samples, soft_labels=True)
    else:
        if name != "torch":  # the fused kernels take float32 geometry
            start, delta, step = start.float(), delta.float(), step.float()
        extra = {"width": width} if name == "triton" else {}  # pixel tiles for GPU cache locality
        out = op(vol, lab, C, start, delta, step, n_samples, **extra)
    return out.reshape(B, C, height, width)


def _joseph(vol, lab, C, cam_to_voxel, src, tgt, shape, backend: str, width: int) -> torch.Tensor:
    """Joseph's render. On CPU (numba): the fused slice march for renders without gradients (plain or
    labelmap) and plain ones with pose gradients only; other gradients (volume, labelmaps with pose
    gradients) take the numba ray march on ``slice_geometry``'s samples with per-ray counts. On CUDA
    (Triton) every render takes the Triton ray march on those samples, with the counts."""
    name, op = resolve_backend(backend, vol.device, vol.dtype)  # validates the name for this device
    if name == "numba" and not _needs_grad(vol, cam_to_voxel, src, tgt):
        from .backends.numba_slices import slicemarch_rays

        return slicemarch_rays(vol, cam_to_voxel, src, tgt, lab=lab, n_classes=C)
    if name == "numba" and lab is None and not _needs_grad(vol, src, tgt):  # pose gradient only
        from .backends.numba_slices import slicemarch_pose_differentiable

        return slicemarch_pose_differentiable(vol, cam_to_voxel, src, tgt)
    B = max(cam_to_voxel.shape[0], src.shape[0], tgt.shape[0])
    start, delta, step, count = slice_geometry(cam_to_voxel.expand(B, 4, 4), src, tgt, shape)
    n = max(1, int(count.max())) if count.numel() else 1
    extra = {"width": width} if name == "triton" else {}  # pixel tiles, as the ray march's
    return op(vol, lab, C, start.float(), delta.float(), step.float(), n, count=count, **extra)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will want gradients w.r.t. any of ``tensors`` (which decides the fused CPU paths:
    they differentiate w.r.t. the pose only, Joseph's for plain renders only)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

"""Argument checks shared by the fused kernels (the contract is in ``backends/__init__.py``)."""

from __future__ import annotations

import torch

INT32_MAX = 2**31 - 1


def describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor of shape {tuple(t.shape)} and dtype {t.dtype}"
    return repr(type(t).__name__) if t is not None else "None"


def check_volume(vol) -> None:
    """Raise ``ValueError`` unless ``vol`` is a non-empty, int32-indexable floating ``[D, H, W]`` tensor."""
    if not isinstance(vol, torch.Tensor) or vol.dim() != 3 or not vol.is_floating_point():
        raise ValueError(f"vol: expected a floating [D, H, W] tensor, got {describe(vol)}")
    if min(vol.shape) < 1:
        raise ValueError(f"vol: empty volume of shape {tuple(vol.shape)}")
    if vol.numel() > INT32_MAX:
        raise ValueError(f"vol: {vol.numel()} voxels exceed the kernels' int32 indexing")


def check_march_args(vol, lab, n_classes, n_samples) -> None:
    """Raise ``ValueError`` naming the first of the volume, labels and counts that breaks the contract."""
    check_volume(vol)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes: expected an int >= 1, got {n_classes!r}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples: expected an int >= 1, got {n_samples!r}")
    if n_classes > 1:
        if not isinstance(lab, torch.Tensor) or lab.shape != vol.shape:
            raise ValueError(
                f"lab: n_classes={n_classes} needs a label tensor of shape {tuple(vol.shape)}, got {describe(lab)}"
            )
        if lab.is_floating_point() or lab.is_complex():
            raise ValueError(f"lab: expected an integer tensor, got {lab.dtype}")
        if lab.device != vol.device:
            raise ValueError(f"lab: on {lab.device}, but vol is on {vol.device}")


def check_raymarch_args(vol, lab, n_classes, start, delta, step, n_samples) -> None:
    """Raise ``ValueError`` naming the first argument that breaks the contract.

    Checks shapes, dtypes, counts, devices and int32-indexable sizes; each backend adds its own
    device and dtype requirements.
    """
    check_march_args(vol, lab, n_classes, n_samples)
    if not isinstance(start, torch.Tensor) or start.dim() != 3 or start.shape[-1] != 3:
        raise ValueError(f"start: expected a [B, N, 3] tensor, got {describe(start)}")
    if not isinstance(delta, torch.Tensor) or delta.shape != start.shape:
        raise ValueError(f"delta: expected shape {tuple(start.shape)} (as start), got {describe(delta)}")
    if not isinstance(step, torch.Tensor) or step.shape != start.shape[:2]:
        raise ValueError(f"step: expected shape {tuple(start.shape[:2])}, got {describe(step)}")
    B, N, _ = start.shape
    check_ray_count(B, N, n_classes, "start")
    for name, t in (("start", start), ("delta", delta), ("step", step)):
        if t.device != vol.device:
            raise ValueError(f"{name}: on {t.device}, but vol is on {vol.device}")


def check_sample_counts(count, B: int, N: int, n_samples: int, device: torch.device) -> None:
    """Raise ``ValueError`` unless ``count`` (per-ray sample counts, Joseph's slices) is None or an
    integer ``[B, N]`` tensor on ``device`` with values in ``[0, n_samples]``."""
    if count is None:
        return
    if not isinstance(count, torch.Tensor) or tuple(count.shape) != (B, N):
        raise ValueError(f"count: expected an integer [{B}, {N}] tensor or None, got {describe(count)}")
    if count.is_floating_point() or count.is_complex() or count.dtype == torch.bool:
        raise ValueError(f"count: expected an integer tensor, got {count.dtype}")
    if count.device != device:
        raise ValueError(f"count: on {count.device}, but vol is on {device}")
    if count.numel() and not (0 <= int(count.min()) and int(count.max()) <= n_samples):
        raise ValueError(
            f"count: values must lie in [0, n_samples={n_samples}], got [{int(count.min())}, {int(count.max())}]"
        )


def check_ray_count(B: int, N: int, n_classes: int, name: str) -> None:
    """Raise ``ValueError`` (naming ``name``) when ``B × N`` rays overflow the kernels' int32 indexing."""
    if B * n_classes * N > INT32_MAX or 3 * B * N > INT32_MAX:
        raise ValueError(f"{name}: {B}×{N} rays × {n_classes} classes exceed the kernels' int32 indexing")


def check_pose_only_grad(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first of ``tensors`` that requires grad: the fused camera-ray
    kernels differentiate w.r.t. ``cam_to_voxel`` only (``render`` sends other gradients elsewhere)."""
    if not torch.is_grad_enabled():
        return
    for name, x in tensors.items():
        if x.requires_grad:
            raise ValueError(
                f"{name}: requires grad, but the fused kernel differentiates w.r.t. cam_to_voxel only "
                "(render sends other gradients to the torch geometry)"
            )

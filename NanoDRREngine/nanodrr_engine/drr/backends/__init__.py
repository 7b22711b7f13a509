"""Swappable ray-march kernels.

Every backend implements one differentiable op with the same contract, so ``render`` does the
geometry (camera → voxel transform, slab clipping, step size) once in plain torch, where autograd
reaches it, and the kernels only march. CPU renders that need no gradient, or only the pose's, skip
the per-ray tensors: ``numba_camera`` (ray march, forward and pose gradient) and ``numba_slices``
(Joseph, forward and pose gradient) compute the same geometry per chunk of rays inside the kernel.

``raymarch(vol, lab, n_classes, start, delta, step, n_samples) -> out``

- ``vol``: ``[D, H, W]`` (= ``[K, J, I]``) attenuation μ, float32 (or float16/bfloat16, read and
  promoted to float32 per sample), contiguous. May require grad.
- ``lab``: ``[D, H, W]`` integer labels (any integer dtype), or ``None`` when ``n_classes == 1``.
- ``n_classes``: ``C``, the number of output channels.
- ``start``: ``[B, N, 3]`` float32 voxel coordinates ``(i, j, k)`` of each ray's first sample
  (voxel centres at integers). May require grad.
- ``delta``: ``[B, N, 3]`` float32 voxel-coordinate increment from one sample to the next.
  May require grad.
- ``step``: ``[B, N]`` float32 length of one step in mm (0 for rays that miss the volume).
  May require grad.
- ``n_samples``: ``S >= 1``.

Returns float32 ``out[b, c, n] = step[b, n] * Σ_s μ(p_s) [label(p_s) == c]`` with
``p_s = start[b, n] + s * delta[b, n]``, ``s = 0 … S-1``; μ is trilinear with zero padding
(``grid_sample(align_corners=False)`` semantics); ``label(p)`` is the label of the nearest voxel
(round half to even, like ``grid_sample(mode="nearest")``), 0 outside the volume; samples whose
label is ``>= C`` (or negative) are dropped. With ``C == 1`` every sample goes to channel 0.

Gradients flow to ``vol``, ``start``, ``delta`` and ``step`` (labels are not differentiable).

Optional keyword ``count``: ``[B, N]`` integer per-ray sample counts in ``[0, S]``; ray ``(b, n)`` then
sums only ``s < count[b, n]`` (Joseph's slices, :func:`~nanodrr_engine.drr.rays.slice_geometry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...names import BACKEND_NAMES


@dataclass(frozen=True)
class Backend:
    """A named ray-march kernel and the test for whether it can run a given call."""

    name: str
    #: Whether the backend is installed and supports tensors on this device with this volume dtype.
    supports: Callable[[torch.device, torch.dtype], bool]
    #: Imports the kernel lazily (numba and triton are optional and slow to import).
    load: Callable[[], Callable[..., torch.Tensor]]


def _torch_load():
    from .torch_ref import raymarch

    return raymarch


def _numba_supports(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu":
        return False
    from .numba_cpu import is_available

    return is_available()


def _numba_load():
    from .numba_cpu import raymarch

    return raymarch


def _triton_supports(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cuda":
        return False
    from .triton_gpu import is_available

    return is_available()


def _triton_load():
    from .triton_gpu import raymarch

    return raymarch


#: In order of preference for ``backend="auto"`` (:data:`nanodrr_engine.names.BACKEND_NAMES`).
BACKENDS: dict[str, Backend] = {
    "triton": Backend("triton", _triton_supports, _triton_load),
    "numba": Backend("numba", _numba_supports, _numba_load),
    "torch": Backend("torch", lambda device, dtype: True, _torch_load),
}
assert tuple(BACKENDS) == BACKEND_NAMES, "the registry and nanodrr_engine.names disagree"


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can render on ``device``, fastest first."""
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.supports(device, dtype)]


def resolve_backend(
    name: str, device: torch.device, dtype: torch.dtype
) -> tuple[str, Callable[..., torch.Tensor]]:
    """``(name, raymarch op)`` for ``name`` (``"auto"`` picks the fastest available one)."""
    if name == "auto":
        name = available_backends(device, dtype)[0]
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown backend {name!r}; expected 'auto' or one of {sorted(BACKENDS)}")
    backend = BACKENDS[name]
    if not backend.supports(device, dtype):
        raise ValueError(
            f"backend: {name!r} cannot run on {device.type} with {dtype} "
            f"(available here: {available_backends(device, dtype)})"
        )
    return name, backend.load()

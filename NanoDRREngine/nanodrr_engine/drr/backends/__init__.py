"""Swappable ray-march kernels.

Every backend implements one differentiable op with the same contract, so ``render`` does the
geometry (camera → voxel transform, slab clipping, step size) once in plain torch, where autograd
reaches it, and the kernels only march. CPU renders that need no gradient, or only the pose's, skip
the per-ray tensors: ``numba.camera`` (ray march, forward and pose gradient) and ``numba.joseph``
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

Keywords every op takes: ``count``, ``[B, N]`` integer per-ray sample counts in ``[0, S]`` (ray ``(b, n)``
then sums only ``s < count[b, n]``: Joseph's slices, :func:`~nanodrr_engine.drr.rays.slice_geometry`), and
``width``, the image width when the ``N`` rays are a row-major image (a scheduling hint some ignore).

Each :class:`Backend` may also offer :class:`FastPath` kernels that take the camera rays themselves;
``render`` asks the chosen backend for one before it makes per-ray tensors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...names import BACKEND_NAMES


@dataclass(frozen=True)
class FastPath:
    """A kernel that makes a method's samples itself from the camera rays (no per-ray tensors):
    ``kernel(vol, lab, n_classes, cam_to_voxel, src, tgt, n_samples) -> [B, C, N]``, never differentiable
    w.r.t. ``vol``, ``src`` or ``tgt``."""

    method: str
    #: Imports the kernel lazily; looked up on every render (tests watch which kernel runs).
    load: Callable[[], Callable[..., torch.Tensor]]
    #: Whether it takes labelmaps (``n_classes > 1``).
    labels: bool
    #: Whether it is differentiable w.r.t. ``cam_to_voxel`` (the pose).
    pose_grad: bool


@dataclass(frozen=True)
class Backend:
    """A named ray-march kernel, the test for whether it can run a given call, and its fast paths."""

    name: str
    #: Whether the backend is installed and supports tensors on this device with this volume dtype.
    supports: Callable[[torch.device, torch.dtype], bool]
    #: Imports the contract op lazily (numba and triton are optional and slow to import).
    load: Callable[[], Callable[..., torch.Tensor]]
    #: Volume samples per chunk of a chunked render, so that a chunk takes well under half a second.
    chunk_samples: int
    #: Whether the op takes its geometry in float32 (the fused kernels) rather than as computed.
    float32_rays: bool = True
    #: Kernels that skip the per-ray tensors, in order of preference.
    fast_paths: tuple[FastPath, ...] = ()

    def fast_path(
        self, method: str, labels: bool, pose_grad: bool, other_grad: bool
    ) -> Callable[..., torch.Tensor] | None:
        """The first fast path for ``method`` that handles this call, or ``None`` (use the op)."""
        if other_grad:
            return None
        for path in self.fast_paths:
            if path.method == method and (path.labels or not labels) and (path.pose_grad or not pose_grad):
                return path.load()
        return None


def _lazy(module: str, name: str) -> Callable[[], Callable]:
    """A loader that imports ``module`` of this package on first use and returns its current ``name``."""
    return lambda: getattr(importlib.import_module(f".{module}", __name__), name)


def _installed_on(device_type: str, module: str) -> Callable[[torch.device, torch.dtype], bool]:
    """Supported on ``device_type`` when ``module``'s compiler (numba, triton) can be imported."""
    return lambda device, dtype: device.type == device_type and _lazy(module, "is_available")()()


def _numba_joseph():
    march = _lazy("numba.joseph", "slicemarch_rays")()
    return lambda vol, lab, n_classes, cam_to_voxel, src, tgt, n_samples: march(
        vol, cam_to_voxel, src, tgt, lab=lab, n_classes=n_classes
    )


def _numba_joseph_pose():
    march = _lazy("numba.joseph", "slicemarch_pose_differentiable")()
    return lambda vol, lab, n_classes, cam_to_voxel, src, tgt, n_samples: march(vol, cam_to_voxel, src, tgt)


#: In order of preference for ``backend="auto"`` (:data:`nanodrr_engine.names.BACKEND_NAMES`). Chunk sizes:
#: the numba kernels march ~1e9 samples/s on two cores, the torch reference ~3e7/s, Triton ~1e11/s on a
#: data-centre GPU.
BACKENDS: dict[str, Backend] = {
    "triton": Backend(
        "triton", _installed_on("cuda", "triton_gpu"), _lazy("triton_gpu", "raymarch"), chunk_samples=1 << 30
    ),
    "numba": Backend(
        "numba",
        _installed_on("cpu", "numba"),
        _lazy("numba.march", "raymarch"),
        chunk_samples=1 << 25,
        fast_paths=(
            # geometry fused into the march (and its pose gradient into the backward kernel)
            FastPath("raymarch", _lazy("numba.camera", "raymarch_rays"), labels=True, pose_grad=True),
            FastPath("joseph", _numba_joseph, labels=True, pose_grad=False),
            FastPath("joseph", _numba_joseph_pose, labels=False, pose_grad=True),
        ),
    ),
    "torch": Backend(
        "torch",
        lambda device, dtype: True,
        _lazy("torch_ref", "raymarch"),
        chunk_samples=1 << 20,
        float32_rays=False,
    ),
}
assert tuple(BACKENDS) == BACKEND_NAMES, "the registry and nanodrr_engine.names disagree"


def available_backends(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """Names of the backends that can render on ``device``, fastest first."""
    device = torch.device(device)
    return [name for name, b in BACKENDS.items() if b.supports(device, dtype)]


def select_backend(name: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend called ``name`` (``"auto"``: the fastest available one), checked to run here."""
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
    return backend

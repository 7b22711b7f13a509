"""Rendering a batch of samples with :func:`~nanodrr_engine.render`, bit-reproducibly.

Bone contrast costs a second render, not a new μ volume per sample: for μ_bone ≥ μ_water the HU → μ
model is linear in μ_bone, μ(h; m) = μ(h; m₀) + (m − m₀) · max(h, 0)/HU_bone, and so is every line
integral. Each CT is therefore held as two subjects, μ at the range's low end m₀ and the bone part,
and a sample's image is L₀ + (m − m₀) · L_bone.

Byte-identical images whatever the worker count: the numba kernels march neighbouring rays in
lockstep groups of four within contiguous blocks of ``ceil(rays / (8 · threads))`` rays (at least 64),
so a block boundary that is not a multiple of four changes which rays march together, and their last
bits. Each call here therefore renders a number of images whose total ray count is a multiple of
``32 · threads`` (repeating the last pose as padding where needed), every block then starts on a
multiple of four, and with height × width a multiple of four no group straddles two images: an
image's bits depend on nothing but its own pose (and on the compiled kernels: a process that compiled them and
one that loaded them from numba's cache can differ in the last bits, docs/performance.md). A call holds about ``CHUNK_SAMPLES["numba"]`` volume
samples (the chunk ``render`` itself would use): far larger calls make the kernels' blocks outgrow the
caches and run slower, and stay below the size at which ``render`` would split the work again.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .. import budget
from ..camera.intrinsics import make_k_inv
from ..data.subject import Subject
from ..drr.render import AUTO_CHUNKS, CHUNK_SAMPLES, render
from .augment import finish, finish_torch
from .sampling import PARAMS, Sample, draw, pose
from .sources import LoadedCT
from .spec import DatasetSpec

#: Rays per lockstep group of the CPU kernels, and blocks per thread (``backends.numba.march.schedule``).
_LANES = 4
_BLOCKS_PER_THREAD = 8


def limit_threads(n: int, environment: bool = True) -> None:
    """Use ``n`` threads in this process (torch, numba and, with ``environment``, BLAS/OpenMP libraries
    loaded later), so that K worker processes share the cores instead of each starting one per core."""
    n = max(1, int(n))
    if environment:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # the torch backend renders instead
        pass


def _kernel_threads() -> int:
    try:
        import numba

        return int(numba.get_num_threads())
    except ImportError:
        return int(torch.get_num_threads())


def n_classes(spec: DatasetSpec, cts: list[LoadedCT]) -> int:
    """Image channels: 1, or labels 0 … max_label (the spec's, else the largest in any labelmap)."""
    if cts[0].labels is None:
        return 1
    top = spec.max_label if spec.max_label is not None else max(ct.max_label for ct in cts)
    return top + 1


class Renderer:
    """Renders any samples of ``spec`` from the CTs ``cts`` on ``device`` (subjects built once)."""

    def __init__(self, spec: DatasetSpec, cts: list[LoadedCT], device="cpu", backend: str = "auto") -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.backend = backend
        self.channels = n_classes(spec, cts)
        top = None if cts[0].labels is None else self.channels - 1
        aug = spec.augment
        self.mu_bone0 = spec.mu_bone if aug.mu_bone is None else aug.mu_bone[0]
        self.subjects, self.bone, self.isocenters = [], [], []
        for ct in cts:
            base = Subject.from_array(
                ct.hu, ct.voxel_to_world, label=ct.labels, max_label=top,
                mu_water=spec.mu_water, mu_bone=self.mu_bone0, hu_bone=spec.hu_bone,
            ).to(self.device)  # fmt: skip
            self.subjects.append(base)
            self.isocenters.append(tuple(float(v) for v in base.isocenter.tolist()))
            if aug.mu_bone is not None:
                part = torch.clamp(base._image_hu[0, 0].float(), min=0.0) / spec.hu_bone
                bone = Subject.from_array(
                    part.cpu(), ct.voxel_to_world, label=ct.labels, max_label=top, convert_to_mu=False
                ).to(self.device)
                self.bone.append(bone)
        d = spec.detector
        self.k_inv = make_k_inv(d.sdd, d.delx, d.dely, d.x0, d.y0, d.height, d.width, dtype=torch.float64)

    def cost(self, images: int) -> budget.Cost:
        """The work of rendering ``images`` images in one call (the budget's estimate)."""
        d, s = self.spec.detector, self.subjects[0]
        shape = tuple(max(sub.shape[k] for sub in self.subjects) for k in range(3))
        return budget.estimate(
            images, d.height, d.width, self.spec.n_samples, self.spec.method, shape, s.n_classes, 8
        )

    def _call_plan(self) -> tuple[int, int]:
        """``(step, per_call)``: images per call are a multiple of ``step`` and at most ``per_call``."""
        if self.device.type != "cpu":
            return 1, max(1, int(AUTO_CHUNKS * CHUNK_SAMPLES["triton"] // max(1, self.cost(1).samples)))
        rays = self.spec.detector.height * self.spec.detector.width
        unit = _LANES * _BLOCKS_PER_THREAD * _kernel_threads()
        step = unit // math.gcd(rays, unit)
        fit = CHUNK_SAMPLES["numba"] // max(1, self.cost(1).samples)  # the engine's own chunk of work
        return step, max(step, fit // step * step)

    def _lines(self, subject: Subject, poses: np.ndarray) -> np.ndarray:
        """``[b, C, H, W]`` float32 line integrals of ``poses`` (calls planned as the module says)."""
        return self._lines_tensor(subject, poses).cpu().numpy()

    def _lines_tensor(self, subject: Subject, poses: np.ndarray) -> torch.Tensor:
        d = self.spec.detector
        step, per_call = self._call_plan()
        out = []
        for start in range(0, len(poses), per_call):
            block = poses[start : start + per_call]
            pad = -len(block) % step
            if pad:
                block = np.concatenate([block, np.repeat(block[-1:], pad, axis=0)])
            rt = torch.as_tensor(block, dtype=torch.float64, device=self.device)
            with torch.no_grad():
                img = render(
                    subject, self.k_inv.to(self.device), rt, d.sdd, d.height, d.width,
                    n_samples=self.spec.n_samples, backend=self.backend, method=self.spec.method,
                )  # fmt: skip
            out.append(img[: len(img) - pad].float())
        return torch.cat(out)

    def samples(self, indices) -> list[Sample]:
        return [draw(self.spec, int(i), len(self.subjects)) for i in indices]

    def poses(self, samples: list[Sample]) -> np.ndarray:
        return np.stack([pose(s, self.isocenters[s.subject]) for s in samples])

    def render(self, indices) -> dict[str, np.ndarray]:
        """The stored arrays of samples ``indices``: ``images`` and the per-sample geometry/parameters."""
        samples = self.samples(indices)
        poses = self.poses(samples)
        d = self.spec.detector
        images = np.empty((len(samples), self.channels, d.height, d.width), dtype=self.spec.dtype)
        for k in sorted({s.subject for s in samples}):
            idx = [j for j, s in enumerate(samples) if s.subject == k]
            lines = self._lines(self.subjects[k], poses[idx])
            bone = self._lines(self.bone[k], poses[idx]) if self.bone else None
            for n, j in enumerate(idx):
                total = lines[n].astype(np.float64)
                if bone is not None:
                    total = total + (samples[j].mu_bone - self.mu_bone0) * bone[n].astype(np.float64)
                images[j] = finish(total, samples[j], self.spec)
        if not np.isfinite(images).all():
            raise FloatingPointError(f"images: non-finite pixels in samples {list(indices)[:4]}…")
        return {"images": images, **self.metadata(samples, poses)}

    def render_device(self, indices) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """``(images on the device, metadata)``: :meth:`render`'s distribution without leaving the device
        (augmented in torch: not :meth:`render`'s bits)."""
        samples = self.samples(indices)
        poses = self.poses(samples)
        d = self.spec.detector
        lines = torch.empty(
            (len(samples), self.channels, d.height, d.width), dtype=torch.float64, device=self.device
        )
        for k in sorted({s.subject for s in samples}):
            idx = [j for j, s in enumerate(samples) if s.subject == k]
            part = self._lines_tensor(self.subjects[k], poses[idx]).double()
            if self.bone:
                m = torch.tensor(
                    [samples[j].mu_bone - self.mu_bone0 for j in idx], dtype=torch.float64, device=self.device
                )
                part = part + m.view(-1, 1, 1, 1) * self._lines_tensor(self.bone[k], poses[idx]).double()
            lines[idx] = part
        return finish_torch(lines, samples, self.spec), self.metadata(samples, poses)

    def metadata(self, samples: list[Sample], poses: np.ndarray) -> dict[str, np.ndarray]:
        b = len(samples)
        out = {
            "rt_inv": poses,
            "k_inv": np.repeat(self.k_inv.numpy(), b, axis=0),
            "sdd": np.full(b, self.spec.detector.sdd),
            "subject": np.array([s.subject for s in samples], dtype=np.int32),
        }
        for name, (_, dtype) in PARAMS.items():
            out[f"params/{name}"] = np.array([getattr(s, name) for s in samples], dtype=dtype)
        return out


__all__ = ["Renderer", "limit_threads", "n_classes"]

"""Per-sample parameters and poses: sample ``i`` is a function of ``(seed, i)`` alone.

Each sample draws from its own generator, ``PCG64(SeedSequence([seed, i, stream]))`` (stream 0 for the
parameters, 1 for the noise), so no sample depends on which others share its batch, worker or
chunk. Poses are computed per sample in plain Python floats (``math``), never vectorised, so the
bits cannot depend on a batch's length or alignment either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..camera.extrinsics import ORIENTATIONS
from .spec import DatasetSpec, PoseList

#: Uniform draws per sample (fixed, so adding a parameter later does not shift the others).
_DRAWS = 12
PARAM_STREAM = 0
NOISE_STREAM = 1

#: Per-sample parameters stored in the ``params`` group: name -> (shape per sample, dtype).
PARAMS = {
    "primary": ((), "float64"),
    "secondary": ((), "float64"),
    "sod": ((), "float64"),
    "roll": ((), "float64"),
    "jitter": ((3,), "float64"),
    "mu_bone": ((), "float64"),
    "blur": ((), "float64"),
    "pose_row": ((), "int64"),
}


def generator(seed: int, i: int, stream: int) -> np.random.Generator:
    """The generator of sample ``i``'s ``stream``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, i, stream])))


@dataclass(frozen=True)
class Sample:
    """One sample's drawn values (angles in degrees, lengths in mm)."""

    index: int
    subject: int
    primary: float
    secondary: float
    sod: float
    roll: float
    jitter: tuple[float, float, float]
    mu_bone: float
    blur: float
    pose_row: int


def _lerp(r: tuple[float, float], u: float) -> float:
    a, b = r
    return a if a == b else a + (b - a) * u


def draw(spec: DatasetSpec, i: int, n_subjects: int) -> Sample:
    """Sample ``i`` of ``spec`` (``spec`` validated) for a dataset of ``n_subjects`` CTs."""
    u = generator(spec.seed, i, PARAM_STREAM).random(_DRAWS).tolist()
    subject = min(n_subjects - 1, int(u[0] * n_subjects))
    aug = spec.augment
    mu_bone = spec.mu_bone if aug.mu_bone is None else _lerp(aug.mu_bone, u[8])
    blur = 0.0 if aug.blur is None else _lerp(aug.blur, u[9])
    if isinstance(spec.poses, PoseList):
        row = i % len(spec.poses.rows)
        p, s, sod, roll, dx, dy, dz = spec.poses.rows[row]
        return Sample(i, subject, p, s, sod, roll, (dx, dy, dz), mu_bone, blur, row)
    r = spec.poses
    jitter = tuple(r.jitter * (2.0 * v - 1.0) for v in u[5:8])
    return Sample(
        i, subject, _lerp(r.primary, u[1]), _lerp(r.secondary, u[2]), _lerp(r.sod, u[3]),
        _lerp(r.roll, u[4]), jitter, mu_bone, blur, -1,
    )  # fmt: skip


def _matmul(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[i][k] * b[k][j] for k in range(4)) for j in range(4)] for i in range(4)]


def pose(sample: Sample, isocenter: tuple[float, float, float]) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` float64: ``carm_to_rt_inv(primary, secondary, sod, isocenter + jitter)``
    followed by a rotation of the detector by ``roll`` degrees about the beam (camera z)."""
    a, b = math.radians(sample.primary + 180.0), math.radians(-sample.secondary)
    ca, sa, cb, sb = math.cos(a), math.sin(a), math.cos(b), math.sin(b)
    rot = [[ca, -sa * cb, sa * sb], [sa, ca * cb, -ca * sb], [0.0, sb, cb]]  # Rz(a) · Rx(b), as make_rt_inv
    c = [isocenter[k] + sample.jitter[k] for k in range(3)]
    t = [0.0, sample.sod, 0.0]
    rt = [[*rot[i], sum(rot[i][k] * t[k] for k in range(3)) + c[i]] for i in range(3)]
    rt.append([0.0, 0.0, 0.0, 1.0])
    out = _matmul(rt, ORIENTATIONS["AP"])
    if sample.roll != 0.0:
        r = math.radians(sample.roll)
        cr, sr = math.cos(r), math.sin(r)
        out = _matmul(out, [[cr, -sr, 0.0, 0.0], [sr, cr, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0, 0, 0, 1.0]])
    return np.array(out, dtype=np.float64)


__all__ = ["NOISE_STREAM", "PARAMS", "PARAM_STREAM", "Sample", "draw", "generator", "pose"]

"""Work limits of a render, checked before anything is allocated.

``render`` (and ``DRR``) estimate what a request costs (:func:`estimate`) and refuse one over the
budget with :class:`WorkBudgetError` (a ``ValueError``) that says what was asked and what the limit
is, instead of running for hours or failing in the allocator. The defaults are far above any normal
render (a 1024×1024 DRR with 500 samples per ray is 5·10⁸ samples and ~60 MB) and refuse absurd work:

- ``max_samples`` = 10¹² volume samples (rays × samples per ray): about a quarter of an hour on two
  CPU cores, seconds on a GPU.
- ``max_bytes`` = 16 GiB of output and working memory.

Change them for the process with :func:`set_limits` or the environment variables
``NANODRR_MAX_SAMPLES`` / ``NANODRR_MAX_BYTES`` (read at import; ``inf`` disables a limit), and for a
block of code (per call) with the context manager :func:`limits`, e.g.
``with budget.limits(max_samples=1e13): render(...)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

DEFAULT_MAX_SAMPLES = 1e12
DEFAULT_MAX_BYTES = 16 * 2**30


@dataclass(frozen=True)
class Limits:
    """The work one render may do: volume samples, and bytes of output plus working memory."""

    max_samples: float = DEFAULT_MAX_SAMPLES
    max_bytes: float = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Cost:
    """A render request's estimated cost (see :func:`estimate`)."""

    images: int
    height: int
    width: int
    samples_per_ray: int
    n_classes: int
    output_bytes: int
    working_bytes: int
    method: str = "raymarch"

    @property
    def rays(self) -> int:
        return self.images * self.height * self.width

    @property
    def samples(self) -> int:
        return self.rays * self.samples_per_ray

    @property
    def total_bytes(self) -> int:
        return self.output_bytes + self.working_bytes

    def describe(self) -> str:
        images = f"{self.images} image{'s' if self.images != 1 else ''}"
        per_ray = (
            f"≤ {self.samples_per_ray:,} voxel planes per ray (Joseph)"
            if self.method == "joseph"
            else f"n_samples={self.samples_per_ray:,} per ray"
        )
        channels = f", {self.n_classes} channels" if self.n_classes > 1 else ""
        return f"{images} of {self.height}×{self.width} pixels{channels}" + (
            f", {per_ray}" if self.samples else ""
        )


class WorkBudgetError(ValueError):
    """A render request exceeds the work budget (:mod:`nanodrr_engine.budget`)."""

    def __init__(self, message: str, cost: Cost, limits: Limits) -> None:
        super().__init__(message)
        self.cost = cost
        self.limits = limits


def _parse(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not v > 0:  # NaN fails too
        raise ValueError(f"{name}: must be a positive number (or inf for no limit), got {value!r}")
    return v


def _from_environment() -> Limits:
    out = {}
    for key, var in (("max_samples", "NANODRR_MAX_SAMPLES"), ("max_bytes", "NANODRR_MAX_BYTES")):
        if os.environ.get(var, "").strip():
            out[key] = _parse(os.environ[var].strip(), var)
    return Limits(**out)


_global = _from_environment()
_scoped: ContextVar[Limits | None] = ContextVar("nanodrr_engine_budget", default=None)


def get_limits() -> Limits:
    """The limits in force here (those of the innermost :func:`limits` block, else the process's)."""
    scoped = _scoped.get()
    return _global if scoped is None else scoped


def set_limits(max_samples: float | None = None, max_bytes: float | None = None) -> Limits:
    """Change the process's limits (None keeps a limit as it is); returns the previous ones."""
    global _global
    previous = _global
    _global = _with(previous, max_samples, max_bytes)
    return previous


@contextmanager
def limits(max_samples: float | None = None, max_bytes: float | None = None) -> Iterator[Limits]:
    """Other limits inside a ``with`` block (this thread/task only); None keeps a limit as it is."""
    token = _scoped.set(_with(get_limits(), max_samples, max_bytes))
    try:
        yield _scoped.get()
    finally:
        _scoped.reset(token)


def _with(base: Limits, max_samples, max_bytes) -> Limits:
    changes = {}
    if max_samples is not None:
        changes["max_samples"] = _parse(max_samples, "max_samples")
    if max_bytes is not None:
        changes["max_bytes"] = _parse(max_bytes, "max_bytes")
    return replace(base, **changes)


def estimate(
    images: int,
    height: int,
    width: int,
    n_samples: int,
    method: str = "raymarch",
    volume_shape: tuple[int, int, int] = (1, 1, 1),
    n_classes: int = 1,
    geometry_bytes: int = 4,
    orthographic: bool = False,
    gradients: bool = False,
    volume_gradient: bool = False,
) -> Cost:
    """The cost of rendering ``images`` DRRs of ``height × width`` pixels.

    - samples per ray: ``n_samples`` for the ray march; for Joseph one per voxel plane along the ray's
      dominant axis, at most ``max(K, J, I)``.
    - output: ``images × n_classes × height × width`` float32.
    - working memory (an upper bound: what the path that builds per-ray geometry in torch holds): the
      rays' ends (3 floats per pixel, twice for orthographic rays) and their samples' geometry (start,
      delta, step, count: 8 floats per ray), floats of ``geometry_bytes``; with ``gradients`` the
      geometry twice (autograd keeps its intermediates) and the output's gradient, and with
      ``volume_gradient`` a float32 gradient of the volume.
    """
    rays = images * height * width
    per_ray = max(volume_shape) if method == "joseph" else n_samples
    output = 4 * n_classes * rays
    geometry = (3 * (2 if orthographic else 1) + 8 * (2 if gradients else 1)) * geometry_bytes * rays
    working = (
        geometry + (output if gradients else 0) + (4 * math.prod(volume_shape) if volume_gradient else 0)
    )
    return Cost(images, height, width, per_ray, n_classes, output, working, method)


def check(cost: Cost, what: str = "render", limits: Limits | None = None) -> None:
    """Raise :class:`WorkBudgetError` when ``cost`` exceeds ``limits`` (default: those in force)."""
    lim = get_limits() if limits is None else limits
    how = "raise it with nanodrr_engine.budget.limits(...) / set_limits(...) or NANODRR_MAX_{}"
    if cost.samples > lim.max_samples:
        raise WorkBudgetError(
            f"{what}: {cost.describe()} = {_num(cost.samples)} volume samples exceed the work budget of "
            f"{_num(lim.max_samples)} samples ({how.format('SAMPLES')})",
            cost,
            lim,
        )
    if cost.total_bytes > lim.max_bytes:
        raise WorkBudgetError(
            f"{what}: {cost.describe()} needs about {_size(cost.total_bytes)} (output {_size(cost.output_bytes)}, "
            f"working memory {_size(cost.working_bytes)}), over the memory budget of {_size(lim.max_bytes)} "
            f"({how.format('BYTES')})",
            cost,
            lim,
        )


def _num(n: float) -> str:
    try:
        return "unlimited" if math.isinf(n) else f"{float(n):.3g}"
    except OverflowError:  # a Python int beyond float range
        return f"~1e{len(str(int(n))) - 1}"


def _size(n: float) -> str:
    if math.isinf(n):
        return "unlimited"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{_num(n / scale)} {unit}"
    return f"{int(n):,} bytes"


__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_SAMPLES",
    "Cost",
    "Limits",
    "WorkBudgetError",
    "check",
    "estimate",
    "get_limits",
    "limits",
    "set_limits",
]

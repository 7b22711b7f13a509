"""What every worker does, whatever the engine: build the renderer once, then render and write chunks.

A worker process keeps one renderer per run (keyed by the run's id), so CTs are read and their μ
volumes built once per process, not once per chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import store
from .renderer import Renderer, limit_threads
from .sources import CTArray, CTFile, LoadedCT, load
from .spec import DatasetSpec

_RENDERERS: dict[str, Renderer] = {}
_GROUPS: dict[str, object] = {}


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one run (small and picklable; CTs as inputs or loaded arrays)."""

    run: str
    out: str
    spec: dict
    cts: tuple
    threads: int
    device: str = "cpu"
    backend: str = "auto"


@dataclass(frozen=True)
class ChunkResult:
    """A written chunk: wall ``seconds`` and ``cpu_seconds`` (all threads of the process that rendered and
    wrote it), ``threads`` = that process's (torch, numba) threads."""

    chunk: int
    images: int
    bytes: int
    seconds: float
    threads: tuple[int, int] = (0, 0)
    cpu_seconds: float = 0.0


def threads_in_use() -> tuple[int, int]:
    import torch

    try:
        import numba

        return torch.get_num_threads(), int(numba.get_num_threads())
    except ImportError:
        return torch.get_num_threads(), 0


def _loaded(ct) -> LoadedCT:
    if isinstance(ct, LoadedCT):
        if not ct.hu.flags.writeable:  # a read-only view (Ray's object store): torch wants its own copy
            labels = None if ct.labels is None else np.array(ct.labels)
            return LoadedCT(np.array(ct.hu), ct.voxel_to_world, labels, ct.record)
        return ct
    if isinstance(ct, (CTFile, CTArray)):
        return load(ct, checksum=False)
    raise TypeError(f"cts: unexpected {type(ct).__name__}")


def renderer(job: Job) -> Renderer:
    """This process's renderer for ``job`` (built on first use, threads limited first)."""
    r = _RENDERERS.get(job.run)
    if r is None:
        limit_threads(job.threads)
        _RENDERERS.clear()  # one run at a time per process
        _GROUPS.clear()
        spec = DatasetSpec.from_dict(job.spec)
        r = Renderer(spec, [_loaded(c) for c in job.cts], job.device, job.backend)
        _RENDERERS[job.run] = r
        _GROUPS[job.run] = store.open_store(job.out, "r+")
    return r


def run_chunk(job: Job, c: int) -> ChunkResult:
    """Render chunk ``c`` and write it into the store (marker last)."""
    r = renderer(job)
    t, cpu = time.perf_counter(), time.process_time()
    arrays = r.render(r.spec.chunk_range(c))
    nbytes = store.write_chunk(_GROUPS[job.run], r.spec, c, arrays)
    seconds = time.perf_counter() - t
    return ChunkResult(c, len(arrays["images"]), nbytes, seconds, threads_in_use(), time.process_time() - cpu)


def init_pool(job: Job) -> None:
    """``ProcessPoolExecutor`` initializer: remember the job and build the renderer."""
    global _POOL_JOB
    _POOL_JOB = job
    renderer(job)


_POOL_JOB: Job | None = None


def pool_chunk(c: int) -> ChunkResult:
    assert _POOL_JOB is not None, "init_pool did not run"
    return run_chunk(_POOL_JOB, c)


__all__ = ["ChunkResult", "Job", "init_pool", "pool_chunk", "renderer", "run_chunk", "threads_in_use"]

"""``generate``: validate everything, prepare the store, run an engine over the missing chunks.

Order matters for "nothing half-written": every input is checked and every CT read before the store
is touched; an existing dataset is only deleted (``overwrite``) once the new one is known to fit.
"""

from __future__ import annotations

import math
import shlex
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, budget
from . import store
from .augment import max_blur_radius
from .engines import ENGINES, cores, run_inprocess, run_local, run_ray
from .errors import DatasetError, DatasetTooLargeError
from .renderer import n_classes
from .sources import CTFile, as_inputs, load
from .spec import Augment, DatasetSpec, Detector, PoseList, PoseRanges, number, whole
from .worker import Job


@dataclass(frozen=True)
class Summary:
    """What a run did: ``images`` rendered now (of ``total``), the store's bytes on disk, wall seconds;
    ``threads``: the (torch, numba) thread counts the workers rendered with; ``cpu_seconds``: the CPU time
    the workers spent on the chunks (all their threads)."""

    path: str
    total: int
    images: int
    chunks: int
    bytes_on_disk: int
    seconds: float
    engine: str
    workers: int
    resumed: bool
    threads: tuple = ()
    cpu_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    def describe(self) -> str:
        how = "resumed, " if self.resumed else ""
        return (
            f"{self.path}: {self.images:,} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s; "
            f"{how}{self.engine}, {self.workers} worker{'s' if self.workers != 1 else ''}); "
            f"{self.total:,} images, {_size(self.bytes_on_disk)} on disk"
        )


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def generate(
    ct,
    out: str | Path,
    n: int | None = None,
    *,
    labels=None,
    spec: DatasetSpec | None = None,
    seed: int = 0,
    chunk: int = 64,
    detector: Detector | None = None,
    poses: PoseRanges | PoseList | None = None,
    augment: Augment | None = None,
    dtype: str = "float32",
    method: str = "joseph",
    engine: str = "local",
    workers: int = 1,
    threads: int | None = None,
    device: str = "cpu",
    backend: str = "auto",
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], object] = False,
    command: str | None = None,
    channel_names: list[str] | None = None,
) -> Summary:
    """Render a DRR dataset into the Zarr store ``out`` (resuming it if it exists).

    Args:
        ct: a CT path, a list of them, ``(ct, labels)`` pairs, :class:`~.sources.CTFile` /
            :class:`~.sources.CTArray` (see :func:`~.sources.as_inputs`).
        out: the store's folder (created; an existing dataset is resumed, anything else refused).
        n: number of samples (or ``spec``, a whole :class:`DatasetSpec`, instead of ``n`` … ``method``).
        labels: a labelmap path (one CT) or list of them (one per CT): one image channel per label.
        engine: ``"local"`` (``workers`` processes; 1 = this process) or ``"ray"``.
        threads: threads per worker (default: the cores shared out, at least 1).
        device: where ``local`` renders ("cpu", "cuda"); Ray tasks use CUDA when ``gpus_per_worker > 0``.
        overwrite: delete an existing dataset at ``out`` and start again.
        progress: True for a tqdm bar; a callable ``progress(done, total)`` after each chunk (may raise
            to stop: finished chunks stay, as after Ctrl-C).
        command: recorded in the store (default: this process's command line).
        channel_names: recorded as the ``channel_names`` attribute (one per channel, e.g. segment names).

    Returns:
        A :class:`Summary`.

    Raises:
        DatasetError (ValueError) subclasses naming the input, before anything is written;
        WorkBudgetError when one chunk's render exceeds :mod:`nanodrr_engine.budget`;
        DiskFullError (OSError) when the disk fills up mid-run (the store stays resumable).
    """
    t0 = time.perf_counter()
    if spec is None:
        spec = DatasetSpec(
            n=n if n is not None else 0, seed=seed, chunk=chunk, detector=detector or Detector(),
            poses=poses or PoseRanges(), augment=augment or Augment(), dtype=dtype, method=method,
        )  # fmt: skip
    elif n is not None and n != spec.n:
        raise DatasetError(f"n: {n} differs from spec.n = {spec.n}; give one of them")
    if not isinstance(spec, DatasetSpec):
        raise DatasetError(f"spec: expected a DatasetSpec, got {type(spec).__name__}")
    spec = spec.checked()
    if engine not in ENGINES:
        raise DatasetError(f"engine: expected one of {ENGINES}, got {engine!r}")
    workers = whole(workers, "workers", 1, 4096)
    gpus = number(gpus_per_worker, "gpus_per_worker", 0.0, 64.0)
    if threads is None:
        threads = 4 if (engine == "ray" and ray_address) else max(1, cores() // workers)
    threads = whole(threads, "threads", 1, 1024)
    if not isinstance(overwrite, bool):
        raise DatasetError(f"overwrite: expected True or False, got {overwrite!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise DatasetError(f"progress: expected True, False or a callable, got {progress!r}")
    if ray_address is not None and (engine != "ray" or not isinstance(ray_address, str)):
        raise DatasetError(f"ray_address: needs engine='ray' and an address string, got {ray_address!r}")
    if gpus > 0 and engine != "ray":
        raise DatasetError("gpus_per_worker: only for engine='ray' (use device='cuda' for a local run)")
    inputs = as_inputs(_with_labels(ct, labels))
    mode = store.check_out(out, overwrite)
    if mode != "resume":  # absurd sizes before any CT is read (one channel: a lower bound)
        _check_disk(spec, out, 1, spec.n_chunks, store.disk_bytes(out) if mode == "overwrite" else 0)

    loaded = [load(c) for c in inputs]
    channels = n_classes(spec, loaded)
    _check_fits(spec, loaded, channels)
    if channel_names is not None and (
        len(channel_names) != channels or not all(isinstance(c, str) for c in channel_names)
    ):
        raise DatasetError(
            f"channel_names: expected {channels} names (one per channel), got {channel_names!r}"
        )
    record = {
        "format": store.FORMAT_VERSION, "engine_version": __version__, "zarr_version": store.zarr.__version__,
        "conventions": store.CONVENTIONS, "seed": spec.seed, "n": spec.n, "chunk": spec.chunk,
        "channels": channels, "spec": spec.to_dict(), "cts": [c.record for c in loaded],
        "command": command if command is not None else shlex.join(sys.argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "complete": False,
        "channel_names": None if channel_names is None else list(channel_names),
    }  # fmt: skip
    todo = list(range(spec.n_chunks))
    reclaim = 0
    if mode == "resume":
        group = store.open_store(out, "r+")
        store.check_matches(group, record)
        done = store.done_chunks(group)
        todo = [c for c in todo if not done[c]]
    elif mode == "overwrite":
        reclaim = store.disk_bytes(out)
    _check_disk(spec, out, channels, len(todo), reclaim)
    if mode == "overwrite":
        store.remove(out)
    if mode in ("new", "overwrite"):
        store.create(out, spec, channels, record)

    job = Job(
        uuid.uuid4().hex, str(Path(out).resolve()), spec.to_dict(), tuple(inputs), threads,
        "cuda" if gpus > 0 else str(device), backend,
    )  # fmt: skip
    total_done = spec.n - sum(len(spec.chunk_range(c)) for c in todo)
    if engine == "ray":
        results = run_ray(job, loaded, todo, workers, ray_address, gpus)
    elif workers == 1:
        results = run_inprocess(job, loaded, todo)
    else:
        del loaded  # the workers read the CTs themselves
        results = run_local(job, todo, workers)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=spec.n, initial=total_done, unit="img", smoothing=0.05, dynamic_ncols=True, file=sys.stderr
        )
    made = chunks = 0
    used = set()
    cpu = 0.0
    try:
        for r in results:
            made += r.images
            used.add(r.threads)
            cpu += r.cpu_seconds
            chunks += 1
            if bar is not None:
                bar.update(r.images)
            elif callable(progress):
                progress(total_done + made, spec.n)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        print(
            f"\ninterrupted: {total_done + made:,} of {spec.n:,} images done; re-run the same command to resume",
            file=sys.stderr,
        )
        raise
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    group = store.open_store(out, "r+")
    if store.done_chunks(group).all():
        store.finish(group, seconds)
    return Summary(
        str(out), spec.n, made, chunks, store.disk_bytes(out), seconds, engine, workers, mode == "resume",
        tuple(sorted(used)), cpu,
    )  # fmt: skip


def _with_labels(ct, labels):
    if labels is None:
        return ct
    cts = [ct] if isinstance(ct, (str, Path)) else list(ct)
    labs = [labels] if isinstance(labels, (str, Path)) else list(labels)
    if len(cts) != len(labs):
        raise DatasetError(f"labels: {len(labs)} labelmap(s) for {len(cts)} CT(s); give one per CT")
    if not all(isinstance(c, (str, Path)) for c in cts):
        raise DatasetError("labels: pair labelmaps with CT paths (CTFile / CTArray carry their own)")
    return [CTFile(str(c), str(lab)) for c, lab in zip(cts, labs, strict=True)]


def _check_disk(spec: DatasetSpec, out, channels: int, chunks: int, reclaim: int) -> None:
    """Refuse a dataset whose estimated bytes exceed the free space (plus what ``overwrite`` frees)."""
    need = store.estimate_bytes(spec, channels, chunks)
    free = store.free_bytes(out) + reclaim
    if need > free:
        d = spec.detector
        raise DatasetTooLargeError(
            f"n: {spec.n:,} images of {channels}×{d.height}×{d.width} {spec.dtype} need up to {_size(need)} on "
            f"disk ({need:,} bytes, uncompressed) for {chunks:,} chunks, but {_size(free)} are free at "
            f"{Path(out).resolve().parent}: ask for fewer or smaller images, or float16",
            need,
        )


def _check_fits(spec: DatasetSpec, loaded: list, channels: int) -> None:
    """One chunk's render within the work budget; blur kernels inside the image."""
    d = spec.detector
    shape = tuple(max(ct.hu.shape[k] for ct in loaded) for k in range(3))
    cost = budget.estimate(
        min(spec.chunk, spec.n), d.height, d.width, spec.n_samples, spec.method, shape, channels, 8
    )
    budget.check(cost, "chunk (one batch of images)")
    r = max_blur_radius(spec)
    if r >= min(d.height, d.width):
        raise DatasetError(
            f"blur: a sigma of {spec.augment.blur[1]:g} px reaches {r} px, beyond the {d.height}×{d.width} image"
        )


__all__ = ["Summary", "generate"]

"""Engines: who renders which chunk. Each yields a :class:`~.worker.ChunkResult` per finished chunk.

- ``inprocess``: this process, chunk after chunk (the caller's threads; what Slicer uses).
- ``local``: K worker processes (spawned, threads limited so that K × threads fits the cores). As with
  any spawned ``multiprocessing`` worker, a script calling it needs an ``if __name__ == "__main__":`` guard.
- ``ray``: one Ray task per chunk on a local Ray cluster (started here) or an existing one
  (``address``); tasks reserve ``threads`` CPUs and ``gpus`` GPUs each and write their chunk themselves.

Whatever the engine, a chunk's bytes are the same (sample ``i`` depends only on ``(seed, i)``), so
they may be mixed: a run started with one engine can be resumed with another.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from . import store
from .errors import DatasetError
from .renderer import Renderer, limit_threads
from .spec import DatasetSpec
from .worker import ChunkResult, Job, init_pool, pool_chunk, run_chunk, threads_in_use

ENGINES = ("local", "ray")


def cores() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_inprocess(job: Job, loaded: list, chunks: list[int]) -> Iterator[ChunkResult]:
    """This process with ``job.threads`` threads (the previous counts are restored at the end)."""
    spec = DatasetSpec.from_dict(job.spec)
    before = threads_in_use()
    limit_threads(job.threads, environment=False)
    try:
        r = Renderer(spec, loaded, job.device, job.backend)
        group = store.open_store(job.out, "r+")
        for c in chunks:
            t, cpu = time.perf_counter(), time.process_time()
            arrays = r.render(spec.chunk_range(c))
            nbytes = store.write_chunk(group, spec, c, arrays)
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            yield ChunkResult(c, len(arrays["images"]), nbytes, seconds, threads_in_use(), cpu)
    finally:
        limit_threads(before[0], environment=False)
        if before[1]:
            import numba

            numba.set_num_threads(before[1])


def run_local(job: Job, chunks: list[int], workers: int) -> Iterator[ChunkResult]:
    """``workers`` spawned processes, at most two chunks queued per worker (a cancel stops soon)."""
    ctx = multiprocessing.get_context("spawn")  # no forked torch/numba thread pools
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_pool, initargs=(job,))
    todo = list(chunks)
    pending = set()
    try:
        while todo or pending:
            while todo and len(pending) < 2 * workers:
                pending.add(ex.submit(pool_chunk, todo.pop(0)))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                yield f.result()
    except BrokenProcessPool as e:
        raise DatasetError(
            "workers: a worker process died (killed, out of memory, or started from a script without an "
            "'if __name__ == \"__main__\":' guard, which spawned workers re-run); finished chunks are kept: "
            "re-run to resume"
        ) from e
    finally:
        for f in pending:
            f.cancel()
        procs = list(getattr(ex, "_processes", {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:  # a running chunk is not marked done: stopping it loses nothing
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)


def _ray_chunk(job: Job, cts, c: int) -> ChunkResult:
    """The Ray task: the CTs arrive from the object store (no shared file system needed for them)."""
    from dataclasses import replace

    return run_chunk(replace(job, cts=tuple(cts)), c)


def run_ray(
    job: Job, loaded: list, chunks: list[int], workers: int, address: str | None, gpus: float
) -> Iterator[ChunkResult]:
    """One task per chunk; a local cluster of ``workers × threads`` CPUs is started when ``address`` is None
    and Ray is not initialised yet (and shut down at the end)."""
    try:
        import ray
    except ImportError as e:
        raise DatasetError("engine: 'ray' needs Ray: pip install 'nanodrr-engine[ray]'") from e
    started = False
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "logging_level": "warning", "log_to_driver": False}
        if address is None:
            ray.init(num_cpus=workers * job.threads, **kwargs)
        else:
            ray.init(address=address, **kwargs)
        started = address is None
    try:
        cts = ray.put([*loaded])
        remote = ray.remote(_ray_chunk).options(num_cpus=job.threads, num_gpus=gpus, max_retries=3)
        todo, pending = list(chunks), []
        in_flight = 2 * workers if address is None else max(2 * workers, 64)
        while todo or pending:
            while todo and len(pending) < in_flight:
                pending.append(remote.remote(job, cts, todo.pop(0)))
            finished, pending = ray.wait(pending, num_returns=1)
            yield ray.get(finished[0])
    finally:
        for ref in locals().get("pending", []):
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


__all__ = ["ENGINES", "cores", "run_inprocess", "run_local", "run_ray"]

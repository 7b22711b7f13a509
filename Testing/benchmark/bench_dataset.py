#!/usr/bin/env python
"""Dataset-generation benchmark (issue 16; not a test): images/s of ``nanodrr_engine.dataset`` engines
against a naive loop of one ``render`` per pose and nanodrr 0.1.7 in the same loop, on the chest CT.

Cases, each in its own process (peak memory and thread settings are its own), per detector size:

- ``local-1``: ``generate`` in this process, 2 threads; ``local-2``: 2 worker processes × 1 thread;
  ``ray-2``: a local Ray cluster of 2 CPUs, one task (1 CPU) per chunk.
- ``naive``: the same poses (the dataset's sampler), ``render(subject, k_inv, rt_inv[None], …)`` one
  pose per call, images kept in memory (nothing written); ``nanodrr``: nanodrr 0.1.7's
  ``DRR(subject, rt_inv)`` in that loop (its ray march, 500 samples: it has no Joseph method).

Rates: *end-to-end* = images / wall time of the whole call (imports excluded, CT reading, worker
start-up and JIT included); *steady* = images finished after every worker finished its first chunk,
over the time since then; *CPU ms/img* = CPU time of the rendering processes per image (all chunks,
warm-up included; far less sensitive than wall time to other work on a shared machine). Also: Ray's overhead per task (empty tasks, and a dataset task against the
local engine's chunk time), the store's write throughput (``store.write_chunk`` of rendered chunks)
and peak RSS (VmHWM, whole process tree) at N and 4·N images, which must not grow with N.

    .venv/bin/python Testing/benchmark/bench_dataset.py --json dataset.json
    .venv/bin/python Testing/benchmark/bench_dataset.py --sizes 128 --n 48 --quick
    .venv/bin/python Testing/benchmark/bench_dataset.py --sizes 128 --n 768 --cases local-2 ray-2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_CT = REPO.parent / "shared" / "data" / "chest_ct" / "ct.nii.gz"


def _spec(size: int, n: int, chunk: int):
    from nanodrr_engine.dataset import DatasetSpec, Detector

    # 400 mm field of view as bench_render (reference preset), default clinical pose ranges
    return DatasetSpec(n=n, seed=1, chunk=chunk, detector=Detector.preset("reference", size), method="joseph")


def _tree_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of ``pid`` plus its live children, bytes (children read before they exit)."""
    total = 0
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    for p in [str(pid), *kids]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def case_generate(spec_kw: dict, ct: str, engine: str, workers: int, threads: int, out: str) -> dict:
    """Time ``generate`` with per-chunk completion times from its progress callback."""
    import threading

    from nanodrr_engine.dataset import generate

    spec = _spec(**spec_kw)
    times: list[tuple[float, int]] = []
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_hwm(os.getpid()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    summary = generate(
        ct, out, spec=spec, engine=engine, workers=workers, threads=threads,
        progress=lambda done, total: times.append((time.perf_counter() - t0, done)),
    )  # fmt: skip
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _tree_hwm(os.getpid()))
    first_all = times[min(workers, len(times)) - 1]  # every worker has finished a chunk
    steady = (
        (spec.n - first_all[1]) / (wall - first_all[0])
        if wall > first_all[0] and spec.n > first_all[1]
        else None
    )
    chunk_s = [b[0] - a[0] for a, b in zip(times[workers - 1 : -1], times[workers:], strict=True)]
    res = {
        "cpu_ms_per_image": summary.cpu_seconds / summary.images * 1e3,
        "images": summary.images, "wall_s": wall, "end_to_end": spec.n / wall, "steady": steady,
        "first_chunk_s": times[0][0], "bytes_on_disk": summary.bytes_on_disk, "threads": summary.threads,
        "chunk_interval_s": sorted(chunk_s)[len(chunk_s) // 2] if chunk_s else None, "peak_rss": peak[0],
    }  # fmt: skip
    if engine == "ray":
        res.update(_ray_overhead(spec, ct, out))
    if engine == "local" and workers == 1:
        res.update(_store_throughput(spec, out))
    return res


def _ray_overhead(spec, ct: str, out: str) -> dict:
    """Per-task cost of Ray itself: empty tasks (submit → result), on a fresh 2-CPU local cluster."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    try:

        @ray.remote(num_cpus=1)
        def noop(x):
            return x

        ray.get([noop.remote(i) for i in range(20)])  # workers up
        t = time.perf_counter()
        ray.get([noop.remote(i) for i in range(200)])
        batch = (time.perf_counter() - t) / 200
        t = time.perf_counter()
        for i in range(50):
            ray.get(noop.remote(i))
        serial = (time.perf_counter() - t) / 50
    finally:
        ray.shutdown()
    return {"ray_task_s_pipelined": batch, "ray_task_s_roundtrip": serial}


def _store_throughput(spec, out: str) -> dict:
    """MB/s of ``store.write_chunk`` for chunks of images already rendered (real data, zstd)."""
    import numpy as np
    from nanodrr_engine.dataset import store

    src = store.open_store(out, "r")
    chunk = {k: np.asarray(src[k][0 : spec.chunk]) for k in ("images", "rt_inv", "k_inv", "sdd", "subject")}
    for name in store.PARAMS:
        chunk[f"params/{name}"] = np.asarray(src[f"params/{name}"][0 : spec.chunk])
    with tempfile.TemporaryDirectory(dir=Path(out).parent) as d:
        path = Path(d) / "w.zarr"
        store.create(path, spec, chunk["images"].shape[1], {"format": 1, "spec": spec.to_dict()})
        g = store.open_store(path, "r+")
        t = time.perf_counter()
        nbytes = sum(store.write_chunk(g, spec, c, chunk) for c in range(spec.n_chunks))
        secs = time.perf_counter() - t
        disk = store.disk_bytes(path)
    return {
        "store_mb_s": nbytes / secs / 2**20,
        "store_ratio": nbytes / disk,
        "store_chunk_ms": secs / spec.n_chunks * 1e3,
    }


def case_loop(spec_kw: dict, ct: str, impl: str, n: int) -> dict:
    """A user's loop: one render call per pose (the dataset sampler's poses), images kept in memory."""
    import numpy as np
    import torch
    from nanodrr_engine.dataset.sampling import draw, pose

    spec = _spec(**spec_kw).checked()
    d = spec.detector
    t0 = time.perf_counter()
    if impl == "naive":
        from nanodrr_engine import Subject, make_k_inv, render

        subject = Subject.from_filepath(ct)
        k_inv = make_k_inv(d.sdd, d.delx, d.dely, d.x0, d.y0, d.height, d.width, dtype=torch.float64)

        def one(rt):
            return render(subject, k_inv, rt, d.sdd, d.height, d.width, method="joseph")
    else:
        from nanodrr.data import Subject
        from nanodrr.drr import DRR

        subject = Subject.from_filepath(ct)
        drr = DRR.from_carm_intrinsics(d.sdd, d.delx, d.dely, d.x0, d.y0, d.height, d.width)

        def one(rt):
            return drr(subject, rt.float(), n_samples=500)

    iso = tuple(float(v) for v in subject.isocenter.tolist())
    load = time.perf_counter() - t0
    images = []
    t1, cpu = time.perf_counter(), time.process_time()  # warm-up included, as in the engines' chunks
    first = None
    with torch.no_grad():
        for i in range(n):
            rt = torch.as_tensor(pose(draw(spec, i, 1), iso))[None]
            images.append(one(rt).cpu().numpy())
            if first is None:
                first = time.perf_counter() - t1
    cpu = (time.process_time() - cpu) / n
    wall = time.perf_counter() - t1
    steady = (n - 1) / (wall - first) if n > 1 else None
    return {"cpu_ms_per_image": cpu * 1e3, "images": n, "wall_s": wall + load, "end_to_end": n / (wall + load), "steady": steady,
            "first_chunk_s": first, "peak_rss": _tree_hwm(os.getpid()), "mean": float(np.mean(images))}  # fmt: skip


def run_case(args: dict) -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps(args)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", default=str(DEFAULT_CT))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--n", type=int, default=192, help="images per engine case")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--n-nanodrr", type=int, default=6, help="images in nanodrr's loop (it is slow)")
    ap.add_argument("--quick", action="store_true", help="skip the memory-scaling cases")
    ap.add_argument("--cases", nargs="+", help="only these cases (e.g. local-2 ray-2; default all)")
    ap.add_argument("--rounds", type=int, default=1, help="run the case list this many times, interleaved")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        c = json.loads(a.case)
        kind = c.pop("kind")
        res = case_generate(**c) if kind == "generate" else case_loop(**c)
        print("RESULT " + json.dumps(res), flush=True)
        return
    if not Path(a.ct).is_file():
        raise SystemExit(f"no CT at {a.ct} (--ct)")
    unknown = set(a.cases or ()) - {"local-1", "local-2", "ray-2", "naive", "nanodrr", "local-1 (4N)"}
    if unknown:
        raise SystemExit(f"--cases: unknown {sorted(unknown)}")
    if a.rounds < 1:
        raise SystemExit(f"--rounds: must be >= 1, got {a.rounds}")
    results = {"machine": {"cpus": os.cpu_count(), "load": os.getloadavg()}, "cases": []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_dataset_") as tmp:
        for size in a.sizes:
            kw = {"size": size, "n": a.n, "chunk": a.chunk}
            cases = [
                ("local-1", {"kind": "generate", "engine": "local", "workers": 1, "threads": 2}),
                ("local-2", {"kind": "generate", "engine": "local", "workers": 2, "threads": 1}),
                ("ray-2", {"kind": "generate", "engine": "ray", "workers": 2, "threads": 1}),
                ("naive", {"kind": "loop", "impl": "naive", "n": a.n}),
                ("nanodrr", {"kind": "loop", "impl": "nanodrr", "n": a.n_nanodrr}),
            ]
            if not a.quick and size == min(a.sizes):
                big = {"size": size, "n": 4 * a.n, "chunk": a.chunk}
                cases.append(
                    (
                        "local-1 (4N)",
                        {"kind": "generate", "engine": "local", "workers": 1, "threads": 2, "spec_kw": big},
                    )
                )
            if a.cases:
                cases = [(name, c) for name, c in cases if name in a.cases]
            for rnd, (name, c) in ((r, nc) for r in range(a.rounds) for nc in cases):
                c = {"ct": a.ct, "spec_kw": kw, **c}
                if c["kind"] == "generate":
                    c["out"] = str(Path(tmp) / f"{name.replace(' ', '')}-{size}-{rnd}.zarr")
                t = time.perf_counter()
                res = run_case(c)
                res.update(case=name, size=size, round=rnd, process_s=time.perf_counter() - t)
                results["cases"].append(res)
                print(json.dumps(res), flush=True)
    results["total_s"] = time.perf_counter() - t_all
    print_table(results["cases"])
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


def print_table(rows: list[dict]) -> None:
    head = (f"{'size':>5} {'case':<14} {'end-to-end img/s':>16} {'steady img/s':>12} {'CPU ms/img':>10} "
            f"{'first chunk s':>13} {'peak RSS MB':>11}")  # fmt: skip
    print(head)
    for r in rows:
        if "error" in r:
            print(f"{r['size']:>5} {r['case']:<14} error: {r['error']}")
            continue
        steady = f"{r['steady']:.2f}" if r.get("steady") else "—"
        print(f"{r['size']:>5} {r['case']:<14} {r['end_to_end']:>16.2f} {steady:>12} {r['cpu_ms_per_image']:>10.1f} "
              f"{r['first_chunk_s']:>13.2f} "
              f"{r['peak_rss'] / 2**20:>11.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

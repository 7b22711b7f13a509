#!/usr/bin/env python
"""Slicer-logic overhead against the render itself, and the live-update latency, on the chest CT.

For a 256×256 DRR of the reference chest CT (``<repo>/../shared/data/chest_ct``; the benchmark skips
cleanly without it) this measures, as medians of repeated runs:

- the engine render alone (``DRR`` module on a ready subject): the floor;
- ``NanoDRRLogic.render`` split into validation, the cached node → subject lookup, the render and the
  array → node update; the overhead ratio is (logic total − engine) / engine (target < 10 %);
- the uncached node → subject conversion (paid once per volume change);
- the live latency: C-arm transform change → updated 256×256 DRR node (``LiveRenderController``,
  synchronous), at full resolution and at the 0.5 preview scale.

Both sampling methods are measured in the same run, interleaved so that both see the same machine
load: "raymarch" (``--n-samples`` per ray, the logic's default; the unlabelled rows) and "joseph" (one
sample per voxel plane; ``nSamples`` ignored). The live latencies alternate the method on one controller
(``renderOptions["method"]``) move by move, in ABBA order; the ratios joseph / raymarch close the table.

    python Testing/benchmark/bench_logic.py [--size 256] [--n-samples 500] [--repeats 9] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHEST = REPO.parent / "shared" / "data" / "chest_ct" / "ct.nii.gz"
sys.path.insert(0, str(REPO / "NanoDRRSlicer"))


def median(values) -> float:
    return statistics.median(values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if not CHEST.is_file():
        print(f"SKIP: chest CT not found at {CHEST} (expects the shared data folder beside the repo)")
        return 0

    import slicer
    import torch
    from nanodrr_engine import DRR, Subject
    from NanoDRRLib import CArmGeometry, LiveRenderController, NanoDRRLogic, loadVolume, resolveDevice
    from NanoDRRLib.conversion import volumeArray, volumeToWorld

    device = resolveDevice(args.device)
    scene = slicer.vtkMRMLScene()
    ct = loadVolume(scene, CHEST)
    dims = ct.GetImageData().GetDimensions()
    spacing = 400.0 / args.size  # the reference 200 × 2 mm field of view
    geometry = CArmGeometry(sdd=1020.0, height=args.size, width=args.size, delx=spacing, dely=spacing)
    logic = NanoDRRLogic()
    carm = logic.createCArmTransform(ct)  # the reference AP view
    opts = {"nSamples": args.n_samples, "device": device}
    methods = ("raymarch", "joseph")

    t = time.perf_counter()
    drr = logic.render(ct, carm, geometry, **opts)
    cold = time.perf_counter() - t
    coldConvert = logic.lastTimings["convert"]

    # the engine alone, on the same voxels and pose
    subject = Subject.from_array(volumeArray(ct), volumeToWorld(ct)).to(device)
    module = DRR.from_carm_intrinsics(
        geometry.sdd, spacing, spacing, 0.0, 0.0, args.size, args.size, device=device
    )
    pose = torch.as_tensor(slicer.util.arrayFromTransformMatrix(carm, toWorld=True), device=device)[None]
    for method in methods:  # warm-up (kernel compilation) outside the timings
        with torch.no_grad():
            module(subject, pose, n_samples=args.n_samples, method=method)
        logic.render(ct, carm, geometry, outputNode=drr, method=method, **opts)
    # interleaved, so that the engine and the logic, and both methods, see the same machine load
    engine = {m: [] for m in methods}
    stages = {k: [] for k in ("validate", "convert", "render", "output", "total")}
    josephTotal = []
    for k in range(args.repeats):
        for method in methods if k % 2 == 0 else methods[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.no_grad():
                module(subject, pose, n_samples=args.n_samples, method=method).cpu()
            engine[method].append(time.perf_counter() - t)
            logic.render(ct, carm, geometry, outputNode=drr, method=method, **opts)
            if method == "raymarch":
                for key in stages:
                    stages[key].append(logic.lastTimings[key])
            else:
                josephTotal.append(logic.lastTimings["total"])

    conversions = []
    for _ in range(3):
        slicer.util.arrayFromVolumeModified(ct)  # as after an edit: forces a fresh conversion
        logic.render(ct, carm, geometry, outputNode=drr, **opts)
        conversions.append(logic.lastTimings["convert"])

    def liveLatency(previewScale: float) -> dict[str, list[float]]:
        """C-arm change → rendered node, per method; one controller, the method alternating ABBA."""
        stamps = []
        live = LiveRenderController(
            logic, ct, carm, geometry, outputNode=drr, previewScale=previewScale,
            onRendered=lambda node: stamps.append(time.perf_counter()), **opts,
        )  # fmt: skip
        live.start()
        latencies = {m: [] for m in methods}
        move = 0
        for k in range(args.repeats):
            for method in methods if k % 2 == 0 else methods[::-1]:
                live.renderOptions["method"] = method
                move += 1
                t = time.perf_counter()
                logic.setCArmAngles(carm, ct, primary=2.5 * move, secondary=2.0, sod=850.0)
                latencies[method].append(stamps[-1] - t)
        live.stop()
        return latencies

    liveFull = liveLatency(1.0)
    livePreview = liveLatency(0.5)

    e = median(engine["raymarch"])
    eJoseph = median(engine["joseph"])
    total = median(stages["total"])
    full = {m: median(v) for m, v in liveFull.items()}
    preview = {m: median(v) for m, v in livePreview.items()}
    print(f"NanoDRR logic benchmark: chest CT {dims[0]}x{dims[1]}x{dims[2]}, {args.size}x{args.size} DRR, "
          f"raymarch {args.n_samples} samples/ray (unlabelled rows) and joseph (one sample per voxel plane), "
          f"device {device}, median of {args.repeats}")  # fmt: skip
    print(f"{'stage':<52s} {'median (ms)':>12s}")
    rows = [
        ("engine render alone (DRR module)", e),
        ("engine render alone (DRR module), joseph", eJoseph),
        ("logic.render total (cached volume)", total),
        ("logic.render total (cached volume), joseph", median(josephTotal)),
        ("  validation", median(stages["validate"])),
        ("  node -> subject (cached lookup)", median(stages["convert"])),
        ("  engine render", median(stages["render"])),
        ("  array -> node update (+ window/level)", median(stages["output"])),
        ("node -> subject conversion (uncached)", median(conversions)),
        ("first render (conversion, μ, kernel warm-up)", cold),
        ("  of which conversion", coldConvert),
        (f"live: C-arm change -> {args.size}x{args.size} DRR node", full["raymarch"]),
        (f"live: C-arm change -> {args.size}x{args.size} DRR node, joseph", full["joseph"]),
        (f"live preview (0.5): C-arm change -> {args.size // 2}x{args.size // 2}", preview["raymarch"]),
        (f"live preview (0.5): C-arm change -> {args.size // 2}x{args.size // 2}, joseph", preview["joseph"]),
    ]
    for name, seconds in rows:
        print(f"{name:<52s} {seconds * 1e3:12.2f}")
    overhead = (total - e) / e
    glue = (median(stages["validate"]) + median(stages["convert"]) + median(stages["output"])) / median(
        stages["render"]
    )
    print(f"overhead ratio (logic total - engine) / engine: {overhead * 100:.1f} %  (target < 10 %)")
    print(f"logic glue (validate + lookup + node update) / render: {glue * 100:.1f} %")
    print(
        f"joseph / raymarch time: engine {eJoseph / e:.2f}, live full resolution "
        f"{full['joseph'] / full['raymarch']:.2f}, live preview {preview['joseph'] / preview['raymarch']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Registration benchmark: ``register`` on the chest CT against nanodrr 0.1.7's ``Registration`` + Adam.

Cases (seeded): true C-arm poses with primary angle in ±30° and secondary in ±20° (SOD 850, SDD 1020,
400 mm field); the start is the true pose moved about the isocenter, in the camera frame, by a rotation
of a random axis and an angle drawn uniformly up to the tier's limit, and a translation of a random
direction and a length drawn uniformly up to its limit. Tiers: A ≤ 5°/10 mm, B ≤ 15°/30 mm,
C ≤ 45°/30 mm. The target is the ray-march DRR at the true pose (800 samples per ray), while ``register``
renders with Joseph sampling: the two renderers differ, so a perfect fit is not built in.

Realism variant (tier A): the target is made a radiograph — transmission N0·exp(−∫μ) with N0 = 10⁴
photons per pixel, a uniform scatter background of 5 % of the mean primary signal, Poisson noise, a
Gaussian blur of 1 pixel, a display gamma of 0.8, 12-bit quantisation, and columns as the detector sees
them — then taken back through ``preprocess_xray`` (which knows none of these numbers).

Scores: mTRE over 2000 bone points of the CT (HU > 300, seeded), success = mTRE < 1 mm, seconds and
forward + backward render equivalents at the final resolution. nanodrr (torch backend, its default 500
samples) runs on the first ``--nanodrr-cases`` cases of tier A at the smallest size, with Adam (rotation
lr 1e-2 rad, translation lr 1 mm) on 1 − MultiscaleNCC(patch sizes [None, 13], weights [0.5, 0.5]) for at
most ``--nanodrr-iterations`` steps; its time to reach mTRE < 1 mm (measured every step) is compared with
our whole registration (which does not know the truth and cannot stop early) and, like for like, with
the time our registration first reached mTRE < 1 mm (from its history).

Examples::

    python Testing/benchmark/bench_register.py --quick
    python Testing/benchmark/bench_register.py --json bench_register.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CT = REPO.parent / "shared" / "data" / "chest_ct" / "ct.nii.gz"
SDD, SOD, FOV = 1020.0, 850.0, 400.0
TIERS = {"A": (5.0, 10.0), "B": (15.0, 30.0), "C": (45.0, 30.0)}


def bone_points(path: Path, n: int, seed: int) -> torch.Tensor:
    """``[n, 3]`` world (RAS) mm centres of CT voxels above 300 HU, drawn without replacement."""
    import SimpleITK as sitk
    from nanodrr_engine import Subject

    image = sitk.ReadImage(str(path))
    hu = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32)).permute(2, 1, 0)  # [i, j, k]
    idx = torch.nonzero(hu > 300).double()
    g = torch.Generator().manual_seed(seed)
    idx = idx[torch.randperm(len(idx), generator=g)[:n]]
    v2w = Subject.from_filepath(str(path)).voxel_to_world.double()
    return idx @ v2w[:3, :3].T + v2w[:3, 3]


def perturb(
    rt: torch.Tensor, isocenter: torch.Tensor, rot_vec: torch.Tensor, xyz: torch.Tensor
) -> torch.Tensor:
    """``rt`` moved about the isocenter in its camera frame (Rodrigues; independent of ``register``)."""
    c = (torch.linalg.inv(rt[0]) @ torch.cat([isocenter.double(), torch.ones(1, dtype=torch.float64)]))[:3]
    angle = float(rot_vec.norm())
    u = rot_vec / angle if angle > 0 else torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    K = torch.tensor([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]], dtype=torch.float64)
    R = torch.eye(3, dtype=torch.float64) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = R
    T[:3, 3] = xyz + c - R @ c
    return rt @ T


def make_cases(tier: str, n: int, seed: int) -> list[dict]:
    max_deg, max_mm = TIERS[tier]
    rng = np.random.default_rng([seed, ord(tier)])
    cases = []
    for i in range(n):
        axis = rng.normal(size=3)
        direction = rng.normal(size=3)
        cases.append(
            {
                "tier": tier,
                "index": i,
                "primary": float(rng.uniform(-30, 30)),
                "secondary": float(rng.uniform(-20, 20)),
                "rot": axis / np.linalg.norm(axis) * math.radians(rng.uniform(0, max_deg)),
                "xyz": direction / np.linalg.norm(direction) * rng.uniform(0, max_mm),
                "noise_seed": int(rng.integers(2**31)),
            }
        )
    return cases


def radiograph(line_integrals: torch.Tensor, seed: int) -> torch.Tensor:
    """A synthetic radiograph ``[H, W]`` (12-bit, detector view) of ``[1, 1, H, W]`` line integrals."""
    g = torch.Generator().manual_seed(seed)
    n0 = 1e4
    primary = n0 * torch.exp(-line_integrals.double())
    counts = torch.poisson(primary + 0.05 * primary.mean(), generator=g)
    x = torch.arange(-2, 3, dtype=torch.float64)
    k1 = torch.exp(-(x**2) / 2)
    k1 = k1 / k1.sum()
    kernel = (k1[:, None] * k1[None, :])[None, None]
    blurred = F.conv2d(F.pad(counts, (2, 2, 2, 2), mode="replicate"), kernel)
    display = (blurred / blurred.max()).clamp(min=0) ** 0.8
    quantised = torch.round(display * 4095)
    return quantised[0, 0].flip(-1).float()


def run_ours(subject, points, case, size, realism, args) -> dict:
    from nanodrr_engine import carm_to_rt_inv, make_k_inv, render
    from nanodrr_engine.data.xray import preprocess_xray
    from nanodrr_engine.metrics import target_registration_error
    from nanodrr_engine.registration import register

    delta = FOV / size
    k = make_k_inv(SDD, delta, delta, 0.0, 0.0, size, size, dtype=torch.float64)
    truth = carm_to_rt_inv(case["primary"], case["secondary"], SOD, subject.isocenter)[None].double()
    with torch.no_grad():
        target = render(subject, k, truth, SDD, size, size, 800, method="raymarch").cpu()
    mask = None
    if realism:
        target, mask = preprocess_xray(radiograph(target, case["noise_seed"]), encoding="intensity")
    start = perturb(truth, subject.isocenter, torch.as_tensor(case["rot"]), torch.as_tensor(case["xyz"]))
    before = float(target_registration_error(truth, start, points))
    result = register(subject, target, k, SDD, start, size, size, mask=mask, starts=args.starts)
    after = float(target_registration_error(truth, result.rt_inv.cpu(), points))
    reached = next(
        (h["seconds"] for h in result.history
         if float(target_registration_error(truth, h["correction"].to(start) @ start, points)) < 1.0),
        None,
    )  # fmt: skip
    return {
        "seconds_to_1mm": reached,
        "mtre_before": before,
        "mtre": after,
        "success": after < 1.0,
        "seconds": result.seconds,
        "renders": result.render_equivalents,
        "iterations": result.iterations,
        "stop": result.stop_reason,
    }


def run_nanodrr(ct: Path, points, case, size, iterations: int, max_seconds: float) -> dict:
    """nanodrr 0.1.7's Registration + Adam on the same case; mTRE after every step."""
    from nanodrr.data import Subject as NSubject
    from nanodrr.metrics import MultiscaleNormalizedCrossCorrelation2d
    from nanodrr.registration import Registration
    from nanodrr_engine import Subject, carm_to_rt_inv, make_k_inv, render
    from nanodrr_engine.metrics import target_registration_error

    ours = Subject.from_filepath(str(ct))
    delta = FOV / size
    k64 = make_k_inv(SDD, delta, delta, 0.0, 0.0, size, size, dtype=torch.float64)
    truth = carm_to_rt_inv(case["primary"], case["secondary"], SOD, ours.isocenter)[None].double()
    with torch.no_grad():
        target = render(ours, k64, truth, SDD, size, size, 800, method="raymarch").float()
    start = perturb(truth, ours.isocenter, torch.as_tensor(case["rot"]), torch.as_tensor(case["xyz"]))
    subject = NSubject.from_filepath(str(ct))
    reg = Registration(subject, start.float(), k64.float(), torch.tensor([SDD]), size, size)
    loss_fn = MultiscaleNormalizedCrossCorrelation2d([None, 13], [0.5, 0.5])
    opt = torch.optim.Adam([{"params": [reg._rot], "lr": 1e-2}, {"params": [reg._xyz], "lr": 1.0}])
    t0 = time.perf_counter()
    reached, mtre, steps = None, math.inf, 0
    for step in range(iterations):
        opt.zero_grad()
        loss = 1 - loss_fn(reg(), target).mean()
        loss.backward()
        opt.step()
        steps = step + 1
        with torch.no_grad():
            mtre = float(target_registration_error(truth, reg.pose.double(), points))
        if reached is None and mtre < 1.0:
            reached = time.perf_counter() - t0
        if time.perf_counter() - t0 > max_seconds:
            break
    return {
        "mtre": mtre,
        "success": mtre < 1.0,
        "seconds_to_1mm": reached,
        "seconds": time.perf_counter() - t0,
        "iterations": steps,
    }


def _fmt(seconds) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def _ratio(theirs, ours) -> str:
    return "—" if theirs is None or ours is None else f"{theirs / ours:.0f}×"


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {}
    return {
        "n": len(rows),
        "success": sum(r["success"] for r in rows) / len(rows),
        "median_mtre": statistics.median(r["mtre"] for r in rows),
        "median_mtre_before": statistics.median(r["mtre_before"] for r in rows),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "median_renders": statistics.median(r["renders"] for r in rows),
        "max_renders": max(r["renders"] for r in rows),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", type=Path, default=DEFAULT_CT)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 200])
    p.add_argument("--cases", type=int, nargs=4, default=[20, 20, 10, 20], metavar=("A", "B", "C", "REAL"))
    p.add_argument("--starts", type=int, default=1, help="register's starts (1 = its default)")
    p.add_argument("--nanodrr-cases", type=int, default=4)
    p.add_argument("--nanodrr-iterations", type=int, default=150)
    p.add_argument("--nanodrr-seconds", type=float, default=240.0, help="cap per nanodrr case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default="cpu", help="where register runs (cpu, cuda, mps); nanodrr stays on the CPU"
    )
    p.add_argument("--quick", action="store_true", help="128 only, 3 cases per tier, 1 nanodrr case")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if not args.ct.exists():
        print(f"bench_register: CT not found: {args.ct} (the shared chest CT, ../shared/data/chest_ct)")
        return 2
    if args.quick:
        args.sizes, args.cases, args.nanodrr_cases = [128], [3, 3, 3, 3], 1

    from nanodrr_engine import Subject

    torch.manual_seed(args.seed)
    subject = Subject.from_filepath(str(args.ct)).to(args.device)
    _ = subject.image
    points = bone_points(args.ct, 2000, args.seed)
    print(f"# bench_register: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, CT {args.ct.name}, {len(points)} bone points", flush=True)  # fmt: skip

    plan = [("A", args.cases[0], False), ("B", args.cases[1], False), ("C", args.cases[2], False),
            ("A", args.cases[3], True)]  # fmt: skip
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "ours": {}, "nanodrr": []}
    warm = make_cases("A", 1, args.seed + 999)[0]
    run_ours(subject, points, warm, min(args.sizes), False, args)  # JIT warm-up, untimed
    for size in args.sizes:
        for tier, n, realism in plan:
            name = f"{size}/{tier}{'-realism' if realism else ''}"
            rows = []
            for case in make_cases(tier, n, args.seed):
                row = run_ours(subject, points, case, size, realism, args)
                rows.append(row)
                print(f"  {name} #{case['index']}: mTRE {row['mtre_before']:.1f} -> {row['mtre']:.3f} mm, "
                      f"{row['seconds']:.1f} s, {row['renders']:.0f} renders, {row['stop']}", flush=True)  # fmt: skip
            results["ours"][name] = {"summary": summarise(rows), "rows": rows}

    size = min(args.sizes)
    for case in make_cases("A", args.nanodrr_cases, args.seed):
        ours = results["ours"][f"{size}/A"]["rows"][case["index"]]
        nd = run_nanodrr(args.ct, points, case, size, args.nanodrr_iterations, args.nanodrr_seconds)
        nd["ours_seconds"], nd["ours_mtre"] = ours["seconds"], ours["mtre"]
        nd["ours_seconds_to_1mm"] = ours["seconds_to_1mm"]
        results["nanodrr"].append(nd)
        print(f"  nanodrr {size}/A #{case['index']}: mTRE {nd['mtre']:.3f} mm after {nd['iterations']} steps, "
              f"{nd['seconds']:.1f} s (< 1 mm after {nd['seconds_to_1mm']} s); ours {ours['seconds']:.1f} s", flush=True)  # fmt: skip

    print(
        "\n| case | n | success (mTRE < 1 mm) | median mTRE start → end (mm) | median s | median / max renders |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results["ours"].items():
        s = r["summary"]
        if not s:
            continue
        print(f"| {name} | {s['n']} | {100 * s['success']:.0f} % | {s['median_mtre_before']:.1f} → "
              f"{s['median_mtre']:.3f} | {s['median_seconds']:.1f} | {s['median_renders']:.0f} / {s['max_renders']:.0f} |")  # fmt: skip
    if results["nanodrr"]:
        print(
            "\n| nanodrr case | nanodrr mTRE (mm) | steps | s to < 1 mm | s total | ours s | ours mTRE | speed-up "
            "| ours s to < 1 mm | speed-up to < 1 mm |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for i, nd in enumerate(results["nanodrr"]):
            to1 = nd["seconds_to_1mm"]
            ratio = (f"{to1 / nd['ours_seconds']:.0f}×" if to1 is not None
                     else f"> {nd['seconds'] / nd['ours_seconds']:.0f}× (not reached)")  # fmt: skip
            print(f"| {size}/A #{i} | {nd['mtre']:.3f} | {nd['iterations']} | "
                  f"{'—' if to1 is None else f'{to1:.1f}'} | {nd['seconds']:.1f} | {nd['ours_seconds']:.1f} | "
                  f"{nd['ours_mtre']:.3f} | {ratio} | {_fmt(nd['ours_seconds_to_1mm'])} | "
                  f"{_ratio(to1, nd['ours_seconds_to_1mm'])} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Speed guard for engine changes: this checkout's engine against a git revision of it, in one process.

Separate benchmark processes on a small shared VM spread by ±20 % between runs of the same code, more
than the 5 % a change may cost. So both engines run here side by side: the baseline is extracted from
git (``--baseline``, default ``HEAD``) into a temporary package ``nanodrr_engine_baseline`` (its custom-op
namespace renamed so the two can register together), every case renders alternately ABBA, and the two
engines swap their μ volumes (one array and a copy of it) every other pair, because where a volume lies in
memory alone moves a render by a few per cent. Each case reports the median time of each side, the ratio
of the medians, the median of the per-pair ratios and the ratio of the fastest renders, and how far the two
images are apart.

Examples::

    python Testing/benchmark/bench_guard.py --baseline e587846
    python Testing/benchmark/bench_guard.py --sizes 512 --maps plain --modes fwd --pairs 12
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from _bench_case import FOV, SDD, SOD  # the reference view of bench_render.py (docs/geometry.md)
from bench_render import DEFAULT_DATA, MODES, REPO

PACKAGE = "NanoDRREngine/nanodrr_engine"
BASELINE = "nanodrr_engine_baseline"
METHODS = ("raymarch", "joseph")


def _renames(name: str) -> tuple:
    """What ties a copy of the package to its name."""
    return (
        (re.compile(r"\bnanodrr_engine::"), f"{name}::"),
        (re.compile(r"\bfrom nanodrr_engine\b"), f"from {name}"),
        (re.compile(r"\bimport nanodrr_engine\b"), f"import {name}"),
    )


def extract_baseline(rev: str, into: Path, name: str = BASELINE) -> None:
    """The engine package at ``rev`` as ``into/<name>`` (Python files renamed)."""
    try:
        blob = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev, PACKAGE],
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"bench_guard: --baseline {rev!r}: git archive failed: {e.stderr.decode().strip()}")
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    pkg = into / name
    (into / PACKAGE).rename(pkg)
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        for pattern, repl in _renames(name):
            text = pattern.sub(repl, text)
        path.write_text(text)


class Side:
    """One engine on one CT: subjects with and without the labelmap, renders of one case."""

    def __init__(self, module, ct: Path, labels: Path | None):
        self.m = module
        self.subjects = {"plain": module.Subject.from_filepath(str(ct))}
        if labels is not None:
            self.subjects["labels"] = module.Subject.from_filepath(str(ct), str(labels))

    def use_volume(self, mu) -> None:
        for s in self.subjects.values():
            s._mu_cache = mu  # the cached μ volume (same values on both sides, see main)

    def renderer(self, size: int, map_: str, mode: str, method: str, n_samples: int):
        import torch

        m, subject = self.m, self.subjects[map_]
        drr = m.DRR.from_carm_intrinsics(SDD, FOV / size, FOV / size, 0.0, 0.0, size, size)
        rot0, trans0 = torch.zeros(1, 3), torch.tensor([[0.0, SOD, 0.0]])
        iso = subject.isocenter

        def render():
            if mode == "fwd":
                with torch.no_grad():
                    rt = m.make_rt_inv(rot0, trans0, "AP", iso)
                    return drr(subject, rt, n_samples=n_samples, method=method)
            rot, trans = rot0.clone().requires_grad_(True), trans0.clone().requires_grad_(True)
            img = drr(subject, m.make_rt_inv(rot, trans, "AP", iso), n_samples=n_samples, method=method)
            img.sum().backward()
            return img.detach()

        return render


def timed(fn) -> float:
    """Milliseconds of one call of ``fn``."""
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000.0


def run_case(a: Side, b: Side, vols, case: tuple, pairs: int, n_samples: int) -> dict:
    """ABBA pairs; the volumes swap sides every other pair (after a warm-up of each side on each)."""
    size, map_, mode, method = case
    fa, fb = (s.renderer(size, map_, mode, method, n_samples) for s in (a, b))
    img = {}
    for va, vb in (vols, vols[::-1]):
        a.use_volume(va)
        b.use_volume(vb)
        img["a"], img["b"] = fa(), fb()
    times = {"a": [], "b": []}
    for p in range(pairs):
        va, vb = vols if (p // 2) % 2 == 0 else vols[::-1]
        a.use_volume(va)
        b.use_volume(vb)
        order = (("a", fa), ("b", fb)) if p % 2 == 0 else (("b", fb), ("a", fa))
        for key, fn in order:
            times[key].append(timed(fn))
    ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
    per_pair = statistics.median(tb / ta for ta, tb in zip(times["a"], times["b"], strict=True))
    diff = float((img["a"] - img["b"]).abs().max() / img["a"].abs().max().clamp_min(1e-30))
    return {
        "size": size, "map": map_, "mode": mode, "method": method, "before_ms": ma, "after_ms": mb,
        "ratio": mb / ma, "pair_ratio": per_pair, "min_ratio": min(times["b"]) / min(times["a"]),
        "image_rel_diff": diff, "times": times,
    }  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", default="HEAD", help="git revision to compare against (default HEAD)")
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 512])
    p.add_argument("--maps", nargs="+", choices=("plain", "labels"), default=["plain", "labels"])
    p.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--pairs", type=int, default=8, help="ABBA pairs per case (default 8)")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--threshold", type=float, default=1.05, help="flag ratios above this (default 1.05)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with ct.nii.gz, labels.nii.gz")
    p.add_argument("--json", type=Path, default=None, help="write all timings here")
    args = p.parse_args(argv)
    if args.pairs < 2:
        p.error(f"--pairs: at least 2 (one each way), got {args.pairs}")
    if any(s < 1 for s in args.sizes):
        p.error(f"--sizes: must be positive, got {args.sizes}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ct, labels = args.data / "ct.nii.gz", args.data / "labels.nii.gz"
    need = [ct] + ([labels] if "labels" in args.maps else [])
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"bench_guard: reference data missing: {', '.join(missing)} (pass --data DIR)")
    cases = [
        (s, m, mo, me) for s in args.sizes for m in args.maps for mo in args.modes for me in args.methods
    ]

    with tempfile.TemporaryDirectory(prefix="bench_guard_") as tmp:
        extract_baseline(args.baseline, Path(tmp))
        sys.path.insert(0, tmp)
        old = importlib.import_module(BASELINE)
        new = importlib.import_module("nanodrr_engine")
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline], capture_output=True, text=True
        ).stdout.strip()
        print(
            f"bench_guard: A = {args.baseline} ({rev}), B = {Path(new.__file__).parent}; "
            f"{len(cases)} cases × {args.pairs} ABBA pairs; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        with_labels = labels if "labels" in args.maps else None
        a, b = Side(old, ct, with_labels), Side(new, ct, with_labels)
        mu = b.subjects["plain"].image
        vols = (mu, mu.clone())
        rows = []
        t0 = time.perf_counter()
        head = f"{'case':38s} {'before ms':>10s} {'after ms':>10s} {'ratio':>7s} {'pairs':>7s} {'min':>7s} {'img diff':>9s}"
        print(head, flush=True)
        for case in cases:
            r = run_case(a, b, vols, case, args.pairs, args.n_samples)
            rows.append(r)
            flag = "  <-- over" if max(r["ratio"], r["pair_ratio"]) > args.threshold else ""
            name = f"{case[0]}² {case[1]} {case[2]} {case[3]}"
            print(
                f"{name:38s} {r['before_ms']:10.1f} {r['after_ms']:10.1f} {r['ratio']:7.3f} "
                f"{r['pair_ratio']:7.3f} {r['min_ratio']:7.3f} {r['image_rel_diff']:9.1e}{flag}",
                flush=True,
            )
    print(f"bench_guard: {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    if args.json:
        info = {"baseline": args.baseline, "baseline_rev": rev, "load_avg_end": os.getloadavg()}
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Render benchmark: our backends against nanodrr 0.1.7 and plastimatch on the reference chest CT.

Cases: detector size × {plain, labelmap} × {forward, forward+backward w.r.t. the pose} × implementation.
Each case runs in its own process (``_bench_case.py``) so that peak memory is per case; the table
gives the warm-up (JIT) time, the median time per render, renders per second, peak extra memory and
the accuracy of every implementation against our ``torch`` reference backend on the same case, so
speed is compared at matching accuracy. See README.md in this folder.

Examples::

    python Testing/benchmark/bench_render.py --quick
    python Testing/benchmark/bench_render.py --repeats 3 --json bench_cpu.json
    python Testing/benchmark/bench_render.py --device cuda --compile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "chest_ct"
REFERENCE = "ours-torch"
PEERS = ("nanodrr", "plastimatch")
MODES = {"fwd": "forward", "fwdbwd": "fwd+bwd"}

#: nanodrr's torch path materialises every sample (points, values, labels, grid_sample scratch).
#: Bytes per (ray × sample), measured with this script at 200×200 (see README); used to warn and to
#: skip cases that cannot fit in the available memory.
NANODRR_TORCH_BYTES_PER_SAMPLE = {("plain", "fwd"): 16, ("labels", "fwd"): 28,
                                  ("plain", "fwdbwd"): 36, ("labels", "fwdbwd"): 42}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Case list
# --------------------------------------------------------------------------------------------------


def implementations(device: str, compile_: bool) -> tuple[list[str], dict[str, str]]:
    """(implementation names in run order, {name: reason} for those that cannot run here)."""
    import nanodrr_engine

    unavailable: dict[str, str] = {}
    ours = [f"ours-{b}" for b in nanodrr_engine.available_backends(device)]
    ours.sort(key=lambda n: n != REFERENCE)  # the reference first: every other case is compared to it
    if "ours-numba" in ours:
        ours.append("ours-joseph")  # Joseph's sampling: its fused kernel is CPU
    if device == "cuda":
        peers = ["nanodrr-triton", "nanodrr-torch"]
        unavailable["plastimatch"] = "CPU only here: run with --device cpu"
    else:
        peers = ["nanodrr-torch"]
        if shutil.which("plastimatch"):
            peers.append("plastimatch")
        else:
            unavailable["plastimatch"] = "not installed (Testing/benchmark/setup_bench.sh)"
    try:
        import nanodrr  # noqa: F401
    except ImportError as exc:
        for name in [p for p in peers if p.startswith("nanodrr")]:
            unavailable[name] = f"nanodrr not importable ({exc})"
        peers = [p for p in peers if not p.startswith("nanodrr")]
    impls = ours + peers
    if compile_:
        impls += [f"{n}+compile" for n in ours + peers if not n.startswith("plastimatch")]
    return impls, unavailable


def select(impls: list[str], patterns: list[str] | None) -> list[str]:
    """Implementations whose name contains any of ``patterns`` (all when None)."""
    if not patterns:
        return impls
    return [n for n in impls if any(p in n for p in patterns)]


def applicable(impl: str, labelmap: bool, mode: str) -> str | None:
    """Why ``impl`` cannot run this case, or None."""
    if impl.startswith("plastimatch") and (labelmap or mode != "fwd"):
        return "plain forward only"
    return None


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def nanodrr_torch_estimate(size: int, labelmap: bool, mode: str, n_samples: int) -> int:
    per = NANODRR_TORCH_BYTES_PER_SAMPLE[("labels" if labelmap else "plain", mode)]
    return size * size * n_samples * per


# --------------------------------------------------------------------------------------------------
# Running one case
# --------------------------------------------------------------------------------------------------


def run_case(spec: dict, max_seconds: float) -> dict:
    """Run ``_bench_case.py`` in its own process group; kill the group after the time limit."""
    cmd = [sys.executable, str(HERE / "_bench_case.py"), json.dumps(spec)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=max_seconds + 30)  # +30 s: process start and CT loading
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "error": f"timeout after {max_seconds:.0f} s (--max-seconds)"}
    for line in reversed(out.splitlines()):
        if line.startswith("BENCH_RESULT "):
            result = json.loads(line[len("BENCH_RESULT ") :])
            if not result.get("ok"):
                result["log"] = out[-3000:]
            return result
    tail = out.strip().splitlines()[-1:] or [""]
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"ok": False, "error": f"crashed ({how}): {tail[0][:160]}", "log": out[-3000:]}


def accuracy(path: Path, ref_path: Path | None) -> dict:
    """Max and L2 relative error of the image (and max relative error of the pose gradient) vs the reference."""
    if ref_path is None or not ref_path.exists() or not path.exists():
        return {}
    with np.load(path) as got, np.load(ref_path) as ref:
        a, r = got["image"].astype(np.float64), ref["image"].astype(np.float64)
        if a.shape != r.shape:
            return {"err_note": f"shape {list(a.shape)} vs reference {list(r.shape)}"}
        scale = np.abs(r).max() or 1.0
        res = {
            "err_max": float(np.abs(a - r).max() / scale),
            "err_l2": float(np.linalg.norm(a - r) / (np.linalg.norm(r) or 1.0)),
        }
        if "grad" in got.files and "grad" in ref.files:
            g, gr = got["grad"], ref["grad"]
            res["grad_err"] = float(np.abs(g - gr).max() / (np.abs(gr).max() or 1.0))
    return res


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _num(x, fmt: str, missing: str = "—") -> str:
    return missing if x is None else format(x, fmt)


def _err(x) -> str:
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:.1e}"


def _mb(row: dict) -> str:
    b = row.get("peak_extra_bytes")
    if b is None:
        return "—"
    star = "*" if row.get("mem_kind") == "proc-delta" else ""
    mb = b / 2**20
    return f"{mb:,.0f}{star}" if mb >= 10 else f"{mb:.1f}{star}"


def print_table(rows: list[dict]) -> None:
    head = ["size", "map", "mode", "impl", "warm-up s", "median ms", "renders/s", "peak MB",
            "err max", "err L2", "grad err", "n", "note"]  # fmt: skip
    lines = []
    for r in rows:
        lines.append([
            f"{r['size']}²", r["map"], MODES[r["mode"]], r["impl"],
            _num(r.get("warmup_s"), ".2f"), _num(r.get("median_ms"), ",.1f"),
            _num(1000 / r["median_ms"] if r.get("median_ms") else None, ".2f"), _mb(r),
            _err(r.get("err_max")), _err(r.get("err_l2")), _err(r.get("grad_err")),
            str(len(r.get("times_ms", []))) if r.get("ok") else "", r.get("note", ""),
        ])  # fmt: skip
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)] if lines else []
    right = {4, 5, 6, 7, 8, 9, 10, 11}

    def fmt(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(fmt(head))
    print("  ".join("-" * w for w in widths[:-1]) + "  ----")
    prev = None
    for r, line in zip(rows, lines, strict=True):
        key = (r["size"], r["map"], r["mode"])
        if prev is not None and key != prev:
            print()
        prev = key
        print(fmt(line))


def print_ratios(rows: list[dict]) -> None:
    """Each of our implementations against each peer on the same case: speed-up and memory ratio."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["map"], r["mode"]), []).append(r)
    out = []
    for (size, map_, mode), rs in groups.items():
        timed = [r for r in rs if r.get("median_ms")]
        ours = [r for r in timed if r["impl"].startswith("ours")]
        peers = [r for r in timed if r["impl"].startswith(PEERS)]
        for o in ours:
            for p in peers:
                speed = p["median_ms"] / o["median_ms"]
                mem = None
                if o.get("peak_extra_bytes") and p.get("peak_extra_bytes") is not None:
                    mem = p["peak_extra_bytes"] / o["peak_extra_bytes"]
                out.append((f"{size}²", map_, MODES[mode], o["impl"], p["impl"], speed, mem))
    if not out:
        print("(no case has both one of ours and a peer timed)")
        return
    head = ("size", "map", "mode", "ours", "peer", "speed-up", "memory ratio")
    cells = [(a, b, c, d, e, f"{s:.2f}×", "—" if m is None else f"{m:.2g}×") for a, b, c, d, e, s, m in out]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print(
            "  ".join(
                x.rjust(w) if i >= 5 else x.ljust(w) for i, (x, w) in enumerate(zip(c, widths, strict=True))
            )
        )
    print("speed-up = peer median time / ours (>1: ours faster); memory ratio = peer peak extra / ours.")


def machine_info(device: str) -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_start": list(os.getloadavg()),
        "mem_available_gb": round(mem_available() / 2**30, 1),
    }
    for mod in ("nanodrr_engine", "numba", "nanodrr", "triton"):
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception:
            info[mod] = None
    if shutil.which("plastimatch"):
        v = subprocess.run(["plastimatch", "--version"], capture_output=True, text=True).stdout.strip()
        info["plastimatch"] = v.split()[-1] if v else "?"
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


# --------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="detector sizes (default: 200 512)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--repeats", type=int, default=None, help="timed renders per case (default 5)")
    p.add_argument("--quick", action="store_true", help="smoke run: 200×200, forward only, 1 repeat")
    p.add_argument(
        "--impl", nargs="+", default=None, help="only implementations whose name contains one of these"
    )
    p.add_argument("--maps", nargs="+", choices=("plain", "labels"), default=["plain", "labels"])
    p.add_argument(
        "--modes", nargs="+", choices=tuple(MODES), default=None, help="fwd, fwdbwd (default both)"
    )
    p.add_argument("--n-samples", type=int, default=500, help="samples per ray (default 500)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time limit per case (default 300)")
    p.add_argument(
        "--compile", action="store_true", help="also torch.compile'd variants (meant for --device cuda)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder with ct.nii.gz, labels.nii.gz (default {DEFAULT_DATA})",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results (and machine info) here")
    p.add_argument("--list", action="store_true", help="print the cases and exit")
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = [200] if args.quick else [200, 512]
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.modes is None:
        args.modes = ["fwd"] if args.quick else ["fwd", "fwdbwd"]
    if args.repeats < 1:
        p.error(f"--repeats: must be >= 1, got {args.repeats}")
    if any(s < 1 for s in args.sizes):
        p.error(f"--sizes: must be positive, got {args.sizes}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    ct, labels = args.data / "ct.nii.gz", args.data / "labels.nii.gz"
    missing = [p for p in (ct, labels if "labels" in args.maps else None) if p is not None and not p.exists()]
    if missing:
        sys.exit(
            f"bench_render: reference data missing: {', '.join(map(str, missing))}\n"
            f"  The chest CT is expected in {DEFAULT_DATA} (or pass --data DIR with ct.nii.gz and labels.nii.gz)."
        )
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench_render: --device cuda but torch sees no CUDA device")

    impls, unavailable = implementations(args.device, args.compile)
    chosen = select(impls, args.impl)
    if not chosen:
        sys.exit(f"bench_render: --impl {args.impl} matches none of {impls}")
    for name, why in unavailable.items():
        if not args.impl or any(p in name for p in args.impl):
            print(f"note: {name} skipped: {why}")

    cases = [
        (size, map_, mode, impl)
        for size in args.sizes
        for map_ in args.maps
        for mode in args.modes
        for impl in chosen
        if applicable(impl, map_ == "labels", mode) is None
    ]
    if any(n.startswith("plastimatch") for n in chosen):
        print("note: plastimatch renders plain forward DRRs only (no labelmaps, no gradients)")
    if args.list:
        for c in cases:
            print(f"{c[0]}²  {c[1]:6s}  {MODES[c[2]]:8s}  {c[3]}")
        return 0

    info = machine_info(args.device)
    print(
        f"bench_render: {len(cases)} cases on {args.device} — {info['cpu']}, {info['cores']} cores, "
        f"torch {info['torch']} ({info['torch_threads']} threads), load average {info['load_avg_start'][0]:.1f}, "
        f"{info['mem_available_gb']} GB available; n_samples={args.n_samples}, repeats={args.repeats}, "
        f"max {args.max_seconds:.0f} s per case",
        flush=True,
    )
    if (info["load_avg_start"][0] or 0) > 0.5 * (info["cores"] or 1):
        print(
            "warning: the machine is busy (load average above half its cores): timings will be noisy",
            flush=True,
        )

    t_all = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmpdir:
        tmp = Path(tmpdir)
        ref_paths: dict[tuple, Path] = {}
        for i, (size, map_, mode, impl) in enumerate(cases, 1):
            key = (size, map_, mode)
            row = {"size": size, "map": map_, "mode": mode, "impl": impl}
            rows.append(row)
            if key not in ref_paths and REFERENCE not in chosen:
                ref_paths[key] = _reference(args, ct, labels, size, map_, mode, tmp)
            if impl.startswith("nanodrr-torch"):
                need = nanodrr_torch_estimate(size, map_ == "labels", mode, args.n_samples)
                avail = mem_available()
                if args.device == "cpu" and avail and need > 0.8 * avail:
                    row.update(
                        ok=False, note=f"skipped: needs ~{need / 2**30:.0f} GB, {avail / 2**30:.0f} GB free"
                    )
                    print(
                        f"[{i}/{len(cases)}] {size}² {map_} {MODES[mode]} {impl}: {row['note']}", flush=True
                    )
                    continue
                if need > 2 * 2**30:
                    print(f"warning: {impl} at {size}² {map_} {MODES[mode]} materialises every sample "
                          f"(~{need / 2**30:.0f} GB)", flush=True)  # fmt: skip
            save = tmp / f"{size}_{map_}_{mode}_{impl}.npz"
            spec = {
                "impl": impl, "size": size, "labelmap": map_ == "labels", "mode": mode,
                "device": args.device, "repeats": args.repeats, "n_samples": args.n_samples,
                "max_seconds": args.max_seconds, "ct": str(ct), "labels": str(labels),
                "compile": impl.endswith("+compile"), "save": str(save),
            }  # fmt: skip
            t0 = time.perf_counter()
            result = run_case(spec, args.max_seconds)
            row.update(result)
            row["case_s"] = time.perf_counter() - t0
            if impl == REFERENCE and result.get("ok"):
                ref_paths[key] = save
            ref = ref_paths.get(key)
            if result.get("ok"):
                row.update(accuracy(save, ref))
                if not result["times_ms"]:
                    row["note"] = "warm-up only: no timed render fits --max-seconds"
                elif len(result["times_ms"]) < args.repeats:
                    row["note"] = f"{len(result['times_ms'])}/{args.repeats} repeats (time limit)"
                if impl.startswith("plastimatch"):
                    row["note"] = "exact Siddon (nearest voxel); time from its log" + (
                        "; " + row["note"] if row.get("note") else ""
                    )
                if impl != REFERENCE:
                    save.unlink(missing_ok=True)
            else:
                row["note"] = row.get("error", "failed")
            status = (
                f"{row['median_ms']:,.1f} ms (warm-up {row['warmup_s']:.1f} s)"
                if row.get("median_ms")
                else row.get("note", "")
            )
            print(
                f"[{i}/{len(cases)}] {size}² {map_} {MODES[mode]} {impl}: {status}  [{row['case_s']:.0f} s]",
                flush=True,
            )
            if not result.get("ok") and result.get("log"):
                print("    " + "\n    ".join(result["log"].strip().splitlines()[-6:]), flush=True)
    total_s = time.perf_counter() - t_all

    print()
    print_table(rows)
    print()
    print("peak MB: extra resident memory during the timed renders (over the loaded CT); "
          "* = plastimatch: its process peak minus that of a 1-pixel render of the same view.")  # fmt: skip
    print(f"err max / err L2: max|x − ref| / max|ref| and ‖x − ref‖₂ / ‖ref‖₂ vs {REFERENCE} on the same case "
          "(plastimatch: vs the plain forward render); grad err: same max ratio for d(sum)/d(rotation, translation).")  # fmt: skip
    print("ours-numba places samples in float64 (the reference: float32 poses, float32 geometry): with labels a sample "
          "on a nearest-label tie can land in another channel (err max up to one sample's share, ~1e-2), and the "
          "pose gradient at this axis-aligned view differs by ~2 % (kinks of the trilinear interpolant).")  # fmt: skip
    print("ours-joseph is another sampling rule (one sample per voxel plane), compared with the ray march: images "
          "differ by ~1e-3 of the maximum (with labels, more: each sample takes its plane's nearest label), and pose "
          "gradients at this axis-aligned view by a few %.")  # fmt: skip
    print()
    print_ratios(rows)
    print()
    print(f"total time {total_s / 60:.1f} min; load average now {os.getloadavg()[0]:.1f}")

    if args.json:
        for r in rows:
            r.pop("log", None)
        payload = {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "total_s": total_s,
            "cases": rows,
        }
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.json}")
    return 0


def _reference(args, ct: Path, labels: Path, size: int, map_: str, mode: str, tmp: Path) -> Path | None:
    """Render the accuracy reference (ours-torch) untimed when the --impl filter leaves it out."""
    save = tmp / f"{size}_{map_}_{mode}_reference.npz"
    spec = {
        "impl": REFERENCE, "size": size, "labelmap": map_ == "labels", "mode": mode, "device": args.device,
        "repeats": 0, "n_samples": args.n_samples, "max_seconds": args.max_seconds, "ct": str(ct),
        "labels": str(labels), "compile": False, "save": str(save),
    }  # fmt: skip
    result = run_case(spec, args.max_seconds)
    return save if result.get("ok") else None


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m nanodrr_engine.dataset generate …`` (also ``nanodrr-dataset``) and ``info``.

Errors are printed as one line naming the option (exit status 2); Ctrl-C exits with 130 and leaves
a resumable store.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .errors import DatasetError, DiskFullError
from .spec import DETECTOR_PRESETS, METHODS, OUTPUTS, Augment, Detector, PoseRanges

_RANGES = {"primary": (-30.0, 30.0), "secondary": (-20.0, 20.0), "sod": (800.0, 900.0), "roll": (0.0, 0.0)}


def _range(flag: str):
    def parse(values):
        if len(values) not in (1, 2):
            raise argparse.ArgumentTypeError(f"{flag}: give LO HI (or one value)")
        return (values[0], values[-1])

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanodrr-dataset", description="DRR training datasets (Zarr stores).")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="render a dataset (resumes an existing one)")
    src = g.add_argument_group("inputs")
    src.add_argument("--ct", action="append", default=[], help="CT file or DICOM folder (repeatable)")
    src.add_argument("--labels", action="append", default=[], help="labelmap of the CT at the same position")
    src.add_argument("--manifest", help="CSV (columns ct, labels) or JSON list of {ct, labels}")
    src.add_argument("--max-label", type=int, help="channels = max label + 1 (default: largest present)")
    out = g.add_argument_group("output")
    out.add_argument("--out", required=True, help="the dataset folder (a Zarr store)")
    out.add_argument("--n", type=int, required=True, help="number of images")
    out.add_argument("--seed", type=int, default=0)
    out.add_argument(
        "--chunk", type=int, default=64, help="images per chunk (unit of work and of resumption)"
    )
    out.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    out.add_argument("--overwrite", action="store_true", help="delete an existing dataset at --out first")
    det = g.add_argument_group("detector")
    det.add_argument("--preset", choices=sorted(DETECTOR_PRESETS), default="reference")
    det.add_argument(
        "--size", type=int, help="square detector of SIZE pixels over the preset's field of view"
    )
    det.add_argument("--height", type=int)
    det.add_argument("--width", type=int)
    det.add_argument("--spacing", type=float, help="pixel spacing in mm (both axes)")
    det.add_argument("--sdd", type=float, help="source-to-detector distance in mm")
    pose = g.add_argument_group("poses (uniform ranges LO HI; one value fixes it)")
    for name, unit in (
        ("primary", "deg, + = LAO"),
        ("secondary", "deg, + = CRAN"),
        ("sod", "mm"),
        ("roll", "deg"),
    ):
        pose.add_argument(
            f"--{name}", nargs="+", type=float, metavar="X", help=f"{unit}; default {_RANGES[name]}"
        )
    pose.add_argument("--jitter", type=float, default=10.0, help="isocenter jitter, ± mm per axis")
    pose.add_argument("--poses", help="pose table (CSV/JSON: primary, secondary, sod[, roll, dx, dy, dz])")
    aug = g.add_argument_group("augmentations")
    aug.add_argument(
        "--mu-bone", nargs="+", type=float, metavar="X", help="bone contrast: mu_bone range (1/mm)"
    )
    aug.add_argument("--photons", type=float, help="Poisson noise at this many photons per pixel")
    aug.add_argument("--blur", nargs="+", type=float, metavar="X", help="Gaussian blur sigma range (pixels)")
    aug.add_argument("--output", choices=OUTPUTS, default="attenuation")
    ren = g.add_argument_group("rendering")
    ren.add_argument("--method", choices=METHODS, default="joseph")
    ren.add_argument("--engine", choices=("local", "ray"), default="local")
    ren.add_argument(
        "--workers", type=int, default=1, help="worker processes (local) or concurrent tasks (ray)"
    )
    ren.add_argument("--threads-per-worker", type=int, help="default: the cores shared out")
    ren.add_argument("--device", default="cpu", help="local engine: cpu or cuda")
    ren.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    ren.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="ray: GPUs reserved per task (renders on CUDA)"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="describe a dataset")
    info.add_argument("path")
    return p


def _ranges(args) -> dict:
    out = {}
    for name in ("primary", "secondary", "sod", "roll"):
        values = getattr(args, name)
        out[name] = _RANGES[name] if values is None else _range(f"--{name}")(values)
    return out


def _generate(args) -> int:
    from .generate import generate
    from .sources import read_manifest, read_poses

    if args.manifest and args.ct:
        raise DatasetError("--manifest and --ct: give one of them")
    cts = read_manifest(args.manifest) if args.manifest else list(args.ct)
    if not cts:
        raise DatasetError("--ct: give at least one CT (or --manifest)")
    labels = None
    if args.labels:
        if args.manifest:
            raise DatasetError("--labels: the manifest lists the labelmaps")
        labels = list(args.labels)
    size_given = args.size is not None
    if size_given and (args.height or args.width):
        raise DatasetError("--size and --height/--width: give one of them")
    overrides = {"height": args.height, "width": args.width, "sdd": args.sdd}
    if args.spacing is not None:
        overrides.update(delx=args.spacing, dely=args.spacing)
    detector = Detector.preset(args.preset, args.size, **overrides)
    poses = read_poses(args.poses) if args.poses else PoseRanges(jitter=args.jitter, **_ranges(args))
    augment = Augment(
        mu_bone=None if args.mu_bone is None else _range("--mu-bone")(args.mu_bone),
        photons=args.photons,
        blur=None if args.blur is None else _range("--blur")(args.blur),
        output=args.output,
    )
    from .spec import DatasetSpec

    spec = DatasetSpec(
        n=args.n, seed=args.seed, chunk=args.chunk, detector=detector, poses=poses, augment=augment,
        dtype=args.dtype, method=args.method, max_label=args.max_label,
    )  # fmt: skip
    summary = generate(
        cts, args.out, labels=labels, spec=spec, engine=args.engine, workers=args.workers,
        threads=args.threads_per_worker, device=args.device, ray_address=args.ray_address,
        gpus_per_worker=args.gpus_per_worker, overwrite=args.overwrite, progress=not args.quiet,
        command=shlex.join(["nanodrr-dataset", *sys.argv[1:]]),
    )  # fmt: skip
    print(summary.describe())
    return 0


def _info(args) -> int:
    from . import store

    group = store.open_store(args.path, "r")
    rec = store.record_of(group)
    done = store.done_chunks(group)
    images = group["images"]
    print(
        f"{args.path}: {rec['n']:,} samples, images {list(images.shape)} {images.dtype}, seed {rec['seed']}"
    )
    print(
        f"chunks done: {int(done.sum())} of {len(done)}; engine {rec['engine_version']}; {store.disk_bytes(args.path):,} bytes"
    )
    for c in rec["cts"]:
        print(f"  ct {c.get('ct') or c.get('name')}  sha256 {c['sha256']}")
    print(json.dumps(rec["spec"], indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _generate(args) if args.command == "generate" else _info(args)
    except KeyboardInterrupt:
        return 130
    except DiskFullError as e:
        print(f"error: {e.strerror}", file=sys.stderr)
        return 3
    except (ValueError, TypeError) as e:  # DatasetError, WorkBudgetError and checks naming the option
        print(f"error: {e}", file=sys.stderr)
        return 2


__all__ = ["main", "parser"]

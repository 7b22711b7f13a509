#!/usr/bin/env python
"""NanoDRR demo: a Slicer scene with a CT, a C-arm and DRRs, built and saved without the Slicer GUI.

Builds an MRML scene with the analytic chest phantom (or a given CT and optional labelmap /
.seg.nrrd segmentation), creates the C-arm, renders a frontal (AP, clinical angles 0/0) and a lateral
(LAO 90) DRR and one DRR per segment, then saves a scene Slicer opens (``scene/nanodrr_demo.mrml`` with
.nrrd / .seg.nrrd files) and PNG previews in the conventional display orientation (seen from the
detector, head up). Prints the time of each render.

    python scripts/nanodrr_demo.py                                   # phantom, out/demo
    python scripts/nanodrr_demo.py --ct ../shared/data/chest_ct/ct.nii.gz \\
        --seg ../shared/data/chest_ct/labels.nii.gz --out out/chest --size 256

Segment names of a labelmap come from a ``structures.csv`` next to it (columns id, structure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "NanoDRRSlicer"))

import slicer  # noqa: E402
from NanoDRRLib import (  # noqa: E402
    CArmGeometry,
    NanoDRRLogic,
    conventionalDisplayArray,
    loadSegmentation,
    loadVolume,
    saveScene,
)

FIELD_OF_VIEW_MM = 400.0


def parseArgs(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", type=Path, help="CT volume (NIfTI, NRRD, ...); default: the chest phantom")
    p.add_argument("--seg", type=Path, help="labelmap or .seg.nrrd segmentation of the CT")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--size", type=int, default=256, help="detector pixels per side (default 256)")
    p.add_argument("--n-samples", type=int, default=500, help="samples per ray (default 500)")
    p.add_argument("--sdd", type=float, default=1020.0, help="source-to-detector distance, mm")
    p.add_argument("--sod", type=float, default=850.0, help="source-to-isocenter distance, mm")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size, mm (default 2)")
    p.add_argument("--max-segments", type=int, default=12, help="segment DRRs shown in the PNG grid")
    args = p.parse_args(argv)
    if args.seg is not None and args.ct is None:
        p.error("--seg needs --ct (the segmentation is resampled onto the CT's grid)")
    if args.size < 1 or args.n_samples < 1:
        p.error("--size and --n-samples must be >= 1")
    return args


def addPhantom(scene, spacing: float):
    """The analytic chest phantom as a CT volume node and a segmentation (one segment per structure)."""
    from nanodrr_engine.data.phantom import make_chest_phantom

    vol, labels, voxelToWorld, phantom = make_chest_phantom(spacing=(spacing, spacing, spacing * 1.25))
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Chest phantom")
    slicer.util.updateVolumeFromArray(ct, vol)
    ct.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(voxelToWorld))
    ct.CreateDefaultDisplayNodes()

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labelmap, labels)
    labelmap.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(voxelToWorld))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Chest phantom structures")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(ct)
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    scene.RemoveNode(labelmap)
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        segment.SetName(phantom.structures.get(segment.GetLabelValue(), segment.GetName()))
    seg.CreateDefaultDisplayNodes()
    return ct, seg


def report(label: str, logic: NanoDRRLogic, geometry: CArmGeometry) -> None:
    t = logic.lastTimings
    print(
        f"{label:<28s} {geometry.width}x{geometry.height}: {t['total']:7.3f} s "
        f"(convert {t['convert']:.3f} s, engine {t['render']:.3f} s in {logic.lastRenderPasses} pass(es), "
        f"node update {t['output']:.3f} s)"
    )


def savePreviews(
    out: Path, views: dict, segmentImages: list[tuple[str, np.ndarray]], maxSegments: int
) -> list[Path]:
    """PNG previews: the views side by side, the frontal view with segment outlines, a segment grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from nanodrr_engine.plot import plot_drr

    paths = []
    names = list(views)
    fig, axs = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4.8), squeeze=False)
    for ax, name in zip(axs[0], names, strict=True):
        plot_drr(torch.from_numpy(views[name])[None, None], axs=[ax], ticks=False)
        ax.set_title(name)
    fig.suptitle("NanoDRR: ∫μ ds, seen from the detector (head up)")
    fig.tight_layout()
    paths.append(out / "drr_views.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if segmentImages:
        largest = sorted(segmentImages, key=lambda item: -float(item[1].sum()))[:maxSegments]
        frontal = views[names[0]]
        # outline the largest structures, leaving out envelopes (e.g. the body) that cover most of the image
        top = [(n, img) for n, img in largest if (img > 0.05 * img.max()).mean() < 0.5][:7]
        fig, ax = plt.subplots(figsize=(6, 6))
        # channel 0 = background; channel n = where segment n's own DRR is non-negligible
        masks = [np.zeros_like(frontal, dtype=bool)] + [img > 0.05 * img.max() for _, img in top]
        mask = torch.from_numpy(np.stack(masks))[None]
        plot_drr(torch.from_numpy(frontal)[None, None], mask=mask, axs=[ax], ticks=False, edge_width=1)
        ax.set_title(f"{names[0]} with outlines: " + ", ".join(name for name, _ in top), fontsize=8)
        fig.tight_layout()
        paths.append(out / "drr_segment_outlines.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

        cols = min(4, len(largest))
        rows = -(-len(largest) // cols)
        fig, axs = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
        for ax in axs.ravel():
            ax.axis("off")
        for ax, (name, img) in zip(axs.ravel(), largest, strict=False):
            plot_drr(torch.from_numpy(img)[None, None], axs=[ax], ticks=False)
            ax.set_title(name, fontsize=9)
        fig.suptitle(f"Per-segment DRRs ({names[0]})")
        fig.tight_layout()
        paths.append(out / "drr_segments.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    args = parseArgs(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    scene = slicer.vtkMRMLScene()
    logic = NanoDRRLogic()

    t0 = time.perf_counter()
    if args.ct is None:
        ct, seg = addPhantom(scene, args.spacing)
    else:
        ct = loadVolume(scene, args.ct)
        ct.CreateDefaultDisplayNodes()
        seg = loadSegmentation(scene, args.seg, referenceVolumeNode=ct) if args.seg is not None else None
    dims = ct.GetImageData().GetDimensions()
    nseg = seg.GetSegmentation().GetNumberOfSegments() if seg is not None else 0
    print(
        f"scene: CT '{ct.GetName()}' {dims[0]}x{dims[1]}x{dims[2]}, {nseg} segments ({time.perf_counter() - t0:.2f} s)"
    )

    spacing = FIELD_OF_VIEW_MM / args.size
    geometry = CArmGeometry(sdd=args.sdd, height=args.size, width=args.size, delx=spacing, dely=spacing)
    carm = logic.createCArmTransform(ct, sod=args.sod, name="C-arm")
    logic.updateGeometryModel(carm, geometry)
    common = {"nSamples": args.n_samples, "device": args.device}

    views = {}
    for label, primary in (("AP (LAO 0, CRAN 0)", 0.0), ("Lateral (LAO 90)", 90.0)):
        logic.setCArmAngles(carm, ct, primary=primary, secondary=0.0, sod=args.sod)
        node = logic.render(ct, carm, geometry, name=f"{ct.GetName()} DRR {label.split()[0]}", **common)
        first = " (first render: includes one-time kernel compilation)" if not views else ""
        report(f"render {label}", logic, geometry)
        if first:
            print(f"{'':28s}{first.strip()}")
        views[label] = conventionalDisplayArray(node)
    node = logic.render(ct, carm, geometry, outputNode=node, **common)
    report("re-render (cached volume)", logic, geometry)

    segmentImages = []
    if seg is not None:
        logic.setCArmAngles(carm, ct, primary=0.0, secondary=0.0, sod=args.sod)
        parts = logic.renderSegments(ct, carm, geometry, seg, **common)
        report(f"render {len(parts)} segments", logic, geometry)
        segmentation = seg.GetSegmentation()
        segmentImages = [
            (segmentation.GetSegment(sid).GetName(), conventionalDisplayArray(n)) for sid, n in parts.items()
        ]
        logic.setCArmAngles(carm, ct, primary=90.0, secondary=0.0, sod=args.sod)

    t = time.perf_counter()
    mrml = saveScene(scene, out / "scene", "nanodrr_demo")
    print(f"saved scene {mrml} ({time.perf_counter() - t:.2f} s)")
    for path in savePreviews(out, views, segmentImages, args.max_segments):
        print(f"saved preview {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

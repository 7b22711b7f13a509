"""Draw the NanoDRR icon (128x128 PNG) and the extension's example image with matplotlib.

The icon shows a C-arm: an X-ray source at the bottom, a fan beam through a patient cross-section,
and the detector at the top with a radiograph-like intensity profile. The example image (the extension's
screenshot URL) shows real engine renders of the analytic chest phantom at four clinical C-arm angles.
Run from the repository root:

    python scripts/make_icon.py [icon.png]
    python scripts/make_icon.py --example [example.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Arc, Circle, Ellipse, FancyBboxPatch, Polygon, Rectangle

SIZE_PX = 128
RESOURCES = Path(__file__).resolve().parents[1] / "NanoDRRSlicer" / "Resources"
DEFAULT_OUTPUT = RESOURCES / "Icons" / "NanoDRR.png"
DEFAULT_EXAMPLE = RESOURCES / "Screenshots" / "NanoDRR_example.png"

#: (title, primary, secondary) of the example views (DICOM angles in degrees).
EXAMPLE_VIEWS = [("AP", 0.0, 0.0), ("LAO 30 CAUD 25", 30.0, -25.0), ("LAO 90 (lateral)", 90.0, 0.0),
                 ("RAO 30 CRAN 20", -30.0, 20.0)]  # fmt: skip


def draw_icon(output: Path) -> Path:
    """Render the icon to `output` and return the path."""
    dpi = 100
    fig = plt.figure(figsize=(SIZE_PX / dpi, SIZE_PX / dpi), dpi=dpi)
    fig.patch.set_alpha(0.0)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 128)
    ax.set_ylim(0, 128)
    ax.set_aspect("equal")
    ax.axis("off")

    # Rounded dark tile.
    ax.add_patch(
        FancyBboxPatch(
            (4, 4), 120, 120, boxstyle="round,pad=0,rounding_size=18", facecolor="#1d2a3a", edgecolor="none"
        )
    )

    # The "C" of the C-arm: the detector sits on its upper end, the source on its lower end.
    ax.add_patch(Arc((64, 62), 92, 92, theta1=85, theta2=275, lw=7, color="#9fb3c8", capstyle="round"))

    # Fan beam from the source (bottom) to the detector (top).
    source = (64, 18)
    det_y, det_half = 104, 34
    ax.add_patch(
        Polygon(
            [source, (64 - det_half, det_y), (64 + det_half, det_y)],
            closed=True,
            facecolor="#ffd166",
            alpha=0.35,
            edgecolor="none",
        )
    )

    # Patient cross-section: body ellipse, lungs, spine.
    ax.add_patch(Ellipse((64, 60), 50, 30, facecolor="#e8d5c0", edgecolor="#5a4634", lw=1.2))
    ax.add_patch(Ellipse((53, 61), 16, 18, facecolor="#2b2b2b", alpha=0.55, edgecolor="none"))
    ax.add_patch(Ellipse((75, 61), 16, 18, facecolor="#2b2b2b", alpha=0.55, edgecolor="none"))
    ax.add_patch(Circle((64, 50), 4.5, facecolor="#fbfbfb", edgecolor="#5a4634", lw=0.8))

    # Detector with a radiograph-like intensity strip: dark lungs, bright spine (attenuation display).
    u = np.linspace(-1.0, 1.0, 64)
    lungs = np.exp(-(((u + 0.35) / 0.22) ** 2)) + np.exp(-(((u - 0.35) / 0.22) ** 2))
    strip = np.clip(0.55 - 0.4 * lungs + 0.45 * np.exp(-((u / 0.08) ** 2)), 0.0, 1.0)[None, :]
    ax.imshow(
        strip,
        cmap="gray",
        vmin=0,
        vmax=1,
        extent=(64 - det_half, 64 + det_half, det_y, det_y + 9),
        interpolation="bilinear",
        zorder=3,
    )
    ax.add_patch(
        Rectangle((64 - det_half, det_y), 2 * det_half, 9, fill=False, edgecolor="#9fb3c8", lw=1.5, zorder=4)
    )

    # X-ray source.
    ax.add_patch(Circle(source, 6, facecolor="#ff6b35", edgecolor="#ffd166", lw=1.5, zorder=4))

    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=dpi, transparent=True)
    plt.close(fig)
    return output


def draw_example(output: Path, size: int = 200, spacing: float = 2.0, sdd: float = 1020.0) -> Path:
    """DRRs of the engine's chest phantom from a C-arm at several angles (conventional display)."""
    import torch
    from nanodrr_engine import Subject, carm_to_rt_inv, make_k_inv, render
    from nanodrr_engine.camera import to_display
    from nanodrr_engine.data.phantom import make_chest_phantom

    vol_hu, _labels, voxel_to_world, _phantom = make_chest_phantom(spacing=(2.0, 2.0, 2.5))
    subject = Subject.from_array(vol_hu, voxel_to_world)
    k_inv = make_k_inv(sdd, spacing, spacing, 0.0, 0.0, size, size)
    fig, axes = plt.subplots(1, len(EXAMPLE_VIEWS), figsize=(3.0 * len(EXAMPLE_VIEWS), 3.4), dpi=100)
    for ax, (title, primary, secondary) in zip(axes, EXAMPLE_VIEWS, strict=True):
        rt_inv = carm_to_rt_inv(primary, secondary, 850.0, subject.isocenter).to(torch.float32)
        with torch.no_grad():
            image = to_display(render(subject, k_inv, rt_inv, sdd, size, size, n_samples=500))[0, 0]
        ax.imshow(image.numpy(), cmap="gray")
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    fig.suptitle("NanoDRR: DRRs of the analytic chest phantom (SDD 1020 mm, SOD 850 mm)", fontsize=12)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--example":
        path = draw_example(Path(argv[2]) if len(argv) > 2 else DEFAULT_EXAMPLE)
    else:
        path = draw_icon(Path(argv[1]) if len(argv) > 1 else DEFAULT_OUTPUT)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

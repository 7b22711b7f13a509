"""The DRR over the X-ray, as one RGB image on the detector plane, so the user sees the fit.

Both images are compared where registration compares them: on the detector pixel grid, as seen from
the source, in line integrals (``registration.xrayTarget`` takes either node there). The overlay node is
an RGB vector volume with the DRR's geometry (it lies on the detector plane, so the slice view aligned to
the DRR shows it, and so does the 3D view). Modes:

- ``blend``: grey, ``(1 − blend)·X-ray + blend·DRR``;
- ``edges``: the X-ray in grey with the DRR's strongest edges (non-zero Sobel magnitude at or above its
  90th percentile) in green, ``blend`` their opacity;
- ``checkerboard``: tiles alternate between the X-ray and the DRR (``tiles`` per side).

Each image is windowed to its own 1st–99th percentile inside the X-ray's mask: the two have different
scales (a radiograph's log is known only up to a factor), which the similarity ignores too.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .conversion import arrayToMatrix, nodeLabel
from .errors import NanoDRRError
from .geometry import CArmGeometry, checkNumber
from .output import ATTRIBUTE_PREFIX

OVERLAY_MODES = ("blend", "edges", "checkerboard")


def windowed(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``image`` mapped to [0, 1] between its 1st and 99th percentiles (inside ``mask``)."""
    values = image[mask] if mask is not None and mask.any() else image.ravel()
    low, high = np.percentile(values, [1.0, 99.0])
    if not high > low:
        return np.zeros(image.shape, dtype=np.float64)
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def sobelMagnitude(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude by 3 × 3 Sobel filters (edges replicated)."""
    p = np.pad(image.astype(np.float64), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.hypot(gx, gy)


def overlayImage(
    drr: np.ndarray,
    xray: np.ndarray,
    mode: str = "blend",
    blend: float = 0.5,
    mask: np.ndarray | None = None,
    tiles: int = 8,
) -> np.ndarray:
    """``[H, W, 3]`` uint8 overlay of two ``[H, W]`` images on the same pixel grid (see the module doc)."""
    if mode not in OVERLAY_MODES:
        raise NanoDRRError(f"mode: expected one of {OVERLAY_MODES}, got {mode!r}")
    blend = checkNumber(blend, "blend", minimum=0.0, maximum=1.0)
    if isinstance(tiles, bool) or not isinstance(tiles, (int, np.integer)) or not 1 <= tiles <= 256:
        raise NanoDRRError(f"tiles: expected a whole number in [1, 256], got {tiles!r}")
    drr, xray = np.asarray(drr), np.asarray(xray)
    if drr.ndim != 2 or drr.shape != xray.shape:
        raise NanoDRRError(
            f"overlay: the DRR {drr.shape} and the X-ray {xray.shape} must be the same 2D size"
        )
    x = windowed(xray, mask)
    d = windowed(drr, mask)
    if mode == "blend":
        grey = (1.0 - blend) * x + blend * d
        rgb = np.repeat(grey[..., None], 3, axis=-1)
    elif mode == "edges":
        magnitude = sobelMagnitude(d)
        edges = (magnitude >= np.percentile(magnitude, 90.0)) & (magnitude > 0)
        rgb = np.repeat(x[..., None], 3, axis=-1)
        green = np.array([0.0, 1.0, 0.0])
        rgb[edges] = (1.0 - blend) * rgb[edges] + blend * green
    else:
        h, w = x.shape
        rows = (np.arange(h) * tiles // h)[:, None]
        cols = (np.arange(w) * tiles // w)[None, :]
        fromDrr = (rows + cols) % 2 == 1
        rgb = np.repeat(np.where(fromDrr, d, x)[..., None], 3, axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)


def drrLineIntegrals(drrNode) -> np.ndarray:
    """``[h, w]`` line integrals of a NanoDRR DRR node, seen from the source (its own size: a live
    preview is coarser than the detector)."""
    if drrNode is None or not hasattr(drrNode, "IsA") or not drrNode.IsA("vtkMRMLScalarVolumeNode"):
        raise NanoDRRError("drrNode: expected the DRR's scalar volume node")
    # plain attributes: reading node references of an unrelated node would add empty roles to it
    if drrNode.GetAttribute(ATTRIBUTE_PREFIX + "role") != "DRR" or drrNode.GetImageData() is None:
        raise NanoDRRError(f"drrNode {nodeLabel(drrNode)}: is not a NanoDRR DRR (render one first)")
    image = np.asarray(slicer.util.arrayFromVolume(drrNode)[0], dtype=np.float64)
    if drrNode.GetAttribute(ATTRIBUTE_PREFIX + "displayMode") == "transmission":
        image = -np.log(np.clip(image, 1e-30, 1.0))
    return image


def onDetectorGrid(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (the same detector in h × w coarser or equal pixels) on the H × W grid, nearest pixel."""
    h, w = image.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(int), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(int), w - 1)
    return image[rows[:, None], cols[None, :]]


def updateOverlayNode(
    drrNode,
    xrayNode,
    geometry: CArmGeometry,
    mode: str = "blend",
    blend: float = 0.5,
    overlayNode=None,
    tiles: int = 8,
) -> object:
    """Write the overlay of ``drrNode`` on ``xrayNode`` into an RGB volume node on the detector plane.

    The overlay has the X-ray's pixels (``geometry``); a coarser DRR (a live preview of the same detector)
    is shown at its nearest pixel. Creates the node unless ``overlayNode`` is given; nothing else changes.
    """
    from .registration import xrayTarget

    drr = drrLineIntegrals(drrNode)
    scene = drrNode.GetScene()
    xray, mask = xrayTarget(xrayNode, geometry, scene)
    H, W = xray.shape
    h, w = drr.shape
    if h > H or w > W:
        raise NanoDRRError(
            f"drrNode {nodeLabel(drrNode)}: is {h}×{w} pixels, finer than the X-ray's {H}×{W}; "
            "render it with the X-ray's detector"
        )
    if overlayNode is not None:
        if not hasattr(overlayNode, "IsA") or not overlayNode.IsA("vtkMRMLVectorVolumeNode"):
            raise NanoDRRError("overlayNode: expected a vector volume node (RGB) or None")
        if overlayNode.GetScene() is not scene:
            raise NanoDRRError(f"overlayNode {nodeLabel(overlayNode)}: is not in the DRR's scene")
    rgb = overlayImage(onDetectorGrid(drr, H, W), xray, mode, blend, mask, tiles)
    # fine pixel u sits at the DRR's continuous index (u + 1/2)·w/W − 1/2
    ijkToRAS = vtk.vtkMatrix4x4()
    drrNode.GetIJKToRASMatrix(ijkToRAS)
    m = np.array([[ijkToRAS.GetElement(r, c) for c in range(4)] for r in range(4)])
    sx, sy = w / W, h / H
    fine = np.array([[sx, 0, 0, 0.5 * sx - 0.5], [0, sy, 0, 0.5 * sy - 0.5], [0, 0, 1, 0], [0, 0, 0, 1]])
    # everything is checked: now write
    if overlayNode is None:
        overlayNode = scene.AddNewNodeByClass(
            "vtkMRMLVectorVolumeNode", scene.GenerateUniqueName(f"{drrNode.GetName()} overlay")
        )
    overlayNode.SetIJKToRASMatrix(arrayToMatrix(m @ fine))
    overlayNode.SetAndObserveTransformNodeID(drrNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(overlayNode, np.ascontiguousarray(rgb[None]))
    overlayNode.SetAttribute(ATTRIBUTE_PREFIX + "role", "overlay")
    overlayNode.SetAttribute(ATTRIBUTE_PREFIX + "overlayMode", mode)
    overlayNode.SetNodeReferenceID(ATTRIBUTE_PREFIX + "overlayOf", drrNode.GetID())
    overlayNode.SetNodeReferenceID(ATTRIBUTE_PREFIX + "overlayXray", xrayNode.GetID())
    if overlayNode.GetDisplayNode() is None:
        overlayNode.CreateDefaultDisplayNodes()
    return overlayNode

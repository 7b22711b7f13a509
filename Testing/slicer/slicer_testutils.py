"""Helpers for the headless Slicer logic tests: real MRML scenes from the slicer-core wheel.

Volumes are small (≈ 20³ voxels) and detectors ≤ 64² pixels with 64 samples per ray, so the suite runs
in well under a minute on two cores. Reference numbers come from the engine called directly on the
test's own arrays and hand-built matrices, never from the logic under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "NanoDRRSlicer"))

import slicer  # noqa: E402
import torch  # noqa: E402
import vtk  # noqa: E402
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

CHEST_DIR = REPO.parent / "shared" / "data" / "chest_ct"
N_SAMPLES = 64


def vtkMatrix(a) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i][j]))
    return m


def toArray(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def rotation(rx=0.0, ry=0.0, rz=0.0) -> np.ndarray:
    """Rz · Ry · Rx, degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    r_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    r_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    r_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def affine(spacing, origin, direction=None) -> np.ndarray:
    """IJK → RAS: direction · diag(spacing), plus origin."""
    a = np.eye(4)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    a[:3, :3] = d @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def addVolume(scene, array, ijkToRAS, name="ct", cls="vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.SetIJKToRASMatrix(vtkMatrix(ijkToRAS))
    return node


def addTransform(scene, matrix, name="T", parent=None):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtkMatrix(matrix))
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def orientedImage(mask: np.ndarray, ijkToRAS) -> slicer.vtkOrientedImageData:
    k, j, i = mask.shape
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    vtk_to_numpy(image.GetPointData().GetScalars())[:] = np.ascontiguousarray(mask, dtype=np.uint8).ravel()
    image.SetImageToWorldMatrix(vtkMatrix(ijkToRAS))
    return image


def addSegmentation(scene, masks: dict, ijkToRAS, name="seg", colors=None):
    """One segment per ``{name: mask [K, J, I]}``, each in its own binary-labelmap layer."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    ids = {}
    for n, (segName, mask) in enumerate(masks.items()):
        color = (colors or {}).get(segName, (0.2 + 0.1 * n, 0.5, 0.9 - 0.1 * n))
        ids[segName] = node.AddSegmentFromBinaryLabelmapRepresentation(
            orientedImage(mask, ijkToRAS), segName, color
        )
    return node, ids


def addLabelmapSegmentation(scene, labels: np.ndarray, ijkToRAS, names: dict, name="seg"):
    """A segmentation imported from one labelmap (all segments share one layer), named by label."""
    lab = addVolume(scene, labels.astype(np.uint8), ijkToRAS, "labels", "vtkMRMLLabelMapVolumeNode")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lab, node)
    scene.RemoveNode(lab)
    seg = node.GetSegmentation()
    ids = {}
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        segment.SetName(names[segment.GetLabelValue()])
        ids[segment.GetName()] = seg.GetNthSegmentID(i)
    return node, ids


def poseOf(carmNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    carmNode.GetMatrixTransformToWorld(m)
    return toArray(m)


def engineRender(
    array,
    voxelToWorld,
    pose,
    geometry,
    label=None,
    maxLabel=None,
    nSamples=N_SAMPLES,
    method="raymarch",
    **mu,
):
    """The engine's own DRR ``[C, H, W]`` of the test's arrays (the reference for the logic)."""
    from nanodrr_engine import DRR, Subject

    subject = Subject.from_array(np.asarray(array, dtype=np.float32), voxelToWorld, label, maxLabel, **mu)
    g = geometry
    drr = DRR.from_carm_intrinsics(g.sdd, g.delx, g.dely, g.x0, g.y0, g.height, g.width)
    with torch.no_grad():
        out = drr(
            subject, torch.as_tensor(pose, dtype=torch.float64)[None], n_samples=nSamples, method=method
        )
    return out[0].numpy()


def drrArray(node) -> np.ndarray:
    arr = slicer.util.arrayFromVolume(node)
    assert arr.shape[0] == 1
    return arr[0].copy()


def phantomCT(shape=(19, 23, 21)) -> np.ndarray:
    """HU volume [K, J, I]: soft-tissue body (0 HU) in air, a bone block (1000 HU), an air pocket."""
    k, j, i = shape
    a = np.full(shape, -1000.0, dtype=np.float32)
    a[2 : k - 2, 3 : j - 3, 2 : i - 2] = 0.0
    a[5:11, 8:14, 4:9] = 1000.0
    a[11:15, 6:10, 12:17] = -600.0
    return a


def chestDir() -> Path:
    if not (CHEST_DIR / "ct.nii.gz").is_file():
        pytest.skip(f"chest CT not found at {CHEST_DIR} (expects the shared data folder beside the repo)")
    return CHEST_DIR

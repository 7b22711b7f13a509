"""A byte-for-byte picture of a MRML scene, to show that a refused call changed nothing.

``sceneSnapshot(scene)`` records, per node in scene order: ID, class, name, modification time,
attributes, node references by role, linear transform matrices, a volume's IJKToRAS and its image
data (object, MTime, dimensions, scalar type, the voxel bytes), display settings, and a
segmentation's segments (IDs, names, colours, contained representation names and each
representation's data: MTime and bytes). Two snapshots compare equal iff none of that changed;
:func:`snapshotDiff` says where they differ.
"""

from __future__ import annotations

import hashlib

import numpy as np
import vtk
from vtk.util.numpy_support import vtk_to_numpy


def _matrix(m: vtk.vtkMatrix4x4) -> bytes:
    """The 16 entries' bytes (so that NaN entries compare equal to themselves)."""
    return np.array([m.GetElement(i, j) for i in range(4) for j in range(4)]).tobytes()


def _imageData(image) -> tuple | None:
    if image is None:
        return None
    scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
    voxels = None
    if scalars is not None:
        arr = vtk_to_numpy(scalars)
        voxels = (arr.dtype.str, arr.shape, hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest())
    return (
        image.GetClassName(),
        image.GetAddressAsString(image.GetClassName()),
        image.GetMTime(),
        tuple(image.GetDimensions()),
        tuple(image.GetExtent()),
        image.GetScalarType(),
        scalars.GetMTime() if scalars is not None else None,
        voxels,
    )


def _polyData(poly) -> tuple:
    points = poly.GetPoints()
    pts = vtk_to_numpy(points.GetData()).tobytes() if points is not None else b""
    return (
        poly.GetMTime(),
        poly.GetNumberOfPoints(),
        poly.GetNumberOfCells(),
        hashlib.sha256(pts).hexdigest(),
    )


def _segmentation(node) -> tuple:
    seg = node.GetSegmentation()
    if seg is None:
        return ()
    segments = []
    for i in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(i)
        segment = seg.GetSegment(sid)
        names: list[str] = []
        segment.GetContainedRepresentationNames(names)
        reps = []
        for rep in sorted(names):
            data = segment.GetRepresentation(rep)
            if data is None:
                reps.append((rep, None))
            elif data.IsA("vtkImageData"):
                reps.append((rep, _imageData(data)))
            elif data.IsA("vtkPolyData"):
                reps.append((rep, _polyData(data)))
            else:
                reps.append((rep, data.GetClassName(), data.GetMTime()))
        segments.append(
            (
                sid,
                segment.GetName(),
                tuple(segment.GetColor()),
                segment.GetMTime(),
                tuple(sorted(names)),
                tuple(reps),
            )
        )
    return (seg.GetSourceRepresentationName(), seg.GetMTime(), tuple(segments))


def _node(node) -> dict:
    entry: dict = {
        "class": node.GetClassName(),
        "name": node.GetName(),
        "mtime": node.GetMTime(),
        "attributes": tuple((k, node.GetAttribute(k)) for k in sorted(node.GetAttributeNames() or ())),
        "references": tuple(
            (
                role,
                tuple(
                    node.GetNthNodeReferenceID(role, j) for j in range(node.GetNumberOfNodeReferences(role))
                ),
            )
            for role in sorted(
                node.GetNthNodeReferenceRole(i) for i in range(node.GetNumberOfNodeReferenceRoles())
            )
        ),
    }
    if node.IsA("vtkMRMLTransformNode") and node.IsLinear():
        m = vtk.vtkMatrix4x4()
        node.GetMatrixTransformToParent(m)
        entry["toParent"] = _matrix(m)
    if node.IsA("vtkMRMLVolumeNode"):
        m = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m)
        entry["ijkToRAS"] = _matrix(m)
        entry["imageData"] = _imageData(node.GetImageData())
    if node.IsA("vtkMRMLScalarVolumeDisplayNode"):
        entry["display"] = (
            node.GetColorNodeID(),
            node.GetWindow(),
            node.GetLevel(),
            node.GetAutoWindowLevel(),
        )
    if node.IsA("vtkMRMLSegmentationNode"):
        entry["segmentation"] = _segmentation(node)
    if node.IsA("vtkMRMLModelNode") and node.GetPolyData() is not None:
        entry["polyData"] = _polyData(node.GetPolyData())
    return entry


def sceneSnapshot(scene) -> list[tuple[str, dict]]:
    """``[(node ID, description)]`` in scene order (see the module docstring)."""
    return [
        (scene.GetNthNode(i).GetID(), _node(scene.GetNthNode(i))) for i in range(scene.GetNumberOfNodes())
    ]


def snapshotDiff(before, after) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    out = []
    ids0, ids1 = [i for i, _ in before], [i for i, _ in after]
    if ids0 != ids1:
        out.append(f"node IDs {ids0} -> {ids1}")
    a, b = dict(before), dict(after)
    for nid in ids0:
        if nid in b and a[nid] != b[nid]:
            keys = [k for k in set(a[nid]) | set(b[nid]) if a[nid].get(k) != b[nid].get(k)]
            out.append(f"{nid} ({a[nid]['name']}): {sorted(keys)} changed")
    return out

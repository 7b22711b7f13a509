"""Segmentation → integer label volumes on the CT's voxel grid, grouped for multi-channel renders.

Segment DRRs use the engine's labelmap semantics (docs/geometry.md): each ray sample's μ·step goes to
the channel of the label of its nearest CT voxel, so a segment's DRR is the CT's line integral
restricted to the voxels of that segment, and the DRRs of disjoint segments add up.

Masks are taken on the CT grid: segments whose binary labelmap already lies on that grid (same
voxel-to-world matrix after both nodes' transforms, the usual case for a segmentation made from the
CT) are read directly from the shared labelmap; otherwise Slicer resamples them (nearest neighbour)
with ``vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry``, which honours
the segmentation's and the volume's parent transforms, linear or not.

Segments without a binary labelmap (e.g. closed surfaces only) are converted on a copy, never on the
input node, and straight onto the CT's grid (no second resampling); headless slicer-core registers no
converter rules, so the closed surface → binary labelmap rule is registered when missing.

Speed: one render can fill many channels. Segments in the same binary-labelmap layer never overlap,
and whole layers that do not overlap are merged too, so e.g. 117 TotalSegmentator segments cost one
render; each set of overlapping segments (an organ and a tumour inside it) adds one render.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from .conversion import _address, arrayToMatrix, matrixToArray, nodeLabel
from .errors import NanoDRRError

_MAX_CHANNELS = 65535  # channel 0 is the background


def binaryRepresentationName() -> str:
    conv = slicer.vtkSegmentationConverter
    if hasattr(conv, "GetBinaryLabelmapRepresentationName"):
        return conv.GetBinaryLabelmapRepresentationName()
    return conv.GetSegmentationBinaryLabelmapRepresentationName()  # pragma: no cover - older Slicer


def checkSegmentationNode(segmentationNode, scene, role: str = "segmentationNode") -> None:
    if not hasattr(segmentationNode, "IsA") or not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        kind = (
            segmentationNode.GetClassName()
            if hasattr(segmentationNode, "GetClassName")
            else type(segmentationNode).__name__
        )
        raise NanoDRRError(f"{role}: expected a segmentation node, got a {kind}")
    if segmentationNode.GetScene() is not scene:
        raise NanoDRRError(f"{role} {nodeLabel(segmentationNode)}: is not in the volume's scene")
    segmentation = segmentationNode.GetSegmentation()
    if segmentation is None or segmentation.GetNumberOfSegments() == 0:
        raise NanoDRRError(f"{role} {nodeLabel(segmentationNode)}: has no segments")


def selectSegmentIds(segmentationNode, segmentIds=None, visibleOnly: bool = True) -> list[str]:
    """Validated segment IDs: the given ones, else the visible ones (all without a display node)."""
    segmentation = segmentationNode.GetSegmentation()
    allIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if segmentIds is not None:
        if isinstance(segmentIds, str):
            segmentIds = [segmentIds]
        ids = list(segmentIds)
        if not ids:
            raise NanoDRRError(f"segmentIds: empty list for segmentation {nodeLabel(segmentationNode)}")
        for sid in ids:
            if segmentation.GetSegment(sid) is None:
                raise NanoDRRError(
                    f"segmentIds: segmentation {nodeLabel(segmentationNode)} has no segment {sid!r}"
                )
        return list(dict.fromkeys(ids))
    display = segmentationNode.GetDisplayNode()
    if visibleOnly and display is not None:
        ids = [sid for sid in allIds if display.GetSegmentVisibility(sid)]
        if not ids:
            raise NanoDRRError(f"segmentationNode {nodeLabel(segmentationNode)}: no segment is visible")
        return ids
    return allIds


def registerConverterRules() -> None:
    """Register the closed surface → binary labelmap rule if missing (slicer-core registers none).

    Only segmentations created afterwards see it (each copies the factory's rules when created).
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    pairs = {
        (r.GetSourceRepresentationName(), r.GetTargetRepresentationName())
        for r in factory.GetConverterRules()
    }
    conv = slicer.vtkSegmentationConverter
    if (conv.GetClosedSurfaceRepresentationName(), binaryRepresentationName()) not in pairs:
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def _missingLabelmaps(segmentationNode, ids: list[str]) -> list[str]:
    return [sid for sid in ids if segmentationNode.GetBinaryLabelmapInternalRepresentation(sid) is None]


def checkBinaryLabelmaps(segmentationNode, ids: list[str]) -> None:
    """Raise unless every segment in ``ids`` has a binary labelmap or can be converted to one.

    Converts nothing: :func:`layersOnGrid` converts copies of the segments that need it.
    """
    missing = _missingLabelmaps(segmentationNode, ids)
    if not missing:
        return
    registerConverterRules()
    segmentation = segmentationNode.GetSegmentation()
    source = segmentation.GetSourceRepresentationName()
    names: list[str] = []
    segmentation.GetContainedRepresentationNames(names)
    probe = slicer.vtkSegmentation()  # made now, so it has the registered rules
    probe.SetSourceRepresentationName(source)
    paths = slicer.vtkSegmentationConversionPaths()
    probe.GetPossibleConversions(binaryRepresentationName(), paths)
    label = f"segmentationNode {nodeLabel(segmentationNode)}"
    has = ", ".join(repr(n) for n in names) or "no representation"
    if paths.GetNumberOfPaths() == 0:
        raise NanoDRRError(
            f"{label}: cannot convert its segments to binary labelmaps: it has {has} (source {source!r}) "
            "and no conversion from it to a binary labelmap is registered"
        )
    for sid in missing:
        if segmentation.GetSegment(sid).GetRepresentation(source) is None:
            raise NanoDRRError(
                f"{label}: segment {segmentName(segmentationNode, sid)!r} has neither a binary labelmap "
                f"nor its source representation {source!r} (it has {has})"
            )
    parent = segmentationNode.GetParentTransformNode()
    if (
        parent is not None
        and not parent.IsTransformToWorldLinear()
        and not probe.IsSourceRepresentationPolyData()
    ):
        raise NanoDRRError(
            f"{label}: its {source!r} segments cannot be converted under the non-linear transform "
            f"{nodeLabel(parent)}; harden the transform or convert them to binary labelmaps"
        )


def _convertedLayers(segmentationNode, ids: list[str], voxelToWorld: np.ndarray, shape) -> list:
    """``layersOnGrid`` for segments without a binary labelmap: copies converted on the CT's grid."""
    registerConverterRules()
    original = segmentationNode.GetSegmentation()
    source = original.GetSourceRepresentationName()
    copy = slicer.vtkSegmentation()
    copy.SetSourceRepresentationName(source)
    parent = segmentationNode.GetParentTransformNode()
    toWorld = None
    gridToSegmentation = voxelToWorld
    if parent is not None and parent.IsTransformToWorldLinear():
        m = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(m)
        gridToSegmentation = np.linalg.inv(matrixToArray(m)) @ voxelToWorld
    elif parent is not None:  # non-linear: surfaces are moved to world, the grid stays the CT's
        toWorld = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, toWorld)
    for sid in ids:
        segment = slicer.vtkSegment()
        segment.DeepCopy(original.GetSegment(sid))
        if toWorld is not None:
            moved = vtk.vtkTransformPolyDataFilter()
            moved.SetTransform(toWorld)
            moved.SetInputData(segment.GetRepresentation(source))
            moved.Update()
            segment.AddRepresentation(source, moved.GetOutput())
        copy.AddSegment(segment, sid)
    grid = slicer.vtkOrientedImageData()
    grid.SetImageToWorldMatrix(arrayToMatrix(gridToSegmentation))
    grid.SetExtent(0, shape[2] - 1, 0, shape[1] - 1, 0, shape[0] - 1)
    conv = slicer.vtkSegmentationConverter
    copy.SetConversionParameter(
        conv.GetReferenceImageGeometryParameterName(), conv.SerializeImageGeometry(grid)
    )
    if not copy.CreateRepresentation(binaryRepresentationName()):
        raise NanoDRRError(
            f"segmentationNode {nodeLabel(segmentationNode)}: converting its {source!r} segments to binary "
            "labelmaps failed"
        )
    layers: dict[str, tuple] = {}
    for sid in ids:
        image = copy.GetSegment(sid).GetRepresentation(binaryRepresentationName())
        layers.setdefault(_address(image), (image, []))[1].append(sid)
    return [
        (_place(image, shape), {sid: int(copy.GetSegment(sid).GetLabelValue()) for sid in layerIds})
        for image, layerIds in layers.values()
    ]  # the extent is in the CT's IJK by construction


def _transformKey(node) -> tuple:
    parent = node.GetParentTransformNode()
    if parent is None:
        return ()
    if parent.IsTransformToWorldLinear():
        m = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(m)
        return tuple(matrixToArray(m).ravel().tolist())
    return (parent.GetID(), parent.GetMTime())


def segmentationKey(segmentationNode, ids: list[str]) -> tuple:
    """Changes whenever the selected segments' voxels or placement change."""
    segmentation = segmentationNode.GetSegmentation()
    parts: list = [segmentationNode.GetID(), tuple(ids), _transformKey(segmentationNode)]
    for sid in ids:
        image = segmentationNode.GetBinaryLabelmapInternalRepresentation(sid)
        if image is None:  # converted from the source representation: follow that instead
            image = segmentation.GetSegment(sid).GetRepresentation(segmentation.GetSourceRepresentationName())
        data = image.GetPointData() if image is not None else None
        scalars = data.GetScalars() if data is not None else None
        parts.append(
            (
                segmentation.GetSegment(sid).GetMTime(),
                _address(image),
                image.GetMTime() if image is not None else 0,
                scalars.GetMTime() if scalars is not None else 0,
            )
        )
    return tuple(parts)


def _place(image, shape: tuple[int, int, int]) -> np.ndarray:
    """An oriented image's voxels (extent in the CT's IJK) placed into a zero ``[K, J, I]`` array."""
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return np.zeros(shape, dtype=np.uint8)
    i0, i1, j0, j1, k0, k1 = image.GetExtent()
    arr = vtk_to_numpy(image.GetPointData().GetScalars())
    out = np.zeros(shape, dtype=arr.dtype if np.issubdtype(arr.dtype, np.integer) else np.int32)
    if i1 < i0 or j1 < j0 or k1 < k0:
        return out
    arr = arr.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
    src, dst = [], []
    for lo, hi, n in ((k0, k1, shape[0]), (j0, j1, shape[1]), (i0, i1, shape[2])):
        a, b = max(lo, 0), min(hi, n - 1)
        if b < a:
            return out
        src.append(slice(a - lo, b - lo + 1))
        dst.append(slice(a, b + 1))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _onGrid(segmentationNode, image, voxelToWorld: np.ndarray) -> bool:
    parent = segmentationNode.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        return False
    segToWorld = np.eye(4)
    if parent is not None:
        m = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(m)
        segToWorld = matrixToArray(m)
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    d = np.abs(segToWorld @ matrixToArray(m) - voxelToWorld)
    return d[:3, :3].max() < 1e-5 and d[:3, 3].max() < 1e-3


def layersOnGrid(segmentationNode, ids: list[str], volumeNode, voxelToWorld: np.ndarray, shape) -> list:
    """``[(values [K, J, I] int32, {segmentId: label value})]``, one per binary-labelmap layer.

    Within a layer no two segments overlap, so each layer is one label volume.
    """
    missing = _missingLabelmaps(segmentationNode, ids)
    layers: dict[str, tuple] = {}
    for sid in ids:
        if sid not in missing:
            image = segmentationNode.GetBinaryLabelmapInternalRepresentation(sid)
            layers.setdefault(_address(image), (image, []))[1].append(sid)
    out = _convertedLayers(segmentationNode, missing, voxelToWorld, shape) if missing else []
    segmentation = segmentationNode.GetSegmentation()
    for image, layerIds in layers.values():
        if image is not None and _onGrid(segmentationNode, image, voxelToWorld):
            values = _place(image, shape)
            mapping = {sid: int(segmentation.GetSegment(sid).GetLabelValue()) for sid in layerIds}
        else:
            idArray, labelValues = vtk.vtkStringArray(), vtk.vtkIntArray()
            for n, sid in enumerate(layerIds, start=1):
                idArray.InsertNextValue(sid)
                labelValues.InsertNextValue(n)
            merged = slicer.vtkOrientedImageData()
            slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
                segmentationNode,
                volumeNode,
                idArray,
                slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
                merged,
                labelValues,
            )
            values = _place(merged, shape)
            mapping = {sid: n for n, sid in enumerate(layerIds, start=1)}
        out.append((values, mapping))
    return out


def _dtypeFor(n: int):
    """Smallest label dtype for channels 0..n that torch can reduce over (it has no uint16 min/max)."""
    if n <= 255:
        return np.uint8
    return np.int16 if n <= 32767 else np.int32


def _localChannels(values: np.ndarray, mapping: dict[str, int], order: list[str]) -> np.ndarray:
    """Layer values → 1..n (in ``order``) for the selected segments, 0 elsewhere."""
    top = max(int(values.max(initial=0)), *mapping.values())
    lut = np.zeros(top + 1, dtype=_dtypeFor(len(order)))
    for n, sid in enumerate(order, start=1):
        lut[mapping[sid]] = n
    if values.dtype.kind != "u" and values.min(initial=0) < 0:
        values = np.clip(values, 0, None)
    return lut[values]


def channelGroups(layers: list) -> list[tuple[np.ndarray, list[str]]]:
    """Greedily merge non-overlapping layers: ``[(labels [K, J, I] int, [segment id per channel 1..])]``."""
    groups: list[list] = []
    for values, mapping in layers:
        order = list(mapping)
        local = _localChannels(values, mapping, order)
        inside = local > 0
        for group in groups:
            n = len(group[1]) + len(order)
            if n <= _MAX_CHANNELS and not np.any(inside & (group[0] > 0)):
                dtype = _dtypeFor(n)
                if group[0].dtype != dtype:
                    group[0] = group[0].astype(dtype)
                group[0][inside] = local[inside].astype(dtype) + len(group[1])
                group[1].extend(order)
                break
        else:
            groups.append([local, order])
    return [(labels, ids) for labels, ids in groups]


def voxelCounts(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels per channel 0..n of a label volume."""
    import torch

    flat = torch.from_numpy(np.ascontiguousarray(labels).reshape(-1))
    if flat.dtype != torch.uint8:
        flat = flat.to(torch.int64)
    return torch.bincount(flat, minlength=n + 1)[: n + 1].numpy()


def unionMask(layers: list) -> np.ndarray:
    """``[K, J, I]`` uint8: 1 inside any selected segment."""
    mask = None
    for values, mapping in layers:
        inside = _localChannels(values, mapping, list(mapping)) > 0
        mask = inside if mask is None else (mask | inside)
    return mask.astype(np.uint8)


def segmentColor(segmentationNode, segmentId: str) -> tuple[float, float, float]:
    """The segment's displayed colour (display-node override, else the segment's own colour)."""
    display = segmentationNode.GetDisplayNode()
    if display is not None and hasattr(display, "GetSegmentColor"):
        c = display.GetSegmentColor(segmentId)
        rgb = (c.GetX(), c.GetY(), c.GetZ()) if hasattr(c, "GetX") else tuple(c)[:3]
        if min(rgb) >= 0:
            return tuple(float(v) for v in rgb)
    return tuple(float(v) for v in segmentationNode.GetSegmentation().GetSegment(segmentId).GetColor())


def segmentName(segmentationNode, segmentId: str) -> str:
    return segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()

"""The volumes the app starts on: the built-in chest phantom, or a CT (and segmentation) from files."""

from __future__ import annotations

from pathlib import Path

import slicer
from NanoDRRLib import loadSegmentation, loadVolume
from NanoDRRLib.errors import NanoDRRError

#: Voxel size of the built-in phantom (mm; 1.25 × along the head–foot axis), small enough for CPU rendering.
PHANTOM_SPACING = 2.0


def addPhantom(scene, spacing: float = PHANTOM_SPACING):
    """The analytic chest phantom as a CT volume node and a segmentation, one segment per structure."""
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


def loadCT(scene, path):
    """A CT file as a scalar volume node; a 2D image or a multi-component volume is refused."""
    node = loadVolume(scene, Path(path))
    image = node.GetImageData()
    dims = image.GetDimensions() if image is not None else (0, 0, 0)
    problem = None
    if image is None or min(dims) < 1:
        problem = "has no voxels"
    elif image.GetNumberOfScalarComponents() != 1:
        problem = f"has {image.GetNumberOfScalarComponents()} components per voxel (a CT has one)"
    elif sorted(dims)[1] < 2:
        problem = f"is not a 3D volume ({dims[0]} × {dims[1]} × {dims[2]} voxels)"
    if problem is not None:
        scene.RemoveNode(node.GetStorageNode())
        scene.RemoveNode(node)
        raise NanoDRRError(f"ct: {Path(path).name} {problem}")
    node.CreateDefaultDisplayNodes()
    return node


def loadSeg(scene, path, ctNode):
    """A labelmap or .seg.nrrd file as a segmentation of ``ctNode``; one without segments is refused."""
    seg = loadSegmentation(scene, Path(path), referenceVolumeNode=ctNode)
    if seg.GetSegmentation().GetNumberOfSegments() == 0:
        storage = seg.GetStorageNode()
        scene.RemoveNode(seg)
        if storage is not None:
            scene.RemoveNode(storage)
        raise NanoDRRError(f"segmentation: {Path(path).name} has no segments (an empty labelmap?)")
    seg.CreateDefaultDisplayNodes()
    return seg

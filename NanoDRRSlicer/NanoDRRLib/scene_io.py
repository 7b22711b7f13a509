"""Loading data into, and saving, MRML scenes without the Slicer application (slicer-core or Slicer).

``saveScene`` writes a folder Slicer opens directly: ``<name>.mrml`` plus one file per storable node
(volumes as .nrrd, segmentations as .seg.nrrd, models .vtk, transforms .h5, colour tables), with the
node attributes (the DRR provenance) inside the .mrml. ``loadScene`` reads it back into a fresh
``vtkMRMLScene``. Inside Slicer, ``slicer.util.saveScene``/``loadScene`` do the same through the GUI's IO
manager.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import slicer

from .errors import NanoDRRError


def _safeName(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "node"


def saveScene(scene, directory, sceneName: str = "scene") -> Path:
    """Write every storable node and the .mrml into ``directory`` (created); returns the .mrml path.

    Nodes marked not to be saved with the scene (e.g. Slicer's built-in colour tables) are skipped.
    Storage nodes are created or re-pointed into ``directory``.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    storables = [
        scene.GetNthNode(i)
        for i in range(scene.GetNumberOfNodes())
        if scene.GetNthNode(i).IsA("vtkMRMLStorableNode") and scene.GetNthNode(i).GetSaveWithScene()
    ]
    for node in storables:
        storage = node.GetStorageNode()
        if storage is None:
            storage = node.CreateDefaultStorageNode()
            if storage is None:
                continue
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        ext = storage.GetDefaultWriteFileExtension() or "dat"
        base = _safeName(node.GetName())
        filename = f"{base}.{ext}"
        n = 1
        while filename.lower() in used:
            filename = f"{base}_{n}.{ext}"
            n += 1
        used.add(filename.lower())
        storage.ResetFileNameList()
        storage.SetFileName(str(directory / filename))
        (directory / filename).unlink(missing_ok=True)  # overwrite quietly (VTK logs each replaced file)
        if not storage.WriteData(node):
            raise NanoDRRError(
                f"node '{node.GetName()}' ({node.GetID()}): could not write {directory / filename}"
            )
    path = directory / f"{_safeName(sceneName)}.mrml"
    scene.SetRootDirectory(str(directory))
    scene.SetURL(str(path))
    if not scene.Commit(str(path)):
        raise NanoDRRError(f"scene: could not write {path}")
    return path


def loadScene(path) -> object:
    """A new ``vtkMRMLScene`` with the scene at ``path`` (.mrml) and its data loaded."""
    path = Path(path)
    if not path.is_file():
        raise NanoDRRError(f"path: no such scene file {path}")
    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(path.resolve()))
    scene.SetRootDirectory(str(path.resolve().parent))
    if not scene.Connect():
        raise NanoDRRError(f"path: could not read the scene {path}")
    return scene


def loadVolume(scene, path, name: str | None = None, labelmap: bool = False):
    """Read a volume file (NIfTI, NRRD, MHA, ...) into a new scalar (or labelmap) volume node."""
    path = Path(path)
    if not path.is_file():
        raise NanoDRRError(f"path: no such volume file {path}")
    _checkComplete(path)  # Slicer's readers load a truncated NIfTI silently (missing voxels = 0)
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name or _stem(path))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    storage.SetCenterImage(0)
    if labelmap:
        storage.SetSingleFile(1)
    if not storage.ReadData(node):
        scene.RemoveNode(storage)
        scene.RemoveNode(node)
        raise NanoDRRError(f"path: could not read the volume {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def _checkComplete(path: Path) -> None:
    """NanoDRRError naming the file when it holds fewer voxel bytes than its header promises, or its
    compressed data is damaged (``nanodrr_engine.data.io.check_complete``)."""
    from nanodrr_engine.data.io import check_complete

    try:
        check_complete(path, "path")
    except ValueError as e:
        raise NanoDRRError(str(e)) from None


def readStructureNames(path) -> dict[int, str]:
    """``{label: name}`` from a structures.csv (columns ``id`` and ``structure`` or ``name``)."""
    names: dict[int, str] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = row.get("id") or row.get("label")
            name = row.get("structure") or row.get("name")
            if key is None or name is None:
                raise NanoDRRError(f"structures: {path} needs 'id' and 'structure' columns")
            names[int(key)] = name.strip()
    return names


def loadSegmentation(scene, path, referenceVolumeNode=None, name: str | None = None, names=None):
    """Read a .seg.nrrd segmentation, or a labelmap file converted to a segmentation.

    For a labelmap, segment names come from ``names`` ({label: name}) or, when a ``structures.csv``
    sits next to the file, from it; otherwise Slicer's defaults ("Label_<n>").
    """
    path = Path(path)
    if not path.is_file():
        raise NanoDRRError(f"path: no such segmentation file {path}")
    segFile = str(path).lower().endswith(".seg.nrrd")
    if segFile:
        _checkComplete(path)  # before any node is created
    # a labelmap is read (and checked) before the segmentation node exists: a bad file leaves no node
    labelmap = None if segFile else loadVolume(scene, path, "__NanoDRR_labels__", labelmap=True)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or _stem(path))
    if segFile:
        storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storage.SetFileName(str(path))
        if not storage.ReadData(segmentation):
            scene.RemoveNode(storage)
            scene.RemoveNode(segmentation)
            raise NanoDRRError(f"path: could not read the segmentation {path}")
        segmentation.SetAndObserveStorageNodeID(storage.GetID())
        segmentation.CreateDefaultDisplayNodes()
        return segmentation

    try:
        if referenceVolumeNode is not None:
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
        else:
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
        if not ok:
            scene.RemoveNode(segmentation)
            raise NanoDRRError(f"path: could not import the labelmap {path} as a segmentation")
    finally:
        for node in (labelmap.GetDisplayNode(), labelmap.GetStorageNode(), labelmap):
            if node is not None:
                scene.RemoveNode(node)
    csvPath = path.parent / "structures.csv"
    if names is None and csvPath.is_file():
        names = readStructureNames(csvPath)
    if names:
        seg = segmentation.GetSegmentation()
        for i in range(seg.GetNumberOfSegments()):
            segment = seg.GetNthSegment(i)
            label = segment.GetLabelValue()
            if label in names:
                segment.SetName(names[label])
    segmentation.CreateDefaultDisplayNodes()
    return segmentation


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return os.path.splitext(name)[0]

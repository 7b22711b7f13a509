"""Loading data into, and saving, MRML scenes without the Slicer application (slicer-core or Slicer).

``saveScene`` writes a folder Slicer opens directly: ``<name>.mrml`` plus one file per storable node
(volumes as .nrrd, segmentations as .seg.nrrd, models .vtk, transforms .h5, colour tables), with the
node attributes (the DRR provenance) inside the .mrml, all or nothing (see :func:`saveScene`).
``loadScene`` reads it back into a fresh ``vtkMRMLScene`` or imports it into a given one. Inside
Slicer, ``slicer.util.saveScene``/``loadScene`` do the same through the GUI's IO manager.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import slicer

from .errors import NanoDRRError


def _safeName(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "node"


def _checkSceneName(sceneName) -> str:
    """The .mrml file name for ``sceneName``, or NanoDRRError (before anything is written)."""
    if not isinstance(sceneName, str) or not sceneName.strip():
        raise NanoDRRError(f"sceneName: expected a non-empty string, got {sceneName!r}")
    name = f"{_safeName(sceneName)}.mrml"
    if name.startswith("."):  # a hidden file, which MRML refuses to commit (after the data is written)
        raise NanoDRRError(
            f"sceneName: {sceneName!r} would give the hidden file name {name!r}; start it with a letter or digit"
        )
    return name


def _checkFolder(directory) -> Path:
    """``directory`` resolved: an existing folder, or one that can be created (no file in the way)."""
    try:
        directory = Path(directory).resolve()
    except (TypeError, ValueError, OSError) as e:
        raise NanoDRRError(f"directory: expected a folder path, got {directory!r} ({e})") from None
    for p in (directory, *directory.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == directory else f"cannot be created: {p} is a file"
                raise NanoDRRError(f"directory: {directory} {what}, not a folder")
            break
    return directory


def saveScene(scene, directory, sceneName: str = "scene") -> Path:
    """Write every storable node and the .mrml into ``directory`` (created); returns the .mrml path.

    Nodes marked not to be saved with the scene (e.g. Slicer's built-in colour tables) are skipped.
    Storage nodes are created or re-pointed into ``directory``.

    All or nothing, as far as the file system allows: every file is first written into a temporary
    folder inside ``directory``; only when all of them and the .mrml are written are they moved in, one
    rename each (the .mrml last), the files they replace being kept aside until the last rename
    succeeded. Any failure (a storage node that cannot write, a full or read-only folder, the .mrml
    commit, a rename) raises NanoDRRError naming the file, puts the old files back and leaves the nodes'
    storage as it was; only a crash during the renames themselves could leave a mix. Other files in
    ``directory`` are left alone.
    """
    mrmlName = _checkSceneName(sceneName)
    directory = _checkFolder(directory)
    storables = [
        scene.GetNthNode(i)
        for i in range(scene.GetNumberOfNodes())
        if scene.GetNthNode(i).IsA("vtkMRMLStorableNode") and scene.GetNthNode(i).GetSaveWithScene()
    ]
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    saved = {"url": scene.GetURL(), "root": scene.GetRootDirectory(), "storage": [], "added": []}
    staging = None
    try:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".nanodrr-saving-", dir=directory))
        except OSError as e:
            raise NanoDRRError(f"directory: cannot write into {directory}: {e.strerror or e}") from e
        scene.SetRootDirectory(str(staging))  # storage nodes record their files relative to it
        scene.SetURL(str(staging / mrmlName))
        names = _writeData(scene, storables, staging, directory, saved)
        if not scene.Commit(str(staging / mrmlName)):
            raise NanoDRRError(f"scene: could not write {directory / mrmlName}")
        _moveIn(staging, directory, [*names, mrmlName])
    except BaseException:
        _restore(scene, saved)
        if staging is not None and not (staging / ".kept").exists():
            shutil.rmtree(staging, ignore_errors=True)
        for p in created:  # folders this call made, if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    for (storage, _), name in zip(saved["storage"], names, strict=True):
        storage.ResetFileNameList()
        storage.SetFileName(str(directory / name))
    path = directory / mrmlName
    scene.SetRootDirectory(str(directory))
    scene.SetURL(str(path))
    shutil.rmtree(staging, ignore_errors=True)
    return path


def _writeData(scene, storables, staging: Path, directory: Path, saved: dict) -> list[str]:
    """Write each storable node into ``staging``; its file names, in order (recorded in ``saved``)."""
    used: set[str] = set()
    names = []
    for node in storables:
        storage = node.GetStorageNode()
        if storage is None:
            storage = node.CreateDefaultStorageNode()
            if storage is None:
                continue
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
            saved["added"].append((node, storage))
        ext = storage.GetDefaultWriteFileExtension() or "dat"
        base = _safeName(node.GetName())
        filename = f"{base}.{ext}"
        n = 1
        while filename.lower() in used:
            filename = f"{base}_{n}.{ext}"
            n += 1
        used.add(filename.lower())
        backup = storage.CreateNodeInstance()
        backup.Copy(storage)  # file names and states, to put back if the save fails
        saved["storage"].append((storage, backup))
        storage.ResetFileNameList()
        storage.SetFileName(str(staging / filename))
        if not storage.WriteData(node):
            raise NanoDRRError(
                f"node '{node.GetName()}' ({node.GetID()}): could not write {directory / filename}"
            )
        names.append(filename)
    return names


def _moveIn(staging: Path, directory: Path, names: list[str]) -> None:
    """Move the new files from ``staging`` into ``directory``; on any failure put the old ones back."""
    kept = staging / ".kept"
    done: list[tuple[str, bool]] = []  # (name, had an old file)
    name = ""
    try:
        kept.mkdir()
        for name in names:
            target = directory / name
            old = target.exists() or target.is_symlink()
            if old:
                os.replace(target, kept / name)
            done.append((name, old))
            os.replace(staging / name, target)
    except OSError as e:
        problems = []
        for n, old in reversed(done):
            try:
                if not (staging / n).exists() and (directory / n).exists():
                    os.replace(directory / n, staging / n)
                if old:
                    os.replace(kept / n, directory / n)
            except OSError as undo:
                problems.append(f"{n} ({undo.strerror or undo})")
        if not problems:
            shutil.rmtree(kept, ignore_errors=True)
        hint = f"; could not put back {', '.join(problems)}: the old files are in {kept}" if problems else ""
        raise NanoDRRError(f"scene: could not move {name} into {directory}: {e.strerror or e}{hint}") from e
    shutil.rmtree(kept, ignore_errors=True)


def _restore(scene, saved: dict) -> None:
    """Undo what a failed save did to the scene: storage file names, added storage nodes, URL."""
    for storage, backup in saved["storage"]:
        storage.Copy(backup)
    for node, storage in saved["added"]:
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)
    scene.SetURL(saved["url"])
    scene.SetRootDirectory(saved["root"])


def loadScene(path, scene=None) -> object:
    """The scene at ``path`` (.mrml) with its data loaded: a new ``vtkMRMLScene``, or imported into
    ``scene`` (node IDs that are taken there are renamed; NanoDRR provenance follows, see
    :func:`~NanoDRRLib.output.readAttributes`).

    Every data file the scene needs must exist: a missing one is named, before anything is read.
    """
    path = Path(path)
    if not path.is_file():
        raise NanoDRRError(f"path: no such scene file {path}")
    path = path.resolve()
    missing = _missingDataFiles(path)
    if missing:
        raise NanoDRRError(
            f"path: the scene {path} needs {len(missing)} missing data file(s): {', '.join(missing)}"
        )
    target = slicer.vtkMRMLScene() if scene is None else scene
    before = {target.GetNthNode(i).GetID() for i in range(target.GetNumberOfNodes())}
    target.SetURL(str(path))
    target.SetRootDirectory(str(path.parent))
    ok = target.Connect() if scene is None else target.Import()
    if not ok:
        if scene is not None:  # take back what the import added
            for node in [target.GetNthNode(i) for i in range(target.GetNumberOfNodes())]:
                if node.GetID() not in before:
                    target.RemoveNode(node)
        raise NanoDRRError(
            f"path: could not read the scene {path} (a data file could not be read; see the log)"
        )
    return target


def _missingDataFiles(path: Path) -> list[str]:
    """Data files named by the storage nodes of the .mrml at ``path`` that do not exist."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise NanoDRRError(f"path: {path} is not a readable MRML scene ({e})") from None
    used: set[str] = set()
    for element in root.iter():
        for ref in (element.get("references") or "").split(";"):
            role, _, ids = ref.partition(":")
            if role.strip() == "storage":
                used.update(ids.split())
        used.update((element.get("storageNodeRef") or "").split())
    missing = []
    for element in root.iter():
        if element.get("id") not in used:
            continue
        names = [element.get("fileName")] + [
            v for k, v in element.attrib.items() if k.startswith("fileListMember")
        ]
        for name in dict.fromkeys(n for n in names if n):
            if "://" in name:
                continue
            file = Path(name) if os.path.isabs(name) else path.parent / name
            if not file.exists():
                missing.append(str(file))
    return missing


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

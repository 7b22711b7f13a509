"""MRML volume node → engine :class:`~nanodrr_engine.Subject`, validated and cached.

The engine wants ``volume [K, J, I]`` (Slicer's ``arrayFromVolume`` order) and the voxel → world
matrix. In Slicer that matrix is the node's IJKToRAS fused with its parent transform's ToWorld
matrix, so a volume under a (non-hardened) linear transform renders exactly like the hardened one.
Non-linear parent transforms cannot be expressed as one matrix and are rejected.

Conversion (a copy of the voxels plus the finite check) costs ~0.3 s on a 512×512×133 CT, so the
subject is cached per volume node and rebuilt only when its voxels, geometry or transform change.
Staleness is detected by the image data's and scalar array's identity and modification times and by
the fused matrix's values, which needs no observers and so cannot leak. Voxel edits must be announced
the Slicer way (``slicer.util.arrayFromVolumeModified`` or ``updateVolumeFromArray``); node-level changes
(name, display, attributes) do not trigger a conversion.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import slicer
import vtk

from .errors import NanoDRRError
from .geometry import FLOAT32_MAX

if TYPE_CHECKING:  # torch is imported lazily: Slicer may install it after this module loads
    import torch


def nodeLabel(node) -> str:
    """``'name' (ID)`` for error messages."""
    if node is None:
        return "None"
    return f"'{node.GetName()}' ({node.GetID()})"


def matrixToArray(m: vtk.vtkMatrix4x4) -> np.ndarray:
    """A vtkMatrix4x4 as a float64 ``[4, 4]`` array."""
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=np.float64)


def arrayToMatrix(a: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def parentToWorld(node, role: str) -> np.ndarray:
    """ToWorld matrix of ``node``'s parent transform (identity without one).

    Raises NanoDRRError naming the transform when it is not linear.
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise NanoDRRError(
            f"{role} {nodeLabel(node)}: its parent transform {nodeLabel(parent)} is not linear "
            "(non-linear transforms cannot be applied to a DRR); harden or remove it"
        )
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return matrixToArray(m)


def invertibleParentToWorld(node, role: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ToWorld, its inverse)`` of ``node``'s parent transform (identities without one).

    Raises NanoDRRError naming the transform when it is not linear, has NaN/infinite entries, is
    projective (last row not [0, 0, 0, 1]) or is singular: a node under it cannot be placed in world
    coordinates, so this is checked before anything is written.
    """
    m = parentToWorld(node, role)
    parent = node.GetParentTransformNode()
    if parent is None:
        return m, m
    where = f"{role} {nodeLabel(node)}: its parent transform {nodeLabel(parent)}"
    if not np.isfinite(m).all():
        raise NanoDRRError(f"{where} has NaN or infinite entries")
    if np.abs(m[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-12:
        raise NanoDRRError(f"{where} is projective (last row {m[3].tolist()}, expected [0, 0, 0, 1])")
    sv = np.linalg.svd(m[:3, :3], compute_uv=False)
    if not sv[-1] > 1e-9 * max(sv[0], 1.0):
        raise NanoDRRError(f"{where} is singular (not invertible: singular values {sv.tolist()})")
    return m, np.linalg.inv(m)


def checkVolumeNode(volumeNode, role: str = "volumeNode") -> None:
    """A single-component scalar volume (not a labelmap/vector/sequence) with voxels, in a scene."""
    if volumeNode is None:
        raise NanoDRRError(f"{role}: no volume selected")
    if not hasattr(volumeNode, "IsA") or not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        kind = volumeNode.GetClassName() if hasattr(volumeNode, "GetClassName") else type(volumeNode).__name__
        hint = " (select the sequence browser's proxy volume)" if kind == "vtkMRMLSequenceNode" else ""
        raise NanoDRRError(f"{role}: expected a scalar CT volume node, got a {kind}{hint}")
    for cls, what in (
        ("vtkMRMLLabelMapVolumeNode", "a labelmap (use it as a segmentation instead)"),
        ("vtkMRMLTensorVolumeNode", "a vector/tensor volume"),  # vector volumes derive from it
    ):
        if volumeNode.IsA(cls):
            raise NanoDRRError(f"{role} {nodeLabel(volumeNode)}: is {what}, not a scalar CT volume")
    if volumeNode.GetScene() is None:
        raise NanoDRRError(f"{role} {nodeLabel(volumeNode)}: is not in a MRML scene")
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise NanoDRRError(f"{role} {nodeLabel(volumeNode)}: has no voxel data")
    dims = image.GetDimensions()
    if min(dims) < 1 or image.GetNumberOfPoints() == 0:
        raise NanoDRRError(f"{role} {nodeLabel(volumeNode)}: is empty (dimensions {dims})")
    comps = image.GetNumberOfScalarComponents()
    if comps != 1:
        raise NanoDRRError(
            f"{role} {nodeLabel(volumeNode)}: has {comps} components per voxel (a vector, colour or 4D "
            "volume); a CT must be a scalar volume"
        )
    spacing = volumeNode.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise NanoDRRError(
            f"{role} {nodeLabel(volumeNode)}: spacing must be positive and finite, got {tuple(spacing)}"
        )


def volumeToWorld(volumeNode, role: str = "volumeNode") -> np.ndarray:
    """``[4, 4]`` voxel (IJK) → world (RAS) matrix including linear parent transforms."""
    ijk = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijk)
    local = matrixToArray(ijk)
    label = f"{role} {nodeLabel(volumeNode)}"
    if not np.isfinite(local).all():
        raise NanoDRRError(
            f"{label}: its origin, spacing or directions contain NaN or infinity "
            f"(origin {tuple(volumeNode.GetOrigin())}, spacing {tuple(volumeNode.GetSpacing())})"
        )
    parent = parentToWorld(volumeNode, role)
    if not np.isfinite(parent).all():
        raise NanoDRRError(
            f"{label}: its parent transform {nodeLabel(volumeNode.GetParentTransformNode())} has NaN or "
            "infinite entries"
        )
    m = parent @ local
    if not np.isfinite(m).all() or np.abs(m).max() > FLOAT32_MAX:
        raise NanoDRRError(
            f"{label}: its voxel-to-world matrix is out of float32's range (|entries| > 3.4e38)"
        )
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise NanoDRRError(f"{label}: its voxel-to-world matrix is singular")
    return m


def volumeShape(volumeNode) -> tuple[int, int, int]:
    """``(K, J, I)``."""
    i, j, k = volumeNode.GetImageData().GetDimensions()
    return k, j, i


def volumeCenter(voxelToWorld: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """World position of the centre of the voxel grid (the engine's ``subject.isocenter``), float64 ``[3]``."""
    k, j, i = shape
    return (voxelToWorld @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]


def _address(obj) -> str:
    return obj.GetAddressAsString(obj.GetClassName()) if obj is not None else ""


def volumeKey(volumeNode, voxelToWorld: np.ndarray) -> tuple:
    """Changes whenever the voxels or their placement change."""
    image = volumeNode.GetImageData()
    scalars = image.GetPointData().GetScalars()
    return (
        volumeNode.GetID(),
        _address(image),
        image.GetMTime(),
        _address(scalars),
        scalars.GetMTime(),
        tuple(voxelToWorld.ravel().tolist()),
    )


def volumeArray(volumeNode) -> np.ndarray:
    """A float32 copy of the voxels ``[K, J, I]`` (never a view of VTK memory, which may be reallocated)."""
    arr = slicer.util.arrayFromVolume(volumeNode)
    if arr.ndim != 3:
        raise NanoDRRError(f"volumeNode {nodeLabel(volumeNode)}: expected a 3D scalar array, got {arr.shape}")
    if arr.dtype == np.float32:
        return arr.copy()
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise NanoDRRError(f"volumeNode {nodeLabel(volumeNode)}: unsupported voxel type {arr.dtype}")
    return arr.astype(np.float32)


def makeSubject(hu: torch.Tensor, voxelToWorld: np.ndarray, role_node, label=None, maxLabel=None, **mu):
    """``Subject.from_array`` with engine errors re-raised as NanoDRRError naming the node."""
    from nanodrr_engine import Subject

    try:
        return Subject.from_array(hu, voxelToWorld, label=label, max_label=maxLabel, **mu)
    except (ValueError, TypeError) as e:
        raise NanoDRRError(f"volumeNode {nodeLabel(role_node)}: {e}") from e


class _Entry:
    def __init__(self, key: tuple, hu: torch.Tensor, voxelToWorld: np.ndarray) -> None:
        self.key = key
        self.hu = hu  # CPU float32 [K, J, I], shared by every subject built from it
        self.voxelToWorld = voxelToWorld
        self.huOnDevice: dict[str, torch.Tensor] = {}
        self.subjects: dict[str, object] = {}  # device -> Subject (no labels)
        self.labelled: OrderedDict[tuple, object] = OrderedDict()  # (segmentation key, device) -> Subject

    def huOn(self, device: torch.device) -> torch.Tensor:
        """The voxels on ``device`` (one copy per device, shared by all subjects there)."""
        key = str(device)
        if key not in self.huOnDevice:
            self.huOnDevice[key] = self.hu if device.type == "cpu" else self.hu.to(device)
        return self.huOnDevice[key]


class SubjectCache:
    """Per-volume-node cache of converted subjects (plain, and labelled for segment renders).

    Attributes:
        conversionCount: number of node → tensor conversions done (voxel copies).
        labelConversionCount: number of labelled subjects built (segmentation → label volume).
    """

    def __init__(self, maxVolumes: int = 2, maxLabelled: int = 2) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.maxVolumes = maxVolumes
        self.maxLabelled = maxLabelled
        self.conversionCount = 0
        self.labelConversionCount = 0

    def clear(self) -> None:
        self._entries.clear()

    def _entry(self, volumeNode, voxelToWorld: np.ndarray) -> _Entry:
        key = volumeKey(volumeNode, voxelToWorld)
        entry = self._entries.get(volumeNode.GetID())
        if entry is None or entry.key != key:
            import torch

            entry = _Entry(key, torch.from_numpy(volumeArray(volumeNode)), voxelToWorld)
            self.conversionCount += 1
            self._entries[volumeNode.GetID()] = entry
            while len(self._entries) > self.maxVolumes:
                self._entries.popitem(last=False)
        self._entries.move_to_end(volumeNode.GetID())
        return entry

    def subject(self, volumeNode, voxelToWorld: np.ndarray, device: torch.device, mu: dict):
        """The cached plain subject of ``volumeNode`` on ``device`` with μ parameters ``mu``."""
        entry = self._entry(volumeNode, voxelToWorld)
        sub = entry.subjects.get(str(device))
        if sub is None:
            sub = makeSubject(entry.huOn(device), voxelToWorld, volumeNode).to(device)
            entry.subjects[str(device)] = sub
        _setMu(sub, mu)
        return sub

    def labelledSubjects(
        self,
        volumeNode,
        voxelToWorld: np.ndarray,
        device: torch.device,
        mu: dict,
        labelKey: tuple,
        makeLabels: Callable[[], list[tuple[np.ndarray, int, object]]],
    ) -> list[tuple[object, object]]:
        """Subjects whose labelmaps come from ``makeLabels() -> [(labels [K, J, I], max label, meta)]``.

        Returns ``[(subject, meta)]``. Cached under ``labelKey``, which must change whenever the labels
        would; the voxels are shared with the plain subject (no copy).
        """
        base = self.subject(volumeNode, voxelToWorld, device, mu)
        entry = self._entry(volumeNode, voxelToWorld)
        key = (labelKey, str(device))
        subjects = entry.labelled.get(key)
        if subjects is None:
            try:
                # views of the plain subject: same voxels and μ volume, only the labels are new
                _ = base.image  # compute μ once; the views share it
                subjects = [(base.with_labels(lab, top), meta) for lab, top, meta in makeLabels()]
            except (ValueError, TypeError) as e:
                raise NanoDRRError(f"segmentationNode: {e}") from e
            self.labelConversionCount += 1
            entry.labelled[key] = subjects
            while len(entry.labelled) > self.maxLabelled:
                entry.labelled.popitem(last=False)
        entry.labelled.move_to_end(key)
        for sub, _ in subjects:
            _setMu(sub, mu)
        return subjects


def _setMu(subject, mu: dict) -> None:
    # Subject invalidates its μ cache on any assignment, so assign only real changes.
    for name, value in mu.items():
        if getattr(subject, name) != value:
            setattr(subject, name, value)

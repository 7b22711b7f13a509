"""DRR image → single-slice scalar volume node on the detector plane, with display and provenance.

Placement (docs/geometry.md): voxel (i = u, j = v, k = 0) of the ``(1, H, W)`` array lies at the world
position of detector pixel (u, v), the end of its ray:

    IJKToRAS = rt_inv · [[Δx, 0, 0, (½ − W/2)·Δx − x0],
                         [0, Δy, 0, (½ − H/2)·Δy − y0],
                         [0,  0, 1, sdd],
                         [0,  0, 0, 1]]

The node is placed in world coordinates (not under the C-arm), so a DRR stays where it was taken when
the C-arm moves on; if the output node has a linear parent transform its local IJKToRAS compensates
(the parent must be invertible; that is checked before rendering).

Writing never touches data an output node may share with other nodes: every write gives the node a
new ``vtkImageData`` instead of refilling the one it has, which may be the CT's own (a shallow
``CopyContent`` copy, a sequence browser proxy), a segment's labelmap, or another pipeline's output.
A display or storage node the output shares with another node is replaced by its own too (a shared
storage node would save the DRR over the other node's file). Output nodes that are an input of the
same call, or given twice, are refused (:func:`checkOutputNode`, :func:`checkOutputNodes`), and a
non-finite rendered image is refused before anything is written.

Display: an X-ray look by default: grey colour map, window/level from robust percentiles
(0.5 % … 99.5 %), bone bright. "transmission" images (I/I0 = exp(−∫μ ds), bone dark) use the
inverted grey map so bone still looks bright. Per-segment DRRs get a black → segment-colour ramp.

Provenance attributes (``NanoDRR.*``, kept by a saved and reloaded scene): geometry (sdd, delx, dely,
x0, y0, height, width), ``rtInv`` (16 numbers, row-major camera-to-world), ``method`` (``raymarch`` or
``joseph``), ``nSamples`` (ray march only), ``displayMode``, μ parameters, ``segmentIDs`` (JSON
list). The input nodes are node references by role (``NanoDRR.sourceVolume``, ``NanoDRR.cArm``,
``NanoDRR.segmentation``), never IDs in attributes: MRML renames references when a scene is imported
into one whose IDs are taken, attributes it would leave pointing at other nodes. :func:`readAttributes`
reports them as ``sourceVolumeID``, ``cArmID`` and ``segmentationID``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import slicer
import vtk

from .conversion import arrayToMatrix, invertibleParentToWorld, nodeLabel
from .errors import NanoDRRError
from .geometry import CArmGeometry

GREY = "vtkMRMLColorTableNodeGrey"
INVERTED_GREY = "vtkMRMLColorTableNodeInvertedGrey"
DISPLAY_MODES = ("attenuation", "transmission")
ATTRIBUTE_PREFIX = "NanoDRR."


def detectorIJKToRAS(rtInv: np.ndarray, geometry: CArmGeometry) -> np.ndarray:
    """``[4, 4]`` IJKToRAS placing DRR pixel (u, v) at its ray's end on the detector (world mm)."""
    return np.asarray(rtInv, dtype=np.float64) @ geometry.pixelToCamera()


def checkOutputNode(outputNode, scene, forbidden=(), role: str = "outputNode") -> None:
    """``outputNode`` may be None or a scalar (not labelmap) volume in ``scene``, under no parent
    transform or an invertible linear one, and none of the ``forbidden`` (input) nodes."""
    if outputNode is None:
        return
    if not hasattr(outputNode, "IsA") or not outputNode.IsA("vtkMRMLScalarVolumeNode"):
        kind = outputNode.GetClassName() if hasattr(outputNode, "GetClassName") else type(outputNode).__name__
        raise NanoDRRError(f"{role}: expected a scalar volume node, got a {kind}")
    if outputNode.IsA("vtkMRMLLabelMapVolumeNode") or outputNode.IsA("vtkMRMLTensorVolumeNode"):
        raise NanoDRRError(f"{role} {nodeLabel(outputNode)}: must be a plain scalar volume node")
    if outputNode.GetScene() is not scene:
        raise NanoDRRError(f"{role} {nodeLabel(outputNode)}: is not in the volume's scene")
    for node in forbidden:
        if node is not None and outputNode is node:
            raise NanoDRRError(f"{role} {nodeLabel(outputNode)}: cannot overwrite an input node")
    invertibleParentToWorld(outputNode, role)


def checkOutputNodes(outputNodes, segmentationNode, scene, forbidden=()) -> dict:
    """``renderSegments``' ``{segmentId: output node}``, validated; returns a plain dict.

    Keys must be segment IDs of ``segmentationNode`` (entries for segments that are not rendered are
    left alone); values as for :func:`checkOutputNode`, each node for at most one segment.
    """
    if outputNodes is None:
        return {}
    if not isinstance(outputNodes, Mapping):
        raise NanoDRRError(
            f"outputNodes: expected a dict {{segmentId: volume node}}, got a {type(outputNodes).__name__}"
        )
    segmentation = segmentationNode.GetSegmentation()
    owner: dict[int, str] = {}
    result = {}
    for sid, node in outputNodes.items():
        if not isinstance(sid, str):
            raise NanoDRRError(f"outputNodes: keys must be segment IDs (strings), got {sid!r}")
        if segmentation.GetSegment(sid) is None:
            raise NanoDRRError(
                f"outputNodes: segmentation {nodeLabel(segmentationNode)} has no segment {sid!r}"
            )
        checkOutputNode(node, scene, forbidden, role=f"outputNodes[{sid!r}]")
        if node is not None:
            if id(node) in owner:
                raise NanoDRRError(
                    f"outputNodes[{sid!r}] {nodeLabel(node)}: is also the output of segment "
                    f"{owner[id(node)]!r}; each segment needs its own node"
                )
            owner[id(node)] = sid
        result[sid] = node
    return result


def checkFiniteImage(image: np.ndarray, role: str = "render") -> None:
    """Refuse an image with NaN or infinite pixels (nothing is written)."""
    bad = int(np.count_nonzero(~np.isfinite(image)))
    if bad:
        raise NanoDRRError(
            f"{role}: the rendered image has {bad} NaN or infinite pixel(s) of {image.size}; nothing was "
            "written (check the geometry, the C-arm pose and the μ parameters)"
        )


def robustWindow(image: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` display range: 0.5th percentile of all pixels, 99.5th of the non-zero ones.

    Using the non-zero pixels for the top keeps small structures (a segment DRR covering 1 % of the
    detector) visible instead of saturating the window at 0.
    """
    values = image[np.isfinite(image)]
    if values.size == 0:
        return 0.0, 1.0
    lo = float(np.percentile(values, 0.5))
    nonzero = values[values != 0]
    hi = float(np.percentile(nonzero if nonzero.size else values, 99.5))
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-3, 1e-6)
    return lo, hi


def writeDRR(
    scene,
    image: np.ndarray,
    ijkToWorld: np.ndarray,
    outputNode=None,
    name: str = "DRR",
    attributes: dict | None = None,
    references: dict | None = None,
    colorNodeID: str = GREY,
    autoWindowLevel: bool = True,
):
    """Create or overwrite ``outputNode`` with ``image [H, W]`` placed by ``ijkToWorld``.

    Inputs must have been validated (see :func:`checkOutputNode`); this only writes.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    checkFiniteImage(image)
    if outputNode is None:
        outputNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    _, worldToParent = invertibleParentToWorld(outputNode, "outputNode")
    wasModifying = outputNode.StartModify()
    try:
        outputNode.SetIJKToRASMatrix(arrayToMatrix(worldToParent @ ijkToWorld))
        # Fresh image data: the node's current one may be shared (see the module docstring).
        outputNode.SetAndObserveImageData(vtk.vtkImageData())
        slicer.util.updateVolumeFromArray(outputNode, image[None])
        storage = outputNode.GetStorageNode()
        if storage is not None and _sharedWithOthers(
            scene, outputNode, storage.GetID(), "vtkMRMLStorableNode", _storageIDs
        ):
            outputNode.SetAndObserveStorageNodeID(None)
        for key, value in (attributes or {}).items():
            if value is None:
                outputNode.RemoveAttribute(ATTRIBUTE_PREFIX + key)
            else:
                outputNode.SetAttribute(ATTRIBUTE_PREFIX + key, _attr(value))
        for role, node in (references or {}).items():
            outputNode.SetNodeReferenceID(ATTRIBUTE_PREFIX + role, node.GetID() if node is not None else None)
            outputNode.RemoveAttribute(ATTRIBUTE_PREFIX + role + "ID")  # written by older versions
    finally:
        outputNode.EndModify(wasModifying)

    display = outputNode.GetDisplayNode()
    if display is not None and _sharedWithOthers(
        scene, outputNode, display.GetID(), "vtkMRMLDisplayableNode", _displayIDs
    ):
        outputNode.RemoveAllDisplayNodeIDs()
        display = None
    if display is None:
        outputNode.CreateDefaultDisplayNodes()
        display = outputNode.GetDisplayNode()
    if display is not None:
        wasModifying = display.StartModify()
        display.SetAndObserveColorNodeID(colorNodeID)
        if autoWindowLevel:
            lo, hi = robustWindow(image)
            display.SetAutoWindowLevel(0)
            display.SetWindowLevelMinMax(lo, hi)
        display.EndModify(wasModifying)
    return outputNode


def _displayIDs(node) -> list:
    return [node.GetNthDisplayNodeID(i) for i in range(node.GetNumberOfDisplayNodes())]


def _storageIDs(node) -> list:
    return [node.GetNthStorageNodeID(i) for i in range(node.GetNumberOfStorageNodes())]


def _sharedWithOthers(scene, node, nodeID: str, cls: str, ids) -> bool:
    """Whether a ``cls`` node other than ``node`` refers to ``nodeID`` (as listed by ``ids(other)``)."""
    others = scene.GetNodesByClass(cls)
    others.UnRegister(scene)  # a new collection (as in slicer.util.getNodesByClass)
    for i in range(others.GetNumberOfItems()):
        other = others.GetItemAsObject(i)
        if other is not node and nodeID in ids(other):
            return True
    return False


def segmentColorNode(scene, segmentName: str, color, existingID: str | None = None):
    """A 256-entry black → ``color`` colour table for a segment DRR (reused if ``existingID`` is ours)."""
    node = scene.GetNodeByID(existingID) if existingID else None
    if node is None or node.GetAttribute(ATTRIBUTE_PREFIX + "role") != "segmentColor":
        node = scene.AddNewNodeByClass(
            "vtkMRMLColorTableNode", scene.GenerateUniqueName(f"{segmentName} DRR")
        )
        node.SetAttribute(ATTRIBUTE_PREFIX + "role", "segmentColor")
        node.SetTypeToUser()
        node.SetNumberOfColors(256)
        node.GetLookupTable().SetRange(0, 255)
        node.SetHideFromEditors(False)
    r, g, b = (float(c) for c in color)
    for i in range(256):
        f = i / 255.0
        node.SetColor(i, f"{i}", r * f, g * f, b * f, 1.0)
    node.SetAttribute(ATTRIBUTE_PREFIX + "segmentColor", f"{r:.6g} {g:.6g} {b:.6g}")
    return node


#: Roles of the ``NanoDRR.<role>`` node references that :func:`readAttributes` reports as ``<role>ID``.
REFERENCE_ROLES = ("sourceVolume", "cArm", "segmentation")


def readAttributes(node) -> dict:
    """The ``NanoDRR.*`` attributes of a DRR (or C-arm) node, parsed (numbers, matrices, lists).

    ``sourceVolumeID``, ``cArmID`` and ``segmentationID`` are the IDs the node's references point at now
    (absent without the reference); attributes of those names, which older versions wrote, are ignored
    as they go stale when an import renames IDs.
    """
    out = {}
    ids = {role + "ID" for role in REFERENCE_ROLES}
    for key in node.GetAttributeNames() or ():
        if not key.startswith(ATTRIBUTE_PREFIX):
            continue
        raw = node.GetAttribute(key)
        name = key[len(ATTRIBUTE_PREFIX) :]
        if name not in ids:
            out[name] = _parse(name, raw)
    roles = []
    node.GetNodeReferenceRoles(roles)  # asking for an absent role would add it to the node: list them first
    for role in REFERENCE_ROLES:
        referenced = (
            node.GetNodeReferenceID(ATTRIBUTE_PREFIX + role) if ATTRIBUTE_PREFIX + role in roles else None
        )
        if referenced:
            out[role + "ID"] = referenced
    return out


def geometryFromNode(node) -> CArmGeometry:
    """The :class:`CArmGeometry` a DRR node was rendered with (from its attributes)."""
    a = readAttributes(node)
    try:
        return CArmGeometry(
            sdd=a["sdd"], height=int(a["height"]), width=int(a["width"]), delx=a["delx"], dely=a["dely"],
            x0=a["x0"], y0=a["y0"],
        )  # fmt: skip
    except KeyError as e:
        raise NanoDRRError(
            f"node {nodeLabel(node)}: is not a NanoDRR image (missing attribute {e})"
        ) from None


def conventionalDisplayArray(node) -> np.ndarray:
    """The DRR ``[H, W]`` as conventionally displayed: seen from the detector, head up.

    Stored images are seen from the source (pixel u along camera x); for a proper-rotation pose this
    flips the columns (nanodrr_engine.camera.carm.to_display). A mirrored ("PA") pose already shows
    the detector's view.
    """
    arr = slicer.util.arrayFromVolume(node)[0]
    rt = readAttributes(node).get("rtInv")
    if rt is None or np.linalg.det(np.asarray(rt)[:3, :3]) > 0:
        return arr[:, ::-1].copy()
    return arr.copy()


def _attr(value) -> str:
    if isinstance(value, np.ndarray):
        return " ".join(f"{v:.17g}" for v in value.ravel())
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    if isinstance(value, float):
        return f"{value:.17g}"
    return str(value)


def _parse(name: str, raw: str):
    if raw is None:
        return None
    if name == "rtInv":
        return np.array([float(v) for v in raw.split()]).reshape(4, 4)
    if raw.startswith("["):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    try:
        f = float(raw)
    except ValueError:
        return raw
    return int(f) if name in ("height", "width", "nSamples") else f

"""Showing NanoDRR's nodes in views: C-arm handles, the DRR in a slice view and on its detector in 3D.

Pure MRML (no Qt, no trame), so the Slicer widget and the web app share it. The host owns its views and
passes their MRML nodes: a slice view's ``vtkMRMLSliceNode`` and ``vtkMRMLSliceCompositeNode``.

Conventions (docs/geometry.md): a DRR node's voxel (u, v) lies on detector pixel (u, v) in world, the image
as seen from the source. :func:`alignSliceToImage` looks at it from beyond the detector, back at the source,
which is a radiograph's conventional display (row 0 at the top; the columns run right to left on screen).
"""

from __future__ import annotations

import numpy as np

from .carm import cArmToWorld, isocenter
from .conversion import arrayToMatrix, checkVolumeNode, nodeLabel, volumeShape, volumeToWorld
from .errors import NanoDRRError


def enableCArmInteraction(carmNode, volumeNode, rotation: bool = True, translation: bool = False) -> None:
    """Interaction handles on the C-arm transform in 3D, rotating about the volume's centre.

    Translation is off by default: a C-arm orbits its isocenter. The centre of transformation is given in
    the transform's local (camera) frame, so it is recomputed from the current pose.
    """
    pose = cArmToWorld(carmNode)
    checkVolumeNode(volumeNode)
    carmNode.CreateDefaultDisplayNodes()
    display = carmNode.GetDisplayNode()
    if display is None:
        raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: has no display node for interaction handles")
    center = np.linalg.inv(pose) @ np.append(isocenter(volumeNode), 1.0)
    wasModifying = display.StartModify()
    display.SetEditorVisibility(True)
    display.SetEditorRotationEnabled(bool(rotation))
    display.SetEditorTranslationEnabled(bool(translation))
    display.SetEditorScalingEnabled(False)
    if hasattr(display, "SetEditorSliceIntersectionVisibility"):  # Slicer ≥ 5.8: no handles in slice views
        display.SetEditorSliceIntersectionVisibility(False)
    display.EndModify(wasModifying)
    carmNode.SetCenterOfTransformation(*(float(c) for c in center[:3]))


def setCArmHandlesVisible(carmNode, visible: bool) -> None:
    """Show or hide the C-arm's 3D interaction handles (if it has a display node)."""
    display = carmNode.GetDisplayNode() if carmNode is not None else None
    if display is not None:
        display.SetEditorVisibility(bool(visible))


def sliceToRASForImage(volumeNode) -> np.ndarray:
    """``[4, 4]`` SliceToRAS putting the slice plane on a single-slice image, seen from beyond it.

    The slice x axis runs along −i (columns right to left), y along −j (rows down the screen), the normal
    x × y along the beam; the origin is the image centre.
    """
    checkVolumeNode(volumeNode)
    ijkToWorld = volumeToWorld(volumeNode)
    i, j, k = (volumeShape(volumeNode)[2], volumeShape(volumeNode)[1], volumeShape(volumeNode)[0])
    if k != 1:
        raise NanoDRRError(
            f"volumeNode {nodeLabel(volumeNode)}: expected a single-slice image, got {k} slices"
        )
    axisX = -ijkToWorld[:3, 0] / np.linalg.norm(ijkToWorld[:3, 0])
    axisY = -ijkToWorld[:3, 1] / np.linalg.norm(ijkToWorld[:3, 1])
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = axisX, axisY, np.cross(axisX, axisY)
    m[:3, 3] = (ijkToWorld @ np.array([(i - 1) / 2.0, (j - 1) / 2.0, 0.0, 1.0]))[:3]
    return m


def alignSliceToImage(sliceNode, volumeNode) -> None:
    """Put ``sliceNode``'s plane on the DRR ``volumeNode`` in the conventional display orientation."""
    if not hasattr(sliceNode, "IsA") or not sliceNode.IsA("vtkMRMLSliceNode"):
        raise NanoDRRError(f"sliceNode: expected a vtkMRMLSliceNode, got {type(sliceNode).__name__}")
    sliceNode.GetSliceToRAS().DeepCopy(arrayToMatrix(sliceToRASForImage(volumeNode)))
    sliceNode.UpdateMatrices()


def showDRRInSlice(sliceNode, compositeNode, drrNode, showIn3D: bool = True) -> None:
    """The DRR as the slice view's only layer, aligned to it; its slice shown in 3D on the detector plane.

    The host fits the view to the image afterwards (that needs the view's size: Slicer's
    ``fitSliceToBackground``, trame-slicer's ``SliceView.fit_view_to_content``).
    """
    if drrNode is None or drrNode.GetImageData() is None:
        raise NanoDRRError("drrNode: no DRR to show (render first)")
    compositeNode.SetBackgroundVolumeID(drrNode.GetID())
    compositeNode.SetForegroundVolumeID(None)
    compositeNode.SetLabelVolumeID(None)
    alignSliceToImage(sliceNode, drrNode)
    sliceNode.SetSliceVisible(bool(showIn3D))


__all__ = [
    "alignSliceToImage",
    "enableCArmInteraction",
    "setCArmHandlesVisible",
    "showDRRInSlice",
    "sliceToRASForImage",
]

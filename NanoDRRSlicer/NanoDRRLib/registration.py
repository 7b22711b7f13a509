"""2D/3D registration in the scene: move the C-arm transform node so that its DRR matches an X-ray node.

``registerCArm`` validates everything first, then runs ``nanodrr_engine.registration.register`` on the
CT (the logic's cached subject) and the X-ray, and only then moves the C-arm: a failed or cancelled
registration leaves it exactly where it was. The previous pose is kept on the C-arm
(``NanoDRR.Registration.previousRtInv``) so :func:`undoRegistration` can restore it, and the result is
recorded as ``NanoDRR.Registration.*`` attributes. The X-ray and the CT are never modified.

The X-ray node is any single-slice scalar volume whose size is the detector's (a different size is
refused, not resampled: the detector geometry would no longer describe it):

- a NanoDRR DRR node (``NanoDRR.role`` = "DRR"): its ``displayMode`` says line integral or
  transmission; it is already seen from the source;
- a radiograph (e.g. from :func:`loadXray`): taken to line integrals by ``preprocess_xray``
  (``NanoDRR.photometric`` picks the encoding) and flipped from the detector's view to the source's.
"""

from __future__ import annotations

import numpy as np
import slicer

from . import carm as _carm
from .conversion import arrayToMatrix, nodeLabel
from .errors import NanoDRRError
from .geometry import CArmGeometry
from .output import ATTRIBUTE_PREFIX, detectorIJKToRAS, readAttributes

PREFIX = ATTRIBUTE_PREFIX + "Registration."


def xrayTarget(xrayNode, geometry: CArmGeometry, scene) -> tuple[np.ndarray, np.ndarray]:
    """``(line integrals [H, W] float32 as seen from the source, mask [H, W] bool)`` of an X-ray node."""
    if not hasattr(xrayNode, "IsA") or not xrayNode.IsA("vtkMRMLScalarVolumeNode"):
        kind = xrayNode.GetClassName() if hasattr(xrayNode, "GetClassName") else type(xrayNode).__name__
        raise NanoDRRError(f"xrayNode: expected a scalar volume node, got a {kind}")
    if xrayNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: is a labelmap, not an X-ray")
    if xrayNode.GetScene() is not scene:
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: is not in the volume's scene")
    if xrayNode.GetImageData() is None:
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: has no image data")
    array = slicer.util.arrayFromVolume(xrayNode)
    if array.ndim != 3 or array.shape[0] != 1:
        raise NanoDRRError(
            f"xrayNode {nodeLabel(xrayNode)}: expected a single-slice image, got {array.shape}"
        )
    image = np.asarray(array[0], dtype=np.float64)
    if image.shape != (geometry.height, geometry.width):
        raise NanoDRRError(
            f"xrayNode {nodeLabel(xrayNode)}: is {image.shape[0]}×{image.shape[1]} pixels but geometry is "
            f"{geometry.height}×{geometry.width}; set the detector to the X-ray's size (it is not resampled)"
        )
    if not np.isfinite(image).all():
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: contains NaN or infinite pixels")
    attrs = readAttributes(xrayNode)
    if attrs.get("role") == "DRR":
        if attrs.get("displayMode") == "transmission":
            if image.min() <= 0:
                raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: transmission DRR has pixels <= 0")
            image = -np.log(np.minimum(image, 1.0))
        return image.astype(np.float32), np.ones(image.shape, dtype=bool)
    import torch
    from nanodrr_engine.data.xray import preprocess_xray

    photometric = attrs.get("photometric")
    photometric = photometric if photometric in ("MONOCHROME1", "MONOCHROME2") else "MONOCHROME2"
    try:
        fromDetector = attrs.get("viewedFrom") != "source"
        p, use = preprocess_xray(torch.from_numpy(image), photometric=photometric, flip_columns=fromDetector)
    except ValueError as e:
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: {e}") from e
    return p[0, 0].numpy(), use[0, 0].numpy()


def registerCArm(
    logic,
    volumeNode,
    carmNode,
    xrayNode,
    geometry: CArmGeometry,
    *,
    device=None,
    method: str = "joseph",
    backend: str = "auto",
    nSamples: int = 250,
    progressCallback=None,
    **options,
) -> dict:
    """Register ``xrayNode`` to ``volumeNode`` by moving ``carmNode`` (see the module docstring).

    ``options`` go to ``nanodrr_engine.registration.register`` (factors, lr, max_iterations, starts, ...).
    Returns ``{"similarityBefore", "similarityAfter", "iterations", "seconds", "stopReason"}``.
    """
    req = logic._validate(
        volumeNode, carmNode, geometry, nSamples, device, None, None, "attenuation", backend, method
    )
    _carm.checkLinearTransformNode(carmNode)
    target, mask = xrayTarget(xrayNode, req.geometry, req.scene)
    if progressCallback is not None and not callable(progressCallback):
        raise NanoDRRError(
            f"progressCallback: must be callable or None, got {type(progressCallback).__name__}"
        )
    import inspect

    from nanodrr_engine.registration import register

    allowed = set(inspect.signature(register).parameters) - {
        "subject", "target", "k_inv", "sdd", "rt_inv", "height", "width", "mask", "method", "backend",
        "n_samples", "progress",
    }  # fmt: skip
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise NanoDRRError(
            f"options: unknown registration option(s) {unknown}; expected some of {sorted(allowed)}"
        )
    import torch

    g = req.geometry
    subject = logic._cache.subject(volumeNode, req.voxelToWorld, req.device, req.mu)
    from nanodrr_engine import make_k_inv

    k_inv = make_k_inv(
        g.sdd, g.delx, g.dely, g.x0, g.y0, g.height, g.width, dtype=torch.float64, device=req.device
    )
    rt = torch.as_tensor(req.pose, dtype=torch.float64, device=req.device)[None]
    y = torch.from_numpy(target)[None, None].to(req.device)
    m = torch.from_numpy(mask)[None, None].to(req.device)
    report = progressCallback or (lambda fraction, message="": None)
    try:
        result = register(
            subject, y, k_inv, float(g.sdd), rt, int(g.height), int(g.width), mask=m, method=req.method,
            backend=req.backend, n_samples=req.nSamples, progress=report, **options,
        )  # fmt: skip
    except NanoDRRError:
        raise
    except (ValueError, TypeError) as e:
        raise NanoDRRError(f"registration: {e}") from e
    report(1.0, "Registered: moving the C-arm")  # a scene stage again (see NanoDRRLib.workflow.renderStage)
    pose = result.rt_inv[0].cpu().numpy()
    previous = req.pose
    _carm.setToWorld(carmNode, pose)
    summary = {
        "similarityBefore": 1.0 - result.initial_loss,
        "similarityAfter": 1.0 - result.loss,
        "iterations": result.iterations,
        "seconds": result.seconds,
        "stopReason": result.stop_reason,
    }
    wasModifying = carmNode.StartModify()
    carmNode.SetAttribute(PREFIX + "previousRtInv", " ".join(f"{v:.17g}" for v in previous.ravel()))
    for key, value in summary.items():
        carmNode.SetAttribute(PREFIX + key, f"{value:.17g}" if isinstance(value, float) else str(value))
    carmNode.SetNodeReferenceID(PREFIX + "xray", xrayNode.GetID())
    carmNode.EndModify(wasModifying)
    return summary


def undoRegistration(carmNode) -> None:
    """Put the C-arm back where the last :func:`registerCArm` found it (once)."""
    _carm.checkLinearTransformNode(carmNode)
    raw = carmNode.GetAttribute(PREFIX + "previousRtInv")
    if not raw:
        raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: has no registration to undo")
    previous = np.array([float(v) for v in raw.split()]).reshape(4, 4)
    _carm.setToWorld(carmNode, previous)
    carmNode.RemoveAttribute(PREFIX + "previousRtInv")


def loadXray(scene, path, volumeNode=None, name: str | None = None, **geometry) -> tuple:
    """Read an X-ray file into a new scalar volume node: ``(node, CArmGeometry or None, C-arm node or None)``.

    The detector geometry comes from the file's tags (DICOM) or ``geometry`` (sdd, delx, dely, sod,
    primary, secondary); with the positioner angles, the SOD and ``volumeNode`` a C-arm transform node is
    created at that pose about the volume's centre and the X-ray is placed on its detector plane.
    """
    from nanodrr_engine.data.xray import read_xray

    try:
        xray = read_xray(path, **geometry)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise NanoDRRError(f"path: {e}") from e
    image = xray.image[0, 0].numpy()
    det = pose = None
    if xray.sdd is not None and xray.delx is not None:
        det = CArmGeometry(
            sdd=xray.sdd, height=xray.height, width=xray.width, delx=xray.delx, dely=xray.dely
        ).checked()
    if det is not None and volumeNode is not None and None not in (xray.primary, xray.secondary, xray.sod):
        try:
            pose = _carm.poseFromAngles(xray.primary, xray.secondary, xray.sod, _carm.isocenter(volumeNode))
        except ValueError as e:
            raise NanoDRRError(f"path: {path}: {e}") from e
    elif volumeNode is not None:
        _carm.isocenter(volumeNode)  # validates the node
    # everything is checked: now create the nodes
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or scene.GenerateUniqueName("X-ray"))
    carmNode = None
    if pose is not None:
        carmNode = _carm.createCArmTransform(volumeNode, xray.sod, name=f"{node.GetName()} C-arm")
        _carm.setToWorld(carmNode, pose)
        # stored seen from the detector: flip columns so voxel (u, v) sits on detector pixel (u, v)
        image = image[:, ::-1]
        node.SetIJKToRASMatrix(arrayToMatrix(detectorIJKToRAS(pose, det)))
        node.SetAttribute(ATTRIBUTE_PREFIX + "viewedFrom", "source")
    elif det is not None:
        node.SetSpacing(det.delx, det.dely, 1.0)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(image, dtype=np.float32)[None])
    node.SetAttribute(ATTRIBUTE_PREFIX + "role", "X-ray")
    node.SetAttribute(ATTRIBUTE_PREFIX + "photometric", xray.photometric)
    node.SetAttribute(ATTRIBUTE_PREFIX + "sourceFile", str(path))
    node.CreateDefaultDisplayNodes()
    return node, det, carmNode


def initializeFromXray(xrayNode, volumeNode, carmNode) -> tuple[CArmGeometry, tuple[float, float, float]]:
    """Move ``carmNode`` to the pose in the DICOM tags of the file ``xrayNode`` was loaded from.

    Returns ``(detector geometry, (primary, secondary, sod))`` from the tags. Refuses, before moving
    anything, an X-ray not loaded from a file, a file that is gone or changed size, or one whose tags
    lack the distances, the pixel spacing or the positioner angles.
    """
    from nanodrr_engine.data.xray import read_xray

    if not hasattr(xrayNode, "IsA") or not xrayNode.IsA("vtkMRMLScalarVolumeNode"):
        raise NanoDRRError("xrayNode: expected a scalar volume node loaded from an X-ray file")
    _carm.checkLinearTransformNode(carmNode)
    center = _carm.isocenter(volumeNode)
    path = xrayNode.GetAttribute(ATTRIBUTE_PREFIX + "sourceFile")
    if not path:
        raise NanoDRRError(
            f"xrayNode {nodeLabel(xrayNode)}: was not loaded from an X-ray file (Load X-ray… reads one)"
        )
    try:
        xray = read_xray(path)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: {e}") from e
    missing = [
        tag
        for tag, value in (
            ("DistanceSourceToDetector", xray.sdd),
            ("DistanceSourceToPatient", xray.sod),
            ("ImagerPixelSpacing or PixelSpacing", xray.delx),
            ("PositionerPrimaryAngle", xray.primary),
            ("PositionerSecondaryAngle", xray.secondary),
        )
        if value is None
    ]
    if missing:
        raise NanoDRRError(
            f"xrayNode {nodeLabel(xrayNode)}: {path} has no {', '.join(missing)}; "
            "set the detector and the C-arm by hand"
        )
    dims = xrayNode.GetImageData().GetDimensions() if xrayNode.GetImageData() is not None else None
    if dims is None or (dims[1], dims[0]) != (xray.height, xray.width):
        raise NanoDRRError(
            f"xrayNode {nodeLabel(xrayNode)}: its pixels no longer match {path} ({xray.height}×{xray.width})"
        )
    geometry = CArmGeometry(
        sdd=xray.sdd, height=xray.height, width=xray.width, delx=xray.delx, dely=xray.dely
    ).checked()
    try:
        pose = _carm.poseFromAngles(xray.primary, xray.secondary, xray.sod, center)
    except ValueError as e:
        raise NanoDRRError(f"xrayNode {nodeLabel(xrayNode)}: {e}") from e
    _carm.setToWorld(carmNode, pose)
    return geometry, (float(xray.primary), float(xray.secondary), float(xray.sod))

"""The C-arm pose as a Slicer linear transform node, and clinical (DICOM) angles.

The C-arm is a ``vtkMRMLLinearTransformNode`` whose **ToWorld matrix is the camera-to-world matrix
rt_inv** (docs/geometry.md): its origin is the X-ray source, its +z axis the central beam, the
detector is the plane z = sdd, camera x runs along detector columns and y along rows. Models placed
under it (the beam/detector model of :mod:`.geometry_model`) move with the C-arm. The node is never put
under the volume's parent transform: the matrix is already in world coordinates.

Two ways to set the pose, both about the isocenter c = the volume's centre in world (parent
transforms included, equal to the engine's ``subject.isocenter``):

- ``createCArmTransform(volume, sod, orientation, rotation)``: nanodrr's pose helper,
  ``rt_inv = make_rt_inv(rotation, t, orientation, c)`` with the source ``sod`` mm from c on the beam
  axis: t = (0, sod, 0) for "AP" (rotation 0: source anterior, beam anterior → posterior, nanodrr's
  standard view), (0, −sod, 0) for "PA" and (0, 0, −sod) for ``None``. Note "PA" is a mirror
  (determinant −1), which would mirror models placed under the node.
- ``setCArmAngles(carm, volume, P, S, sod)``: DICOM positioner angles (the detector's position;
  P + = LAO, − = RAO; S + = CRAN, − = CAUD), always a proper rotation:
  ``rt_inv = make_rt_inv((P + 180, −S, 0), (0, sod, 0), "AP", c)`` (= ``carm_to_rt_inv``), so the
  source is at ``c + sod·(sin P·cos S, −cos P·cos S, −sin S)`` (RAS, +x = patient right):

  ==========================  =========================  ===============================
  view (P, S)                 source − c (units of SOD)  image (as seen from the source)
  ==========================  =========================  ===============================
  AP / frontal (0, 0)         (0, −1, 0)                 row 0 superior ("head up")
  LAO 90 (+90, 0)             (1, 0, 0)                  row 0 superior
  RAO 30 (−30, 0)             (−0.5, −0.866, 0)          row 0 superior
  CRAN 20 (0, +20)            (0, −0.940, −0.342)
  LAO 30 CAUD 25 (+30, −25)   (0.453, −0.785, 0.423)
  ==========================  =========================  ===============================

  Its DRRs are seen from the source; the conventional display (from the detector, head up, the
  patient's right on the viewer's left for the frontal view) flips the columns, see
  :func:`.output.conventionalDisplayArray`. In the 3D view the DRR sits on the detector plane, so
  it looks right from the detector side without any flip.

Valid angles (DICOM): primary −180…180°, secondary −90…90°; ``setCArmAngles`` refuses others (secondary
95° would be the pose (180°, 85°) turned upside down). ``getCArmAngles`` (``rt_inv_to_carm``) inverts
``setCArmAngles`` on that whole range: the angles come from the C-arm's orientation (beam direction),
sod from the source's distance to c; primary is returned in (−180, 180] (−180 reads back as 180, the same
pose); at |secondary| = 90 (beam along the head–foot axis) primary is the detector's in-plane orientation.
A pose with a roll about the beam (e.g. moved with the 3D handles) reports its beam's angles without the
roll. A mirrored pose (determinant −1, e.g. ``createCArmTransform(..., orientation="PA")``) reports the
angles of the proper pose with the same source and beam, whose DRRs are its DRRs with the columns flipped.
"""

from __future__ import annotations

import numpy as np
import vtk

from .conversion import (
    arrayToMatrix,
    checkVolumeNode,
    invertibleParentToWorld,
    matrixToArray,
    nodeLabel,
    volumeCenter,
    volumeShape,
    volumeToWorld,
)
from .errors import NanoDRRError
from .geometry import FLOAT32_MAX, checkNumber

ORIENTATIONS = ("AP", "PA", None)


def isocenter(volumeNode) -> np.ndarray:
    """World (RAS) position of the volume's centre, parent transforms included; float64 ``[3]``."""
    checkVolumeNode(volumeNode)
    return volumeCenter(volumeToWorld(volumeNode), volumeShape(volumeNode))


def checkRotation(rotation) -> tuple[float, float, float]:
    """Three Euler angles in degrees (a sequence, never a string: ``"123"`` is not (1, 2, 3))."""
    if (
        isinstance(rotation, (str, bytes))
        or not hasattr(rotation, "__len__")
        or not hasattr(rotation, "__iter__")
    ):
        raise NanoDRRError(f"rotation: expected three angles in degrees, got {rotation!r}")
    if len(rotation) != 3:
        raise NanoDRRError(f"rotation: expected three angles in degrees, got {len(rotation)} ({rotation!r})")
    a, b, c = (checkNumber(r, f"rotation[{i}]", unit="degrees") for i, r in enumerate(rotation))
    return a, b, c


def poseFromRotation(rotation, sod: float, orientation, center: np.ndarray) -> np.ndarray:
    """``make_rt_inv(rotation, −sod·beam_axis(orientation), orientation, center)`` as float64 ``[4, 4]``."""
    from nanodrr_engine.camera.extrinsics import ORIENTATIONS as ENGINE_ORIENTATIONS
    from nanodrr_engine.camera.extrinsics import make_rt_inv

    beam = np.asarray(ENGINE_ORIENTATIONS[orientation], dtype=np.float64)[:3, 2]
    translation = -sod * beam
    return make_rt_inv(
        np.asarray(rotation, dtype=np.float64), translation, orientation, np.asarray(center, dtype=np.float64)
    ).numpy()


def poseFromAngles(primary: float, secondary: float, sod: float, center: np.ndarray) -> np.ndarray:
    """DICOM angles → proper camera-to-world matrix (``carm_to_rt_inv``), float64 ``[4, 4]``."""
    from nanodrr_engine.camera.carm import carm_to_rt_inv

    return carm_to_rt_inv(primary, secondary, sod, np.asarray(center, dtype=np.float64)).numpy()


def cArmToWorld(carmNode, role: str = "carmNode", atol: float = 1e-4) -> np.ndarray:
    """The C-arm's camera-to-world matrix, checked to be a rigid (rotation or mirror) transform."""
    if carmNode is None:
        raise NanoDRRError(f"{role}: no C-arm transform selected")
    if not hasattr(carmNode, "IsA") or not carmNode.IsA("vtkMRMLTransformNode"):
        kind = carmNode.GetClassName() if hasattr(carmNode, "GetClassName") else type(carmNode).__name__
        raise NanoDRRError(f"{role}: expected a linear transform node, got a {kind}")
    if carmNode.GetScene() is None:
        raise NanoDRRError(f"{role} {nodeLabel(carmNode)}: is not in a MRML scene")
    if not carmNode.IsTransformToWorldLinear():
        raise NanoDRRError(f"{role} {nodeLabel(carmNode)}: is not a linear transform (to world)")
    m = vtk.vtkMatrix4x4()
    carmNode.GetMatrixTransformToWorld(m)
    a = matrixToArray(m)
    if not np.isfinite(a).all():
        raise NanoDRRError(f"{role} {nodeLabel(carmNode)}: matrix has NaN or infinite entries")
    if np.abs(a).max() > FLOAT32_MAX:
        raise NanoDRRError(f"{role} {nodeLabel(carmNode)}: matrix entries are out of float32's range")
    r = a[:3, :3]
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if err > atol:
        raise NanoDRRError(
            f"{role} {nodeLabel(carmNode)}: matrix is not rigid (max |RᵀR − I| = {err:.3g}); scaling or "
            "shear is not a valid C-arm pose"
        )
    if np.abs(a[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
        raise NanoDRRError(f"{role} {nodeLabel(carmNode)}: matrix last row must be [0, 0, 0, 1]")
    return a


def setToWorld(transformNode, toWorld: np.ndarray) -> None:
    """Set a linear transform node so that its ToWorld matrix is ``toWorld`` (parents honoured)."""
    _, worldToParent = invertibleParentToWorld(transformNode, "carmNode")
    transformNode.SetMatrixTransformToParent(arrayToMatrix(worldToParent @ toWorld))


def checkLinearTransformNode(carmNode) -> None:
    if carmNode is None:
        raise NanoDRRError("carmNode: no C-arm transform selected")
    if not hasattr(carmNode, "IsA") or not carmNode.IsA("vtkMRMLLinearTransformNode"):
        kind = carmNode.GetClassName() if hasattr(carmNode, "GetClassName") else type(carmNode).__name__
        raise NanoDRRError(f"carmNode: expected a vtkMRMLLinearTransformNode, got a {kind}")
    if carmNode.GetScene() is None:
        raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: is not in a MRML scene")


def createCArmTransform(volumeNode, sod=850.0, orientation="AP", rotation=(0.0, 0.0, 0.0), name=None):
    """New C-arm transform node posed about ``volumeNode``'s centre (see the module docstring)."""
    checkVolumeNode(volumeNode)
    center = volumeCenter(volumeToWorld(volumeNode), volumeShape(volumeNode))
    sod = checkNumber(sod, "sod", positive=True, unit="mm")
    if not (orientation is None or isinstance(orientation, str)) or orientation not in ORIENTATIONS:
        raise NanoDRRError(f"orientation: expected 'AP', 'PA' or None, got {orientation!r}")
    rotation = checkRotation(rotation)
    if name is not None and not isinstance(name, str):
        raise NanoDRRError(f"name: expected a string, got {name!r}")
    pose = poseFromRotation(rotation, sod, orientation, center)

    scene = volumeNode.GetScene()
    node = scene.AddNewNodeByClass(
        "vtkMRMLLinearTransformNode", name or scene.GenerateUniqueName(f"{volumeNode.GetName()} C-arm")
    )
    node.SetMatrixTransformToParent(arrayToMatrix(pose))
    node.SetAttribute("NanoDRR.role", "C-arm")
    # A reference, not an ID attribute: MRML renames references when an import renames IDs.
    node.SetNodeReferenceID("NanoDRR.sourceVolume", volumeNode.GetID())
    return node


def setCArmAngles(carmNode, volumeNode, primary=0.0, secondary=0.0, sod=850.0) -> None:
    """Pose ``carmNode`` at DICOM angles about ``volumeNode``'s centre (see the module docstring)."""
    checkLinearTransformNode(carmNode)
    checkVolumeNode(volumeNode)
    _checkSameScene(carmNode, volumeNode)
    center = volumeCenter(volumeToWorld(volumeNode), volumeShape(volumeNode))
    primary = checkNumber(primary, "primary", minimum=-180.0, maximum=180.0, unit="degrees (DICOM)")
    secondary = checkNumber(secondary, "secondary", minimum=-90.0, maximum=90.0, unit="degrees (DICOM)")
    sod = checkNumber(sod, "sod", positive=True, unit="mm")
    invertibleParentToWorld(carmNode, "carmNode")  # before anything is set
    setToWorld(carmNode, poseFromAngles(primary, secondary, sod, center))


def getCArmAngles(carmNode, volumeNode) -> tuple[float, float, float]:
    """``(primary, secondary, sod)`` of the C-arm about ``volumeNode``'s centre; inverts :func:`setCArmAngles`.

    Angles in degrees (primary in (−180, 180], secondary in [−90, 90]), sod in mm; see the module
    docstring for the poles (|secondary| = 90), rolled and mirrored poses.
    """
    from nanodrr_engine.camera.carm import rt_inv_to_carm

    pose = cArmToWorld(carmNode)
    checkVolumeNode(volumeNode)
    _checkSameScene(carmNode, volumeNode)
    center = volumeCenter(volumeToWorld(volumeNode), volumeShape(volumeNode))
    try:
        return rt_inv_to_carm(pose, center)
    except ValueError as e:
        raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: {e}") from e


def _checkSameScene(carmNode, volumeNode) -> None:
    if carmNode.GetScene() is not volumeNode.GetScene():
        raise NanoDRRError(f"carmNode {nodeLabel(carmNode)}: is not in the volume's scene")

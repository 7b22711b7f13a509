"""C-arm transform node: pose helper, isocenter with parent transforms, DICOM angles (geometry.md table)."""

from __future__ import annotations

import numpy as np
import pytest
from NanoDRRLib import CArmGeometry, NanoDRRError, conventionalDisplayArray
from slicer_testutils import (
    addTransform,
    addVolume,
    affine,
    poseOf,
    rotation,
    vtkMatrix,
)

SOD = 850.0

# geometry.md, "Clinical C-arm angles": (primary, secondary) -> (source − isocenter) / SOD in RAS
CLINICAL_TABLE = {
    "AP": ((0.0, 0.0), (0.0, -1.0, 0.0)),
    "LAO 90": ((90.0, 0.0), (1.0, 0.0, 0.0)),
    "RAO 30": ((-30.0, 0.0), (-0.5, -0.866, 0.0)),
    "CRAN 20": ((0.0, 20.0), (0.0, -0.940, -0.342)),
    "LAO 30 CAUD 25": ((30.0, -25.0), (0.453, -0.785, 0.423)),
}


def centre(ijkToRAS, shape) -> np.ndarray:
    k, j, i = shape
    return (ijkToRAS @ [(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0])[:3]


def test_create_is_make_rt_inv_about_world_centre_with_parent_transform(scene, logic, ctArray, ctAffine):
    from nanodrr_engine import make_rt_inv

    parent = addTransform(scene, affine((1, 1, 1), (5.0, -7.0, 11.0), rotation(0.0, 30.0, 15.0)))
    ct = addVolume(scene, ctArray, ctAffine)
    ct.SetAndObserveTransformNodeID(parent.GetID())
    iso = centre(poseOf(parent) @ ctAffine, ctArray.shape)  # by hand: parent · IJKToRAS · centre index

    rot = (12.0, -7.0, 3.0)
    carm = logic.createCArmTransform(ct, sod=SOD, rotation=rot)
    assert carm.IsA("vtkMRMLLinearTransformNode")
    assert carm.GetParentTransformNode() is None  # its matrix is already world
    expected = make_rt_inv(np.array(rot), np.array([0.0, SOD, 0.0]), "AP", iso).numpy()
    np.testing.assert_allclose(poseOf(carm), expected, atol=1e-9)
    np.testing.assert_allclose(logic.isocenter(ct), iso, atol=1e-9)


def test_default_ap_pose_source_anterior_beam_posterior(scene, logic, ct, ctAffine, ctArray):
    carm = logic.createCArmTransform(ct)
    pose = poseOf(carm)
    iso = centre(ctAffine, ctArray.shape)
    np.testing.assert_allclose(pose[:3, 3], iso + np.array([0.0, SOD, 0.0]), atol=1e-9)
    np.testing.assert_allclose(pose[:3, 2], [0.0, -1.0, 0.0], atol=1e-12)  # beam anterior → posterior
    np.testing.assert_allclose(pose[:3, 1], [0.0, 0.0, -1.0], atol=1e-12)  # rows run superior → inferior
    assert carm.GetName() == "ct C-arm"


def test_pa_orientation_puts_the_source_posterior(scene, logic, ct, ctAffine, ctArray):
    carm = logic.createCArmTransform(ct, orientation="PA", sod=700.0)
    pose = poseOf(carm)
    np.testing.assert_allclose(
        pose[:3, 3], centre(ctAffine, ctArray.shape) + np.array([0.0, -700.0, 0.0]), atol=1e-9
    )
    np.testing.assert_allclose(pose[:3, 2], [0.0, 1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("view", list(CLINICAL_TABLE))
def test_clinical_angles_match_geometry_table(scene, logic, ct, ctAffine, ctArray, view):
    (primary, secondary), direction = CLINICAL_TABLE[view]
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, primary=primary, secondary=secondary, sod=SOD)
    pose = poseOf(carm)
    iso = centre(ctAffine, ctArray.shape)
    np.testing.assert_allclose((pose[:3, 3] - iso) / SOD, direction, atol=1e-3)
    np.testing.assert_allclose(pose[:3, 2], -np.asarray(direction), atol=1e-3)  # beam through the isocenter
    r = pose[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)  # proper: never mirrors models under the C-arm
    if secondary == 0.0:
        np.testing.assert_allclose(pose[:3, 1], [0.0, 0.0, -1.0], atol=1e-12)  # head up: row 0 superior


def test_frontal_view_displays_patient_right_on_viewer_left(scene, logic):
    """A bone marker on the patient's right (RAS +x) appears on the left of the conventional display."""
    a = np.full((21, 21, 21), -1000.0, dtype=np.float32)
    a[10, 10, 15:19] = 2000.0  # i large = +x = patient right
    a[16:19, 10, 10] = 2000.0  # k large = +z = superior
    ct = addVolume(scene, a, affine((5.0, 5.0, 5.0), (0.0, 0.0, 0.0)))
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 0.0, 0.0, SOD)
    drr = logic.render(
        ct, carm, CArmGeometry(sdd=1020.0, height=31, width=31, delx=8.0, dely=8.0), nSamples=64
    )
    shown = conventionalDisplayArray(drr)
    band = shown[14:17, :]  # the rows through the isocenter hold the +x marker
    assert band[:, :14].max() > 5 * band[:, 17:].max()
    top, bottom = shown[:13, 14:17], shown[18:, 14:17]
    assert top.max() > 5 * bottom.max()  # superior marker in the upper half: head up


@pytest.mark.parametrize(
    ("primary", "secondary", "sod"),
    [(0.0, 0.0, 850.0), (37.5, -12.0, 600.0), (-120.0, 44.0, 900.0), (179.0, 0.0, 1.0)],
)
def test_angles_round_trip(scene, logic, ct, primary, secondary, sod):
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, primary, secondary, sod)
    p, s, d = logic.getCArmAngles(carm, ct)
    assert (p, s, d) == pytest.approx((primary, secondary, sod), abs=1e-9)


def test_angles_round_trip_under_a_parent_transform(scene, logic, ct):
    carm = logic.createCArmTransform(ct)
    carm.SetAndObserveTransformNodeID(
        addTransform(scene, affine((1, 1, 1), (3, 4, 5), rotation(20, 0, 0))).GetID()
    )
    logic.setCArmAngles(carm, ct, 25.0, 10.0, 800.0)
    assert logic.getCArmAngles(carm, ct) == pytest.approx((25.0, 10.0, 800.0), abs=1e-9)


def test_default_ap_pose_reads_as_source_anterior(scene, logic, ct):
    carm = logic.createCArmTransform(ct)
    p, s, d = logic.getCArmAngles(carm, ct)
    assert abs(p) == pytest.approx(180.0)
    assert s == pytest.approx(0.0, abs=1e-12)
    assert d == pytest.approx(SOD)


def test_bad_carm_inputs_raise_and_leave_the_scene_alone(scene, logic, ct):
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match="sod"):
        logic.createCArmTransform(ct, sod=0.0)
    with pytest.raises(NanoDRRError, match="orientation"):
        logic.createCArmTransform(ct, orientation="LR")
    with pytest.raises(NanoDRRError, match="rotation"):
        logic.createCArmTransform(ct, rotation=(0.0, float("nan"), 0.0))
    with pytest.raises(NanoDRRError, match="volumeNode"):
        logic.createCArmTransform(None)
    assert scene.GetNumberOfNodes() == n

    carm = logic.createCArmTransform(ct)
    carm.SetMatrixTransformToParent(vtkMatrix(np.diag([2.0, 1.0, 1.0, 1.0])))
    with pytest.raises(NanoDRRError, match=r"'ct C-arm'.*not rigid"):
        logic.getCArmAngles(carm, ct)
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "grid")
    with pytest.raises(NanoDRRError, match="vtkMRMLLinearTransformNode"):
        logic.setCArmAngles(grid, ct, 0.0, 0.0, SOD)
    with pytest.raises(NanoDRRError, match="secondary"):
        logic.setCArmAngles(carm, ct, 0.0, float("inf"), SOD)


def test_isocenter_rejects_nonlinear_parent(scene, logic, ct):
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    ct.SetAndObserveTransformNodeID(grid.GetID())
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match=r"'warp'.*not linear"):
        logic.createCArmTransform(ct)
    assert scene.GetNumberOfNodes() == n

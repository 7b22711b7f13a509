"""registerCArm / undoRegistration / loadXray with real MRML: the C-arm moves to the pose the X-ray was taken at."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nanodrr_engine import carm_to_rt_inv
from nanodrr_engine.data.phantom import make_chest_phantom
from nanodrr_engine.metrics import target_registration_error
from NanoDRRLib import CArmGeometry, NanoDRRError
from scene_snapshot import sceneSnapshot
from slicer_testutils import addVolume, poseOf

GEOMETRY = CArmGeometry(sdd=1020.0, height=64, width=64, delx=6.0, dely=6.0)


@pytest.fixture
def chest(scene):
    vol, _, v2w, _ = make_chest_phantom(spacing=(4.0, 4.0, 4.0))
    node = addVolume(scene, np.asarray(vol, dtype=np.float32), v2w, name="chest")
    idx = np.argwhere(np.asarray(vol) > 300)[::7][:, ::-1].astype(np.float64)  # (i, j, k) of bone voxels
    points = torch.as_tensor(idx @ v2w[:3, :3].T + v2w[:3, 3])
    return node, points


def _moved(logic, scene, volumeNode, primary, secondary):
    carm = logic.createCArmTransform(volumeNode)
    logic.setCArmAngles(carm, volumeNode, primary, secondary, 850.0)
    return carm


def test_register_a_drr_node_moves_the_carm_to_the_true_pose(scene, logic, chest):
    volumeNode, points = chest
    truthCarm = _moved(logic, scene, volumeNode, 20.0, -10.0)
    xray = logic.render(volumeNode, truthCarm, GEOMETRY, method="joseph", displayMode="transmission")
    truth = poseOf(truthCarm)
    carm = _moved(logic, scene, volumeNode, 23.0, -7.0)  # 3° off in each angle
    start = poseOf(carm)
    before = float(target_registration_error(torch.as_tensor(truth), torch.as_tensor(start), points))
    xrayBefore = dict(sceneSnapshot(scene))[xray.GetID()]
    result = logic.registerCArm(volumeNode, carm, xray, GEOMETRY)
    after = float(target_registration_error(torch.as_tensor(truth), torch.as_tensor(poseOf(carm)), points))
    assert before > 5.0 and after < 1.0, (before, after, result)
    assert result["similarityAfter"] > result["similarityBefore"]
    assert carm.GetAttribute("NanoDRR.Registration.stopReason") == result["stopReason"]
    assert dict(sceneSnapshot(scene))[xray.GetID()] == xrayBefore  # the X-ray is untouched
    logic.undoRegistration(carm)
    np.testing.assert_array_equal(poseOf(carm), start)
    with pytest.raises(NanoDRRError, match="no registration to undo"):
        logic.undoRegistration(carm)


def test_bad_input_and_cancel_leave_the_carm_where_it_was(scene, logic, chest):
    volumeNode, _ = chest
    carm = _moved(logic, scene, volumeNode, 0.0, 0.0)
    xray = logic.render(volumeNode, carm, GEOMETRY, method="joseph")
    before = sceneSnapshot(scene)
    small = CArmGeometry(sdd=1020.0, height=32, width=32, delx=12.0, dely=12.0)
    for call, match in [
        (lambda: logic.registerCArm(volumeNode, carm, xray, small), "not resampled"),
        (lambda: logic.registerCArm(volumeNode, carm, volumeNode, GEOMETRY), "single-slice"),
        (lambda: logic.registerCArm(volumeNode, carm, None, GEOMETRY), "xrayNode"),
        (
            lambda: logic.registerCArm(volumeNode, carm, xray, GEOMETRY, bogus=1),
            "unknown registration option",
        ),
        (lambda: logic.registerCArm(volumeNode, carm, xray, GEOMETRY, starts=0), "starts"),
    ]:
        with pytest.raises(NanoDRRError, match=match):
            call()
        assert sceneSnapshot(scene) == before

    class Cancel(Exception):
        pass

    def cancel(fraction, message):
        raise Cancel

    with pytest.raises(Cancel):
        logic.registerCArm(volumeNode, carm, xray, GEOMETRY, progressCallback=cancel)
    assert sceneSnapshot(scene) == before


def test_load_dicom_xray_places_it_and_creates_the_carm(scene, logic, chest, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    volumeNode, _ = chest
    carm = _moved(logic, scene, volumeNode, 15.0, 5.0)
    drr = logic.render(volumeNode, carm, GEOMETRY, method="joseph")
    line = np.asarray(__import__("slicer").util.arrayFromVolume(drr)[0], dtype=np.float64)
    counts = np.round(60000.0 * np.exp(-line))[:, ::-1].astype("<u2")  # seen from the detector
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.12.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "XA", 1, "MONOCHROME1"
    ds.Rows, ds.Columns = counts.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagerPixelSpacing, ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = [6.0, 6.0], 1020.0, 850.0
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = 15.0, 5.0
    ds.PixelData = np.ascontiguousarray(counts).tobytes()
    path = tmp_path / "xa.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).Rows == 64

    node, det, newCarm = logic.loadXray(scene, path, volumeNode)
    assert det == GEOMETRY
    np.testing.assert_allclose(poseOf(newCarm), poseOf(carm), atol=1e-9)
    # placed on the detector plane exactly as the DRR of that pose
    ijk = np.zeros((4, 4))
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    m2 = vtk.vtkMatrix4x4()
    drr.GetIJKToRASMatrix(m2)
    np.testing.assert_allclose(
        ijk, np.array([[m2.GetElement(r, c) for c in range(4)] for r in range(4)]), atol=1e-9
    )
    # the X-ray's preprocessed line integrals are the DRR's, so the registration stays put
    result = logic.registerCArm(volumeNode, newCarm, node, det)
    moved = float(
        target_registration_error(torch.as_tensor(poseOf(carm)), torch.as_tensor(poseOf(newCarm)), chest[1])
    )
    assert moved < 0.5 and result["similarityBefore"] > 0.99
    with pytest.raises(NanoDRRError, match="no such X-ray file"):
        logic.loadXray(scene, tmp_path / "missing.dcm", volumeNode)

    # "Initialize from DICOM": the tags put another C-arm at the pose the first one was rendered from
    other = _moved(logic, scene, volumeNode, -20.0, 10.0)
    det2, (primary, secondary, sod) = logic.initializeFromXray(node, volumeNode, other)
    assert det2 == GEOMETRY and (primary, secondary, sod) == (15.0, 5.0, 850.0)
    np.testing.assert_allclose(poseOf(other), poseOf(carm), atol=1e-9)
    # a node not loaded from a file, and a file whose tags lack the angles: refused, C-arm unmoved
    before = poseOf(other)
    with pytest.raises(NanoDRRError, match="was not loaded from an X-ray file"):
        logic.initializeFromXray(drr, volumeNode, other)
    del ds.PositionerPrimaryAngle
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(NanoDRRError, match="has no PositionerPrimaryAngle"):
        logic.initializeFromXray(node, volumeNode, other)
    np.testing.assert_array_equal(poseOf(other), before)


def test_carm_to_rt_inv_is_the_logics_pose(scene, logic, chest):
    volumeNode, _ = chest
    carm = _moved(logic, scene, volumeNode, 15.0, 5.0)
    iso = torch.as_tensor(logic.isocenter(volumeNode))
    np.testing.assert_allclose(poseOf(carm), carm_to_rt_inv(15.0, 5.0, 850.0, iso).numpy(), atol=1e-9)

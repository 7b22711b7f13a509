"""Headless save (.mrml + .nrrd + .seg.nrrd) and reload keeps the DRRs and their provenance."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from NanoDRRLib import (
    NanoDRRError,
    NanoDRRLogic,
    geometryFromNode,
    loadScene,
    loadSegmentation,
    loadVolume,
    readAttributes,
    readStructureNames,
    saveScene,
)
from slicer import vtkMRMLScene
from slicer_testutils import N_SAMPLES, addLabelmapSegmentation, drrArray, poseOf


def test_saved_scene_reloads_with_drrs_and_attributes(
    scene, logic, ct, ctArray, ctAffine, geometry, tmp_path
):
    labels = np.zeros(ctArray.shape, np.uint8)
    labels[3:9, 5:15, 3:12] = 1
    labels[10:16, 5:15, 3:12] = 2
    seg, ids = addLabelmapSegmentation(scene, labels, ctAffine, {1: "upper", 2: "lower"})
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 30.0, 15.0, 800.0)
    drr = logic.render(ct, carm, geometry, nSamples=N_SAMPLES, name="my DRR")
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    logic.updateGeometryModel(carm, geometry)
    before = drrArray(drr)
    attrs = readAttributes(drr)

    path = saveScene(scene, tmp_path / "saved", "drr scene")
    files = {p.name for p in path.parent.iterdir()}
    assert path.name == "drr_scene.mrml"
    assert {"ct.nrrd", "my_DRR.nrrd", "seg.seg.nrrd"} <= files

    loaded = loadScene(path)
    drr2 = loaded.GetFirstNodeByName("my DRR")
    assert drr2 is not None and drr2.IsA("vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(drrArray(drr2), before)
    attrs2 = readAttributes(drr2)
    assert attrs2.keys() == attrs.keys()
    for key, value in attrs.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(attrs2[key], value)
        else:
            assert attrs2[key] == value, key
    assert geometryFromNode(drr2) == geometry
    ijk1, ijk2 = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()  # placement survives too
    drr.GetIJKToRASMatrix(ijk1)
    drr2.GetIJKToRASMatrix(ijk2)
    for i in range(4):
        for j in range(4):
            assert ijk2.GetElement(i, j) == pytest.approx(ijk1.GetElement(i, j), abs=1e-6)
    ct2 = drr2.GetNodeReference("NanoDRR.sourceVolume")
    assert ct2 is not None and ct2.GetName() == "ct"
    carm2 = drr2.GetNodeReference("NanoDRR.cArm")
    np.testing.assert_allclose(poseOf(carm2), poseOf(carm), atol=1e-9)
    seg2 = loaded.GetFirstNodeByName("seg")
    assert seg2.GetSegmentation().GetNumberOfSegments() == 2
    direct = loadSegmentation(vtkMRMLScene(), path.parent / "seg.seg.nrrd")
    assert direct.GetName() == "seg" and direct.GetSegmentation().GetNumberOfSegments() == 2

    # per-segment DRRs, colours, and a fresh logic on the reloaded nodes reproduces the image
    upper = loaded.GetFirstNodeByName("ct DRR upper")
    np.testing.assert_array_equal(drrArray(upper), drrArray(parts[ids["upper"]]))
    assert readAttributes(upper)["segmentName"] == "upper"
    assert upper.GetDisplayNode().GetColorNode() is not None
    again = NanoDRRLogic().render(ct2, carm2, geometryFromNode(drr2), nSamples=N_SAMPLES)
    np.testing.assert_allclose(drrArray(again), before, rtol=1e-6, atol=1e-6)


def test_load_volume_and_labelmap_segmentation_with_structure_names(scene, tmp_path, ctArray, ctAffine):
    from slicer_testutils import addVolume

    labels = np.zeros(ctArray.shape, np.uint8)
    labels[3:9, 5:15, 3:12] = 3
    labels[10:16, 5:15, 3:12] = 5
    for node, name in ((addVolume(scene, ctArray, ctAffine, "src"), "ct.nrrd"),
                       (addVolume(scene, labels, ctAffine, "lab", "vtkMRMLLabelMapVolumeNode"), "labels.nrrd")):  # fmt: skip
        storage = node.CreateDefaultStorageNode()
        storage.SetFileName(str(tmp_path / name))
        assert storage.WriteData(node)
    (tmp_path / "structures.csv").write_text("group,original_idx,structure,id\na,3,kidney,3\na,5,spleen,5\n")
    assert readStructureNames(tmp_path / "structures.csv") == {3: "kidney", 5: "spleen"}

    fresh = vtkMRMLScene()
    ct = loadVolume(fresh, tmp_path / "ct.nrrd")
    assert ct.GetName() == "ct"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), ctArray)
    m = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(m)
    np.testing.assert_allclose(
        [[m.GetElement(i, j) for j in range(4)] for i in range(4)], ctAffine, atol=1e-6
    )
    n = fresh.GetNumberOfNodes()
    seg = loadSegmentation(fresh, tmp_path / "labels.nrrd", referenceVolumeNode=ct)
    segmentation = seg.GetSegmentation()
    names = sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
    assert names == ["kidney", "spleen"]
    assert fresh.GetNumberOfNodes() == n + 2  # the segmentation and its display node; the labelmap is gone
    with pytest.raises(NanoDRRError, match="no such"):
        loadVolume(fresh, tmp_path / "missing.nrrd")

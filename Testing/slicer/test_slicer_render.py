"""render(): engine numbers, detector placement, display, provenance, in-place reuse, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer
import torch
from NanoDRRLib import CArmGeometry, NanoDRRError, readAttributes
from slicer_testutils import (
    N_SAMPLES,
    addSegmentation,
    addTransform,
    addVolume,
    affine,
    drrArray,
    engineRender,
    poseOf,
    rotation,
    toArray,
    vtkMatrix,
)


def ijkToRAS(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return toArray(m)


def test_numbers_equal_the_engine(scene, logic, ct, ctArray, ctAffine, geometry):
    carm = logic.createCArmTransform(ct, rotation=(20.0, -10.0, 5.0))
    drr = logic.render(ct, carm, geometry, nSamples=N_SAMPLES, device="cpu")
    assert drr.IsA("vtkMRMLScalarVolumeNode") and not drr.IsA("vtkMRMLLabelMapVolumeNode")
    arr = slicer.util.arrayFromVolume(drr)
    assert arr.shape == (1, geometry.height, geometry.width)
    assert arr.dtype == np.float32
    expected = engineRender(ctArray, ctAffine, poseOf(carm), geometry)[0]
    np.testing.assert_allclose(arr[0], expected, rtol=1e-6, atol=1e-6)
    assert arr.max() > 1.0  # the body is in view


def test_pixels_sit_at_their_ray_ends_on_the_detector(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct, rotation=(33.0, 12.0, -8.0))
    drr = logic.render(ct, carm, geometry, nSamples=8)
    pose = poseOf(carm)
    H, W, g = geometry.height, geometry.width, geometry
    v, u = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    # by hand (geometry.md): pixel (u, v) ↦ ((u+½−W/2)Δx − x0, (v+½−H/2)Δy − y0, sdd) in camera coordinates
    cam = np.stack(
        [
            (u + 0.5 - W / 2) * g.delx - g.x0,
            (v + 0.5 - H / 2) * g.dely - g.y0,
            np.full(u.shape, g.sdd),
            np.ones(u.shape),
        ]
    ).reshape(4, -1)
    expected = (pose @ cam)[:3]
    ijk = np.stack([u, v, np.zeros(u.shape), np.ones(u.shape)]).reshape(4, -1)
    got = (ijkToRAS(drr) @ ijk)[:3]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # and each lies on the line from the source through the detector at distance sdd along the beam
    depth = (got - pose[:3, 3:4]).T @ pose[:3, 2]
    np.testing.assert_allclose(depth, g.sdd, atol=1e-6)


def test_uniform_water_block_gives_mu_times_length(scene, logic):
    """Analytic: the central ray through an odd-sized 0 HU block integrates μ_water · N · Δ."""
    from nanodrr_engine import MU_WATER

    shape, spacing = (15, 25, 17), (4.0, 3.0, 5.0)
    ct = addVolume(scene, np.zeros(shape, np.float32), affine(spacing, (10.0, -20.0, 30.0)))
    carm = logic.createCArmTransform(ct)  # AP: the central ray runs along −y, i.e. along j
    g = CArmGeometry(sdd=1020.0, height=9, width=9, delx=1.0, dely=1.0)
    drr = drrArray(logic.render(ct, carm, g, nSamples=400))
    assert drr[4, 4] == pytest.approx(MU_WATER * shape[1] * spacing[1], rel=2e-3)


def test_transmission_stores_exp_of_minus_the_line_integral(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    att = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    tra = logic.render(ct, carm, geometry, nSamples=N_SAMPLES, displayMode="transmission")
    np.testing.assert_allclose(drrArray(tra), np.exp(-att), rtol=1e-6)
    assert tra.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeInvertedGrey"  # bone still bright
    assert readAttributes(tra)["displayMode"] == "transmission"


def test_mu_bone_reaches_the_engine(scene, logic, ct, ctArray, ctAffine, geometry):
    carm = logic.createCArmTransform(ct)
    drr = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES, muBone=0.08))
    expected = engineRender(ctArray, ctAffine, poseOf(carm), geometry, mu_bone=0.08)[0]
    np.testing.assert_allclose(drr, expected, rtol=1e-6, atol=1e-6)
    base = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    assert drr.max() > base.max()  # more bone contrast


def test_xray_display_and_provenance_attributes(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    drr = logic.render(ct, carm, geometry, nSamples=N_SAMPLES)
    assert drr.GetName() == "ct DRR"
    display = drr.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    arr = drrArray(drr)
    lo, hi = np.percentile(arr, 0.5), np.percentile(arr[arr != 0], 99.5)
    assert display.GetAutoWindowLevel() == 0
    assert display.GetWindow() == pytest.approx(hi - lo, rel=1e-6)
    assert display.GetLevel() == pytest.approx((hi + lo) / 2, rel=1e-6)

    a = readAttributes(drr)
    for field in ("sdd", "delx", "dely", "x0", "y0", "height", "width"):
        assert a[field] == getattr(geometry, field)
    np.testing.assert_array_equal(a["rtInv"], poseOf(carm))
    assert a["nSamples"] == N_SAMPLES
    assert a["sourceVolumeID"] == ct.GetID()
    assert a["cArmID"] == carm.GetID()
    assert "segmentationID" not in a
    assert drr.GetNodeReference("NanoDRR.sourceVolume") is ct
    assert drr.GetNodeReference("NanoDRR.cArm") is carm


def test_reusing_the_output_node_overwrites_in_place(scene, logic, ct, ctArray, ctAffine, geometry):
    carm = logic.createCArmTransform(ct)
    drr = logic.render(ct, carm, geometry, nSamples=N_SAMPLES)
    first = drrArray(drr)
    n = scene.GetNumberOfNodes()
    logic.setCArmAngles(carm, ct, 30.0, 10.0, 800.0)
    small = CArmGeometry(sdd=1000.0, height=20, width=24, delx=6.0, dely=7.0)
    again = logic.render(ct, carm, small, outputNode=drr, nSamples=N_SAMPLES)
    assert again is drr
    assert scene.GetNumberOfNodes() == n
    arr = drrArray(drr)
    assert arr.shape == (20, 24)
    np.testing.assert_allclose(
        arr, engineRender(ctArray, ctAffine, poseOf(carm), small)[0], rtol=1e-6, atol=1e-6
    )
    assert not np.allclose(arr, first[:20, :24])
    assert readAttributes(drr)["width"] == 24


def test_output_under_a_parent_transform_is_still_placed_in_world(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    parent = addTransform(scene, affine((1, 1, 1), (10, 20, 30), rotation(5, 10, 15)))
    out.SetAndObserveTransformNodeID(parent.GetID())
    logic.render(ct, carm, geometry, outputNode=out, nSamples=4)
    world = poseOf(parent) @ ijkToRAS(out)
    np.testing.assert_allclose(world, poseOf(carm) @ geometry.pixelToCamera(), atol=1e-6)


def test_segmentation_restricts_to_the_union_of_visible_segments(
    scene, logic, ct, ctArray, ctAffine, geometry
):
    a = np.zeros(ctArray.shape, np.uint8)
    a[4:12, 6:15, 3:10] = 1
    b = np.zeros(ctArray.shape, np.uint8)
    b[8:16, 5:12, 11:18] = 1  # overlaps a
    c = np.zeros(ctArray.shape, np.uint8)
    c[2:6, 16:19, 2:6] = 1
    seg, ids = addSegmentation(scene, {"a": a, "b": b, "c": c}, ctAffine)
    seg.GetDisplayNode().SetSegmentVisibility(ids["c"], False)
    carm = logic.createCArmTransform(ct, rotation=(15.0, 5.0, 0.0))
    drr = logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    union = (a | b).astype(np.uint8)
    expected = engineRender(ctArray, ctAffine, poseOf(carm), geometry, label=union, maxLabel=1)[1]
    np.testing.assert_allclose(drrArray(drr), expected, rtol=1e-6, atol=1e-6)
    attrs = readAttributes(drr)
    assert attrs["segmentationID"] == seg.GetID()
    assert attrs["segmentIDs"] == [ids["a"], ids["b"]]
    assert json.loads(drr.GetAttribute("NanoDRR.segmentIDs")) == [ids["a"], ids["b"]]
    # explicit selection overrides visibility
    only_c = logic.render(ct, carm, geometry, segmentationNode=seg, segmentIds=[ids["c"]], nSamples=N_SAMPLES)
    expected_c = engineRender(ctArray, ctAffine, poseOf(carm), geometry, label=c, maxLabel=1)[1]
    np.testing.assert_allclose(drrArray(only_c), expected_c, rtol=1e-6, atol=1e-6)


def _labelmapVolume(scene, shape, ijk):
    return addVolume(scene, np.zeros(shape, np.uint8), ijk, "lab", "vtkMRMLLabelMapVolumeNode")


def _vectorVolume(scene, shape, ijk):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(node, np.zeros((*shape, 3), np.float32))
    return node


BAD_INPUTS = {
    "no volume": (lambda s, ct, seg, ijk: {"volumeNode": None}, "volumeNode"),
    "labelmap as CT": (
        lambda s, ct, seg, ijk: {"volumeNode": _labelmapVolume(s, (4, 5, 6), ijk)},
        "labelmap",
    ),
    "vector volume": (lambda s, ct, seg, ijk: {"volumeNode": _vectorVolume(s, (4, 5, 6), ijk)}, "vector"),
    "sequence node": (
        lambda s, ct, seg, ijk: {"volumeNode": s.AddNewNodeByClass("vtkMRMLSequenceNode", "seq")},
        "sequence",
    ),
    "volume without voxels": (
        lambda s, ct, seg, ijk: {"volumeNode": s.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")},
        "no voxel data",
    ),
    "non-positive spacing": (lambda s, ct, seg, ijk: (ct.SetSpacing(0.0, 1.0, 1.0), {})[1], "spacing"),
    "scaling C-arm": (lambda s, ct, seg, ijk: {"scale": 1.5}, "not rigid"),
    "sdd <= sod": (lambda s, ct, seg, ijk: {"geometry": CArmGeometry(sdd=800.0, height=8, width=8)}, "sdd"),
    "zero pixels": (lambda s, ct, seg, ijk: {"geometry": CArmGeometry(height=0, width=8)}, "geometry.height"),
    "negative spacing": (lambda s, ct, seg, ijk: {"geometry": CArmGeometry(delx=-1.0)}, "geometry.delx"),
    "not a geometry": (lambda s, ct, seg, ijk: {"geometry": {"sdd": 1020.0}}, "geometry"),
    "zero samples": (lambda s, ct, seg, ijk: {"nSamples": 0}, "nSamples"),
    "bad display mode": (lambda s, ct, seg, ijk: {"displayMode": "log"}, "displayMode"),
    "bad muBone": (lambda s, ct, seg, ijk: {"muBone": -1.0}, "muBone"),
    "bad device": (lambda s, ct, seg, ijk: {"device": "tpu"}, "device"),
    "labelmap output": (
        lambda s, ct, seg, ijk: {"outputNode": _labelmapVolume(s, (1, 2, 2), ijk)},
        "outputNode",
    ),
    "CT as output": (lambda s, ct, seg, ijk: {"outputNode": ct}, "input node"),
    "segmentation without segments": (
        lambda s, ct, seg, ijk: {"segmentationNode": s.AddNewNodeByClass("vtkMRMLSegmentationNode", "none")},
        "no segments",
    ),
    "empty segment": (lambda s, ct, seg, ijk: {"segmentationNode": seg}, "empty"),
    "unknown segment": (lambda s, ct, seg, ijk: {"segmentationNode": seg, "segmentIds": ["nope"]}, "nope"),
    "volume as segmentation": (lambda s, ct, seg, ijk: {"segmentationNode": ct}, "segmentation node"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_it_and_leaves_the_scene_alone(
    scene, logic, ct, ctArray, ctAffine, geometry, case
):
    make, message = BAD_INPUTS[case]
    seg, _ = addSegmentation(scene, {"hollow": np.zeros(ctArray.shape, np.uint8)}, ctAffine, name="segs")
    carm = logic.createCArmTransform(ct)
    kwargs = make(scene, ct, seg, ctAffine)
    scale = kwargs.pop("scale", None)
    if scale is not None:
        carm.SetMatrixTransformToParent(vtkMatrix(poseOf(carm) @ np.diag([scale, scale, scale, 1.0])))
    args = {"volumeNode": ct, "carmNode": carm, "geometry": geometry, "nSamples": 8, **kwargs}
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    with pytest.raises(NanoDRRError, match=message):
        logic.render(**args)
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == before


def test_unavailable_cuda_is_a_clear_error(scene, logic, ct, geometry):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    carm = logic.createCArmTransform(ct)
    with pytest.raises(NanoDRRError, match="cuda"):
        logic.render(ct, carm, geometry, device="cuda")


def test_nan_voxels_are_reported_with_the_node(scene, logic, geometry):
    a = np.zeros((5, 6, 7), np.float32)
    a[2, 3, 4] = np.nan
    ct = addVolume(scene, a, affine((2, 2, 2), (0, 0, 0)), name="broken")
    carm = logic.createCArmTransform(ct)
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match=r"'broken'.*NaN"):
        logic.render(ct, carm, geometry, nSamples=4)
    assert scene.GetNumberOfNodes() == n

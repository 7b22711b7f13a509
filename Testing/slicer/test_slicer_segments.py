"""renderSegments(): per-segment DRRs, overlap, grouping into few renders, resampling, naming, colours."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from NanoDRRLib import NanoDRRError, readAttributes
from slicer_testutils import (
    N_SAMPLES,
    addLabelmapSegmentation,
    addSegmentation,
    addTransform,
    addVolume,
    affine,
    drrArray,
    engineRender,
    phantomCT,
    poseOf,
    vtkMatrix,
)

AXIS_AFFINE = affine((3.0, 2.0, 4.0), (-25.0, 10.0, 5.0))


def box(shape, k, j, i) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[k[0] : k[1], j[0] : j[1], i[0] : i[1]] = 1
    return m


def masked(hu, ijk, pose, geometry, mask):
    """The engine's DRR of the CT restricted to ``mask`` (labelmap channel 1)."""
    return engineRender(hu, ijk, pose, geometry, label=mask.astype(np.uint8), maxLabel=1)[1]


def test_organ_and_tumour_inside_it_each_get_their_own_drr(scene, logic, ct, ctArray, ctAffine, geometry):
    organ = box(ctArray.shape, (3, 15), (5, 17), (3, 16))
    tumour = box(ctArray.shape, (6, 10), (8, 12), (5, 9))  # inside the organ, overlapping the bone block
    seg, ids = addSegmentation(scene, {"organ": organ, "tumour": tumour}, ctAffine)
    carm = logic.createCArmTransform(ct, rotation=(25.0, -10.0, 0.0))
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    assert list(parts) == [ids["organ"], ids["tumour"]]
    assert logic.lastRenderPasses == 2  # overlapping segments need separate label volumes
    pose = poseOf(carm)
    organDRR, tumourDRR = drrArray(parts[ids["organ"]]), drrArray(parts[ids["tumour"]])
    np.testing.assert_allclose(
        organDRR, masked(ctArray, ctAffine, pose, geometry, organ), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        tumourDRR, masked(ctArray, ctAffine, pose, geometry, tumour), rtol=1e-5, atol=1e-6
    )
    rest = masked(ctArray, ctAffine, pose, geometry, organ & (1 - tumour))
    np.testing.assert_allclose(organDRR, tumourDRR + rest, rtol=1e-5, atol=1e-5)
    assert tumourDRR.max() > 0.5 and rest.max() > 0.5


def test_disjoint_segments_cost_one_render_and_add_up(scene, logic, ct, ctArray, ctAffine, geometry):
    shape = ctArray.shape
    masks = {
        "a": box(shape, (2, 9), (3, 12), (2, 10)),
        "b": box(shape, (9, 17), (3, 12), (2, 10)),
        "c": box(shape, (2, 17), (12, 20), (10, 19)),
    }
    seg, ids = addSegmentation(scene, masks, ctAffine)  # separate layers that happen not to overlap
    carm = logic.createCArmTransform(ct, rotation=(-35.0, 5.0, 0.0))
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    assert logic.lastRenderPasses == 1
    pose = poseOf(carm)
    total = np.zeros((geometry.height, geometry.width))
    for name, mask in masks.items():
        got = drrArray(parts[ids[name]])
        np.testing.assert_allclose(got, masked(ctArray, ctAffine, pose, geometry, mask), rtol=1e-5, atol=1e-6)
        total += got
    outside = 1 - (masks["a"] | masks["b"] | masks["c"])
    full = engineRender(ctArray, ctAffine, pose, geometry)[0]
    np.testing.assert_allclose(
        total + masked(ctArray, ctAffine, pose, geometry, outside), full, rtol=1e-5, atol=1e-5
    )


def test_labelmap_segments_names_colours_and_folder(scene, logic, ct, ctArray, ctAffine, geometry):
    labels = np.zeros(ctArray.shape, np.uint8)
    labels[3:9, 5:15, 3:12] = 4
    labels[10:16, 5:15, 3:12] = 7
    labels[3:16, 15:19, 12:18] = 2
    names = {2: "spine", 4: "heart", 7: "liver"}
    seg, ids = addLabelmapSegmentation(scene, labels, ctAffine, names)
    seg.GetSegmentation().GetSegment(ids["heart"]).SetColor(0.9, 0.1, 0.2)
    carm = logic.createCArmTransform(ct)
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    assert logic.lastRenderPasses == 1  # one shared labelmap layer
    pose = poseOf(carm)
    for label, name in names.items():
        node = parts[ids[name]]
        assert node.GetName() == f"ct DRR {name}"
        np.testing.assert_allclose(
            drrArray(node), masked(ctArray, ctAffine, pose, geometry, labels == label), rtol=1e-5, atol=1e-6
        )
        a = readAttributes(node)
        assert a["segmentID"] == ids[name] and a["segmentName"] == name and a["segmentationID"] == seg.GetID()
    heart = parts[ids["heart"]]
    assert readAttributes(heart)["segmentColor"] == "0.9 0.1 0.2"
    colorNode = heart.GetDisplayNode().GetColorNode()
    rgba = [0.0] * 4
    colorNode.GetColor(255, rgba)
    np.testing.assert_allclose(rgba[:3], (0.9, 0.1, 0.2), atol=1 / 255)  # black → colour ramp (8-bit)
    colorNode.GetColor(0, rgba)
    np.testing.assert_allclose(rgba[:3], (0.0, 0.0, 0.0))

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    folder = sh.GetItemChildWithName(sh.GetSceneItemID(), "ct DRR segments")
    assert folder
    children = [sh.GetItemDataNode(sh.GetItemByDataNode(n)) for n in parts.values()]
    assert all(sh.GetItemParent(sh.GetItemByDataNode(n)) == folder for n in children)

    # re-rendering into the same nodes creates nothing new
    n = scene.GetNumberOfNodes()
    again = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES, outputNodes=parts)
    assert all(again[sid] is parts[sid] for sid in parts)
    assert scene.GetNumberOfNodes() == n


def test_segmentation_on_a_coarser_grid_is_resampled_onto_the_ct(scene, logic, geometry):
    hu = phantomCT((18, 22, 20))
    ct = addVolume(scene, hu, AXIS_AFFINE)
    coarse = np.zeros((9, 11, 10), np.uint8)
    coarse[2:6, 3:8, 1:5] = 1
    # coarse voxel c covers fine voxels 2c and 2c+1 on every axis
    coarseAffine = AXIS_AFFINE.copy()
    coarseAffine[:3, :3] *= 2.0
    coarseAffine[:3, 3] += 0.5 * np.diag(AXIS_AFFINE)[:3]
    seg, ids = addSegmentation(scene, {"coarse": coarse}, coarseAffine)
    fine = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    carm = logic.createCArmTransform(ct, rotation=(20.0, 0.0, 0.0))
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    expected = masked(hu, AXIS_AFFINE, poseOf(carm), geometry, fine)
    np.testing.assert_allclose(drrArray(parts[ids["coarse"]]), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("who", ["segmentation", "volume"])
def test_transforms_of_segmentation_and_volume_are_honoured(scene, logic, geometry, who):
    hu = phantomCT((18, 22, 20))
    ct = addVolume(scene, hu, AXIS_AFFINE)
    mask = box(hu.shape, (4, 12), (5, 15), (3, 9))
    seg, ids = addSegmentation(scene, {"m": mask}, AXIS_AFFINE)
    shift = addTransform(scene, affine((1, 1, 1), (2 * AXIS_AFFINE[0, 0], 0.0, 0.0)))  # two voxels along +i
    expected_mask = np.zeros_like(mask)
    if who == "segmentation":
        seg.SetAndObserveTransformNodeID(shift.GetID())
        expected_mask[:, :, 2:] = mask[:, :, :-2]  # the segment moved +2 voxels relative to the CT
        ctToWorld = AXIS_AFFINE
    else:
        ct.SetAndObserveTransformNodeID(shift.GetID())
        expected_mask[:, :, :-2] = mask[:, :, 2:]  # the CT moved +2 voxels relative to the segment
        ctToWorld = poseOf(shift) @ AXIS_AFFINE
    carm = logic.createCArmTransform(ct, rotation=(-15.0, 0.0, 0.0))
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    expected = masked(hu, ctToWorld, poseOf(carm), geometry, expected_mask)
    np.testing.assert_allclose(drrArray(parts[ids["m"]]), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected, masked(hu, ctToWorld, poseOf(carm), geometry, mask))


def test_empty_segments(scene, logic, ct, ctArray, ctAffine, geometry):
    full = box(ctArray.shape, (3, 12), (4, 14), (3, 12))
    seg, ids = addSegmentation(scene, {"full": full, "hollow": np.zeros_like(full)}, ctAffine)
    carm = logic.createCArmTransform(ct)
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match=r"'hollow'.*empty"):
        logic.renderSegments(ct, carm, geometry, seg, segmentIds=[ids["full"], ids["hollow"]], nSamples=8)
    assert scene.GetNumberOfNodes() == n
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=8)  # by default empty ones are skipped
    assert list(parts) == [ids["full"]]

    outside = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "far")
    outside.AddSegmentFromBinaryLabelmapRepresentation(
        __import__("slicer_testutils").orientedImage(full, affine((1, 1, 1), (5000.0, 0, 0))),
        "far away",
        (1, 0, 0),
    )
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match=r"'far away'.*empty"):
        logic.renderSegments(ct, carm, geometry, outside, nSamples=8)
    assert scene.GetNumberOfNodes() == n


def test_segment_masks_are_cached_until_a_segment_changes(scene, logic, ct, ctArray, ctAffine, geometry):
    mask = box(ctArray.shape, (3, 12), (4, 14), (3, 12))
    seg, ids = addSegmentation(scene, {"m": mask}, ctAffine)
    carm = logic.createCArmTransform(ct)
    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=8)
    logic.setCArmAngles(carm, ct, 20.0, 0.0, 850.0)
    logic.renderSegments(ct, carm, geometry, seg, nSamples=8, outputNodes=parts)
    assert logic.labelConversionCount == 1 and logic.conversionCount == 1

    move = addTransform(scene, affine((1, 1, 1), (4.0, 0.0, 0.0)))
    seg.SetAndObserveTransformNodeID(move.GetID())
    logic.renderSegments(ct, carm, geometry, seg, nSamples=8, outputNodes=parts)
    assert logic.labelConversionCount == 2
    move.SetMatrixTransformToParent(vtkMatrix(affine((1, 1, 1), (6.0, 0.0, 0.0))))
    logic.renderSegments(ct, carm, geometry, seg, nSamples=8, outputNodes=parts)
    assert logic.labelConversionCount == 3 and logic.conversionCount == 1
    seg.SetAndObserveTransformNodeID(None)

    internal = slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, ids["m"])
    internal[:] = 0
    internal[0, 0, 0] = 1  # shrink to one voxel (inside the stored extent)
    seg.GetSegmentation().GetSegment(ids["m"]).Modified()
    logic.renderSegments(ct, carm, geometry, seg, nSamples=8, outputNodes=parts)
    assert logic.labelConversionCount == 4 and logic.conversionCount == 1


def test_progress_reports_and_cancellation_before_any_node_is_written(
    scene, logic, ct, ctArray, ctAffine, geometry
):
    shape = ctArray.shape
    masks = {"a": box(shape, (2, 9), (3, 12), (2, 10)), "b": box(shape, (5, 12), (5, 14), (4, 12))}
    seg, _ = addSegmentation(scene, masks, ctAffine)
    carm = logic.createCArmTransform(ct)
    seen = []
    logic.renderSegments(ct, carm, geometry, seg, nSamples=8, progressCallback=lambda f, m="": seen.append(f))
    assert seen == sorted(seen) and seen[0] == 0.0 and len(seen) >= 4  # two passes: a and b overlap

    class Cancelled(Exception):
        pass

    def cancel(fraction, message=""):
        if fraction >= 0.5:
            raise Cancelled

    n = scene.GetNumberOfNodes()
    with pytest.raises(Cancelled):
        logic.renderSegments(ct, carm, geometry, seg, nSamples=8, progressCallback=cancel)
    with pytest.raises(Cancelled):
        logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=8, progressCallback=cancel)
    assert scene.GetNumberOfNodes() == n
    with pytest.raises(NanoDRRError, match="progressCallback"):
        logic.render(ct, carm, geometry, nSamples=8, progressCallback=42)

"""Closed-surface segmentations render headless (slicer-core registers no converter rules) and are
never modified: the conversion to binary labelmaps works on a copy, on the CT's own voxel grid.

Reference: the exact sphere's voxel mask on the CT grid (voxel centre inside ⇔ |x − c| < r), rendered
by the engine directly. The sphere is chosen so that no voxel centre lies within ``MARGIN`` of its
surface; the polygonal sphere (128 × 128 facets, radial error r·(1 − cos(π/128)) < 0.01 mm) then
classifies every voxel centre like the exact one, so the masks are equal and the DRRs agree to float
rounding (the same tolerance as the binary-labelmap tests).
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from NanoDRRLib import NanoDRRError
from NanoDRRLib.segments import layersOnGrid
from slicer_testutils import (
    N_SAMPLES,
    addSegmentation,
    addTransform,
    drrArray,
    engineRender,
    poseOf,
    rotation,
)
from vtk.util.numpy_support import vtk_to_numpy

MARGIN = 0.1  # mm: no voxel centre this close to the sphere's surface
CS = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
BL = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


@pytest.fixture
def noConverterRules():
    """A fresh headless process: no segmentation converter rules registered (restored afterwards)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    saved = list(factory.GetConverterRules())
    for rule in saved:
        factory.UnregisterConverterRule(rule)
    yield factory
    for rule in list(factory.GetConverterRules()):
        factory.UnregisterConverterRule(rule)
    for rule in saved:
        factory.RegisterConverterRule(rule)


def voxelCentres(ctAffine, shape) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ ctAffine.T)[..., :3]  # [K, J, I, 3] world


def sphereWithGap(ctAffine, shape, centre, rMin, rMax):
    """A radius in [rMin, rMax] with no voxel centre within MARGIN of the sphere, and its exact mask."""
    d = np.linalg.norm(voxelCentres(ctAffine, shape) - np.asarray(centre), axis=-1)
    for r in np.arange(rMin, rMax, 0.05):
        if np.abs(d - r).min() > MARGIN:
            return float(r), (d < r).astype(np.uint8)
    raise AssertionError("no gap")


def sphereSegmentation(scene, centre, radius, name="ball"):
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    node.CreateDefaultDisplayNodes()
    node.GetSegmentation().SetSourceRepresentationName(CS)
    source = vtk.vtkSphereSource()
    source.SetCenter(*centre)
    source.SetRadius(radius)
    source.SetThetaResolution(128)
    source.SetPhiResolution(128)
    source.Update()
    sid = node.AddSegmentFromClosedSurfaceRepresentation(source.GetOutput(), name, (0.9, 0.3, 0.2))
    assert sid
    return node, sid


def representations(node) -> dict:
    """Everything about the input that a conversion could change."""
    seg = node.GetSegmentation()
    out = {"source": seg.GetSourceRepresentationName(), "mtime": seg.GetMTime(), "segments": {}}
    for n in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(n)
        names = []
        segment.GetContainedRepresentationNames(names)
        poly = segment.GetRepresentation(CS)
        out["segments"][seg.GetNthSegmentID(n)] = (
            sorted(names),
            poly.GetMTime() if poly else None,
            poly.GetNumberOfPoints() if poly else None,
        )
    return out


def masked(hu, ijk, pose, geometry, mask):
    return engineRender(hu, ijk, pose, geometry, label=mask, maxLabel=1)[1]


def test_closed_surface_segmentation_renders_like_its_exact_labelmap_and_is_untouched(
    noConverterRules, scene, logic, ct, ctArray, ctAffine, geometry
):
    centre = (ctAffine @ np.array([10.0, 11.0, 9.0, 1.0]))[:3]
    r, mask = sphereWithGap(ctAffine, ctArray.shape, centre, 16.0, 22.0)
    assert 200 < mask.sum() < mask.size // 2
    seg, sid = sphereSegmentation(scene, centre, r)
    before = representations(seg)
    carm = logic.createCArmTransform(ct, rotation=(20.0, -15.0, 5.0))

    ((values, mapping),) = layersOnGrid(seg, [sid], ct, ctAffine, ctArray.shape)
    np.testing.assert_array_equal((values == mapping[sid]).astype(np.uint8), mask)

    drr = logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    reference = masked(ctArray, ctAffine, poseOf(carm), geometry, mask)
    assert reference.max() > 1.0
    np.testing.assert_allclose(drrArray(drr), reference, rtol=1e-5, atol=1e-6)

    equivalent, _ = addSegmentation(scene, {"ball": mask}, ctAffine)  # the same voxels as a labelmap
    viaLabelmap = logic.render(ct, carm, geometry, segmentationNode=equivalent, nSamples=N_SAMPLES)
    np.testing.assert_allclose(drrArray(drr), drrArray(viaLabelmap), rtol=1e-6, atol=1e-6)

    parts = logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
    np.testing.assert_allclose(drrArray(parts[sid]), reference, rtol=1e-5, atol=1e-6)
    assert representations(seg) == before  # no labelmap added to the input
    rules = [
        rule for rule in noConverterRules.GetConverterRules()
        if (rule.GetSourceRepresentationName(), rule.GetTargetRepresentationName()) == (CS, BL)
    ]  # fmt: skip
    assert len(rules) == 1  # registered once, not per render


def test_cached_conversion_follows_an_edited_surface(scene, logic, ct, ctArray, ctAffine, geometry):
    centre = (ctAffine @ np.array([10.0, 11.0, 9.0, 1.0]))[:3]
    r, mask = sphereWithGap(ctAffine, ctArray.shape, centre, 12.0, 15.0)
    seg, sid = sphereSegmentation(scene, centre, r)
    carm = logic.createCArmTransform(ct)
    logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    r2, mask2 = sphereWithGap(ctAffine, ctArray.shape, centre, 18.0, 22.0)
    bigger = vtk.vtkSphereSource()
    bigger.SetCenter(*centre)
    bigger.SetRadius(r2)
    bigger.SetThetaResolution(128)
    bigger.SetPhiResolution(128)
    bigger.Update()
    seg.GetSegmentation().GetSegment(sid).GetRepresentation(CS).DeepCopy(bigger.GetOutput())
    drr = logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    np.testing.assert_allclose(
        drrArray(drr), masked(ctArray, ctAffine, poseOf(carm), geometry, mask2), rtol=1e-5, atol=1e-6
    )
    assert mask2.sum() > mask.sum()


def test_closed_surface_under_a_linear_parent_transform(scene, logic, ct, ctArray, ctAffine, geometry):
    parent = np.eye(4)
    parent[:3, :3] = rotation(0.0, 0.0, 30.0)
    parent[:3, 3] = (5.0, -8.0, 3.0)
    world = (ctAffine @ np.array([9.0, 12.0, 10.0, 1.0]))[:3]
    r, mask = sphereWithGap(ctAffine, ctArray.shape, world, 14.0, 19.0)
    local = (np.linalg.inv(parent) @ np.append(world, 1.0))[:3]
    seg, _ = sphereSegmentation(scene, local, r)
    seg.SetAndObserveTransformNodeID(addTransform(scene, parent).GetID())
    carm = logic.createCArmTransform(ct, rotation=(0.0, 30.0, 0.0))
    drr = logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    np.testing.assert_allclose(
        drrArray(drr), masked(ctArray, ctAffine, poseOf(carm), geometry, mask), rtol=1e-5, atol=1e-6
    )


def test_closed_surface_under_a_non_linear_parent_transform(scene, logic, ct, ctArray, ctAffine, geometry):
    """A grid transform of constant displacement d (non-linear to MRML, a shift in effect)."""
    d = np.array([6.0, -4.0, 5.0])
    grid = slicer.vtkOrientedGridTransform()
    field = vtk.vtkImageData()
    field.SetOrigin(-400.0, -400.0, -400.0)
    field.SetSpacing(100.0, 100.0, 100.0)
    field.SetDimensions(9, 9, 9)
    field.AllocateScalars(vtk.VTK_DOUBLE, 3)
    vtk_to_numpy(field.GetPointData().GetScalars())[:] = d
    grid.SetDisplacementGridData(field)
    gridNode = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    gridNode.SetAndObserveTransformToParent(grid)
    assert not gridNode.IsTransformToWorldLinear()
    world = (ctAffine @ np.array([9.0, 12.0, 10.0, 1.0]))[:3]
    r, mask = sphereWithGap(ctAffine, ctArray.shape, world, 14.0, 19.0)
    seg, _ = sphereSegmentation(scene, world - d, r)
    seg.SetAndObserveTransformNodeID(gridNode.GetID())
    carm = logic.createCArmTransform(ct)
    drr = logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    np.testing.assert_allclose(
        drrArray(drr), masked(ctArray, ctAffine, poseOf(carm), geometry, mask), rtol=1e-5, atol=1e-6
    )


def test_a_failing_render_leaves_the_closed_surface_segmentation_as_it_was(
    noConverterRules, scene, logic, ct, ctAffine, geometry
):
    """With the rules registered (as inside Slicer) the input could be converted in place; a call that
    then fails (the sphere lies outside the CT) must not leave a labelmap on it."""
    noConverterRules.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    far = (ctAffine @ np.array([10.0, 11.0, 9.0, 1.0]))[:3] + np.array([0.0, 500.0, 0.0])
    seg, sid = sphereSegmentation(scene, far, 10.0)
    before = representations(seg)
    carm = logic.createCArmTransform(ct)
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match="empty inside"):
        logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES)
    with pytest.raises(NanoDRRError, match="empty inside"):
        logic.renderSegments(ct, carm, geometry, seg, segmentIds=[sid], nSamples=N_SAMPLES)
    assert representations(seg) == before and scene.GetNumberOfNodes() == n


def test_a_segmentation_that_cannot_be_converted_names_the_node_and_its_representation(
    noConverterRules, scene, logic, ct, ctArray, ctAffine, geometry
):
    fractional = slicer.vtkSegmentationConverter.GetFractionalLabelmapRepresentationName()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "fuzzy")
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(fractional)
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_CHAR, 1)
    image.GetPointData().GetScalars().Fill(100)
    segment = slicer.vtkSegment()
    segment.SetName("soft")
    segment.AddRepresentation(fractional, image)
    assert segmentation.AddSegment(segment, "soft")
    before = representations(node)
    carm = logic.createCArmTransform(ct)
    n = scene.GetNumberOfNodes()
    for call in (
        lambda: logic.render(ct, carm, geometry, segmentationNode=node, nSamples=N_SAMPLES),
        lambda: logic.renderSegments(ct, carm, geometry, node, nSamples=N_SAMPLES),
    ):
        with pytest.raises(NanoDRRError, match=r"'fuzzy'.*Fractional labelmap") as info:
            call()
        assert "binary labelmap" in str(info.value).lower()
    assert representations(node) == before and scene.GetNumberOfNodes() == n

"""Volume node → engine subject: voxel types, geometry, parent transforms, caching."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from NanoDRRLib import NanoDRRError
from slicer_testutils import (
    N_SAMPLES,
    addTransform,
    addVolume,
    affine,
    drrArray,
    engineRender,
    phantomCT,
    poseOf,
    rotation,
    vtkMatrix,
)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32, np.float64])
def test_voxel_types_render_like_float_hu(scene, logic, geometry, dtype):
    hu = phantomCT()
    if dtype == np.uint16:
        hu = hu + 1000.0  # stored with an offset, rendered as raw numbers ≥ 0
    ijk = affine((3.0, 2.5, 4.0), (1.0, 2.0, 3.0))
    ct = addVolume(scene, hu.astype(dtype), ijk)
    assert slicer.util.arrayFromVolume(ct).dtype == dtype
    carm = logic.createCArmTransform(ct, rotation=(10.0, 0.0, 0.0))
    drr = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    np.testing.assert_allclose(drr, engineRender(hu, ijk, poseOf(carm), geometry)[0], rtol=1e-6, atol=1e-6)


def test_oblique_anisotropic_geometry_built_with_slicer_setters(scene, logic, geometry):
    """IJKToRAS set through spacing/origin/direction setters equals the hand-built matrix."""
    hu = phantomCT()
    direction = rotation(25.0, 10.0, -35.0)
    spacing, origin = (2.0, 3.5, 5.0), (-40.0, 15.0, 7.0)
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    slicer.util.updateVolumeFromArray(ct, hu)
    ct.SetSpacing(*spacing)
    ct.SetOrigin(*origin)
    d = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            d.SetElement(r, c, direction[r, c])
    ct.SetIJKToRASDirectionMatrix(d)
    carm = logic.createCArmTransform(ct, rotation=(-20.0, 15.0, 0.0))
    drr = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    expected = engineRender(hu, affine(spacing, origin, direction), poseOf(carm), geometry)[0]
    np.testing.assert_allclose(drr, expected, rtol=1e-6, atol=1e-6)


def test_non_hardened_linear_transform_renders_like_the_hardened_volume(
    scene, logic, ctArray, ctAffine, geometry
):
    grand = addTransform(scene, affine((1, 1, 1), (0.0, 5.0, -3.0), rotation(0.0, 0.0, 40.0)), "grand")
    parent = addTransform(
        scene, affine((1, 1, 1), (12.0, -8.0, 20.0), rotation(15.0, -25.0, 5.0)), "parent", grand
    )
    moved = addVolume(scene, ctArray, ctAffine, "moved")
    moved.SetAndObserveTransformNodeID(parent.GetID())
    hardened = addVolume(scene, ctArray, poseOf(parent) @ ctAffine, "hardened")
    carm = logic.createCArmTransform(moved, rotation=(30.0, 10.0, 0.0))
    a = drrArray(logic.render(moved, carm, geometry, nSamples=N_SAMPLES))
    b = drrArray(logic.render(hardened, carm, geometry, nSamples=N_SAMPLES))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert a.max() > 1.0


def _thinPlateTransform(scene):
    tps = vtk.vtkThinPlateSplineTransform()
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p in [(0, 0, 0), (100, 0, 0), (0, 100, 0), (0, 0, 100), (50, 50, 50)]:
        src.InsertNextPoint(*p)
        dst.InsertNextPoint(p[0] + 3, p[1], p[2] - (5 if p == (50, 50, 50) else 0))
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode", "spline")
    node.SetAndObserveTransformToParent(tps)
    return node


@pytest.mark.parametrize("kind", ["grid", "thin plate spline", "linear under grid"])
def test_nonlinear_parent_transform_is_rejected_by_name(scene, logic, ct, geometry, kind):
    carm = logic.createCArmTransform(ct)
    if kind == "grid":
        bad = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
        ct.SetAndObserveTransformNodeID(bad.GetID())
        name = "warp"
    elif kind == "thin plate spline":
        ct.SetAndObserveTransformNodeID(_thinPlateTransform(scene).GetID())
        name = "spline"
    else:
        grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
        lin = addTransform(scene, np.eye(4), "lin", grid)
        ct.SetAndObserveTransformNodeID(lin.GetID())
        name = "lin"
    n = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match=rf"'{name}'.*not linear"):
        logic.render(ct, carm, geometry, nSamples=4)
    assert scene.GetNumberOfNodes() == n


def test_subject_is_cached_and_invalidated_by_voxels_and_transforms(
    scene, logic, ct, ctArray, ctAffine, geometry
):
    parent = addTransform(scene, np.eye(4), "parent")
    ct.SetAndObserveTransformNodeID(parent.GetID())
    carm = logic.createCArmTransform(ct)
    drr = logic.render(ct, carm, geometry, nSamples=N_SAMPLES)
    assert logic.conversionCount == 1
    logic.render(ct, carm, geometry, outputNode=drr, nSamples=N_SAMPLES)
    logic.setCArmAngles(carm, ct, 40.0, 0.0, 850.0)  # moving the C-arm needs no conversion
    logic.render(ct, carm, geometry.scaled(0.5), outputNode=drr, nSamples=N_SAMPLES, muBone=0.07)
    ct.GetDisplayNode() or ct.CreateDefaultDisplayNodes()
    ct.GetDisplayNode().SetWindowLevel(400, 40)  # display changes do not touch the voxels
    logic.render(ct, carm, geometry, outputNode=drr, nSamples=N_SAMPLES)
    assert logic.conversionCount == 1

    arr = slicer.util.arrayFromVolume(ct)
    arr[:] = 0.0  # uniform water: the DRR must change
    slicer.util.arrayFromVolumeModified(ct)
    after = drrArray(logic.render(ct, carm, geometry, outputNode=drr, nSamples=N_SAMPLES))
    assert logic.conversionCount == 2
    expected = engineRender(np.zeros_like(ctArray), ctAffine, poseOf(carm), geometry)[0]
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-6)

    parent.SetMatrixTransformToParent(vtkMatrix(affine((1, 1, 1), (5.0, 0.0, 0.0))))
    moved = drrArray(logic.render(ct, carm, geometry, outputNode=drr, nSamples=N_SAMPLES))
    assert logic.conversionCount == 3
    expected = engineRender(np.zeros_like(ctArray), poseOf(parent) @ ctAffine, poseOf(carm), geometry)[0]
    np.testing.assert_allclose(moved, expected, rtol=1e-6, atol=1e-6)

    slicer.util.updateVolumeFromArray(ct, ctArray)  # replacing the image data
    logic.render(ct, carm, geometry, outputNode=drr, nSamples=N_SAMPLES)
    assert logic.conversionCount == 4


def test_cache_does_not_alias_vtk_memory(scene, logic, ct, geometry):
    """Editing voxels without notifying must not silently change a cached subject (it holds a copy)."""
    carm = logic.createCArmTransform(ct)
    first = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    slicer.util.arrayFromVolume(ct)[:] = 3000.0  # no Modified(): the cache is not told
    again = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    np.testing.assert_array_equal(first, again)

"""Issue 13, defects 1, 6, 7 and 9: outputs never alias inputs, named errors, absurd input, C-arm angles.

Every refused call must raise NanoDRRError naming the parameter before anything changes (checked with
``scene_snapshot``). Expected values are independent of the code under test: the CT's own array, the
engine rendering the test's arrays, DICOM angles put in, hand-built matrices.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from NanoDRRLib import CArmGeometry, NanoDRRError
from scene_snapshot import sceneSnapshot, snapshotDiff
from slicer_testutils import (
    addSegmentation,
    addTransform,
    addVolume,
    affine,
    drrArray,
    engineRender,
    poseOf,
    rotation,
    vtkMatrix,
)

SMALL = CArmGeometry(sdd=1020.0, height=8, width=10, delx=12.0, dely=11.0, x0=3.0, y0=-2.0)
NS = 16


def box(shape, ks, js, is_):
    m = np.zeros(shape, np.uint8)
    m[ks[0] : ks[1], js[0] : js[1], is_[0] : is_[1]] = 1
    return m


def assertUnchanged(before, scene):
    diff = snapshotDiff(before, sceneSnapshot(scene))
    assert not diff, diff


# --- defect 1: an output node never writes into image data it shares ------------------------------


def _shallowCopy(scene, ct):
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "proxy")
    out.CopyContent(ct, False)  # as a sequence browser proxy: the CT's vtkImageData, shared
    assert out.GetImageData() is ct.GetImageData()
    return out


def _sameConnection(scene, ct):
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "piped")
    out.SetImageDataConnection(ct.GetImageDataConnection())  # shares the CT's producer
    assert out.GetImageData() is ct.GetImageData()
    return out


@pytest.mark.parametrize("share", [_shallowCopy, _sameConnection])
def test_an_output_sharing_the_cts_image_data_leaves_the_ct_intact(
    scene, logic, ct, ctArray, ctAffine, share
):
    carm = logic.createCArmTransform(ct)
    out = share(scene, ct)
    image = ct.GetImageData()
    voxels = slicer.util.arrayFromVolume(ct).copy()
    drr = logic.render(ct, carm, SMALL, outputNode=out, nSamples=NS)
    assert drr is out
    assert ct.GetImageData() is image
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), ctArray)  # was (1, 8, 10) before the fix
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), voxels)
    assert out.GetImageData() is not image
    np.testing.assert_allclose(
        drrArray(out),
        engineRender(ctArray, ctAffine, poseOf(carm), SMALL, nSamples=NS)[0],
        rtol=1e-6,
        atol=1e-6,
    )


def test_an_output_sharing_a_segment_labelmap_leaves_the_segment_intact(scene, logic, ct, ctArray, ctAffine):
    mask = box(ctArray.shape, (3, 15), (4, 18), (3, 17))
    seg, ids = addSegmentation(scene, {"body": mask}, ctAffine)
    carm = logic.createCArmTransform(ct)
    labelmap = seg.GetBinaryLabelmapInternalRepresentation(ids["body"])
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "onTheLabelmap")
    out.SetAndObserveImageData(labelmap)
    before = slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, ids["body"]).copy()
    logic.render(ct, carm, SMALL, segmentationNode=seg, outputNode=out, nSamples=NS)
    assert seg.GetBinaryLabelmapInternalRepresentation(ids["body"]) is labelmap
    np.testing.assert_array_equal(
        slicer.util.arrayFromSegmentInternalBinaryLabelmap(seg, ids["body"]), before
    )
    expected = engineRender(ctArray, ctAffine, poseOf(carm), SMALL, label=mask, maxLabel=1, nSamples=NS)[1]
    np.testing.assert_allclose(drrArray(out), expected, rtol=1e-6, atol=1e-6)


def test_two_segment_outputs_sharing_image_data_both_hold_their_own_segment(
    scene, logic, ct, ctArray, ctAffine
):
    a = box(ctArray.shape, (3, 9), (4, 18), (3, 17))
    b = box(ctArray.shape, (10, 16), (4, 18), (3, 17))
    seg, ids = addSegmentation(scene, {"a": a, "b": b}, ctAffine)
    carm = logic.createCArmTransform(ct)
    first = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "first")
    slicer.util.updateVolumeFromArray(first, np.zeros((1, 2, 2), np.float32))
    second = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "second")
    second.CopyContent(first, False)
    assert second.GetImageData() is first.GetImageData()
    logic.renderSegments(ct, carm, SMALL, seg, nSamples=NS, outputNodes={ids["a"]: first, ids["b"]: second})
    labels = a + 2 * b
    ref = engineRender(ctArray, ctAffine, poseOf(carm), SMALL, label=labels, maxLabel=2, nSamples=NS)
    np.testing.assert_allclose(drrArray(first), ref[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(drrArray(second), ref[2], rtol=1e-6, atol=1e-6)
    assert not np.allclose(ref[1], ref[2])


def test_an_output_fed_by_a_pipeline_does_not_write_into_the_filter(scene, logic, ct):
    source = vtk.vtkImageEllipsoidSource()
    source.SetWholeExtent(0, 5, 0, 5, 0, 0)
    source.Update()
    produced = source.GetOutput()
    values = vtk.util.numpy_support.vtk_to_numpy(produced.GetPointData().GetScalars()).copy()
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "filtered")
    out.SetImageDataConnection(source.GetOutputPort())
    carm = logic.createCArmTransform(ct)
    logic.render(ct, carm, SMALL, outputNode=out, nSamples=NS)
    assert source.GetOutput() is produced and produced.GetDimensions() == (6, 6, 1)
    np.testing.assert_array_equal(
        vtk.util.numpy_support.vtk_to_numpy(produced.GetPointData().GetScalars()), values
    )
    assert drrArray(out).shape == (SMALL.height, SMALL.width)


def test_a_display_or_storage_node_shared_with_the_ct_is_not_written(scene, logic, ct):
    ct.CreateDefaultDisplayNodes()
    ct.AddDefaultStorageNode()
    display, storage = ct.GetDisplayNode(), ct.GetStorageNode()
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(400.0, 40.0)
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "sharing")
    out.SetAndObserveDisplayNodeID(display.GetID())
    out.SetAndObserveStorageNodeID(storage.GetID())
    carm = logic.createCArmTransform(ct)
    logic.render(ct, carm, SMALL, outputNode=out, nSamples=NS)
    assert (display.GetWindow(), display.GetLevel()) == (400.0, 40.0)
    assert ct.GetDisplayNode() is display and ct.GetStorageNode() is storage
    assert out.GetDisplayNode() is not display and out.GetDisplayNode() is not None
    assert out.GetStorageNode() is not storage  # saving the DRR would overwrite the CT's file


# --- defect 6: named errors, before anything changes -----------------------------------------------


def _singularParent(scene, ct, carm, seg):
    out = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
    out.SetAndObserveTransformNodeID(addTransform(scene, np.diag([1.0, 0.0, 1.0, 1.0]), "squash").GetID())
    return {"outputNode": out}


def _nanOrigin(scene, ct, carm, seg):
    ct.SetOrigin(0.0, float("nan"), 0.0)
    return {}


RENDER_CASES = {
    "sdd string": (lambda s, ct, c, g: {"geometry": CArmGeometry(sdd="1020")}, r"geometry\.sdd.*string"),
    "width string": (lambda s, ct, c, g: {"geometry": CArmGeometry(width="40")}, r"geometry\.width.*string"),
    "height bool": (
        lambda s, ct, c, g: {"geometry": CArmGeometry(height=True)},
        r"geometry\.height.*boolean",
    ),
    "sdd 1e300": (lambda s, ct, c, g: {"geometry": CArmGeometry(sdd=1e300)}, r"geometry\.sdd.*out of range"),
    "delx 1e-300": (
        lambda s, ct, c, g: {"geometry": CArmGeometry(delx=1e-300)},
        r"geometry\.delx.*out of range",
    ),
    "sdd complex": (lambda s, ct, c, g: {"geometry": CArmGeometry(sdd=1020 + 1j)}, r"geometry\.sdd.*complex"),
    "muBone 1e300": (lambda s, ct, c, g: {"muBone": 1e300}, r"muBone.*out of range"),
    "muWater 1e-300": (lambda s, ct, c, g: {"muWater": 1e-300}, r"muWater.*out of range"),
    "muBone string": (lambda s, ct, c, g: {"muBone": "0.05"}, r"muBone.*string"),
    "muWater bool": (lambda s, ct, c, g: {"muWater": True}, r"muWater.*boolean"),
    "nSamples bool": (lambda s, ct, c, g: {"nSamples": True}, r"nSamples.*boolean"),
    "nSamples string": (lambda s, ct, c, g: {"nSamples": "8"}, r"nSamples.*string"),
    "segmentIds number": (lambda s, ct, c, g: {"segmentationNode": g, "segmentIds": 5}, r"segmentIds.*int"),
    "segmentIds [None]": (
        lambda s, ct, c, g: {"segmentationNode": g, "segmentIds": [None]},
        r"segmentIds.*None",
    ),
    "output under a singular parent": (_singularParent, r"outputNode 'flat'.*'squash'.*singular"),
    "NaN in the origin": (_nanOrigin, r"volumeNode 'ct'.*NaN"),
    "autoWindowLevel string": (lambda s, ct, c, g: {"autoWindowLevel": "no"}, r"autoWindowLevel"),
    "x0 1e300 (defect 7)": (
        lambda s, ct, c, g: {"geometry": CArmGeometry(x0=1e300)},
        r"geometry\.x0.*out of range",
    ),
    "x0 1e30 (defect 7)": (lambda s, ct, c, g: {"geometry": CArmGeometry(x0=1e30)}, r"geometry.*80°"),
    "detector 1e4 wide (defect 7)": (
        lambda s, ct, c, g: {"geometry": CArmGeometry(width=10000, height=2, delx=2.0)},
        r"geometry.*from the central beam",
    ),
}


@pytest.mark.parametrize("case", list(RENDER_CASES))
def test_bad_render_input_is_a_named_error_before_anything_changes(scene, logic, ct, ctArray, ctAffine, case):
    make, message = RENDER_CASES[case]
    seg, _ = addSegmentation(scene, {"s": box(ctArray.shape, (3, 15), (4, 18), (3, 17))}, ctAffine)
    carm = logic.createCArmTransform(ct)
    kwargs = {"geometry": SMALL, "nSamples": NS, **make(scene, ct, carm, seg)}
    before = sceneSnapshot(scene)
    calls = []
    with pytest.raises(NanoDRRError, match=message):
        logic.render(ct, carm, progressCallback=lambda f, m="": calls.append(f), **kwargs)
    assert calls == []  # refused in validation, not after a render
    assertUnchanged(before, scene)


SEGMENT_CASES = {
    "outputNodes list": (lambda s, ct, ids, o: [o], r"outputNodes: expected a dict.*list"),
    "duplicate output (defect 7)": (
        lambda s, ct, ids, o: {ids["a"]: o, ids["b"]: o},
        r"outputNodes\['.*'\] 'mine'.*also the output of segment",
    ),
    "CT as output": (lambda s, ct, ids, o: {ids["a"]: ct}, r"outputNodes\['.*'\] 'ct'.*input"),
    "unknown segment key": (lambda s, ct, ids, o: {"nope": o}, r"outputNodes.*no segment 'nope'"),
    "non-string key": (lambda s, ct, ids, o: {3: o}, r"outputNodes: keys must be segment IDs"),
}


@pytest.mark.parametrize("case", list(SEGMENT_CASES))
def test_bad_render_segments_outputs_are_named_errors(scene, logic, ct, ctArray, ctAffine, case):
    make, message = SEGMENT_CASES[case]
    a = box(ctArray.shape, (3, 9), (4, 18), (3, 17))
    b = box(ctArray.shape, (10, 16), (4, 18), (3, 17))
    seg, ids = addSegmentation(scene, {"a": a, "b": b}, ctAffine)
    carm = logic.createCArmTransform(ct)
    mine = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    before = sceneSnapshot(scene)
    with pytest.raises(NanoDRRError, match=message):
        logic.renderSegments(ct, carm, SMALL, seg, nSamples=NS, outputNodes=make(scene, ct, ids, mine))
    assertUnchanged(before, scene)


def _nanRender(logic, monkeypatch):
    real = logic._renderTensor

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        out[..., 0, 0] = np.nan
        return out

    monkeypatch.setattr(logic, "_renderTensor", poisoned)


def test_a_non_finite_image_is_refused_before_it_is_written(scene, logic, ct, ctArray, ctAffine, monkeypatch):
    seg, _ = addSegmentation(scene, {"s": box(ctArray.shape, (3, 15), (4, 18), (3, 17))}, ctAffine)
    carm = logic.createCArmTransform(ct)
    drr = logic.render(ct, carm, SMALL, nSamples=NS)
    parts = logic.renderSegments(ct, carm, SMALL, seg, nSamples=NS)
    _nanRender(logic, monkeypatch)
    before = sceneSnapshot(scene)
    with pytest.raises(NanoDRRError, match="NaN or infinite pixel"):
        logic.render(ct, carm, SMALL, outputNode=drr, nSamples=NS)
    with pytest.raises(NanoDRRError, match="NaN or infinite pixel"):
        logic.render(ct, carm, SMALL, nSamples=NS)
    with pytest.raises(NanoDRRError, match="NaN or infinite pixel"):
        logic.renderSegments(ct, carm, SMALL, seg, nSamples=NS, outputNodes=parts)
    assertUnchanged(before, scene)


CARM_CASES = {
    "sod True": (lambda l, ct, c: l.createCArmTransform(ct, sod=True), r"sod.*boolean"),
    "sod string": (lambda l, ct, c: l.createCArmTransform(ct, sod="850"), r"sod.*string"),
    "sod 1e300": (lambda l, ct, c: l.createCArmTransform(ct, sod=1e300), r"sod.*out of range"),
    "rotation string": (lambda l, ct, c: l.createCArmTransform(ct, rotation="123"), r"rotation.*'123'"),
    "rotation bool": (
        lambda l, ct, c: l.createCArmTransform(ct, rotation=(0, True, 0)),
        r"rotation\[1\].*boolean",
    ),
    "rotation complex": (
        lambda l, ct, c: l.createCArmTransform(ct, rotation=(1j, 0, 0)),
        r"rotation\[0\].*complex",
    ),
    "rotation two angles": (lambda l, ct, c: l.createCArmTransform(ct, rotation=(0, 0)), r"rotation.*three"),
    "orientation list": (lambda l, ct, c: l.createCArmTransform(ct, orientation=["AP"]), r"orientation"),
    "secondary 95": (lambda l, ct, c: l.setCArmAngles(c, ct, 0.0, 95.0), r"secondary.*\[-90, 90\]"),
    "secondary 180": (lambda l, ct, c: l.setCArmAngles(c, ct, 0.0, 180.0), r"secondary.*\[-90, 90\]"),
    "secondary -90.001": (lambda l, ct, c: l.setCArmAngles(c, ct, 0.0, -90.001), r"secondary"),
    "primary 1e300": (lambda l, ct, c: l.setCArmAngles(c, ct, 1e300, 0.0), r"primary.*out of range"),
    "primary 180.5": (lambda l, ct, c: l.setCArmAngles(c, ct, 180.5, 0.0), r"primary.*\[-180, 180\]"),
    "primary -181": (lambda l, ct, c: l.setCArmAngles(c, ct, -181.0, 0.0), r"primary.*\[-180, 180\]"),
    "primary string": (lambda l, ct, c: l.setCArmAngles(c, ct, "10", 0.0), r"primary.*string"),
    "primary bool": (lambda l, ct, c: l.setCArmAngles(c, ct, True, 0.0), r"primary.*boolean"),
    "sod nan": (lambda l, ct, c: l.setCArmAngles(c, ct, 0.0, 0.0, float("nan")), r"sod.*NaN"),
}


@pytest.mark.parametrize("case", list(CARM_CASES))
def test_bad_carm_input_is_a_named_error_before_anything_changes(scene, logic, ct, case):
    call, message = CARM_CASES[case]
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 10.0, 20.0, 850.0)
    before = sceneSnapshot(scene)
    with pytest.raises(NanoDRRError, match=message):
        call(logic, ct, carm)
    assertUnchanged(before, scene)


def test_set_angles_under_a_singular_parent_is_a_named_error(scene, logic, ct):
    carm = logic.createCArmTransform(ct)
    carm.SetAndObserveTransformNodeID(addTransform(scene, np.diag([0.0, 1.0, 1.0, 1.0]), "flat").GetID())
    before = sceneSnapshot(scene)
    with pytest.raises(NanoDRRError, match=r"carmNode 'ct C-arm'.*'flat'.*singular"):
        logic.setCArmAngles(carm, ct, 10.0, 0.0, 850.0)
    assertUnchanged(before, scene)


def test_angles_of_a_carm_from_another_scene_are_refused(scene, logic, ct, ctArray, ctAffine):
    other = slicer.vtkMRMLScene()
    try:
        elsewhere = addVolume(other, ctArray, ctAffine)
        carm = logic.createCArmTransform(elsewhere)
        before = sceneSnapshot(other)
        with pytest.raises(NanoDRRError, match=r"carmNode.*not in the volume's scene"):
            logic.setCArmAngles(carm, ct, 0.0, 0.0, 850.0)
        with pytest.raises(NanoDRRError, match=r"carmNode.*not in the volume's scene"):
            logic.getCArmAngles(carm, ct)
        assertUnchanged(before, other)
    finally:
        other.Clear(1)


# --- defect 9: the C-arm angle round trip --------------------------------------------------------

ANGLES = [
    (p, s)
    for p in (-180.0, -179.999, -135.0, -90.0, -33.3, 0.0, 12.5, 90.0, 179.999, 180.0)
    for s in (-90.0, -89.9999, -60.0, -1e-6, 0.0, 25.0, 89.9999, 90.0)
]


def _sourceDirection(p, s):
    """DICOM: source − isocenter in units of SOD (docs/geometry.md)."""
    p, s = np.deg2rad(p), np.deg2rad(s)
    return np.array([np.sin(p) * np.cos(s), -np.cos(p) * np.cos(s), -np.sin(s)])


def test_get_is_the_inverse_of_set_on_the_whole_dicom_range(scene, logic, ctArray, ctAffine):
    ct = addVolume(scene, ctArray, ctAffine)
    parent = addTransform(scene, affine((1, 1, 1), (7.0, -3.0, 2.0), np.eye(3)), "table")
    ct.SetAndObserveTransformNodeID(parent.GetID())
    carm = logic.createCArmTransform(ct)
    iso = logic.isocenter(ct)
    for p, s in ANGLES:
        logic.setCArmAngles(carm, ct, p, s, 777.0)
        pose = poseOf(carm)
        np.testing.assert_allclose((pose[:3, 3] - iso) / 777.0, _sourceDirection(p, s), atol=1e-12)
        gp, gs, gd = logic.getCArmAngles(carm, ct)
        expected = 180.0 if p == -180.0 else p  # one pose; primary is reported in (−180, 180]
        assert (gp, gs, gd) == pytest.approx((expected, s, 777.0), abs=1e-9), (p, s)
        assert -180.0 < gp <= 180.0 and -90.0 <= gs <= 90.0
        logic.setCArmAngles(carm, ct, gp, gs, gd)  # re-applying what was read changes nothing
        np.testing.assert_allclose(poseOf(carm), pose, atol=1e-9)


def test_at_the_poles_primary_is_the_detectors_in_plane_orientation(scene, logic, ct):
    """|secondary| = 90: the source is on the head–foot axis for every primary, the image is not."""
    carm = logic.createCArmTransform(ct)
    # under a rotated parent the matrix read back carries rounding noise, as after any interaction
    carm.SetAndObserveTransformNodeID(
        addTransform(scene, affine((1, 1, 1), (5, 6, 7), rotation(20, -35, 50))).GetID()
    )
    for s in (90.0, -90.0):
        poses = {}
        for p in (-120.0, 0.0, 45.0, 180.0):
            logic.setCArmAngles(carm, ct, p, s, 850.0)
            poses[p] = poseOf(carm)
            assert logic.getCArmAngles(carm, ct)[:2] == pytest.approx((p, s), abs=1e-9)
            # camera x (detector columns) is (cos P, sin P, 0) by R = Rz(P + 180)·Rx(−S) with the "AP" axes
            np.testing.assert_allclose(
                poses[p][:3, 0], [np.cos(np.deg2rad(p)), np.sin(np.deg2rad(p)), 0.0], atol=1e-12
            )
        np.testing.assert_allclose(poses[0.0][:3, 3], poses[45.0][:3, 3], atol=1e-9)  # same source


def test_a_mirrored_pa_carm_reports_the_angles_of_its_source_and_beam(scene, logic, ct):
    from nanodrr_engine import make_rt_inv

    iso = logic.isocenter(ct)
    for p, s in ((0.0, 0.0), (30.0, -25.0), (-100.0, 60.0)):
        pa = make_rt_inv(np.array([p, s, 0.0]), np.array([0.0, -850.0, 0.0]), "PA", iso).numpy()
        carm = addTransform(scene, pa, "mirrored")
        assert np.linalg.det(poseOf(carm)[:3, :3]) == pytest.approx(-1.0)
        assert logic.getCArmAngles(carm, ct) == pytest.approx((p, s, 850.0), abs=1e-9)
        proper = logic.createCArmTransform(ct)
        logic.setCArmAngles(proper, ct, *logic.getCArmAngles(carm, ct))
        np.testing.assert_allclose(
            poseOf(proper) @ np.diag([-1.0, 1, 1, 1]), pa, atol=1e-9
        )  # columns flipped


def test_a_rolled_carm_reports_its_beam_angles(scene, logic, ct):
    """A roll about the beam (the 3D handles can add one) is not a DICOM angle: the beam's angles are."""
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 40.0, -15.0, 850.0)
    pose = poseOf(carm)
    c, s = np.cos(np.deg2rad(25.0)), np.sin(np.deg2rad(25.0))
    roll = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # about camera z
    carm.SetMatrixTransformToParent(vtkMatrix(pose @ roll))
    assert logic.getCArmAngles(carm, ct) == pytest.approx((40.0, -15.0, 850.0), abs=1e-9)

"""NanoDRRWorkflow on real MRML: C-arm pose round trips, renders against the engine, cancel, live, views.

References are independent of the workflow: the engine called on the test's own arrays (slicer_testutils),
the DICOM source positions of docs/geometry.md computed by hand, and matrices built here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import slicer
import vtk
from NanoDRRLib import CArmGeometry, NanoDRRError
from NanoDRRLib.workflow import NanoDRRWorkflow, Pose, RenderCancelled, renderStage
from slicer_testutils import addSegmentation, addVolume, drrArray, engineRender, poseOf, toArray


class Later:
    """``schedule(callback, delay)`` that keeps the callbacks until the test runs them."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, float]] = []

    def __call__(self, callback, delay) -> None:
        self.calls.append((callback, delay))

    def run(self) -> list[float]:
        calls, self.calls = self.calls, []
        for callback, _ in calls:
            callback()
        return [d for _, d in calls]


@pytest.fixture
def workflow(scene, logic, ct, geometry):
    w = NanoDRRWorkflow(scene, logic)
    w.setInputs(ct)
    w.setDetector(**geometry.toDict())
    yield w
    w.close()


def sourceOf(carm) -> np.ndarray:
    return poseOf(carm)[:3, 3]


def expectedSource(center, primary, secondary, sod) -> np.ndarray:
    """docs/geometry.md: source = c + sod·(sin P·cos S, −cos P·cos S, −sin S)."""
    p, s = math.radians(primary), math.radians(secondary)
    return center + sod * np.array([math.sin(p) * math.cos(s), -math.cos(p) * math.cos(s), -math.sin(s)])


def ctCenter(ct) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(m)
    i, j, k = ct.GetImageData().GetDimensions()
    return (toArray(m) @ np.array([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0]))[:3]


def test_create_and_move_the_carm_at_dicom_angles(workflow, ct):
    changes = []
    workflow.addListener(changes.append)
    workflow.setPose(primary=30.0, secondary=-25.0, sod=700.0)
    assert workflow.carmNode is None and workflow.pose == Pose(30.0, -25.0, 700.0)
    carm = workflow.createCArm()
    assert "carm" in changes
    np.testing.assert_allclose(sourceOf(carm), expectedSource(ctCenter(ct), 30.0, -25.0, 700.0), atol=1e-6)
    # the beam points from the source at the isocenter
    beam = poseOf(carm)[:3, 2]
    np.testing.assert_allclose(beam, (ctCenter(ct) - sourceOf(carm)) / 700.0, atol=1e-9)
    workflow.setPose(primary=-90.0)
    np.testing.assert_allclose(sourceOf(carm), expectedSource(ctCenter(ct), -90.0, -25.0, 700.0), atol=1e-6)
    assert workflow.createCArm() is carm  # the same node, re-posed
    workflow.resetCArm()
    assert workflow.pose == Pose()
    np.testing.assert_allclose(sourceOf(carm), expectedSource(ctCenter(ct), 0.0, 0.0, 850.0), atol=1e-6)
    display = carm.GetDisplayNode()
    assert display.GetEditorVisibility() and display.GetEditorRotationEnabled()
    assert not display.GetEditorTranslationEnabled()
    # handles rotate about the isocenter: the centre of transformation, in camera coordinates, is (0, 0, sod)
    center = list(carm.GetCenterOfTransformation())
    np.testing.assert_allclose(center, [0.0, 0.0, 850.0], atol=1e-6)
    assert workflow.geometryModel is not None and workflow.geometryModel.GetParentTransformNode() is carm


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"primary": 181.0}, "primary"),
        ({"secondary": "10"}, "secondary"),
        ({"sod": True}, "sod"),
        ({"sod": float("nan")}, "sod"),
        ({"sod": 1020.0}, "sod"),  # not in front of the detector (sdd 1020)
    ],
)
def test_bad_pose_is_refused_and_changes_nothing(workflow, values, name):
    carm = workflow.createCArm()
    before, pose = poseOf(carm), workflow.pose
    with pytest.raises(NanoDRRError, match=name):
        workflow.setPose(**values)
    np.testing.assert_array_equal(poseOf(carm), before)
    assert workflow.pose == pose


def test_moving_the_carm_node_updates_the_pose(workflow, ct):
    """What the 3D handles do: rotate the transform about the isocenter; the angles follow."""
    carm = workflow.createCArm()
    seen = []
    workflow.addListener(lambda what: seen.append((what, workflow.pose)) if what == "pose" else None)
    c = ctCenter(ct)
    a = math.radians(30.0)
    rz = np.eye(4)
    rz[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    shift, back = np.eye(4), np.eye(4)
    shift[:3, 3], back[:3, 3] = -c, c
    carm.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(back @ rz @ shift @ poseOf(carm)))
    assert seen, "no pose update after the C-arm moved"
    p = workflow.pose
    assert p.primary == pytest.approx(30.0, abs=1e-6)  # source (sin 30, −cos 30, 0)·sod: LAO 30
    assert p.secondary == pytest.approx(0.0, abs=1e-6) and p.sod == pytest.approx(850.0, abs=1e-6)


def test_render_matches_the_engine(workflow, ct, ctArray, ctAffine, geometry):
    workflow.setPose(primary=20.0, secondary=10.0, sod=800.0)
    drr, parts = workflow.render()
    assert parts == {} and workflow.outputNode is drr and workflow.renderCount == 1
    ref = engineRender(ctArray, ctAffine, poseOf(workflow.carmNode), geometry, method="joseph")[0]
    np.testing.assert_allclose(drrArray(drr), ref, rtol=1e-6, atol=1e-6)
    assert workflow.status == "Done." and not workflow.busy

    workflow.setSettings(displayMode="transmission", method="raymarch", nSamples=64, boneContrast=2.0)
    again, _ = workflow.render()
    assert again is drr  # re-rendered in place
    from nanodrr_engine.data.preprocess import MU_BONE

    ref = engineRender(
        ctArray, ctAffine, poseOf(workflow.carmNode), geometry, nSamples=64, mu_bone=2 * MU_BONE
    )
    np.testing.assert_allclose(drrArray(drr), np.exp(-ref[0]), rtol=1e-6, atol=1e-6)


def test_per_segment_drrs_match_the_engine_channels(scene, workflow, ct, ctArray, ctAffine, geometry):
    bone = ctArray >= 1000.0
    air = (ctArray > -700.0) & (ctArray < -500.0)
    seg, ids = addSegmentation(scene, {"bone": bone, "pocket": air}, ctAffine)
    workflow.setInputs(ct, seg)
    workflow.setRenderSegments(True)
    workflow.setSegmentIds([ids["bone"], ids["pocket"]])
    progress = []
    drr, parts = workflow.render(progress=lambda f, m: progress.append(f))
    assert set(parts) == {ids["bone"], ids["pocket"]}
    labels = np.zeros(ctArray.shape, dtype=np.uint8)
    labels[bone], labels[air] = 1, 2
    ref = engineRender(ctArray, ctAffine, poseOf(workflow.carmNode), geometry, labels, 3, method="joseph")
    np.testing.assert_allclose(drrArray(parts[ids["bone"]]), ref[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(drrArray(parts[ids["pocket"]]), ref[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(drrArray(drr), ref.sum(0), rtol=1e-5, atol=1e-5)
    assert progress == sorted(progress) and progress[-1] <= 1.0
    # fewer segments: the dropped segment's DRR node leaves the scene, the other is reused
    workflow.setSegmentIds([ids["bone"]])
    _, parts2 = workflow.render()
    assert list(parts2) == [ids["bone"]] and parts2[ids["bone"]] is parts[ids["bone"]]
    assert parts[ids["pocket"]].GetScene() is None
    with pytest.raises(NanoDRRError, match="segmentIds"):
        workflow.setSegmentIds(["no such segment"])


def test_cancel_leaves_the_scene_unchanged(scene, workflow):
    workflow.createCArm()
    before = scene.GetNumberOfNodes()

    def progress(fraction, message):
        workflow.cancel()

    assert workflow.render(progress=progress) is None
    assert scene.GetNumberOfNodes() == before and workflow.outputNode is None
    assert workflow.status == "Cancelled." and not workflow.busy
    assert workflow.render() is not None  # the next render is not cancelled


def test_render_stages_follow_the_logic_messages(workflow, scene, ct, ctArray, ctAffine):
    """The web app touches MRML only in "scene" stages: the logic must write nodes after a "scene" report."""
    workflow.createCArm()
    events = []
    created = []
    tag = scene.AddObserver(
        slicer.vtkMRMLScene.NodeAddedEvent, lambda *a: created.append(events[-1][1] if events else "before")
    )
    try:
        workflow.render(progress=lambda f, m: events.append((f, renderStage(m))))
    finally:
        scene.RemoveObserver(tag)
    stages = [s for _, s in events]
    assert stages[0] == "scene" and "compute" in stages and stages[-1] == "scene"
    assert created and set(created) == {"scene"}  # every node was added during a "scene" stage


def test_live_follows_the_carm_and_finalizes(scene, logic, ct, ctArray, ctAffine, geometry):
    later = Later()
    w = NanoDRRWorkflow(scene, logic, schedule=later, previewPixels=400)  # 48×40 detector → preview
    w.setInputs(ct)
    w.setDetector(**geometry.toDict())
    w.setLive(True)
    assert w.live and w.renderCount == 1
    drr = w.outputNode
    ref = engineRender(ctArray, ctAffine, poseOf(w.carmNode), geometry, method="joseph")[0]
    np.testing.assert_allclose(drrArray(drr), ref, rtol=1e-6, atol=1e-6)
    for primary in (10.0, 20.0, 30.0):
        w.setPose(primary=primary)
    assert w.renderCount == 1 and len(later.calls) == 1  # coalesced into one flush
    later.run()
    assert w.renderCount == 2 and drrArray(drr).size < geometry.height * geometry.width  # a preview
    delays = later.run()  # the finalize timer
    assert delays == [pytest.approx(w.finalizeDelay)]
    assert w.renderCount == 3
    ref = engineRender(ctArray, ctAffine, poseOf(w.carmNode), geometry, method="joseph")[0]
    np.testing.assert_allclose(drrArray(drr), ref, rtol=1e-6, atol=1e-6)
    w.setLive(False)
    w.setPose(primary=40.0)
    assert not w.live and later.calls == [] and w.renderCount == 3
    w.close()


def test_live_error_is_shown_and_the_next_valid_pose_renders(workflow):
    workflow.setLive(True)
    count = workflow.renderCount
    with pytest.raises(NanoDRRError, match="80"):
        workflow.setDetector(x0=1e5)  # rays far beyond 80°: refused before anything changes
    assert workflow.geometry.x0 == 6.0
    workflow.carmNode.SetMatrixTransformToParent(
        slicer.util.vtkMatrixFromArray(np.diag([2.0, 1.0, 1.0, 1.0]))
    )
    assert workflow.lastError is not None and "Live rendering" in workflow.status
    workflow.setPose(primary=15.0)
    assert workflow.lastError is None and workflow.renderCount == count + 1


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda w: w.setDetector(width=0), "geometry.width"),
        (lambda w: w.setDetector(pixels=3), "pixels"),
        (lambda w: w.applyPreset("No such detector"), "preset"),
        (lambda w: w.setSettings(method="siddon"), "method"),
        (lambda w: w.setSettings(nSamples=2.5), "nSamples"),
        (lambda w: w.setSettings(boneContrast=-1.0), "boneContrast"),
        (lambda w: w.setSettings(displayMode="log"), "displayMode"),
        (lambda w: w.setLive("yes"), "live"),
    ],
)
def test_bad_settings_are_refused_by_name(workflow, call, name):
    geometry, settings = workflow.geometry, workflow.settings
    with pytest.raises(NanoDRRError, match=name):
        call(workflow)
    assert workflow.geometry == geometry and workflow.settings == settings


def test_presets(workflow):
    workflow.applyPreset("Image intensifier 9in")
    g = workflow.geometry
    assert (g.height, g.width, g.delx, g.dely, g.sdd) == (512, 512, 0.45, 0.45, 1000.0)
    assert workflow.detectorPreset == "Image intensifier 9in"
    workflow.setDetector(width=511)
    assert workflow.detectorPreset == ""


def test_render_without_a_volume_is_refused(scene, logic):
    w = NanoDRRWorkflow(scene, logic)
    with pytest.raises(NanoDRRError, match="select a CT volume"):
        w.render()
    with pytest.raises(NanoDRRError, match="scene"):
        NanoDRRWorkflow(None)


def test_drr_in_a_slice_view_is_seen_from_the_detector(scene, workflow):
    from NanoDRRLib import views

    drr, _ = workflow.render()
    sliceNode = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    views.showDRRInSlice(sliceNode, composite, drr)
    assert composite.GetBackgroundVolumeID() == drr.GetID()
    m = toArray(sliceNode.GetSliceToRAS())
    pose = poseOf(workflow.carmNode)
    # screen x runs against camera x (columns right to left), screen y against camera y, the normal along
    # the beam (the viewer beyond the detector looks back at the source)
    np.testing.assert_allclose(m[:3, 0], -pose[:3, 0], atol=1e-9)
    np.testing.assert_allclose(m[:3, 1], -pose[:3, 1], atol=1e-9)
    np.testing.assert_allclose(m[:3, 2], pose[:3, 2], atol=1e-9)
    g: CArmGeometry = workflow.geometry
    centre = pose @ np.array([-g.x0, -g.y0, g.sdd, 1.0])  # the detector centre
    np.testing.assert_allclose(m[:3, 3], centre[:3], atol=1e-6)
    with pytest.raises(NanoDRRError, match="single-slice"):
        views.alignSliceToImage(sliceNode, workflow.volumeNode)


def test_render_cancelled_exception_is_not_an_error():
    assert not issubclass(RenderCancelled, NanoDRRError)


@pytest.fixture
def chestWorkflow(scene, logic):
    """The engine's analytic chest phantom (4 mm voxels) on a 64 × 64 detector of 6 mm pixels."""
    from nanodrr_engine.data.phantom import make_chest_phantom

    vol, _, v2w, _ = make_chest_phantom(spacing=(4.0, 4.0, 4.0))
    w = NanoDRRWorkflow(scene, logic)
    w.setInputs(addVolume(scene, np.asarray(vol, dtype=np.float32), v2w, name="chest"))
    w.setDetector(sdd=1020.0, height=64, width=64, delx=6.0, dely=6.0)
    yield w
    w.close()


def test_register_the_drr_of_a_known_pose_moves_the_carm_back(scene, chestWorkflow):
    """Registration through the workflow: a DRR at 20° LAO as the X-ray, start at 24°; the C-arm moves
    only in a "scene" stage, back to 20° (the pose the target was rendered at, not the registration's)."""
    workflow = chestWorkflow
    carm = workflow.createCArm()
    workflow.setPose(primary=20.0, secondary=5.0)
    truth = poseOf(carm)
    workflow.render()
    xray = workflow.xrayFromDrr()
    pixels = drrArray(xray).copy()
    assert xray is not workflow.outputNode and np.array_equal(pixels, drrArray(workflow.outputNode))
    workflow.setPose(primary=24.0)
    start = poseOf(carm)
    events, moves = [], []
    tag = carm.AddObserver(
        slicer.vtkMRMLTransformNode.TransformModifiedEvent, lambda *a: moves.append(events[-1])
    )
    try:
        result = workflow.register(progress=lambda f, m: events.append(renderStage(m)))
    finally:
        carm.RemoveObserver(tag)
    assert "compute" in events and moves and set(moves) == {"scene"}
    assert result["similarityAfter"] > result["similarityBefore"]
    assert abs(workflow.pose.primary - 20.0) < 0.5 and abs(workflow.pose.secondary - 5.0) < 0.5
    assert np.abs(poseOf(carm)[:3, 3] - truth[:3, 3]).max() < 10.0  # source within 1 cm (from ~60 mm)
    np.testing.assert_array_equal(drrArray(xray), pixels)  # the X-ray is never modified
    assert workflow.canUndoRegistration
    workflow.render()
    workflow.setOverlay(show=True, mode="checkerboard")
    overlay = workflow.overlayNode
    h, w = pixels.shape
    assert overlay is not None and slicer.util.arrayFromVolume(overlay).shape == (1, h, w, 3)
    with pytest.raises(NanoDRRError, match="overlay: mode"):
        workflow.setOverlay(mode="sparkles")
    workflow.undoRegistration()
    np.testing.assert_allclose(poseOf(carm), start, atol=1e-9)
    assert not workflow.canUndoRegistration


def test_cancelled_or_refused_registration_leaves_the_carm(scene, chestWorkflow, tmp_path):
    workflow = chestWorkflow
    carm = workflow.createCArm()
    with pytest.raises(NanoDRRError, match="load or choose an X-ray"):
        workflow.register()
    workflow.render()
    workflow.xrayFromDrr()
    workflow.setPose(primary=6.0)
    before = poseOf(carm)

    def cancelSoon(fraction, message):
        if renderStage(message) == "compute":
            workflow.cancel()

    assert workflow.register(progress=cancelSoon) is None
    np.testing.assert_array_equal(poseOf(carm), before)
    assert not workflow.canUndoRegistration and not workflow.busy
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match="no such X-ray file"):
        workflow.loadXray(tmp_path / "missing.dcm")
    assert scene.GetNumberOfNodes() == nodes


# --------------------------------------------------------------------------------------------------
# Selections a host (the Slicer parameter node) makes: nodes chosen, cleared, protected
# --------------------------------------------------------------------------------------------------


def test_clearing_the_inputs_and_the_carm_stops_live_and_keeps_the_nodes(scene, workflow):
    carm = workflow.createCArm()
    workflow.setLive(True)
    assert workflow.live
    workflow.setCArmNode(None)
    assert workflow.carmNode is None and not workflow.live and carm.GetScene() is scene
    before = workflow.renderCount
    carm.GetTransformToParent()  # moving the old C-arm renders nothing any more
    workflow.logic.setCArmAngles(carm, workflow.volumeNode, 30.0, 0.0, 850.0)
    assert workflow.renderCount == before and workflow.pose == Pose()
    workflow.setCArmNode(carm)  # its pose is read back
    assert workflow.pose.primary == pytest.approx(30.0)
    ct = workflow.volumeNode
    workflow.setInputs(None)
    assert workflow.volumeNode is None and ct.GetScene() is scene
    with pytest.raises(NanoDRRError, match="select a CT volume"):
        workflow.render()


def test_the_output_node_can_be_chosen_but_never_the_ct_or_the_xray(scene, workflow, ct):
    workflow.createCArm()
    drr, _ = workflow.render()
    mine = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my DRR")
    workflow.setOutputNode(mine)
    assert workflow.render()[0] is mine and drrArray(mine).shape == drrArray(drr).shape
    np.testing.assert_array_equal(drrArray(mine), drrArray(drr))
    workflow.setXrayNode(drr)
    pixels = drrArray(drr).copy()
    for node, name in ((ct, "input"), (drr, "input")):
        with pytest.raises(NanoDRRError, match=f"cannot overwrite an {name} node"):
            workflow.setOutputNode(node)
    assert workflow.outputNode is mine
    np.testing.assert_array_equal(drrArray(drr), pixels)


def test_replaced_xrays_the_workflow_loaded_are_removed_only_when_asked(scene, logic, ct, geometry):
    for remove in (True, False):
        w = NanoDRRWorkflow(scene, logic, removeReplacedXrays=remove)
        w.setInputs(ct)
        w.setDetector(**geometry.toDict())
        w.createCArm()
        w.render()
        first = w.xrayFromDrr()
        second = w.xrayFromDrr()
        assert w.xrayNode is second
        assert (first.GetScene() is None) is remove
        picked = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "picked")
        picked.CopyContent(second)
        w.setXrayNode(picked)  # the user's choice
        w.setXrayNode(second if not remove else None)
        assert picked.GetScene() is scene  # a node the workflow did not make is never removed
        w.close()


def test_segment_drrs_are_linked_to_their_drr_and_reused_after_a_new_session(
    scene, logic, workflow, ct, ctArray, ctAffine
):
    from NanoDRRLib.workflow import segmentDRRsOf

    seg, ids = addSegmentation(scene, {"bone": ctArray >= 1000.0}, ctAffine)
    workflow.setInputs(ct, seg)
    workflow.setRenderSegments(True)
    drr, parts = workflow.render()
    assert segmentDRRsOf(drr) == parts
    # another session (a reloaded scene, the module re-entered) renders into the same nodes
    other = NanoDRRWorkflow(scene, logic)
    other.setInputs(ct, seg)
    other.setCArmNode(workflow.carmNode)
    other.setDetector(**workflow.geometry.toDict())
    other.setOutputNode(drr)
    other.setRenderSegments(True)
    nodes = scene.GetNumberOfNodes()
    _, again = other.render()
    assert again[ids["bone"]] is parts[ids["bone"]] and scene.GetNumberOfNodes() == nodes
    other.close()


def test_live_renders_carry_the_overlay_along(scene, logic, ct, geometry):
    later = Later()
    w = NanoDRRWorkflow(scene, logic, schedule=later)
    w.setInputs(ct)
    w.setDetector(**geometry.toDict())
    w.createCArm()
    w.render()
    w.xrayFromDrr()
    w.setOverlay(show=True, mode="checkerboard")
    overlay = w.overlayNode
    before = slicer.util.arrayFromVolume(overlay).copy()
    w.setLive(True)
    w.setPose(primary=25.0)
    later.run()
    after = slicer.util.arrayFromVolume(overlay)
    assert w.overlayNode is overlay and not np.array_equal(after, before)  # the DRR half moved with the C-arm
    w.close()

"""LiveRenderController: coalescing, preview → full resolution, observers, clean shutdown."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
from NanoDRRLib import LiveRenderController, NanoDRRError
from slicer_testutils import N_SAMPLES, addSegmentation, drrArray, engineRender, poseOf, vtkMatrix


class Collector:
    """A ``schedule`` that defers callbacks until the test runs them (like a Qt single-shot timer)."""

    def __init__(self) -> None:
        self.callbacks = []

    def __call__(self, callback) -> None:
        self.callbacks.append(callback)

    def run(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb()


def test_a_burst_of_moves_costs_one_render_of_the_latest_pose(scene, logic, ct, ctArray, ctAffine, geometry):
    carm = logic.createCArmTransform(ct)
    schedule = Collector()
    rendered = []
    live = LiveRenderController(
        logic,
        ct,
        carm,
        geometry,
        nSamples=N_SAMPLES,
        previewScale=0.5,
        schedule=schedule,
        onRendered=rendered.append,
    )
    live.start()
    assert live.isActive and live.renderCount == 1 and not live.isPreview
    out = live.outputNode
    assert rendered == [out]
    for primary in (5.0, 10.0, 15.0, 20.0, 25.0):
        logic.setCArmAngles(carm, ct, primary, 0.0, 850.0)
    assert live.renderCount == 1
    assert len(schedule.callbacks) == 1  # coalesced
    schedule.run()
    assert live.renderCount == 2 and live.isPreview
    assert live.outputNode is out
    preview = geometry.scaled(0.5)
    np.testing.assert_allclose(
        drrArray(out), engineRender(ctArray, ctAffine, poseOf(carm), preview)[0], rtol=1e-6, atol=1e-6
    )
    assert live.finalize()
    assert live.renderCount == 3 and not live.isPreview
    np.testing.assert_allclose(
        drrArray(out), engineRender(ctArray, ctAffine, poseOf(carm), geometry)[0], rtol=1e-6, atol=1e-6
    )
    assert not live.finalize()  # already full resolution
    schedule.run()
    assert live.renderCount == 3
    live.stop()


def test_without_schedule_each_change_renders_synchronously(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=8, previewScale=1.0)
    live.start()
    for k, primary in enumerate((10.0, 20.0, 30.0), start=2):
        logic.setCArmAngles(carm, ct, primary, 0.0, 850.0)
        assert live.renderCount == k
    np.testing.assert_array_equal(
        np.array(live.outputNode.GetAttribute("NanoDRR.rtInv").split(), float).reshape(4, 4), poseOf(carm)
    )
    live.stop()
    logic.setCArmAngles(carm, ct, 40.0, 0.0, 850.0)
    assert live.renderCount == 4


def test_volume_and_segmentation_changes_trigger_renders(scene, logic, ct, ctArray, ctAffine, geometry):
    mask = np.zeros(ctArray.shape, np.uint8)
    mask[3:12, 4:15, 3:14] = 1
    seg, ids = addSegmentation(scene, {"m": mask}, ctAffine)
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry, segmentationNode=seg, nSamples=8, previewScale=1.0)
    live.start()
    count = live.renderCount
    slicer.util.arrayFromVolume(ct)[:] += 10.0
    slicer.util.arrayFromVolumeModified(ct)
    assert live.renderCount > count
    count = live.renderCount
    seg.GetDisplayNode().SetSegmentVisibility(
        ids["m"], True
    )  # no change in state still re-renders at most once
    seg.GetSegmentation().GetSegment(ids["m"]).Modified()
    assert live.renderCount > count
    live.stop()


def test_bad_pose_while_live_is_recorded_not_raised(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=8, previewScale=1.0)
    live.start()
    carm.SetMatrixTransformToParent(vtkMatrix(poseOf(carm) @ np.diag([2.0, 2.0, 2.0, 1.0])))
    assert isinstance(live.lastError, NanoDRRError) and live.renderCount == 1
    logic.setCArmAngles(carm, ct, 0.0, 0.0, 850.0)
    assert live.lastError is None and live.renderCount == 2
    live.stop()


def test_start_validates(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    live = LiveRenderController(logic, ct, carm, geometry.__class__(height=0), nSamples=8)
    with pytest.raises(NanoDRRError, match="height"):
        live.start()
    assert not live.isActive
    with pytest.raises(NanoDRRError, match="previewScale"):
        LiveRenderController(logic, ct, carm, geometry, previewScale=0.0)


@pytest.mark.parametrize("removed", ["carm", "volume", "segmentation", "output", "clear scene"])
def test_removing_an_observed_node_or_closing_the_scene_stops_cleanly(
    scene, logic, ct, ctArray, ctAffine, geometry, removed, capfd
):
    mask = np.zeros(ctArray.shape, np.uint8)
    mask[3:12, 4:15, 3:14] = 1
    seg, _ = addSegmentation(scene, {"m": mask}, ctAffine)
    carm = logic.createCArmTransform(ct)
    schedule = Collector()
    live = LiveRenderController(
        logic, ct, carm, geometry, segmentationNode=seg, nSamples=8, schedule=schedule
    )
    live.start()
    logic.setCArmAngles(carm, ct, 10.0, 0.0, 850.0)  # a render is pending
    if removed == "clear scene":
        scene.Clear(0)
    else:
        node = {"carm": carm, "volume": ct, "segmentation": seg, "output": live.outputNode}[removed]
        scene.RemoveNode(node)
    assert not live.isActive
    schedule.run()  # the pending flush is dropped
    assert live.renderCount == 1
    live.stop()  # idempotent
    assert "Traceback" not in capfd.readouterr().err

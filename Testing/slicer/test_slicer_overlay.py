"""DRR-over-X-ray overlays (NanoDRRLib.overlay): hand-computed pixels, and real MRML nodes on the detector plane."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from nanodrr_engine.data.phantom import make_chest_phantom
from NanoDRRLib import CArmGeometry, NanoDRRError
from NanoDRRLib.overlay import overlayImage, sobelMagnitude, windowed
from scene_snapshot import sceneSnapshot
from slicer_testutils import addVolume, toArray

GEOMETRY = CArmGeometry(sdd=1020.0, height=32, width=40, delx=10.0, dely=10.0)


def _halves(h=4, w=4):
    """Left half 0, right half 1: its 1st and 99th percentiles are 0 and 1, so windowing keeps it."""
    image = np.zeros((h, w))
    image[:, w // 2 :] = 1.0
    return image


def test_windowing_maps_percentiles_to_unit_range():
    image = np.arange(101, dtype=float)  # percentiles k are the values k
    out = windowed(image)
    assert out[1] == 0.0 and out[99] == 1.0 and out[0] == 0.0 and out[100] == 1.0
    assert out[50] == pytest.approx(49 / 98)
    assert not windowed(np.full((3, 3), 7.0)).any()  # a constant image has no window


def test_blend_is_the_weighted_grey_mix():
    x, d = _halves(), 1.0 - _halves()
    rgb = overlayImage(d, x, "blend", blend=0.25)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    # right: X-ray 1, DRR 0 -> 0.75 * 255 = 191.25; left: 0.25 * 255 = 63.75
    assert (rgb[:, 2:] == 191).all() and (rgb[:, :2] == 64).all()


def test_checkerboard_alternates_tiles():
    x = np.zeros((4, 4))
    x[0, 0], x[3, 3] = 1.0, 1.0  # windowing: 1st/99th percentiles 0 and ~0.85
    d = np.ones((4, 4))
    d[0, 0] = 0.0
    rgb = overlayImage(d, x, "checkerboard", tiles=2)[..., 0]
    # tiles 2x2: top-left and bottom-right from the X-ray, the others from the DRR
    assert rgb[1, 1] == 0 and rgb[2, 2] == 0 and rgb[3, 3] == 255
    assert rgb[0, 3] == 255 and rgb[3, 0] == 255 and rgb[1, 2] == 255


def test_edges_mark_the_drrs_step_in_green():
    x = np.linspace(0.0, 1.0, 64).reshape(8, 8)
    d = _halves(8, 8)
    rgb = overlayImage(d, x, "edges", blend=1.0)
    green = (rgb[..., 0] == 0) & (rgb[..., 1] == 255) & (rgb[..., 2] == 0)
    assert green[:, 3:5].all() and not green[:, :3].any() and not green[:, 5:].any()
    grey = rgb[:, 0, :]
    assert (grey[:, 0] == grey[:, 1]).all()  # elsewhere the X-ray in grey
    # Sobel of a unit step: 4 on both columns beside it, 0 away from it
    np.testing.assert_array_equal(sobelMagnitude(d)[4], [0, 0, 0, 4, 4, 0, 0, 0])


def test_bad_overlay_arguments_are_named():
    x = _halves()
    for kwargs, match in [({"mode": "xor"}, "mode"), ({"blend": 1.5}, "blend"), ({"tiles": 0}, "tiles"),
                          ({"blend": True}, "blend")]:  # fmt: skip
        with pytest.raises(NanoDRRError, match=match):
            overlayImage(x, x, **kwargs)
    with pytest.raises(NanoDRRError, match="same 2D size"):
        overlayImage(x, np.zeros((4, 5)))


@pytest.fixture
def chest(scene):
    vol, _, v2w, _ = make_chest_phantom(spacing=(6.0, 6.0, 6.0))
    return addVolume(scene, np.asarray(vol, dtype=np.float32), v2w, name="chest")


def test_overlay_node_lies_on_the_drr_and_leaves_inputs_alone(scene, logic, chest):
    carm = logic.createCArmTransform(chest)
    logic.setCArmAngles(carm, chest, 10.0, 5.0, 850.0)
    drr = logic.render(chest, carm, GEOMETRY, method="joseph")
    xray = logic.render(chest, carm, GEOMETRY, method="joseph", displayMode="transmission")
    before = dict(sceneSnapshot(scene))
    node = logic.updateOverlay(drr, xray, GEOMETRY, mode="blend", blend=0.5)
    assert node.IsA("vtkMRMLVectorVolumeNode")
    rgb = slicer.util.arrayFromVolume(node)
    assert rgb.shape == (1, 32, 40, 3)
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(a)
    drr.GetIJKToRASMatrix(b)
    np.testing.assert_array_equal(toArray(a), toArray(b))
    # the same pose in both: the transmission X-ray windows to the line integrals' complement... so the
    # grey blend is not flat; and equal images blend to themselves
    line = slicer.util.arrayFromVolume(drr)[0].astype(np.float64)
    np.testing.assert_array_equal(rgb[0, ..., 0], np.round(windowed(line) * 255).astype(np.uint8))
    after = dict(sceneSnapshot(scene))
    for nodeId in (drr.GetID(), xray.GetID(), chest.GetID(), carm.GetID()):
        assert after[nodeId] == before[nodeId]
    # updating in place keeps the node
    again = logic.updateOverlay(drr, xray, GEOMETRY, mode="checkerboard", overlayNode=node)
    assert again is node and node.GetAttribute("NanoDRR.overlayMode") == "checkerboard"


def test_overlay_refuses_before_writing(scene, logic, chest):
    carm = logic.createCArmTransform(chest)
    drr = logic.render(chest, carm, GEOMETRY, method="joseph")
    small = logic.render(chest, carm, CArmGeometry(sdd=1020.0, height=16, width=20, delx=20.0, dely=20.0))
    before = sceneSnapshot(scene)
    for call, match in [
        (lambda: logic.updateOverlay(drr, small, GEOMETRY), "not resampled"),
        (lambda: logic.updateOverlay(chest, drr, GEOMETRY), "not a NanoDRR DRR"),
        (lambda: logic.updateOverlay(drr, drr, GEOMETRY, mode="xor"), "mode"),
        (lambda: logic.updateOverlay(drr, drr, GEOMETRY, overlayNode=drr), "overlayNode"),
    ]:
        with pytest.raises(NanoDRRError, match=match):
            call()
        assert sceneSnapshot(scene) == before


def test_a_plain_radiograph_node_is_not_touched(scene, logic, chest):
    """Reading a node's NanoDRR references must not add empty reference roles to it (MRML adds a role
    on lookup), so a loaded radiograph stays exactly as it was, through overlay and registration."""
    carm = logic.createCArmTransform(chest)
    drr = logic.render(chest, carm, GEOMETRY, method="joseph")
    line = slicer.util.arrayFromVolume(drr)[0].astype(np.float64)
    xray = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "radiograph")
    slicer.util.updateVolumeFromArray(xray, (1000.0 * np.exp(-line))[None].astype(np.float32))
    xray.SetAttribute("NanoDRR.viewedFrom", "source")
    before = dict(sceneSnapshot(scene))[xray.GetID()]
    logic.updateOverlay(drr, xray, GEOMETRY, mode="edges")
    logic.registerCArm(chest, carm, xray, GEOMETRY, max_iterations=2, factors=[1])
    assert dict(sceneSnapshot(scene))[xray.GetID()] == before

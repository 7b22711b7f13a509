"""CArmGeometry, detector presets, and the source/frustum/detector model under the C-arm."""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from NanoDRRLib import DETECTOR_PRESETS, CArmGeometry, NanoDRRError
from slicer_testutils import poseOf
from vtk.util.numpy_support import vtk_to_numpy


def test_scaled_keeps_the_field_of_view():
    g = CArmGeometry(sdd=1000.0, height=201, width=300, delx=1.5, dely=2.0, x0=3.0, y0=-1.0)
    s = g.scaled(0.5)
    assert (s.height, s.width) == (100, 150)
    assert s.width * s.delx == pytest.approx(g.width * g.delx)
    assert s.height * s.dely == pytest.approx(g.height * g.dely)
    assert (s.sdd, s.x0, s.y0) == (g.sdd, g.x0, g.y0)
    np.testing.assert_allclose(s.detectorCorners(), g.detectorCorners())
    assert CArmGeometry(height=1, width=1).scaled(0.1).height == 1
    with pytest.raises(NanoDRRError, match="factor"):
        g.scaled(0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sdd", 0.0),
        ("sdd", float("inf")),
        ("delx", -1.0),
        ("dely", 0.0),
        ("height", 0),
        ("width", 2.5),
        ("x0", float("nan")),
    ],
)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(NanoDRRError, match=f"geometry.{field}"):
        CArmGeometry(**{field: value}).validate()


def test_validate_checks_sod_against_sdd():
    CArmGeometry(sdd=1020.0).validate(sod=850.0)
    with pytest.raises(NanoDRRError, match="sod"):
        CArmGeometry(sdd=800.0).validate(sod=850.0)


def test_presets_are_valid_geometries():
    assert {"Flat panel 30x40 (low res)", "Image intensifier 9in", "Reference 200x200 @ 2mm"} <= set(
        DETECTOR_PRESETS
    )
    for name, fields in DETECTOR_PRESETS.items():
        assert set(fields) == {"height", "width", "delx", "dely", "sdd"}
        CArmGeometry.fromPreset(name).validate(sod=700.0)
    ref = CArmGeometry.fromPreset("Reference 200x200 @ 2mm")
    assert (ref.sdd, ref.height, ref.width, ref.delx, ref.dely) == (1020.0, 200, 200, 2.0, 2.0)
    with pytest.raises(NanoDRRError, match="preset"):
        CArmGeometry.fromPreset("nope")


def _worldPoints(model, carm) -> np.ndarray:
    pts = vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).astype(float)
    pose = poseOf(carm)
    return (pose[:3, :3] @ pts.T).T + pose[:3, 3]


def test_geometry_model_follows_the_carm(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 30.0, -10.0, 800.0)
    model = logic.updateGeometryModel(carm, geometry)
    assert model.IsA("vtkMRMLModelNode")
    assert model.GetParentTransformNode() is carm
    g = geometry
    xs = (-g.width / 2 * g.delx - g.x0, g.width / 2 * g.delx - g.x0)
    ys = (-g.height / 2 * g.dely - g.y0, g.height / 2 * g.dely - g.y0)
    corners_cam = np.array(
        [[x, y, g.sdd, 1.0] for x, y in ((xs[0], ys[0]), (xs[1], ys[0]), (xs[1], ys[1]), (xs[0], ys[1]))]
    )
    for primary in (30.0, -75.0):
        logic.setCArmAngles(carm, ct, primary, -10.0, 800.0)
        world = _worldPoints(model, carm)
        pose = poseOf(carm)
        np.testing.assert_allclose(world[0], pose[:3, 3], atol=1e-6)  # the source
        np.testing.assert_allclose(world[1:5], (pose @ corners_cam.T).T[:, :3], atol=1e-4)
    poly = model.GetPolyData()
    assert poly.GetNumberOfVerts() == 1
    lines = poly.GetLines()
    ids, segments = vtk.vtkIdList(), []
    lines.InitTraversal()
    while lines.GetNextCell(ids):
        segments.append([ids.GetId(i) for i in range(ids.GetNumberOfIds())])
    assert [[0, 1], [0, 2], [0, 3], [0, 4]] == segments[:4]  # frustum edges
    assert segments[4] == [1, 2, 3, 4, 1]  # detector outline


def test_drr_lies_inside_the_model_detector(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct, rotation=(20.0, 10.0, 0.0))
    model = logic.updateGeometryModel(carm, geometry)
    drr = logic.render(ct, carm, geometry, nSamples=4)
    m = vtk.vtkMatrix4x4()
    drr.GetIJKToRASMatrix(m)
    corners = _worldPoints(model, carm)[1:5]
    centre = corners.mean(axis=0)
    for ijk in ((0, 0, 0, 1), (geometry.width - 1, geometry.height - 1, 0, 1)):
        p = np.array(m.MultiplyPoint(ijk)[:3])
        # inside the rectangle: half a pixel in from its edges, on its plane
        d = p - centre
        e1, e2 = corners[1] - corners[0], corners[3] - corners[0]
        a, b = d @ e1 / (e1 @ e1), d @ e2 / (e2 @ e2)
        assert abs(a) == pytest.approx(0.5 - 0.5 / geometry.width)
        assert abs(b) == pytest.approx(0.5 - 0.5 / geometry.height)
        normal = np.cross(e1, e2) / np.linalg.norm(np.cross(e1, e2))
        assert abs(d @ normal) < 1e-6  # on the detector plane


def test_model_is_updated_in_place(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    model = logic.updateGeometryModel(carm, geometry)
    n = scene.GetNumberOfNodes()
    again = logic.updateGeometryModel(carm, geometry.scaled(2.0), modelNode=model)
    assert again is model and scene.GetNumberOfNodes() == n
    with pytest.raises(NanoDRRError, match="geometry"):
        logic.updateGeometryModel(carm, "200x200")

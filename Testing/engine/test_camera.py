"""Camera geometry against hand-computed values and the conventions of geometry.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nanodrr_engine import invert_rt_inv, make_k_inv, make_rt_inv
from nanodrr_engine.camera import carm_to_rt_inv, rt_inv_to_carm, to_display
from nanodrr_engine.drr.rays import make_src, make_tgt

ISO = torch.tensor([10.0, -20.0, 30.0], dtype=torch.float64)


def pixel_world(rt_inv, k_inv, sdd, H, W, orthographic=False):
    """World position of every pixel centre on the detector, [H, W, 3], via the engine's ray code."""
    tgt = make_tgt(k_inv.double(), torch.tensor([sdd], dtype=torch.float64), H, W)[0]
    world = tgt @ rt_inv[:3, :3].T + rt_inv[:3, 3]
    return world.reshape(H, W, 3)


def test_k_inv_matches_hand_computed_intrinsics():
    sdd, delx, dely, x0, y0, H, W = 1000.0, 2.0, 3.0, 4.0, -6.0, 10, 20
    K = np.array([[500.0, 0, 4 / 2 + 10], [0, 1000 / 3, -6 / 3 + 5], [0, 0, 1]])
    k_inv = make_k_inv(sdd, delx, dely, x0, y0, H, W, dtype=torch.float64)
    assert k_inv.shape == (1, 3, 3)
    np.testing.assert_allclose(k_inv[0].numpy(), np.linalg.inv(K), rtol=1e-12)


def test_pixel_centres_and_principal_point():
    sdd, delx, dely, x0, y0, H, W = 1000.0, 2.0, 3.0, 4.0, -6.0, 10, 20
    k_inv = make_k_inv(sdd, delx, dely, x0, y0, H, W, dtype=torch.float64)
    tgt = make_tgt(k_inv, torch.tensor([sdd], dtype=torch.float64), H, W)[0].reshape(H, W, 3)
    # pixel (u=0, v=0): ((½ − W/2)Δx − x0, (½ − H/2)Δy − y0, sdd)
    np.testing.assert_allclose(tgt[0, 0].numpy(), [(0.5 - 10) * 2 - 4, (0.5 - 5) * 3 + 6, 1000.0], atol=1e-9)
    # pixel (u=3, v=7)
    np.testing.assert_allclose(tgt[7, 3].numpy(), [(3.5 - 10) * 2 - 4, (7.5 - 5) * 3 + 6, 1000.0], atol=1e-9)
    # the principal point (cx, cy) looks straight down the optical axis
    cx, cy = 4 / 2 + 10, -6 / 3 + 5
    axis = sdd * k_inv[0] @ torch.tensor([cx, cy, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(axis.numpy(), [0.0, 0.0, sdd], atol=1e-9)


def test_orthographic_rays_are_parallel_to_the_optical_axis():
    k_inv = make_k_inv(1000.0, 2.0, 2.0, 0.0, 0.0, 4, 5, dtype=torch.float64)
    sdd = torch.tensor([1000.0], dtype=torch.float64)
    tgt = make_tgt(k_inv, sdd, 4, 5)
    src = make_src(True, tgt, sdd)
    np.testing.assert_allclose((tgt - src).numpy(), np.broadcast_to([0, 0, 1000.0], tgt.shape), atol=1e-9)
    assert make_src(False, tgt, sdd).abs().max() == 0


def _ap_like(rotation, translation, orientation):
    return make_rt_inv(
        torch.tensor(rotation, dtype=torch.float64),
        torch.tensor(translation, dtype=torch.float64),
        orientation,
        ISO,
    )


@pytest.mark.parametrize("orientation,ty", [("AP", 850.0), ("PA", -850.0)])
def test_frontal_views_row0_superior_col0_patient_right(orientation, ty):
    rt = _ap_like([0.0, 0.0, 0.0], [0.0, ty, 0.0], orientation)
    source = rt[:3, 3]
    np.testing.assert_allclose((source - ISO).numpy(), [0.0, ty, 0.0], atol=1e-9)
    k_inv = make_k_inv(1020.0, 2.0, 2.0, 0.0, 0.0, 20, 30, dtype=torch.float64)
    world = pixel_world(rt, k_inv, 1020.0, 20, 30)
    assert world[0, :, 2].min() > world[-1, :, 2].max()  # row 0 is superior (+z)
    assert world[:, 0, 0].min() > world[:, -1, 0].max()  # column 0 is the patient's right (+x in RAS)
    # detector plane sits 1020 mm from the source, across the isocenter
    centre = world[9:11, 14:16].reshape(-1, 3).mean(0)
    np.testing.assert_allclose((centre - source).norm().item(), 1020.0, rtol=1e-9)
    assert np.sign((centre - ISO)[1].item()) == -np.sign(ty)


@pytest.mark.parametrize("alpha,side", [(90.0, -1.0), (-90.0, 1.0)])
def test_lateral_views(alpha, side):
    rt = _ap_like([alpha, 0.0, 0.0], [0.0, 850.0, 0.0], "AP")
    # Rz(±90°) takes the anterior source to the patient's left (−x) or right (+x)
    np.testing.assert_allclose((rt[:3, 3] - ISO).numpy(), [side * 850.0, 0.0, 0.0], atol=1e-9)
    beam = rt[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(beam.numpy(), [-side, 0.0, 0.0], atol=1e-12)
    k_inv = make_k_inv(1020.0, 2.0, 2.0, 0.0, 0.0, 8, 8, dtype=torch.float64)
    world = pixel_world(rt, k_inv, 1020.0, 8, 8)
    assert world[0, :, 2].min() > world[-1, :, 2].max()  # still head up


def test_pose_is_rigid_and_composed_as_documented():
    rot = torch.tensor([[20.0, -35.0, 50.0]], dtype=torch.float64)
    trans = torch.tensor([[5.0, 700.0, -12.0]], dtype=torch.float64)
    rt = make_rt_inv(rot, trans, "AP", ISO)[0]
    a, b, c = (math.radians(x) for x in (20.0, -35.0, 50.0))
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    Ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    R = Rz @ Rx @ Ry
    O = np.array([[-1, 0, 0], [0, 0, -1], [0, -1, 0]])
    np.testing.assert_allclose(rt[:3, :3].numpy(), R @ O, atol=1e-12)
    np.testing.assert_allclose(rt[:3, 3].numpy(), R @ trans[0].numpy() + ISO.numpy(), atol=1e-9)
    np.testing.assert_allclose(rt[3].numpy(), [0, 0, 0, 1])


@pytest.mark.parametrize("orientation", ["AP", "PA", None])
def test_invert_rt_inv_round_trip(orientation):
    g = torch.Generator().manual_seed(0)
    rot = (torch.rand(16, 3, generator=g, dtype=torch.float64) - 0.5) * torch.tensor(
        [340.0, 170.0, 340.0], dtype=torch.float64
    )
    trans = (torch.rand(16, 3, generator=g, dtype=torch.float64) - 0.5) * 1000
    rt = make_rt_inv(rot, trans, orientation, ISO)
    rot2, trans2 = invert_rt_inv(rt, orientation, ISO)
    np.testing.assert_allclose(rot2.numpy(), rot.numpy(), atol=1e-8)
    np.testing.assert_allclose(trans2.numpy(), trans.numpy(), atol=1e-8)


def test_same_poses_as_nanodrr():
    nanodrr_camera = pytest.importorskip("nanodrr.camera")
    g = torch.Generator().manual_seed(1)
    rot = (torch.rand(8, 3, generator=g) - 0.5) * 300
    trans = (torch.rand(8, 3, generator=g) - 0.5) * 900
    iso = ISO.float()
    for orientation in ("AP", "PA", None):
        ours = make_rt_inv(rot, trans, orientation, iso)
        theirs = nanodrr_camera.make_rt_inv(rot, trans, orientation, iso)
        torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-5)
    k = nanodrr_camera.make_k_inv(1020.0, 2.0, 1.5, 3.0, -4.0, 100, 120)
    torch.testing.assert_close(make_k_inv(1020.0, 2.0, 1.5, 3.0, -4.0, 100, 120), k)


# DICOM XA positioner table of geometry.md: (primary, secondary) -> (source - isocenter) / SOD
CARM_TABLE = [
    ((0.0, 0.0), (0.0, -1.0, 0.0)),
    ((90.0, 0.0), (1.0, 0.0, 0.0)),
    ((-30.0, 0.0), (-0.5, -0.866, 0.0)),
    ((0.0, 20.0), (0.0, -0.940, -0.342)),
    ((30.0, -25.0), (0.453, -0.785, 0.423)),
]


@pytest.mark.parametrize("angles,direction", CARM_TABLE)
def test_clinical_carm_angles_match_the_dicom_table(angles, direction):
    sod = 800.0
    rt = carm_to_rt_inv(*angles, sod, ISO)
    np.testing.assert_allclose(((rt[:3, 3] - ISO) / sod).numpy(), direction, atol=1e-3)
    assert torch.linalg.det(rt[:3, :3]).item() == pytest.approx(1.0)  # a proper rotation, never a mirror
    beam = rt[:3, :3] @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(beam.numpy(), -np.array(direction), atol=1e-3)
    # same source and beam as the doc's PA formulation
    pa = make_rt_inv(
        torch.tensor([angles[0], angles[1], 0.0]), torch.tensor([0.0, -sod, 0.0]), "PA", ISO.float()
    )
    np.testing.assert_allclose(pa[:3, 3].numpy(), rt[:3, 3].numpy(), atol=1e-3)
    # head up, and after to_display the image equals the PA view (conventional display, seen from the detector)
    k_inv = make_k_inv(1020.0, 2.0, 2.0, 0.0, 0.0, 6, 8, dtype=torch.float64)
    ours = to_display(pixel_world(rt, k_inv, 1020.0, 6, 8).permute(2, 0, 1))
    doc = pixel_world(pa.double(), k_inv, 1020.0, 6, 8).permute(2, 0, 1)
    np.testing.assert_allclose(ours.numpy(), doc.numpy(), atol=1e-3)
    back = rt_inv_to_carm(rt, ISO)
    np.testing.assert_allclose(back, (*angles, sod), atol=1e-9)


def test_frontal_dicom_view_displays_patient_right_on_the_left():
    rt = carm_to_rt_inv(0.0, 0.0, 850.0, ISO)
    k_inv = make_k_inv(1020.0, 2.0, 2.0, 0.0, 0.0, 10, 10, dtype=torch.float64)
    world = to_display(pixel_world(rt, k_inv, 1020.0, 10, 10).permute(2, 0, 1))  # [3, H, W]
    assert world[0, :, 0].min() > world[0, :, -1].max()  # display column 0 = patient's right (+x)
    assert world[2, 0].min() > world[2, -1].max()  # head up


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: make_k_inv(0.0, 2, 2, 0, 0, 10, 10), "sdd"),
        (lambda: make_k_inv(1000, -1, 2, 0, 0, 10, 10), "delx"),
        (lambda: make_k_inv(1000, 2, 0, 0, 0, 10, 10), "dely"),
        (lambda: make_k_inv(1000, 2, 2, 0, 0, 0, 10), "height"),
        (lambda: make_k_inv(1000, 2, 2, 0, 0, 10, 2.5), "width"),
        (lambda: make_k_inv(1000, 2, 2, float("nan"), 0, 10, 10), "x0"),
        (lambda: make_rt_inv(torch.zeros(1, 2), torch.zeros(1, 3)), "rotation"),
        (lambda: make_rt_inv(torch.zeros(1, 3), torch.zeros(1, 3), "LAT"), "orientation"),
        (lambda: make_rt_inv(torch.full((1, 3), float("nan")), torch.zeros(1, 3)), "rotation"),
        (lambda: carm_to_rt_inv(0.0, 0.0, -5.0), "sod"),
    ],
)
def test_bad_camera_input_names_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()

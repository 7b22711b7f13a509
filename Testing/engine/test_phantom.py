"""Tests of the analytic phantom against hand formulas and brute-force sampling (independent oracles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nanodrr_engine.data.phantom import (
    AnalyticPhantom,
    ChestPhantom,
    Ellipsoid,
    EllipticCylinder,
    hu_to_mu_np,
    make_chest_phantom,
    rotation_matrix,
)
from nanodrr_engine.data.preprocess import hu_to_mu


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _mu(hu):
    """μ from the torch reference conversion (independent of the phantom's NumPy twin)."""
    return hu_to_mu(torch.as_tensor(np.asarray(hu, dtype=np.float64))).numpy()


# ------------------------------------------------------------------------------------------------
# Single primitives vs hand formulas
# ------------------------------------------------------------------------------------------------


def test_sphere_chords_random_lines():
    rng = np.random.default_rng(0)
    centre, r = np.array([5.0, -3.0, 7.0]), 20.0
    sphere = Ellipsoid(centre, rotation_matrix(10, 20, 30), 0.0, 1, semi_axes=(r, r, r))
    n = 200
    u = _unit(rng.normal(size=(n, 3)))
    # Foot of the perpendicular from the centre at distance d (some beyond r: misses).
    perp = _unit(np.cross(u, rng.normal(size=(n, 3))))
    d = rng.uniform(0, 1.3 * r, size=n)
    foot = centre + perp * d[:, None]
    src, tgt = foot - 100 * u, foot + 100 * u
    expected = np.where(d < r, 2 * np.sqrt(np.clip(r * r - d * d, 0, None)), 0.0)
    np.testing.assert_allclose(sphere.chord_length(src, tgt), expected, atol=1e-9)
    # Direction of travel does not matter.
    np.testing.assert_allclose(sphere.chord_length(tgt, src), expected, atol=1e-9)


def test_sphere_segments_starting_or_ending_inside():
    sphere = Ellipsoid(np.zeros(3), None, 0.0, 1, semi_axes=(10.0, 10.0, 10.0))
    src = np.array([[0.0, 0, 0], [-50, 0, 0], [-3, 0, 0], [0, 0, 0], [20, 0, 0], [0, 0, 0]])
    tgt = np.array([[50.0, 0, 0], [0, 0, 0], [4, 0, 0], [0, 6, 8], [50, 0, 0], [0, 0, 0]])
    # from centre out; ends at centre; fully inside; ends exactly on the surface; misses; zero length
    np.testing.assert_allclose(sphere.chord_length(src, tgt), [10, 10, 7, 10, 0, 0], atol=1e-12)


def test_rotated_ellipsoid_chords():
    a, b, c = 30.0, 12.0, 20.0
    rot = rotation_matrix(25, -40, 70)
    centre = np.array([1.0, 2.0, 3.0])
    ell = Ellipsoid(centre, rot, 0.0, 1, semi_axes=(a, b, c))
    ex, ey, _ = rot.T  # local axes in world
    y0 = np.array([0.0, 5.0, 11.0, 11.99, 12.5])
    # Lines parallel to the local x axis at local offset y0 (z = 0): chord = 2a·sqrt(1 − y0²/b²).
    foot = centre + y0[:, None] * ey
    src, tgt = foot - 100 * ex, foot + 100 * ex
    expected = 2 * a * np.sqrt(np.clip(1 - (y0 / b) ** 2, 0, None))
    np.testing.assert_allclose(ell.chord_length(src, tgt), expected, atol=1e-9)
    # Lines through the centre along a world direction u: chord = 2 / |diag(1/a) Rᵀ u|.
    u = _unit(np.random.default_rng(1).normal(size=(50, 3)))
    expected = 2.0 / np.linalg.norm((u @ rot) / np.array([a, b, c]), axis=1)
    np.testing.assert_allclose(ell.chord_length(centre - 80 * u, centre + 80 * u), expected, rtol=1e-12)
    # The world bounding box of the rotated ellipsoid is tight: the support point in direction e_w,
    # centre + R·diag(s²)·Rᵀe_w / h_w, lies on the surface at distance h_w along e_w.
    half = ell.half_extent()
    s2 = np.array([a, b, c]) ** 2
    for w in range(3):
        p = centre + rot @ (s2 * rot[w]) / half[w]
        assert p[w] - centre[w] == pytest.approx(half[w], rel=1e-12)
        assert ell.contains(centre + (p - centre) * (1 - 1e-9))
        assert not ell.contains(centre + (p - centre) * (1 + 1e-9))


def test_axis_aligned_cylinder_chords():
    r, h = 10.0, 30.0
    cyl = EllipticCylinder(np.zeros(3), None, 0.0, 1, semi_axes=(r, r), half_length=h)
    # Perpendicular to the axis, within and beyond the caps.
    src = np.array([[-50.0, 6, 5], [-50, 6, 29.9], [-50, 6, 30.5], [-50, 10.5, 0]])
    tgt = src + np.array([100.0, 0, 0])
    np.testing.assert_allclose(cyl.chord_length(src, tgt), [16, 16, 0, 0], atol=1e-9)
    # Parallel to the axis: inside -> 2h (exactly, the quadratic degenerates), outside -> 0.
    src = np.array([[3.0, 4, -100], [8, 7, -100], [0, 0, 0]])
    tgt = np.array([[3.0, 4, 100], [8, 7, 100], [0, 0, 100]])
    np.testing.assert_allclose(cyl.chord_length(src, tgt), [60, 0, 30], atol=1e-12)
    # Oblique lines through the centre at angle θ to the axis: min(2r/sinθ, 2h/cosθ).
    theta = np.deg2rad([5.0, 10, 18, 30, 45, 60, 89])
    u = np.stack([np.sin(theta), np.zeros_like(theta), np.cos(theta)], 1)
    expected = np.minimum(2 * r / np.sin(theta), 2 * h / np.cos(theta))
    np.testing.assert_allclose(cyl.chord_length(-200 * u, 200 * u), expected, rtol=1e-12)


def test_rotated_elliptic_cylinder_and_tube_chords():
    rot = rotation_matrix(-30, 50, 15)
    centre = np.array([-4.0, 9.0, 2.0])
    ex, ey, ez = rot.T
    a, b, h = 25.0, 15.0, 8.0
    cyl = EllipticCylinder(centre, rot, 0.0, 1, semi_axes=(a, b), half_length=h)
    tube = EllipticCylinder(
        centre, rot, 0.0, 1, semi_axes=(a, b), half_length=h, inner_semi_axes=(20.0, 11.0)
    )
    y0 = np.array([0.0, 5.0, 10.9, 11.5, 14.0, 15.5])
    foot = centre + y0[:, None] * ey + 3.0 * ez  # local z = 3, inside the slab
    src, tgt = foot - 100 * ex, foot + 100 * ex
    outer = 2 * a * np.sqrt(np.clip(1 - (y0 / b) ** 2, 0, None))
    inner = 2 * 20.0 * np.sqrt(np.clip(1 - (y0 / 11.0) ** 2, 0, None))
    np.testing.assert_allclose(cyl.chord_length(src, tgt), outer, atol=1e-9)
    np.testing.assert_allclose(tube.chord_length(src, tgt), outer - inner, atol=1e-9)
    # Beyond the slab (local z = 8.5): nothing.
    foot = centre + 8.5 * ez
    np.testing.assert_array_equal(cyl.chord_length((foot - 100 * ex)[None], (foot + 100 * ex)[None]), [0.0])
    # Along the axis: through the wall 2h, through the hole 0; one starting inside the wall.
    pts = centre + np.array([[22.0], [0.0], [22.0]]) * ex
    src = pts - 50 * ez
    tgt = pts + np.array([[50.0], [50.0], [0.0]]) * ez
    tgt[2] = pts[2]  # ends at the tube's mid-plane
    np.testing.assert_allclose(tube.chord_length(src, tgt), [16, 0, 8], atol=1e-9)
    # A segment starting inside the hole and ending in the wall.
    src = centre + 0.0 * ex
    tgt = centre + 23.0 * ex
    np.testing.assert_allclose(tube.chord_length(src[None], tgt[None]), [3.0], atol=1e-9)


def test_primitive_validation():
    with pytest.raises(ValueError, match="rotation"):
        Ellipsoid(np.zeros(3), np.diag([1.0, 1.0, -1.0]), 0.0, 1, semi_axes=(1, 1, 1))
    with pytest.raises(ValueError, match="semi_axes"):
        Ellipsoid(np.zeros(3), None, 0.0, 1, semi_axes=(1, 0, 1))
    with pytest.raises(ValueError, match="inner_semi_axes"):
        EllipticCylinder(np.zeros(3), None, 0.0, 1, semi_axes=(5, 5), half_length=1, inner_semi_axes=(6, 1))
    sphere = Ellipsoid(np.zeros(3), None, 0.0, 1, semi_axes=(1, 1, 1))
    with pytest.raises(ValueError, match="src"):
        sphere.chord_length(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="tgt"):
        sphere.chord_length(np.zeros((2, 3)), np.ones((3, 3)))


# ------------------------------------------------------------------------------------------------
# Painter's order
# ------------------------------------------------------------------------------------------------


def _two_spheres(small_on_top: bool) -> AnalyticPhantom:
    big = Ellipsoid(np.zeros(3), None, 0.0, 1, semi_axes=(50.0, 50.0, 50.0))
    small = Ellipsoid(np.array([10.0, 0, 0]), None, 1000.0, 2, semi_axes=(10.0, 10.0, 10.0))
    prims = [big, small] if small_on_top else [small, big]
    return AnalyticPhantom(prims, {0: "background", 1: "big", 2: "small"})


def test_painters_order():
    src, tgt = np.array([[-100.0, 0, 0]]), np.array([[100.0, 0, 0]])
    mu0, mu1000 = _mu([0.0, 1000.0])
    on_top = _two_spheres(True)
    np.testing.assert_allclose(on_top.line_integral(src, tgt), [80 * mu0 + 20 * mu1000], rtol=1e-12)
    np.testing.assert_allclose(on_top.line_integral(src, tgt, label=2), [20 * mu1000], rtol=1e-12)
    np.testing.assert_allclose(on_top.chord_length(src, tgt, label=1), [80.0], rtol=1e-12)
    assert on_top.hu_at(np.array([10.0, 0, 0])) == 1000.0
    assert on_top.label_at(np.array([[10.0, 0, 0], [-10, 0, 0], [0, 0, 60]])).tolist() == [2, 1, 0]
    hidden = _two_spheres(False)
    np.testing.assert_allclose(hidden.line_integral(src, tgt), [100 * mu0], rtol=1e-12)
    np.testing.assert_allclose(hidden.line_integral(src, tgt, label=2), [0.0], atol=1e-15)
    assert hidden.hu_at(np.array([10.0, 0, 0])) == 0.0
    # Raw mode integrates HU, background (−1000) included along the whole segment.
    np.testing.assert_allclose(
        on_top.line_integral(src, tgt, convert_to_mu=False), [100 * -1000.0 + 20 * 1000.0], rtol=1e-12
    )


def test_tube_hole_shows_what_was_painted_before():
    core = Ellipsoid(np.zeros(3), None, 500.0, 1, semi_axes=(5.0, 5.0, 5.0))
    tube = EllipticCylinder(np.zeros(3), None, 0.0, 2, semi_axes=(20.0, 20.0), half_length=10.0,
                            inner_semi_axes=(10.0, 10.0))  # fmt: skip
    ph = AnalyticPhantom([core, tube], {0: "background", 1: "core", 2: "tube"})
    src, tgt = np.array([[-30.0, 0, 0]]), np.array([[30.0, 0, 0]])
    np.testing.assert_allclose(ph.chord_length(src, tgt, label=1), [10.0], atol=1e-12)
    np.testing.assert_allclose(ph.chord_length(src, tgt, label=2), [20.0], atol=1e-12)
    np.testing.assert_allclose(ph.chord_length(src, tgt, label=0), [30.0], atol=1e-12)
    np.testing.assert_allclose(ph.chord_length(src, tgt), [30.0], atol=1e-12)


def test_structures_must_name_every_label():
    sphere = Ellipsoid(np.zeros(3), None, 0.0, 3, semi_axes=(1, 1, 1))
    with pytest.raises(ValueError, match=r"\[3\]"):
        AnalyticPhantom([sphere], {0: "background", 1: "x"})


# ------------------------------------------------------------------------------------------------
# Full chest phantom: exact integral vs brute force
# ------------------------------------------------------------------------------------------------


def _clip_to_box(src, tgt, lo, hi):
    """Slab clipping of segments to an axis-aligned box (test-side, for finer brute-force sampling)."""
    d = tgt - src
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - src) / d, (hi - src) / d
    t0 = np.nanmax(np.where(d != 0, np.minimum(t1, t2), -np.inf), axis=1).clip(0, 1)
    t1 = np.nanmin(np.where(d != 0, np.maximum(t1, t2), np.inf), axis=1).clip(0, 1)
    t1 = np.maximum(t1, t0)
    return src + t0[:, None] * d, src + t1[:, None] * d


def _brute_force(phantom, src, tgt, n=20000, raw=False, **mu_kw):
    """Midpoint rule on hu_at samples (independent of the interval logic)."""
    u = (np.arange(n) + 0.5) / n
    pts = src[:, None, :] + u[None, :, None] * (tgt - src)[:, None, :]
    hu = phantom.hu_at(pts)
    if not raw:
        hu = hu_to_mu(torch.as_tensor(hu), **mu_kw).numpy()
    return hu.mean(axis=1) * np.linalg.norm(tgt - src, axis=1)


@pytest.fixture(scope="module")
def chest():
    return ChestPhantom(center=(12.0, -7.0, 30.0))


def _chest_rays(phantom):
    c = phantom.center
    src = c + np.array(
        [
            [0.0, 850, 0],  # AP through the spine
            [-72.0, 850, 20],  # AP through the left lung
            [400.0, 3, 10],  # lateral through heart and lungs
            [300.0, 500, 200],  # oblique
            [-250.0, -300, -120],  # oblique from below
            [0.0, 0, 0],  # starts inside the body
            [0.0, 850, 400],  # misses (above the body)
            [-33.0, 60, -300],  # along z through heart, ribs
        ]
    )
    tgt = c + np.array(
        [
            [0.0, -170, 0],
            [72.0, -170, 20],
            [-400.0, 3, -5],
            [-200.0, -400, -150],
            [260.0, 300, 140],
            [90.0, -150, 70],
            [0.0, -170, 400],
            [30.0, 55, 300],
        ]
    )
    return src, tgt


def test_chest_line_integral_matches_brute_force(chest):
    src, tgt = _chest_rays(chest)
    exact = chest.line_integral(src, tgt)
    lo, hi = chest.bounds()
    s, t = _clip_to_box(src, tgt, lo - 1, hi + 1)
    brute = _brute_force(chest, s, t)
    assert exact[6] == 0.0 and brute[6] == 0.0
    assert np.all(exact[[0, 1, 2, 3, 4, 5, 7]] > 0.5)
    np.testing.assert_allclose(exact, brute, rtol=5e-4, atol=1e-9)
    # Non-default contrast and raw HU.
    kw = dict(mu_water=0.02, mu_bone=0.09, hu_bone=1500.0)
    np.testing.assert_allclose(
        chest.line_integral(src, tgt, **kw), _brute_force(chest, s, t, **kw), rtol=1e-3
    )
    raw = chest.line_integral(s, t, convert_to_mu=False)
    # Midpoint-rule error: <= step/2 · |ΔHU| (~0.015 mm · 1700 HU) per crossing.
    np.testing.assert_allclose(raw, _brute_force(chest, s, t, raw=True), rtol=1e-3, atol=100.0)


def test_chest_hand_computed_ray(chest):
    # Lateral ray at z = −140 mm (below lungs, heart, aorta, ribs, sternum), y = 0 (clear of the spine):
    # 2 × 10 mm of fat (−100 HU) and 300 mm of soft tissue (40 HU).
    c = chest.center
    src, tgt = c + np.array([[-300.0, 0, -140]]), c + np.array([[300.0, 0, -140]])
    mu_fat, mu_soft = _mu([-100.0, 40.0])
    np.testing.assert_allclose(chest.line_integral(src, tgt), [20 * mu_fat + 300 * mu_soft], rtol=1e-12)
    np.testing.assert_allclose(chest.chord_length(src, tgt), [320.0], rtol=1e-12)
    np.testing.assert_allclose(chest.chord_length(src, tgt, label=1), [320.0], rtol=1e-12)


def test_label_integrals_sum_to_total(chest):
    rng = np.random.default_rng(3)
    src = chest.center + rng.normal(size=(300, 3)) * 40 + [0, 900, 0]
    tgt = chest.center + rng.normal(size=(300, 3)) * [120, 10, 120] + [0, -200, 0]
    total = chest.line_integral(src, tgt)
    per_label = np.stack([chest.line_integral(src, tgt, label=c) for c in range(chest.num_labels)], 1)
    np.testing.assert_allclose(per_label.sum(1), total, rtol=1e-12)
    np.testing.assert_allclose(chest.line_integrals_by_label(src, tgt), per_label, rtol=1e-12, atol=1e-15)
    assert np.all(per_label[:, 0] == 0.0)  # background is air: μ = 0
    chords = np.stack([chest.chord_length(src, tgt, label=c) for c in range(1, chest.num_labels)], 1)
    np.testing.assert_allclose(chords.sum(1), chest.chord_length(src, tgt), rtol=1e-12)
    assert np.mean(per_label[:, [7, 8, 9]].sum(1) > 0) > 0.5  # most AP rays cross bone


def test_chest_anatomy_in_ras(chest):
    c = chest.center
    names = chest.structures
    assert names[0] == "background" and 6 <= len(names) - 1 <= 10
    by_name = {v: k for k, v in names.items()}
    pts = c + np.array(
        [[-72.0, 0, 15], [72.0, 0, 15], [-25.0, 35, -25], [0.0, -62, 0], [0.0, 90, 0], [0, 0, 200]]
    )
    assert [names[v] for v in chest.label_at(pts)] == [
        "lung_left",
        "lung_right",
        "heart",
        "spine",
        "sternum",
        "background",
    ]
    # The heart sits left (−x in RAS) and anterior (+y) of the body's axis; the spine is posterior.
    heart = chest.primitives[[p.label for p in chest.primitives].index(by_name["heart"])]
    assert heart.center[0] < c[0] and heart.center[1] > c[1]
    # Bone is bright in an AP view: the ray through the spine beats the one through the lung.
    src, tgt = _chest_rays(chest)
    spine_ray, lung_ray = chest.line_integral(src[:2], tgt[:2])
    assert spine_ray > lung_ray + 1.0
    hu = chest.hu_at(pts)
    assert hu[3] >= 500 and hu[0] < -500 and hu[5] == -1000


def test_hu_to_mu_np_matches_reference():
    hu = np.linspace(-1500, 3000, 451)
    for kw in ({}, dict(mu_water=0.02, mu_bone=0.06, hu_bone=1200.0)):
        np.testing.assert_allclose(
            hu_to_mu_np(hu, **kw), hu_to_mu(torch.as_tensor(hu), **kw).numpy(), rtol=1e-12
        )


# ------------------------------------------------------------------------------------------------
# Voxelisation
# ------------------------------------------------------------------------------------------------


def _world_points(affine, shape):
    k, j, i = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    idx = np.stack([i, j, k], -1)  # [K, J, I, 3] as (i, j, k)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def test_voxelize_conventions(chest):
    shape = (9, 11, 13)  # (K, J, I)
    vol, labels, affine = chest.voxelize(spacing=(20.0, 15.0, 25.0), shape=shape)
    assert vol.shape == shape and labels.shape == shape
    assert vol.dtype == np.float32 and labels.dtype == np.uint8 and affine.dtype == np.float64
    np.testing.assert_allclose(affine[:3, :3], np.diag([20.0, 15.0, 25.0]))
    np.testing.assert_allclose(affine[3], [0, 0, 0, 1])
    # Grid centred on the phantom centre: voxel ((I−1)/2, (J−1)/2, (K−1)/2) maps to it.
    np.testing.assert_allclose(affine @ [6, 5, 4, 1], [*chest.center, 1], atol=1e-12)
    # Voxel (i, j, k) = vol[k, j, i] sits at affine @ (i, j, k, 1): (0,0,0) at the affine origin.
    pts = _world_points(affine, shape)
    np.testing.assert_array_equal(pts[0, 0, 0], affine[:3, 3])
    np.testing.assert_array_equal(vol, chest.hu_at(pts).astype(np.float32))
    np.testing.assert_array_equal(labels, chest.label_at(pts))
    # i is the fastest axis and runs along +x: the heart (patient left, −x) is on the low-i side.
    heart_i = np.nonzero(labels == 4)[2]
    assert heart_i.size and heart_i.mean() < 6


def test_voxelize_default_shape_covers_phantom(chest):
    vol, labels, affine = chest.voxelize(spacing=(4.0, 4.0, 5.0))
    k, j, i = vol.shape
    assert i > j  # wider L-R than A-P
    lo, hi = chest.bounds()
    assert np.all(affine[:3, 3] < lo) and np.all((affine @ [i - 1, j - 1, k - 1, 1])[:3] > hi)
    border = np.concatenate(
        [labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]
    )
    assert np.all(border == 0)
    assert set(np.unique(labels)) == set(chest.structures)


def test_voxelize_oblique_grid_samples_same_world_points(chest):
    direction = rotation_matrix(20, -35, 50)
    vol, labels, affine = chest.voxelize(spacing=(6.0, 5.0, 7.0), direction=direction)
    np.testing.assert_allclose(affine[:3, :3], direction * [6.0, 5.0, 7.0], atol=1e-15)
    pts = _world_points(affine, vol.shape)
    np.testing.assert_array_equal(vol, chest.hu_at(pts).astype(np.float32))
    np.testing.assert_array_equal(labels, chest.label_at(pts))
    # The rotated default grid still contains the whole phantom.
    assert set(np.unique(labels)) == set(chest.structures)
    assert not labels[[0, -1]].any() and not labels[:, [0, -1]].any() and not labels[:, :, [0, -1]].any()


def test_voxelize_supersample_is_mean_of_subsamples(chest):
    n = 3
    direction = rotation_matrix(0, 10, -25)
    shape = (6, 8, 10)
    vol, labels, affine = chest.voxelize(
        spacing=(7.0, 9.0, 11.0), shape=shape, direction=direction, supersample=n
    )
    centre_pts = _world_points(affine, shape)
    offsets = (np.arange(n) + 0.5) / n - 0.5
    acc = np.zeros(shape)
    for dz in offsets:
        for dy in offsets:
            for dx in offsets:
                acc += chest.hu_at(centre_pts + affine[:3, :3] @ [dx, dy, dz])
    np.testing.assert_allclose(vol, (acc / n**3).astype(np.float32), rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(labels, chest.label_at(centre_pts))
    assert np.any((vol > -1000) & (vol % 1 != 0))  # some partial-volume voxels exist


def test_voxelize_validation(chest):
    with pytest.raises(ValueError, match="spacing"):
        chest.voxelize(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="supersample"):
        chest.voxelize(spacing=(10.0, 10.0, 10.0), supersample=0)
    with pytest.raises(ValueError, match="shape"):
        chest.voxelize(spacing=(10.0, 10.0, 10.0), shape=(3, 0, 3))
    with pytest.raises(ValueError, match="rotation"):
        chest.voxelize(spacing=(10.0, 10.0, 10.0), direction=np.ones((3, 3)))


def test_make_chest_phantom():
    vol, labels, affine, phantom = make_chest_phantom(spacing=(4.0, 4.0, 5.0), supersample=2)
    assert isinstance(phantom, ChestPhantom)
    assert vol.dtype == np.float32 and labels.dtype == np.uint8 and vol.shape == labels.shape
    np.testing.assert_allclose(np.diag(affine)[:3], [4.0, 4.0, 5.0])
    assert vol.min() == -1000.0 and 600.0 <= vol.max() <= 700.0
    # Isocentre of the grid is the phantom centre.
    k, j, i = vol.shape
    np.testing.assert_allclose(affine @ [(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1], [0, 0, 0, 1], atol=1e-9)

"""``method``: Joseph's sampling ("joseph") next to the reference ray march ("raymarch") in the logic.

Accuracy is judged against numbers computed here, independently of the renderer: the exact chord of a
sphere (closed form) and the reference semantics at a sampling fine enough to be converged. That the
logic really hands ``method`` to the engine is shown by what only Joseph does: ignore ``nSamples``, and
equal the engine's own Joseph render of the test's arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
from NanoDRRLib import CArmGeometry, LiveRenderController, NanoDRRError, loadVolume, readAttributes
from slicer_testutils import (
    addSegmentation,
    addVolume,
    affine,
    chestDir,
    drrArray,
    engineRender,
    poseOf,
    rotation,
)

VIEWS = [(0.0, 0.0, 0.0), (30.0, 20.0, 10.0), (-60.0, -15.0, 0.0)]


def sphereCT(shape, ijkToRAS, center, radius, supersample=4) -> np.ndarray:
    """HU ``[K, J, I]`` of a water sphere in air: each voxel's HU is −1000 + 1000 · (fraction of its
    ``supersample³`` sub-voxel centres inside). Below 0 HU, μ is linear in HU (μ_water · (1 + HU/1000)),
    so the voxels carry the sphere's partial volume and ∫μ ds → μ_water · chord."""
    K, J, I = shape
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    k, j, i, a, b, c = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), off, off, off, indexing="ij")
    ijk = np.stack([i + c, j + b, k + a], axis=-1)
    world = ijk @ ijkToRAS[:3, :3].T + ijkToRAS[:3, 3]
    inside = np.linalg.norm(world - center, axis=-1) <= radius
    return (-1000.0 + 1000.0 * inside.reshape(K, J, I, -1).mean(-1)).astype(np.float32)


def pixelRays(pose: np.ndarray, g: CArmGeometry) -> tuple[np.ndarray, np.ndarray]:
    """World source ``[3]`` and pixel centres ``[H, W, 3]``, by hand from docs/geometry.md."""
    v, u = np.meshgrid(np.arange(g.height), np.arange(g.width), indexing="ij")
    cam = np.stack(
        [
            (u + 0.5 - g.width / 2) * g.delx - g.x0,
            (v + 0.5 - g.height / 2) * g.dely - g.y0,
            np.full(u.shape, g.sdd),
            np.ones(u.shape),
        ],
        axis=-1,
    )
    return pose[:3, 3], (cam @ pose.T)[..., :3]


def sphereChord(src, tgt, center, radius) -> np.ndarray:
    """Length of the line src → tgt inside the sphere (the sphere lies between source and detector)."""
    d = tgt - src
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    s = src - center
    b = d @ s
    return 2.0 * np.sqrt(np.clip(b**2 - (s @ s - radius**2), 0.0, None))


def relativeL2(x, reference) -> float:
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


@pytest.fixture
def sphere(scene):
    """A 30 mm water sphere in a 36×30×28 oblique, anisotropic (2, 2.5, 3 mm) grid (72 × 75 × 84 mm)."""
    shape, radius = (28, 30, 36), 30.0
    ijkToRAS = affine((2.0, 2.5, 3.0), (-30.0, 12.0, 40.0), rotation(10.0, -5.0, 20.0))
    K, J, I = shape
    center = (ijkToRAS @ [(I - 1) / 2, (J - 1) / 2, (K - 1) / 2, 1.0])[:3]
    node = addVolume(scene, sphereCT(shape, ijkToRAS, center, radius), ijkToRAS, name="sphere")
    return node, center, radius


# --- (a) accuracy against exact line integrals ----------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_joseph_matches_the_exact_chord_integral_of_a_sphere(logic, sphere, view):
    """Tolerances: the error left is the voxelisation of the sphere's surface (2–3 mm voxels, partial
    volume + trilinear blur), identical for both methods — the converged ray march (2048 samples) shows
    the same numbers (measured: mean 0.6–0.7 %, worst pixel ≈ 5 % on the shortest counted chords, sums
    within 0.03 %). A wrong step length (one voxel spacing for another: ≥ 17 %) or a lost end plane
    (≈ 1 of 20: 5 %) is far outside them."""
    from nanodrr_engine import MU_WATER

    ct, center, radius = sphere
    g = CArmGeometry(sdd=1020.0, height=26, width=28, delx=3.0, dely=3.0, x0=2.0, y0=-1.5)
    carm = logic.createCArmTransform(ct, rotation=view)
    src, tgt = pixelRays(poseOf(carm), g)
    exact = MU_WATER * sphereChord(src, tgt, center, radius)
    longChords = exact > MU_WATER * radius  # chords longer than the radius: away from the blurred rim
    assert longChords.sum() > 200

    joseph = drrArray(logic.render(ct, carm, g, method="joseph", device="cpu"))
    marched = drrArray(logic.render(ct, carm, g, nSamples=2048, method="raymarch", device="cpu"))
    for image in (joseph, marched):
        rel = np.abs(image - exact)[longChords] / exact[longChords]
        assert rel.mean() < 0.01 and rel.max() < 0.08, (rel.mean(), rel.max())
        assert image.sum() / exact.sum() == pytest.approx(1.0, abs=3e-3)  # projected mass
    relJoseph = np.abs(joseph - exact)[longChords] / exact[longChords]
    relMarched = np.abs(marched - exact)[longChords] / exact[longChords]
    assert relJoseph.mean() < relMarched.mean() + 1e-3  # Joseph adds nothing to the voxelisation error


# --- (b) agreement with the converged reference semantics -------------------------------------------


@pytest.mark.parametrize("view", [(20.0, -10.0, 5.0), (45.0, 30.0, 0.0)])
def test_joseph_agrees_with_a_converged_ray_march_on_the_phantom(logic, ct, geometry, view):
    """Joseph is the trapezoid rule, one node per voxel plane, of the same zero-padded trilinear
    interpolant the ray march samples; on this phantom (1000 HU steps across 3–5 mm voxels) the two
    differ by 0.1–0.2 % (L2) and ≤ 0.5 % of the peak (measured), at the HU steps."""
    carm = logic.createCArmTransform(ct, rotation=view)
    joseph = drrArray(logic.render(ct, carm, geometry, method="joseph"))
    reference = drrArray(logic.render(ct, carm, geometry, nSamples=2048, method="raymarch"))
    assert relativeL2(joseph, reference) < 5e-3
    assert np.abs(joseph - reference).max() < 0.01 * reference.max()


@pytest.mark.slow
def test_joseph_agrees_with_a_converged_ray_march_on_the_chest_ct(scene, logic):
    """Real anatomy, 0.7 × 0.7 × 2.5 mm voxels: measured 0.02–0.04 % (L2), ≤ 0.3 % of the peak."""
    ct = loadVolume(scene, chestDir() / "ct.nii.gz")
    g = CArmGeometry(sdd=1020.0, height=40, width=40, delx=9.0, dely=9.0)
    carm = logic.createCArmTransform(ct)
    for primary, secondary in ((20.0, 10.0), (-35.0, 0.0)):
        logic.setCArmAngles(carm, ct, primary, secondary, 850.0)
        joseph = drrArray(logic.render(ct, carm, g, method="joseph"))
        reference = drrArray(logic.render(ct, carm, g, nSamples=2048, method="raymarch"))
        assert relativeL2(joseph, reference) < 2e-3
        assert np.abs(joseph - reference).max() < 0.01 * reference.max()


# --- the method reaches the engine -------------------------------------------------------------------


def test_joseph_ignores_n_samples_and_equals_the_engines_joseph(logic, ct, ctArray, ctAffine, geometry):
    carm = logic.createCArmTransform(ct, rotation=(20.0, -10.0, 5.0))
    few = drrArray(logic.render(ct, carm, geometry, nSamples=4, method="joseph"))
    many = drrArray(logic.render(ct, carm, geometry, nSamples=500, method="joseph"))
    np.testing.assert_array_equal(few, many)
    marchedFew = drrArray(logic.render(ct, carm, geometry, nSamples=4, method="raymarch"))
    assert relativeL2(marchedFew, many) > 0.01  # 4 samples per ray is visibly coarse: the contrast
    expected = engineRender(ctArray, ctAffine, poseOf(carm), geometry, method="joseph")[0]
    np.testing.assert_allclose(many, expected, rtol=1e-6, atol=1e-6)


def test_segment_drrs_with_joseph_add_up_to_the_plain_render(scene, logic, ct, ctArray, ctAffine, geometry):
    """Two segments that partition the CT: their per-segment Joseph DRRs (the engine's labelmap path)
    sum to the plain Joseph DRR (its fused kernel), and each equals the engine's own channel."""
    carm = logic.createCArmTransform(ct, rotation=(25.0, 10.0, 0.0))
    left = np.zeros(ctArray.shape, np.uint8)
    left[:, :, : ctArray.shape[2] // 2] = 1
    seg, ids = addSegmentation(scene, {"left": left, "right": 1 - left}, ctAffine)
    parts = logic.renderSegments(ct, carm, geometry, seg, method="joseph")
    plain = drrArray(logic.render(ct, carm, geometry, method="joseph"))
    total = drrArray(parts[ids["left"]]) + drrArray(parts[ids["right"]])
    np.testing.assert_allclose(total, plain, rtol=1e-5, atol=1e-5)
    channels = engineRender(ctArray, ctAffine, poseOf(carm), geometry, label=left + 1, method="joseph")
    np.testing.assert_allclose(drrArray(parts[ids["left"]]), channels[2], rtol=1e-5, atol=1e-5)
    assert readAttributes(parts[ids["right"]])["method"] == "joseph"


# --- (c) bad method ------------------------------------------------------------------------------------


def _nodeIds(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


@pytest.mark.parametrize("bad", ["Joseph", "siddon", "", None, 1])
def test_a_bad_method_is_named_before_the_scene_changes(scene, logic, ct, ctArray, ctAffine, geometry, bad):
    seg, _ = addSegmentation(scene, {"all": np.ones(ctArray.shape, np.uint8)}, ctAffine)
    carm = logic.createCArmTransform(ct)
    before = _nodeIds(scene)
    expected = r"method: expected one of \('raymarch', 'joseph'\)"
    with pytest.raises(NanoDRRError, match=expected):
        logic.render(ct, carm, geometry, nSamples=8, method=bad)
    with pytest.raises(NanoDRRError, match=expected):
        logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=8, method=bad)
    with pytest.raises(NanoDRRError, match=expected):
        logic.renderSegments(ct, carm, geometry, seg, nSamples=8, method=bad)
    live = LiveRenderController(logic, ct, carm, geometry, nSamples=8, method=bad)
    with pytest.raises(NanoDRRError, match=expected):
        live.start()
    assert not live.isActive and live.outputNode is None
    assert _nodeIds(scene) == before
    assert logic.conversionCount == 0  # rejected in validation, before any voxel was converted


# --- (d) provenance ------------------------------------------------------------------------------------


def test_the_method_is_recorded_and_n_samples_only_where_it_counts(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    drr = logic.render(ct, carm, geometry, nSamples=16)  # the logic's default: the reference semantics
    a = readAttributes(drr)
    assert (a["method"], a["nSamples"]) == ("raymarch", 16)
    logic.render(ct, carm, geometry, outputNode=drr, nSamples=16, method="joseph")
    a = readAttributes(drr)
    assert a["method"] == "joseph"
    assert "nSamples" not in a  # Joseph ignores it: a stale count would misdescribe the image
    assert drr.GetAttribute("NanoDRR.method") == "joseph"


# --- (e) live rendering ----------------------------------------------------------------------------------


def test_live_rendering_with_joseph_follows_the_c_arm(scene, logic, ct, ctArray, ctAffine, geometry):
    carm = logic.createCArmTransform(ct)
    scheduled = []
    live = LiveRenderController(
        logic, ct, carm, geometry, nSamples=8, previewScale=0.5, schedule=scheduled.append, method="joseph"
    )
    live.start()
    out = live.outputNode
    assert live.renderCount == 1 and readAttributes(out)["method"] == "joseph"
    logic.setCArmAngles(carm, ct, 35.0, -10.0, 850.0)
    assert live.renderCount == 1 and len(scheduled) == 1  # deferred, coalesced
    scheduled.pop()()
    assert live.renderCount == 2 and live.isPreview and live.outputNode is out
    pose = poseOf(carm)
    preview = engineRender(ctArray, ctAffine, pose, geometry.scaled(0.5), method="joseph")[0]
    np.testing.assert_allclose(drrArray(out), preview, rtol=1e-6, atol=1e-6)
    assert live.finalize()
    full = engineRender(ctArray, ctAffine, pose, geometry, method="joseph")[0]
    np.testing.assert_allclose(drrArray(out), full, rtol=1e-6, atol=1e-6)
    a = readAttributes(out)
    assert a["method"] == "joseph" and "nSamples" not in a
    np.testing.assert_allclose(a["rtInv"], pose)
    live.stop()

"""The logic checks the engine's work budget before converting or creating anything, reports progress
from inside a render pass, and a cancel there leaves the scene as it was."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from nanodrr_engine import budget
from NanoDRRLib import CArmGeometry, NanoDRRError
from slicer_testutils import N_SAMPLES, addSegmentation, drrArray

R = importlib.import_module("nanodrr_engine.drr.render")


def _nodeIDs(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def _masks(shape):
    a = np.zeros(shape, np.uint8)
    a[3:9, 5:15, 3:12] = 1
    b = np.zeros(shape, np.uint8)
    b[10:16, 5:15, 3:12] = 1
    c = np.zeros(shape, np.uint8)
    c[10:16, 16:20, 3:12] = 1
    return {"a": a, "b": b, "c": c}


@pytest.fixture
def marched(monkeypatch):
    """Chunks of 4 detector rows (48 pixels each at the fixture's width) in the engine; counts them."""
    calls = []
    original = R._render_rays

    def counting(*args):
        calls.append(args[-1].shape[1])
        return original(*args)

    monkeypatch.setattr(R, "_render_rays", counting)
    monkeypatch.setattr(R, "CHUNK_SAMPLES", dict.fromkeys(("numba", "torch", "triton"), N_SAMPLES * 4 * 48))
    return calls


def test_a_billion_samples_is_refused_before_anything_is_converted(scene, logic, ct, geometry):
    carm = logic.createCArmTransform(ct)
    before = _nodeIDs(scene)
    with pytest.raises(NanoDRRError, match=r"nSamples, geometry: 1 image of 40×48 pixels, nSamples=1,000,000,000 "
                       r"per ray = 1\.92e\+12 volume samples exceed the work budget of 1e\+12"):  # fmt: skip
        logic.render(ct, carm, geometry, nSamples=10**9)
    assert _nodeIDs(scene) == before and logic.conversionCount == 0


def test_a_huge_detector_is_refused_before_anything_is_created(scene, logic, ct):
    carm = logic.createCArmTransform(ct)
    huge = CArmGeometry(sdd=1020.0, height=100_000, width=100_000, delx=0.01, dely=0.01)
    before = _nodeIDs(scene)
    with pytest.raises(NanoDRRError, match=r"100000×100000 pixels.*over the memory budget of 16 GiB"):
        logic.render(ct, carm, huge, nSamples=N_SAMPLES)
    assert _nodeIDs(scene) == before and logic.conversionCount == 0 and not logic._drrs


def test_render_segments_checks_all_its_channels_before_resampling(
    scene, logic, ct, ctArray, ctAffine, geometry
):
    seg, _ = addSegmentation(scene, _masks(ctArray.shape), ctAffine)
    carm = logic.createCArmTransform(ct)
    rays = 40 * 48
    two = 4 * 2 * rays + (3 + 8) * 8 * rays  # render() with a segmentation: 2 channels, float64 geometry
    four = 4 * 4 * rays + (3 + 8) * 8 * rays  # renderSegments of 3 segments: 4 channels
    before = _nodeIDs(scene)
    with budget.limits(max_bytes=(two + four) // 2):
        with pytest.raises(NanoDRRError, match=r"4 channels.*memory budget"):
            logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES)
        assert _nodeIDs(scene) == before and logic.labelConversionCount == 0
        logic.render(ct, carm, geometry, seg, nSamples=N_SAMPLES)


def test_progress_fires_inside_the_render_pass_and_chunks_change_nothing(logic, ct, geometry, marched):
    carm = logic.createCArmTransform(ct, rotation=(20.0, -10.0, 5.0))
    whole = drrArray(logic.render(ct, carm, geometry, nSamples=N_SAMPLES))
    assert marched == [1920]
    reports = []
    chunked = drrArray(
        logic.render(
            ct, carm, geometry, nSamples=N_SAMPLES, progressCallback=lambda f, m: reports.append((f, m))
        )
    )
    assert marched[1:] == [192] * 10  # 40 rows of 48: 10 chunks of 4 rows
    inside = [f for f, m in reports if m == "Rendering"]
    assert inside == pytest.approx([0.1] + [0.1 + 0.85 * k / 10 for k in range(1, 11)])
    np.testing.assert_array_equal(chunked, whole)


class Cancel(Exception):
    pass


class CancelValue(ValueError):  # a callback's own ValueError is not turned into a NanoDRRError
    pass


@pytest.mark.parametrize("error", [Cancel, CancelValue])
def test_cancel_inside_the_render_pass_stops_it_and_writes_nothing(
    scene, logic, ct, geometry, marched, error
):
    carm = logic.createCArmTransform(ct)
    out = logic.render(ct, carm, geometry, nSamples=N_SAMPLES)
    image, mtime = drrArray(out).copy(), out.GetImageData().GetMTime()
    before = _nodeIDs(scene)
    marched.clear()
    calls = []

    def progress(fraction, message):
        calls.append(fraction)
        if len(calls) == 4:  # 0.0 preparing, 0.1 rendering, then two chunks
            raise error()

    for target in (None, out):
        calls.clear()
        marched.clear()
        with pytest.raises(error):
            logic.render(ct, carm, geometry, outputNode=target, nSamples=N_SAMPLES, progressCallback=progress)
        assert len(marched) == 2
        assert _nodeIDs(scene) == before
    np.testing.assert_array_equal(drrArray(out), image)
    assert out.GetImageData().GetMTime() == mtime


def test_cancel_inside_a_segment_pass_writes_no_segment(
    scene, logic, ct, ctArray, ctAffine, geometry, marched
):
    masks = _masks(ctArray.shape)
    masks["overlap"] = masks["a"].copy()  # overlaps a: a second pass
    seg, _ = addSegmentation(scene, masks, ctAffine)
    carm = logic.createCArmTransform(ct)
    before = _nodeIDs(scene)
    reports = []

    def progress(fraction, message):
        reports.append((fraction, message))
        if "pass 2" in message and fraction > 0.5 + 1e-9:
            raise Cancel()

    with pytest.raises(Cancel):
        logic.renderSegments(ct, carm, geometry, seg, nSamples=N_SAMPLES, progressCallback=progress)
    assert _nodeIDs(scene) == before
    first = [f for f, m in reports if "pass 1" in m]
    assert first == pytest.approx([0.1] + [0.1 + 0.4 * k / 10 for k in range(1, 11)])  # 2 passes
    assert len(marched) == 10 + 1  # the whole first pass, one chunk of the second

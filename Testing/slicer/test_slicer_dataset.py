"""NanoDRRLogic.generateDataset: a training dataset of the CT and segments in a real MRML scene (issue 16).

References: the engine's ``render`` on the test's own arrays and matrices (with the labelmap the test
builds from its masks), never the logic's conversion; the scene must be left exactly as it was.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("zarr", reason="nanodrr_engine.dataset needs zarr 3 (Python >= 3.11)")

import torch
from nanodrr_engine import Subject, render
from nanodrr_engine.dataset import DRRDataset
from NanoDRRLib import CArmGeometry, NanoDRRError
from scene_snapshot import sceneSnapshot, snapshotDiff
from slicer_testutils import addSegmentation, addTransform, rotation

GEOMETRY = CArmGeometry(sdd=1020.0, height=24, width=20, delx=6.0, dely=6.5, x0=3.0, y0=-2.0)


def box(shape, k, j, i) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[k[0] : k[1], j[0] : j[1], i[0] : i[1]] = 1
    return m


def _rerender(hu, voxelToWorld, labels, item, maxLabel):
    sub = Subject.from_array(hu, voxelToWorld, label=labels, max_label=maxLabel)
    with torch.no_grad():
        out = render(
            sub,
            item["k_inv"],
            item["rt_inv"],
            float(item["sdd"]),
            GEOMETRY.height,
            GEOMETRY.width,
            method="joseph",
        )
    return out[0]


def test_dataset_of_the_ct_and_its_segments(scene, logic, ct, ctArray, ctAffine, tmp_path):
    shape = ctArray.shape
    bone = box(shape, (5, 11), (8, 14), (4, 9))
    body = box(shape, (2, 5), (3, 20), (2, 19))  # disjoint from the bone block
    seg, ids = addSegmentation(scene, {"body": body, "bone": bone}, ctAffine)
    before = sceneSnapshot(scene)
    fractions = []
    summary = logic.generateDataset(
        ct, tmp_path / "d.zarr", 6, seg, segmentIds=[ids["bone"], ids["body"]], geometry=GEOMETRY, chunk=4,
        seed=5, roll=(-10.0, 10.0), progressCallback=lambda f, message="": fractions.append(f),
    )  # fmt: skip
    assert snapshotDiff(before, sceneSnapshot(scene)) == []  # read, never changed
    assert summary.total == 6 and summary.images == 6
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    ds = DRRDataset(tmp_path / "d.zarr")
    assert ds.record["channel_names"] == ["(no segment)", "bone", "body"]
    assert ds.record["cts"][0]["name"] == "ct"
    labels = bone + 2 * body  # channels in segmentIds order
    for i in range(6):
        item = ds[i]
        assert item["image"].shape == (3, 24, 20)
        ref = _rerender(ctArray, ctAffine, labels, item, 2)
        assert torch.equal(item["image"], ref)  # the stored pose re-renders to the stored bytes
        assert float(item["image"][1].max()) > 0.1 and float(item["image"][2].max()) > 0.1


def test_parent_transform_is_applied(scene, logic, ct, ctArray, ctAffine, tmp_path):
    parent = np.eye(4)
    parent[:3, :3] = rotation(0.0, 0.0, 30.0)
    parent[:3, 3] = (10.0, -5.0, 20.0)
    ct.SetAndObserveTransformNodeID(addTransform(scene, parent).GetID())
    logic.generateDataset(ct, tmp_path / "t.zarr", 3, geometry=GEOMETRY, chunk=3)
    ds = DRRDataset(tmp_path / "t.zarr")
    for i in range(3):
        item = ds[i]
        assert torch.equal(item["image"], _rerender(ctArray, parent @ ctAffine, None, item, None))


def test_cancel_then_resume_equals_one_run(scene, logic, ct, tmp_path):
    class Cancel(Exception):
        pass

    def cancel(fraction, message=""):
        if 0.0 < fraction < 1.0:
            raise Cancel

    with pytest.raises(Cancel):  # the caller's exception, not wrapped
        logic.generateDataset(ct, tmp_path / "c.zarr", 8, geometry=GEOMETRY, chunk=2, progressCallback=cancel)
    assert len(DRRDataset(tmp_path / "c.zarr", allow_incomplete=True)) == 2
    resumed = logic.generateDataset(ct, tmp_path / "c.zarr", 8, geometry=GEOMETRY, chunk=2)
    assert resumed.resumed and resumed.images == 6
    logic.generateDataset(ct, tmp_path / "one.zarr", 8, geometry=GEOMETRY, chunk=4)
    a, b = DRRDataset(tmp_path / "c.zarr"), DRRDataset(tmp_path / "one.zarr")
    for i in range(8):
        assert a[i]["image"].numpy().tobytes() == b[i]["image"].numpy().tobytes()


def test_bad_input_is_a_named_error_and_writes_nothing(scene, logic, ct, ctArray, ctAffine, tmp_path):
    shape = ctArray.shape
    a, b = box(shape, (3, 12), (5, 15), (3, 15)), box(shape, (6, 10), (8, 12), (5, 9))  # b inside a
    seg, _ = addSegmentation(scene, {"a": a, "b": b}, ctAffine)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    cases = [
        ({"volumeNode": seg}, "volumeNode"),
        ({"segmentationNode": seg}, "overlap"),
        ({"outputPath": mine}, "not a NanoDRR dataset"),
        ({"n": 0}, "n: must be in"),
        ({"primary": (40.0, -40.0)}, "primary: the range is inverted"),
        ({"geometry": "big"}, "geometry: expected a CArmGeometry"),
        ({"geometry": CArmGeometry(height=25, width=25)}, "multiple of 4"),
        ({"muBone": (0.001, 0.05)}, "mu_bone"),
        ({"segmentIds": ["x"]}, "segmentIds"),
    ]
    for change, message in cases:
        args = {"volumeNode": ct, "outputPath": tmp_path / "x.zarr", "n": 4, "geometry": GEOMETRY, **change}
        with pytest.raises(NanoDRRError, match=message):
            logic.generateDataset(**args)
        assert not (tmp_path / "x.zarr").exists()
    assert [p.name for p in mine.iterdir()] == ["keep.txt"]

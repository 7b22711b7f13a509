"""The README's main job, ``scripts/nanodrr_demo.py``, end to end at a tiny size."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from NanoDRRLib import loadScene, readAttributes
from slicer_testutils import REPO, drrArray

pytestmark = pytest.mark.slow


def loadDemo():
    spec = importlib.util.spec_from_file_location("nanodrr_demo", REPO / "scripts" / "nanodrr_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_builds_renders_and_saves_a_scene(tmp_path, capsys):
    demo = loadDemo()
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--size", "24", "--n-samples", "16", "--spacing", "10"]) == 0
    printed = capsys.readouterr().out
    assert "render AP" in printed and "render Lateral" in printed and "segments" in printed
    for name in ("drr_views.png", "drr_segment_outlines.png", "drr_segments.png"):
        assert (out / name).stat().st_size > 1000
    scene = loadScene(out / "scene" / "nanodrr_demo.mrml")
    ap = scene.GetFirstNodeByName("Chest phantom DRR AP")
    lateral = scene.GetFirstNodeByName("Chest phantom DRR Lateral")
    assert drrArray(ap).shape == (24, 24) and drrArray(ap).max() > 1.0
    assert not np.allclose(drrArray(ap), drrArray(lateral))
    assert readAttributes(lateral)["nSamples"] == 16
    heart = scene.GetFirstNodeByName("Chest phantom DRR heart")
    assert heart is not None and readAttributes(heart)["segmentName"] == "heart"
    assert scene.GetFirstNodeByClass("vtkMRMLSegmentationNode") is not None


def test_demo_rejects_seg_without_ct(tmp_path):
    with pytest.raises(SystemExit):
        loadDemo().main(["--seg", str(tmp_path / "labels.nii.gz")])

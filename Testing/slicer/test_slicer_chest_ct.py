"""The reference chest CT read through MRML renders like the engine reading it with SimpleITK.

Two independent readers (Slicer's ITK archetype reader vs the engine's SimpleITK + LPS→RAS) must
agree on voxels and geometry. Skips when ``<repo>/../shared/data/chest_ct`` is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from NanoDRRLib import CArmGeometry, loadSegmentation, loadVolume, readStructureNames
from slicer_testutils import chestDir, drrArray, poseOf

pytestmark = pytest.mark.slow

GEOMETRY = CArmGeometry(sdd=1020.0, height=48, width=48, delx=8.0, dely=8.0)
N = 64


def engine(subject, pose):
    from nanodrr_engine import DRR

    g = GEOMETRY
    drr = DRR.from_carm_intrinsics(g.sdd, g.delx, g.dely, g.x0, g.y0, g.height, g.width)
    with torch.no_grad():
        return drr(subject, torch.as_tensor(pose, dtype=torch.float64)[None], n_samples=N)[0].numpy()


def test_chest_ct_and_labels_match_the_engine_reader(scene, logic):
    from nanodrr_engine import Subject

    folder = chestDir()
    ct = loadVolume(scene, folder / "ct.nii.gz")
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 20.0, 10.0, 850.0)
    drr = drrArray(logic.render(ct, carm, GEOMETRY, nSamples=N))

    reference = Subject.from_filepath(folder / "ct.nii.gz", folder / "labels.nii.gz")
    np.testing.assert_allclose(logic.isocenter(ct), reference.isocenter.numpy(), atol=1e-3)
    channels = engine(reference, poseOf(carm))  # the channels sum to the plain DRR
    np.testing.assert_allclose(drr, channels.sum(axis=0), rtol=1e-4, atol=1e-4)
    assert drr.max() > 3.0

    names = readStructureNames(folder / "structures.csv")
    present, counts = torch.unique(reference.label[reference.label > 0], return_counts=True)
    picks = [int(v) for v in present[torch.argsort(counts)[-2:]]]  # the two largest structures
    seg = loadSegmentation(scene, folder / "labels.nii.gz", referenceVolumeNode=ct)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(present)
    byName = {
        segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
        for i in range(segmentation.GetNumberOfSegments())
    }
    ids = [byName[names[v]] for v in picks]  # names come from structures.csv
    parts = logic.renderSegments(ct, carm, GEOMETRY, seg, segmentIds=ids, nSamples=N)
    assert logic.lastRenderPasses == 1
    for v, sid in zip(picks, ids, strict=True):
        np.testing.assert_allclose(drrArray(parts[sid]), channels[v], rtol=1e-4, atol=1e-4)
        assert parts[sid].GetName() == f"ct DRR {names[v]}"

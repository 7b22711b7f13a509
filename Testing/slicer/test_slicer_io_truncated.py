"""``loadVolume``/``loadSegmentation`` refuse truncated or corrupt files, naming them, and add no node.

Slicer's vtkMRMLVolumeArchetypeStorageNode reads through ITK: a cut NIfTI loads with its missing
voxels 0 (no user message, ``ReadData`` succeeds), a damaged compressed NRRD/MetaImage decodes garbage.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from NanoDRRLib import NanoDRRError, loadSegmentation, loadVolume
from slicer import vtkMRMLScene
from slicer_testutils import addLabelmapSegmentation, affine

SHAPE = (10, 12, 14)


def _ct() -> np.ndarray:
    return np.random.default_rng(5).integers(-1000, 2000, SHAPE).astype(np.int16)


def _write(array, path, compress):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path), compress)


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _nodeIDs(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


FILES = [("ct.nii.gz", True), ("ct.nii", False), ("ct.nrrd", False), ("ctz.nrrd", True), ("ct.mha", False),
         ("ctz.mha", True)]  # fmt: skip


@pytest.mark.parametrize("name,compress", FILES, ids=[f[0] for f in FILES])
def test_intact_volume_loads_identically(tmp_path, name, compress):
    arr = _ct()
    _write(arr, tmp_path / name, compress)
    node = loadVolume(vtkMRMLScene(), tmp_path / name)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), arr)


@pytest.mark.parametrize("keep", [0.5, 0.99])
@pytest.mark.parametrize("name,compress", FILES, ids=[f[0] for f in FILES])
def test_cut_volume_is_refused_and_adds_no_node(tmp_path, name, compress, keep):
    _write(_ct(), tmp_path / name, compress)
    _cut(tmp_path / name, keep)
    scene = vtkMRMLScene()
    before = _nodeIDs(scene)
    with pytest.raises(NanoDRRError, match=rf"path: .*{re.escape(name)} is truncated or corrupt"):
        loadVolume(scene, tmp_path / name)
    assert _nodeIDs(scene) == before


def test_damaged_compressed_nrrd_is_refused(tmp_path):
    _write(_ct(), tmp_path / "ct.nrrd", True)
    b = bytearray((tmp_path / "ct.nrrd").read_bytes())
    b[len(b) * 2 // 3 : len(b) * 2 // 3 + 32] = bytes(32)
    (tmp_path / "ct.nrrd").write_bytes(bytes(b))
    with pytest.raises(NanoDRRError, match="compressed data"):
        loadVolume(vtkMRMLScene(), tmp_path / "ct.nrrd")


def test_cut_labelmap_segmentation_is_refused_and_adds_no_node(scene, tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    labels[6:9, 3:9, 4:10] = 2
    _write(labels, tmp_path / "labels.nii.gz", True)
    seg = loadSegmentation(vtkMRMLScene(), tmp_path / "labels.nii.gz")
    assert seg.GetSegmentation().GetNumberOfSegments() == 2
    _cut(tmp_path / "labels.nii.gz", 0.7)
    before = _nodeIDs(scene)
    with pytest.raises(NanoDRRError, match=r"labels\.nii\.gz is truncated or corrupt"):
        loadSegmentation(scene, tmp_path / "labels.nii.gz")
    assert _nodeIDs(scene) == before


def test_cut_seg_nrrd_is_refused_and_adds_no_node(scene, tmp_path):
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:6, 3:9, 4:10] = 1
    seg, _ = addLabelmapSegmentation(scene, labels, affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), {1: "a"})
    storage = seg.CreateDefaultStorageNode()
    storage.SetFileName(str(tmp_path / "s.seg.nrrd"))
    assert storage.WriteData(seg)
    fresh = vtkMRMLScene()
    assert loadSegmentation(fresh, tmp_path / "s.seg.nrrd").GetSegmentation().GetNumberOfSegments() == 1
    _cut(tmp_path / "s.seg.nrrd", 0.8)
    before = _nodeIDs(fresh)
    with pytest.raises(NanoDRRError, match=r"s\.seg\.nrrd is truncated or corrupt"):
        loadSegmentation(fresh, tmp_path / "s.seg.nrrd")
    assert _nodeIDs(fresh) == before

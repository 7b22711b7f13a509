"""Saving and loading scenes under faults, and provenance that survives import into a busy scene.

A save interrupted at any step (a storage node that fails to write, a read-only or full folder, the
.mrml failing to commit, a rename failing while the new files are moved in) leaves the folder with
exactly its old files (byte for byte) and names the file; a save that succeeds leaves exactly the new
set. Tests run as root, so read-only folders are made by failing the OS calls (``os.replace``,
``tempfile.mkdtemp``) or by a path under a regular file, not by chmod.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile

import numpy as np
import pytest
import slicer
from NanoDRRLib import NanoDRRError, loadScene, readAttributes, saveScene
from slicer_testutils import N_SAMPLES, addLabelmapSegmentation, addVolume, drrArray


def snapshot(folder) -> dict:
    """{relative path: sha256} of every file under ``folder`` (hidden ones included)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def storageState(scene) -> dict:
    out = {"url": scene.GetURL(), "root": scene.GetRootDirectory(), "nodes": scene.GetNumberOfNodes()}
    for n in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(n)
        if node.IsA("vtkMRMLStorableNode"):
            storage = node.GetStorageNode()
            out[node.GetID()] = (storage.GetID(), storage.GetFileName()) if storage else None
    return out


@pytest.fixture
def drrScene(scene, logic, ct, ctArray, ctAffine, geometry):
    labels = np.zeros(ctArray.shape, np.uint8)
    labels[3:9, 5:15, 3:12] = 1
    labels[10:16, 5:15, 3:12] = 2
    seg, _ = addLabelmapSegmentation(scene, labels, ctAffine, {1: "upper", 2: "lower"})
    carm = logic.createCArmTransform(ct)
    logic.setCArmAngles(carm, ct, 30.0, 15.0, 800.0)
    drr = logic.render(ct, carm, geometry, segmentationNode=seg, nSamples=N_SAMPLES, name="my DRR")
    return {"ct": ct, "carm": carm, "seg": seg, "drr": drr}


def _changeTheScene(logic, nodes, geometry):
    """A second state of the same nodes (same file names, different contents)."""
    arr = slicer.util.arrayFromVolume(nodes["ct"])
    arr += 100.0
    slicer.util.arrayFromVolumeModified(nodes["ct"])
    logic.setCArmAngles(nodes["carm"], nodes["ct"], -20.0, 5.0, 800.0)
    logic.render(nodes["ct"], nodes["carm"], geometry, outputNode=nodes["drr"], nSamples=N_SAMPLES)


# --- provenance after import ---------------------------------------------------------------------


def _busyScene(ctArray, ctAffine):
    """A scene whose nodes already hold the IDs the saved scene uses."""
    other = slicer.vtkMRMLScene()
    addVolume(other, ctArray * 0.0, ctAffine, "someone else's CT")
    addVolume(other, ctArray * 0.0, ctAffine, "another volume")
    other.AddNewNodeByClass("vtkMRMLLinearTransformNode", "someone else's transform")
    other.AddNewNodeByClass("vtkMRMLSegmentationNode", "someone else's segmentation")
    return other


def _checkProvenance(target, names=("ct", "my DRR")):
    ct = target.GetFirstNodeByName("ct")
    drr = target.GetFirstNodeByName("my DRR")
    carm = target.GetFirstNodeByName("ct C-arm")
    seg = target.GetFirstNodeByName("labels") or target.GetFirstNodeByName("seg")
    a = readAttributes(drr)
    assert a["sourceVolumeID"] == ct.GetID() and target.GetNodeByID(a["sourceVolumeID"]) is ct
    assert a["cArmID"] == carm.GetID()
    assert a["segmentationID"] == seg.GetID()
    assert readAttributes(carm)["sourceVolumeID"] == ct.GetID()
    assert drr.GetNodeReference("NanoDRR.sourceVolume") is ct


def test_import_into_a_busy_scene_keeps_the_provenance_pointing_at_the_imported_nodes(
    drrScene, ctArray, ctAffine, tmp_path
):
    path = saveScene(drrScene["ct"].GetScene(), tmp_path / "saved")
    target = _busyScene(ctArray, ctAffine)
    target.SetURL(str(path))  # MRML's own import: IDs are renamed, node references follow
    assert target.Import()
    assert target.GetFirstNodeByName("ct").GetID() != drrScene["ct"].GetID()  # really renamed
    _checkProvenance(target)


def test_loadscene_imports_into_a_given_scene(drrScene, ctArray, ctAffine, tmp_path):
    path = saveScene(drrScene["ct"].GetScene(), tmp_path / "saved")
    target = _busyScene(ctArray, ctAffine)
    n = target.GetNumberOfNodes()
    assert loadScene(path, scene=target) is target
    assert target.GetNumberOfNodes() > n and target.GetFirstNodeByName("someone else's CT") is not None
    _checkProvenance(target)
    np.testing.assert_array_equal(drrArray(target.GetFirstNodeByName("my DRR")), drrArray(drrScene["drr"]))


def test_stale_id_attributes_of_old_scenes_are_ignored(drrScene):
    drr = drrScene["drr"]
    drr.SetAttribute("NanoDRR.sourceVolumeID", "vtkMRMLScalarVolumeNode999")  # as written before
    drr.SetAttribute("NanoDRR.cArmID", drrScene["ct"].GetID())
    a = readAttributes(drr)
    assert a["sourceVolumeID"] == drrScene["ct"].GetID() and a["cArmID"] == drrScene["carm"].GetID()


def test_the_id_attributes_are_no_longer_written(drrScene):
    for node in (drrScene["drr"], drrScene["carm"]):
        assert not [k for k in node.GetAttributeNames() if k.endswith("ID") and k.startswith("NanoDRR.")]


# --- bad arguments: refused before anything is written -------------------------------------------


@pytest.mark.parametrize("name", ["..", "../x", ".hidden", "", "   ", None, 5])
def test_bad_scene_names_are_refused_before_writing(drrScene, tmp_path, name):
    scene = drrScene["ct"].GetScene()
    before = storageState(scene)
    with pytest.raises(NanoDRRError, match="sceneName"):
        saveScene(scene, tmp_path / "out", name)
    assert not (tmp_path / "out").exists() and storageState(scene) == before


def test_saving_into_a_path_that_is_a_file_names_it(drrScene, tmp_path):
    scene = drrScene["ct"].GetScene()
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    for target in (blocker, blocker / "sub" / "dir"):
        with pytest.raises(NanoDRRError, match=str(blocker)):
            saveScene(scene, target)
    assert blocker.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["taken"]


# --- interrupted saves -----------------------------------------------------------------------------


def _firstSave(drrScene, logic, geometry, tmp_path):
    scene = drrScene["ct"].GetScene()
    folder = tmp_path / "saved"
    path = saveScene(scene, folder, "drr")
    old = snapshot(folder)
    assert {"drr.mrml", "ct.nrrd", "my_DRR.nrrd"} <= old.keys()
    _changeTheScene(logic, drrScene, geometry)
    return scene, folder, path, old


def test_a_failing_storage_node_leaves_the_old_files(drrScene, logic, geometry, tmp_path):
    scene, folder, path, old = _firstSave(drrScene, logic, geometry, tmp_path)
    storage = drrScene["drr"].GetStorageNode()
    storage.WriteData = lambda node: False
    before = storageState(scene)
    with pytest.raises(NanoDRRError, match=r"my_DRR\.nrrd"):
        saveScene(scene, folder, "drr")
    assert snapshot(folder) == old and storageState(scene) == before
    del storage.WriteData
    saveScene(scene, folder, "drr")
    new = snapshot(folder)
    assert new.keys() == old.keys() and new["ct.nrrd"] != old["ct.nrrd"]
    reloaded = loadScene(path)
    np.testing.assert_array_equal(drrArray(reloaded.GetFirstNodeByName("my DRR")), drrArray(drrScene["drr"]))


def test_a_failing_commit_leaves_the_old_files(drrScene, logic, geometry, tmp_path):
    scene, folder, _, old = _firstSave(drrScene, logic, geometry, tmp_path)
    scene.Commit = lambda url=None: False
    with pytest.raises(NanoDRRError, match=r"drr\.mrml"):
        saveScene(scene, folder, "drr")
    assert snapshot(folder) == old


def test_a_first_save_that_fails_leaves_no_folder(drrScene, tmp_path):
    scene = drrScene["ct"].GetScene()
    storage = drrScene["drr"].GetStorageNode() or drrScene["drr"].CreateDefaultStorageNode()
    scene.AddNode(storage)
    drrScene["drr"].SetAndObserveStorageNodeID(storage.GetID())
    storage.WriteData = lambda node: False
    before = storageState(scene)
    with pytest.raises(NanoDRRError, match=r"my_DRR\.nrrd"):
        saveScene(scene, tmp_path / "a" / "b")
    assert os.listdir(tmp_path) == [] and storageState(scene) == before


@pytest.mark.parametrize("failAt", [1, 3, "last"])
def test_a_rename_failing_while_moving_the_new_files_in_rolls_back(
    drrScene, logic, geometry, tmp_path, monkeypatch, failAt
):
    """A full or read-only folder, seen by the OS call that moves a file in."""
    scene, folder, _, old = _firstSave(drrScene, logic, geometry, tmp_path)
    real = os.replace
    moveIns = []
    failed = []

    def replace(src, dst, *args, **kwargs):
        if os.path.dirname(str(dst)) == str(folder):  # a new file moving in (not a backup)
            moveIns.append(str(dst))
            if (str(dst).endswith(".mrml") if failAt == "last" else len(moveIns) == failAt) and not failed:
                failed.append(str(dst))
                raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(NanoDRRError, match=r"Read-only file system") as info:
        saveScene(scene, folder, "drr")
    assert failed and os.path.basename(failed[0]) in str(info.value) and str(folder) in str(info.value)
    monkeypatch.setattr(os, "replace", real)
    assert snapshot(folder) == old


def test_a_folder_where_no_temporary_folder_can_be_made_names_it(
    drrScene, logic, geometry, tmp_path, monkeypatch
):
    scene, folder, _, old = _firstSave(drrScene, logic, geometry, tmp_path)

    def readOnly(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", readOnly)
    with pytest.raises(NanoDRRError, match=str(folder)):
        saveScene(scene, folder, "drr")
    monkeypatch.undo()
    assert snapshot(folder) == old


def test_files_of_others_in_the_folder_are_left_alone(drrScene, tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    saveScene(drrScene["ct"].GetScene(), folder, "drr")
    assert (folder / "notes.txt").read_text() == "mine"
    assert not [p for p in os.listdir(folder) if p.startswith(".")]  # no temporary folder left


# --- loading: missing files are named ------------------------------------------------------------


def test_a_missing_data_file_is_named_and_nothing_is_imported(drrScene, ctArray, ctAffine, tmp_path):
    path = saveScene(drrScene["ct"].GetScene(), tmp_path / "saved")
    os.remove(path.parent / "my_DRR.nrrd")
    with pytest.raises(NanoDRRError, match=r"my_DRR\.nrrd"):
        loadScene(path)
    target = _busyScene(ctArray, ctAffine)
    n = target.GetNumberOfNodes()
    with pytest.raises(NanoDRRError, match=r"my_DRR\.nrrd"):
        loadScene(path, scene=target)
    assert target.GetNumberOfNodes() == n

"""Subject construction, HU → μ, file reading and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nanodrr_engine import HU_BONE, MU_BONE, MU_WATER, Subject, hu_to_mu


def oblique_affine(spacing=(2.0, 3.0, 4.0), origin=(5.0, -7.0, 11.0), angle=30.0):
    a = np.radians(angle)
    R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = R @ np.diag(spacing)
    m[:3, 3] = origin
    return m


@pytest.mark.parametrize(
    "hu,mu",
    [
        (-2000.0, 0.0),  # clamped to air
        (-1000.0, 0.0),
        (-500.0, MU_WATER * 0.5),
        (0.0, MU_WATER),
        (500.0, MU_WATER + (MU_BONE - MU_WATER) * 0.5),
        (1000.0, MU_BONE),
        (2000.0, MU_WATER + (MU_BONE - MU_WATER) * 2.0),
    ],
)
def test_hu_to_mu_reference_points(hu, mu):
    assert hu_to_mu(torch.tensor([hu], dtype=torch.float64)).item() == pytest.approx(mu, rel=1e-12, abs=1e-15)


def test_hu_to_mu_custom_parameters():
    out = hu_to_mu(torch.tensor([1500.0], dtype=torch.float64), mu_water=0.02, mu_bone=0.05, hu_bone=1500.0)
    assert out.item() == pytest.approx(0.05)
    assert (HU_BONE, MU_WATER, MU_BONE) == (1000.0, 0.0192, 0.0573)


def test_from_array_geometry():
    v2w = oblique_affine()
    vol = np.zeros((4, 5, 6), dtype=np.int16)  # [K, J, I]
    s = Subject.from_array(vol, v2w)
    assert s.shape == (4, 5, 6)
    assert s.image.dtype == torch.float32 and s.image.shape == (1, 1, 4, 5, 6)
    # isocenter: centre of the voxel grid, (I−1)/2, (J−1)/2, (K−1)/2
    np.testing.assert_allclose(s.isocenter.numpy(), (v2w @ [2.5, 2.0, 1.5, 1.0])[:3], rtol=1e-6)
    np.testing.assert_allclose(s.spacing.numpy(), [2.0, 3.0, 4.0], rtol=1e-6)
    # world → grid: voxel (0, 0, 0) → (−1 + 1/I, −1 + 1/J, −1 + 1/K); the far edge (S − ½) → +1
    w2g = s.world_to_grid.double().numpy()
    np.testing.assert_allclose(w2g @ v2w @ [0, 0, 0, 1], [-1 + 1 / 6, -1 + 1 / 5, -1 + 1 / 4, 1], atol=1e-6)
    np.testing.assert_allclose(w2g @ v2w @ [5.5, 4.5, 3.5, 1], [1, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(s.world_to_voxel.double().numpy() @ v2w, np.eye(4), atol=1e-5)


def test_no_label_volume_is_allocated_without_a_labelmap():
    s = Subject.from_array(np.zeros((3, 3, 3), np.float32), np.eye(4))
    assert s.label is None and s.n_classes == 1
    assert sum(b.numel() for b in s.buffers()) == 27 + 4 * 16 + 3


def test_labels_are_compact_integers_and_max_label_overrides():
    lab = np.zeros((3, 4, 5), np.int64)
    lab[1, 2, 3] = 7
    s = Subject.from_array(np.zeros((3, 4, 5), np.float32), np.eye(4), label=lab)
    assert s.label.dtype == torch.uint8 and s.n_classes == 8
    assert Subject.from_array(np.zeros((3, 4, 5)), np.eye(4), label=lab, max_label=3).n_classes == 4
    assert Subject.from_array(np.zeros((3, 4, 5)), np.eye(4), label=lab.astype(np.float32)).n_classes == 8


def test_changing_mu_bone_changes_the_image_and_the_cache():
    hu = np.array([[[-1000.0, 0.0, 1000.0, 2000.0]]], dtype=np.float32)
    s = Subject.from_array(hu, np.eye(4))
    first = s.image
    assert s.image is first  # cached
    np.testing.assert_allclose(
        first.flatten().numpy(), [0.0, MU_WATER, MU_BONE, 2 * MU_BONE - MU_WATER], rtol=1e-6
    )
    s.mu_bone = 0.08
    second = s.image
    assert second is not first
    np.testing.assert_allclose(
        second.flatten().numpy(), [0.0, MU_WATER, 0.08, 2 * 0.08 - MU_WATER], rtol=1e-6
    )
    s.convert_to_mu = False
    np.testing.assert_allclose(s.image.flatten().numpy(), hu.flatten())
    s.convert_to_mu = True
    s.set_mu(mu_water=torch.tensor(0.03))
    assert s.image.flatten()[1].item() == pytest.approx(0.03)
    assert s.mu_water == MU_WATER  # set_mu leaves the stored defaults alone (torch.compile friendly)


def test_mu_kwargs_and_half_precision():
    s = Subject.from_array(
        np.full((2, 2, 2), 500.0, np.float32), np.eye(4) * 2 + np.diag([0, 0, 0, -1]), mu_bone=0.07
    )
    assert s.mu_bone == 0.07
    h = s.to(dtype=torch.float16)
    assert h._image_hu.dtype == torch.float16 and h.world_to_voxel.dtype == torch.float32
    with pytest.raises(TypeError, match="mu_bones"):
        Subject.from_array(np.zeros((2, 2, 2)), np.eye(4), mu_bones=1.0)


def _itk_image(array_kji, spacing=(0.8, 0.9, 2.5), origin=(-100.0, 50.0, 20.0), flip_x=True):
    img = sitk.GetImageFromArray(array_kji)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    d = np.eye(3)
    if flip_x:
        d[0, 0] = -1.0  # LAS-like storage, as the chest CT
    img.SetDirection(d.flatten().tolist())
    return img, d


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_from_filepath_reads_into_ras(tmp_path, suffix):
    rng = np.random.default_rng(0)
    arr = rng.integers(-1000, 1500, size=(5, 6, 7)).astype(np.int16)
    img, d = _itk_image(arr)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(img, str(path))
    lab = (arr > 500).astype(np.uint8) * 3
    lab_img, _ = _itk_image(lab)
    sitk.WriteImage(lab_img, str(tmp_path / f"lab{suffix}"))
    s = Subject.from_filepath(path, tmp_path / f"lab{suffix}")
    # ITK stores LPS; RAS flips the first two axes
    expected = np.eye(4)
    expected[:3, :3] = d @ np.diag([0.8, 0.9, 2.5])
    expected[:3, 3] = [-100.0, 50.0, 20.0]
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ expected
    np.testing.assert_allclose(s.voxel_to_world.double().numpy(), expected, atol=1e-4)
    np.testing.assert_array_equal(s._image_hu[0, 0].numpy(), arr.astype(np.float32))
    np.testing.assert_array_equal(s.label[0, 0].numpy(), lab)
    assert s.n_classes == 4


def test_labelmap_on_another_grid_is_resampled(tmp_path):
    arr = np.zeros((4, 4, 4), np.int16)
    img, _ = _itk_image(arr, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0), flip_x=False)
    sitk.WriteImage(img, str(tmp_path / "ct.nrrd"))
    fine = np.zeros((8, 8, 8), np.uint8)
    fine[:4] = 2  # first 4 fine slices = first 2 coarse slices (voxel centres at z = 0, 2)
    fimg, _ = _itk_image(fine, spacing=(1.0, 1.0, 1.0), origin=(-0.5, -0.5, -0.5), flip_x=False)
    sitk.WriteImage(fimg, str(tmp_path / "lab.nrrd"))
    s = Subject.from_filepath(tmp_path / "ct.nrrd", tmp_path / "lab.nrrd")
    assert s.label[0, 0, :2].eq(2).all() and s.label[0, 0, 2:].eq(0).all()


def test_dicom_series_folder(tmp_path):
    arr = (np.arange(3 * 4 * 5).reshape(3, 4, 5) * 10 - 200).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[k])
        sl.SetSpacing((0.5, 0.6))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": f"10\\20\\{30 + 2.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.6\\0.5",
            "0018|0050": "2.0",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    s = Subject.from_filepath(tmp_path)
    assert s.shape == (3, 4, 5)
    np.testing.assert_array_equal(s._image_hu[0, 0].numpy(), arr)
    np.testing.assert_allclose(s.voxel_to_world[:3, 3].numpy(), [-10.0, -20.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(s.spacing.numpy(), [0.5, 0.6, 2.0], atol=1e-4)


def test_chest_ct_loads_with_the_documented_geometry(chest_ct_dir):
    s = Subject.from_filepath(chest_ct_dir / "ct.nii.gz", chest_ct_dir / "labels.nii.gz")
    assert s.shape == (133, 512, 512)
    np.testing.assert_allclose(s.spacing.numpy(), [0.703, 0.703, 2.5], atol=1e-3)
    # LAS on disk: i runs toward the patient's left (−x in RAS), j anterior, k superior
    direction = (s.voxel_to_world[:3, :3] / s.spacing).numpy()
    np.testing.assert_allclose(direction, np.diag([-1.0, 1.0, 1.0]), atol=1e-5)
    assert s.n_classes == 119 and s.label.dtype == torch.uint8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"volume": np.zeros((2, 2))}, "volume"),
        ({"volume": np.zeros((2, 2, 2, 2))}, "volume"),
        ({"volume": np.zeros((0, 2, 2))}, "volume"),
        ({"volume": np.full((2, 2, 2), np.nan)}, "volume"),
        ({"volume": np.ones((2, 2, 2), bool)}, "volume"),
        ({"voxel_to_world": np.eye(3)}, "voxel_to_world"),
        ({"voxel_to_world": np.diag([1.0, 0.0, 1.0, 1.0])}, "voxel_to_world"),
        ({"voxel_to_world": np.full((4, 4), np.inf)}, "voxel_to_world"),
        ({"label": np.zeros((2, 2, 3))}, "label"),
        ({"label": -np.ones((2, 2, 2), np.int16)}, "label"),
        ({"label": np.full((2, 2, 2), 0.5)}, "label"),
    ],
)
def test_bad_arrays_name_the_argument(kwargs, match):
    args = {"volume": np.zeros((2, 2, 2), np.float32), "voxel_to_world": np.eye(4)} | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        Subject.from_array(**args)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagepath"):
        Subject.from_filepath(tmp_path / "nope.nii.gz")
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="imagepath"):
        Subject.from_filepath(bad)
    with pytest.raises(ValueError, match="mu_bone"):
        Subject.from_array(np.zeros((2, 2, 2)), np.eye(4), mu_bone=-1.0)


def test_with_labels_shares_voxels_and_mu_cache():
    hu = np.linspace(-1000, 1000, 24, dtype=np.float32).reshape(2, 3, 4)
    s = Subject.from_array(hu, np.eye(4), mu_bone=0.07)
    mu = s.image
    lab = np.zeros((2, 3, 4), bool)
    lab[1] = True
    t = s.with_labels(lab)
    assert t._image_hu.data_ptr() == s._image_hu.data_ptr() and t.image is mu  # no copy, no recompute
    assert t.n_classes == 2 and t.label.dtype == torch.uint8 and t.mu_bone == 0.07
    assert s.label is None  # the original is untouched
    with pytest.raises(ValueError, match="label"):
        s.with_labels(np.zeros((2, 3, 5)))

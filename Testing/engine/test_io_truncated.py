"""Truncated or corrupt volume files are errors naming the file, never volumes with missing voxels.

Files are written by SimpleITK, then cut or damaged byte-wise, and read back through
``Subject.from_filepath`` (SimpleITK's readers). ITK's NIfTI reader fills what is missing with 0
without a word, so every case here loaded silently before ``check_complete``.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import SimpleITK as sitk
from nanodrr_engine import Subject
from nanodrr_engine.data.io import check_complete

SHAPE = (12, 14, 16)  # K, J, I


def _volume() -> np.ndarray:
    rng = np.random.default_rng(3)  # random HU: gzip cannot squeeze it into a few bytes
    return rng.integers(-1000, 2000, SHAPE).astype(np.int16)


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[2:7, 3:10, 4:12] = 1
    lab[7:11, 3:10, 4:12] = 2
    lab[0, 0, :3] = 3
    return lab


def _write(array: np.ndarray, path, compress: bool) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.8, 0.9, 2.5))
    img.SetOrigin((-10.0, 5.0, 2.0))
    sitk.WriteImage(img, str(path), compress)


#: (file name, compressed, the file whose bytes hold the voxels)
FORMATS = [
    ("ct.nii.gz", True, "ct.nii.gz"),
    ("ct.nii", False, "ct.nii"),
    ("ct.nrrd", False, "ct.nrrd"),
    ("ctz.nrrd", True, "ctz.nrrd"),
    ("ct.mha", False, "ct.mha"),
    ("ctz.mha", True, "ctz.mha"),
    ("ct.mhd", False, "ct.raw"),
    ("ctz.mhd", True, "ctz.zraw"),
]
COMPRESSED = [f for f in FORMATS if f[1]]


def _cut(path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("name,compress,datafile", FORMATS, ids=[f[0] for f in FORMATS])
def test_intact_files_load_identically(tmp_path, name, compress, datafile):
    arr = _volume()
    _write(arr, tmp_path / name, compress)
    check_complete(tmp_path / name)
    s = Subject.from_filepath(tmp_path / name)
    np.testing.assert_array_equal(s._image_hu[0, 0].numpy(), arr.astype(np.float32))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
@pytest.mark.parametrize("name,compress,datafile", FORMATS, ids=[f[0] for f in FORMATS])
def test_cut_files_are_refused_naming_the_file(tmp_path, name, compress, datafile, keep):
    _write(_volume(), tmp_path / name, compress)
    _cut(tmp_path / datafile, keep)
    with pytest.raises(
        ValueError, match=r"imagepath: .*" + datafile.replace(".", r"\.") + ".*truncated or corrupt"
    ):
        Subject.from_filepath(tmp_path / name)


@pytest.mark.parametrize("name,compress,datafile", COMPRESSED, ids=[f[0] for f in COMPRESSED])
def test_a_stream_without_its_end_is_refused(tmp_path, name, compress, datafile):
    """The last 4 bytes gone: for gzip that is the length field of the trailer (every voxel is still
    there), for zlib the checksum; the file is damaged either way."""
    _write(_volume(), tmp_path / name, compress)
    p = tmp_path / datafile
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(ValueError, match="compressed data ends early"):
        Subject.from_filepath(tmp_path / name)


@pytest.mark.parametrize("name,compress,datafile", COMPRESSED, ids=[f[0] for f in COMPRESSED])
def test_damaged_compressed_bytes_are_refused(tmp_path, name, compress, datafile):
    """Zeroed bytes inside the deflate stream: the NRRD and MetaImage readers decode garbage voxels
    without checking the stream's checksum."""
    _write(_volume(), tmp_path / name, compress)
    p = tmp_path / datafile
    b = bytearray(p.read_bytes())
    mid = len(b) * 2 // 3
    b[mid : mid + 32] = bytes(32)
    p.write_bytes(bytes(b))
    with pytest.raises(
        ValueError, match=r"truncated or corrupt: its compressed data (is damaged|ends early)"
    ):
        Subject.from_filepath(tmp_path / name)


def test_a_whole_gzip_stream_of_a_cut_nifti_is_refused(tmp_path):
    """An intact gzip stream that holds fewer voxel bytes than the header promises (a cut .nii gzipped)."""
    _write(_volume(), tmp_path / "ct.nii", False)
    raw = (tmp_path / "ct.nii").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) - 100]))
    want = np.prod(SHAPE) * 2
    with pytest.raises(ValueError, match=f"promises {want:,} bytes of voxel data .*holds {want - 100:,}"):
        Subject.from_filepath(tmp_path / "cut.nii.gz")


def test_concatenated_gzip_members_still_load(tmp_path):
    """gzip files may hold several members (zlib's gzread reads them as one stream); not a truncation."""
    arr = _volume()
    _write(arr, tmp_path / "ct.nii", False)
    raw = (tmp_path / "ct.nii").read_bytes()
    half = len(raw) // 2
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    s = Subject.from_filepath(tmp_path / "multi.nii.gz")
    np.testing.assert_array_equal(s._image_hu[0, 0].numpy(), arr.astype(np.float32))


def test_zlib_stream_holding_back_output_at_the_end_is_complete(tmp_path):
    """A stream whose inflated size is a multiple of the check's output block must still end cleanly."""
    from nanodrr_engine.data import io

    payload = bytes(io._BLOCK * 2)  # all zeros: the whole file fits in one read, output in two blocks
    path = tmp_path / "zeros.gz"
    path.write_bytes(gzip.compress(payload))
    assert io._inflate(path, 0) == (len(payload), b"")
    path.write_bytes(zlib.compress(payload))
    assert io._inflate(path, 0)[0] == len(payload)


def test_truncated_labelmap_is_refused_naming_labelpath(tmp_path):
    _write(_volume(), tmp_path / "ct.nii.gz", True)
    _write(_labels(), tmp_path / "labels.nii.gz", True)
    intact = Subject.from_filepath(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(intact.label[0, 0].numpy(), _labels())
    _cut(tmp_path / "labels.nii.gz", 0.6)
    with pytest.raises(ValueError, match=r"labelpath: .*labels\.nii\.gz is truncated or corrupt"):
        Subject.from_filepath(tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")


def test_missing_detached_data_file_is_named(tmp_path):
    _write(_volume(), tmp_path / "ct.mhd", False)
    (tmp_path / "ct.raw").unlink()
    with pytest.raises(
        ValueError, match=r"ct\.mhd: its data file .*ct\.raw is truncated or corrupt: it does not exist"
    ):
        Subject.from_filepath(tmp_path / "ct.mhd")


def test_chest_ct_passes_the_check(chest_ct_dir):
    check_complete(chest_ct_dir / "ct.nii.gz")
    check_complete(chest_ct_dir / "labels.nii.gz")

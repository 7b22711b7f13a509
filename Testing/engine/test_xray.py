"""read_xray / preprocess_xray: real radiographs from pydicom-data and DICOM files written with known tags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip(
    "pydicom", reason="pydicom is part of the dev environment (requirements-dev.txt)"
)

from nanodrr_engine import DRR, Subject, carm_to_rt_inv  # noqa: E402
from nanodrr_engine.data.phantom import make_chest_phantom  # noqa: E402
from nanodrr_engine.data.xray import preprocess_xray, read_xray  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

XA = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage


def _cr_chest():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("pydicom-data (the real CR chest PA RG1_UNCR.dcm) is not installed")
    return path


def _write_dicom(path, pixels: np.ndarray, photometric="MONOCHROME1", frames=None, **tags) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XA
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = XA, meta.MediaStorageSOPInstanceUID
    ds.Modality = "XA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_real_cr_chest_reads_its_pixels_and_tags():
    path = _cr_chest()
    xray = read_xray(path)
    raw = pydicom.dcmread(path)
    # the pixel bytes read independently of pydicom's decoder (uncompressed little-endian 16-bit)
    expected = np.frombuffer(raw.PixelData, dtype="<u2").reshape(raw.Rows, raw.Columns).astype(np.float32)
    assert tuple(xray.image.shape) == (1, 1, 1955, 1841)
    np.testing.assert_array_equal(xray.image[0, 0].numpy(), expected)
    assert xray.photometric == "MONOCHROME1"
    assert xray.sdd == 1996.0
    # its PixelSpacing is [0, 0]: recorded as absent, and the intrinsics say which tag is missing
    assert xray.delx is None and xray.dely is None
    with pytest.raises(ValueError, match="ImagerPixelSpacing"):
        xray.k_inv()
    with pytest.raises(ValueError, match="PositionerPrimaryAngle"):
        xray.rt_inv()
    given = read_xray(path, delx=0.175, dely=0.175)
    assert (given.delx, given.dely, given.spacing_source) == (0.175, 0.175, "caller")
    k = torch.linalg.inv(given.k_inv()[0])
    assert k[0, 0].item() == pytest.approx(1996.0 / 0.175) and k[0, 2].item() == pytest.approx(1841 / 2)


def test_real_cr_chest_preprocesses_to_a_bone_bright_image():
    xray = read_xray(_cr_chest())
    p, use = preprocess_xray(xray, encoding="log", border=20)
    assert p.shape == xray.image.shape and p.dtype == torch.float32
    assert bool(torch.isfinite(p).all()) and float(p.min()) >= 0.0
    assert not bool(use[..., :20, :].any()) and bool(use[..., 20:-20, 20:-20].all())
    # MONOCHROME1: low stored values display bright (bone); after preprocessing bright = attenuating, so
    # p is a non-increasing function of the stored value, and the lungs (high values) are darker than bone
    raw = xray.image.flip(-1)[use]
    order = torch.argsort(raw, stable=True)
    assert bool((torch.diff(p[use][order]) <= 0).all())
    assert p[use].max() > 0 and (p[use] == 0).float().mean() < 0.01


def _phantom_case(height=48, width=40):
    vol, _, v2w, _ = make_chest_phantom(spacing=(4.0, 4.0, 5.0))
    subject = Subject.from_array(vol, v2w)
    sdd, sod, delx, dely = 1020.0, 800.0, 12.0, 10.0
    primary, secondary = 25.0, -15.0
    rt = carm_to_rt_inv(primary, secondary, sod, subject.isocenter)[None]
    drr = DRR.from_carm_intrinsics(sdd, delx, dely, 0.0, 0.0, height, width)
    with torch.no_grad():
        line = drr(subject, rt.float())[0, 0].double()
    return (
        subject,
        line,
        dict(sdd=sdd, sod=sod, delx=delx, dely=dely, primary=primary, secondary=secondary),
        rt,
    )


def test_dicom_geometry_and_intensities_round_trip(tmp_path):
    subject, line, g, rt = _phantom_case()
    assert float((line == 0).double().mean()) > 0.01  # enough air around the phantom for I0
    i0 = 60000.0
    # the X-ray as a detector would store it: intensities, seen from the detector (columns flipped)
    counts = np.round(i0 * np.exp(-line.numpy()))[:, ::-1]
    path = tmp_path / "xa.dcm"
    _write_dicom(
        path, counts.astype(np.uint16), "MONOCHROME1",
        ImagerPixelSpacing=[g["dely"], g["delx"]], DistanceSourceToDetector=g["sdd"],
        DistanceSourceToPatient=g["sod"], PositionerPrimaryAngle=g["primary"],
        PositionerSecondaryAngle=g["secondary"],
    )  # fmt: skip
    xray = read_xray(path)
    assert (xray.delx, xray.dely, xray.sdd, xray.sod) == (g["delx"], g["dely"], g["sdd"], g["sod"])
    assert xray.spacing_source == "ImagerPixelSpacing"
    # intrinsics by hand: fx = sdd/Δx, cx = W/2
    k = torch.linalg.inv(xray.k_inv()[0])
    expected = torch.tensor(
        [[1020.0 / 12.0, 0.0, 20.0], [0.0, 102.0, 24.0], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(k, expected)
    torch.testing.assert_close(xray.rt_inv(subject.isocenter), rt)
    p, use = preprocess_xray(xray)  # MONOCHROME1 → intensity encoding, I0 from the air
    assert bool(use.all())
    # rounding the counts is the only loss: |Δp| ≤ |log(1 ± 0.5 / c)| ≤ 0.5 / (c − 0.5), plus float32 output
    bound = 0.5 / (counts[:, ::-1] - 0.5) + 1e-6 * line.numpy() + 1e-7
    assert np.all(np.abs(p[0, 0].double().numpy() - line.numpy()) <= bound)


def test_pixel_spacing_is_taken_to_the_detector_with_the_magnification(tmp_path):
    path = tmp_path / "dx.dcm"
    _write_dicom(
        path, np.ones((4, 6), np.uint16), "MONOCHROME2", PixelSpacing=[0.2, 0.25],
        EstimatedRadiographicMagnificationFactor=1.2,
    )  # fmt: skip
    xray = read_xray(path)
    assert xray.dely == pytest.approx(0.24) and xray.delx == pytest.approx(0.3)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    path = tmp_path / "rescaled.dcm"
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    _write_dicom(path, pixels, "MONOCHROME2", RescaleSlope=2.0, RescaleIntercept=-5.0)
    np.testing.assert_array_equal(read_xray(path).image[0, 0].numpy(), 2.0 * pixels - 5.0)


def test_multiframe_needs_a_frame(tmp_path):
    path = tmp_path / "cine.dcm"
    frames = np.stack([np.full((3, 4), 10 * f, np.uint16) for f in range(3)])
    _write_dicom(path, frames, "MONOCHROME2", frames=3)
    with pytest.raises(ValueError, match="3 frames; pass frame="):
        read_xray(path)
    with pytest.raises(ValueError, match="frame=3"):
        read_xray(path, frame=3)
    assert read_xray(path, frame=2).image.unique().tolist() == [20.0]


def test_png_takes_its_geometry_from_the_caller(tmp_path):
    import SimpleITK as sitk

    pixels = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 1000).astype(np.uint16)
    path = tmp_path / "xray.png"
    sitk.WriteImage(sitk.GetImageFromArray(pixels), str(path))
    xray = read_xray(path, delx=0.5, dely=0.4, sdd=1000.0)
    np.testing.assert_array_equal(xray.image[0, 0].numpy(), pixels)
    assert xray.photometric == "MONOCHROME2" and xray.delx == 0.5
    assert read_xray(path).delx is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delx": 0.0}, "delx: must be positive"),
        ({"sdd": True}, "sdd: expected a number"),
        ({"primary": float("nan")}, "primary: must be finite"),
        ({"frame": -1}, "frame:"),
        ({"photometric": "RGB"}, "photometric:"),
        ({"delx": 0.5}, "only one pixel spacing"),
        ({"sdd": 500.0, "sod": 600.0}, "sod:"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    path = tmp_path / "x.dcm"
    _write_dicom(path, np.ones((3, 3), np.uint16))
    with pytest.raises((ValueError, TypeError), match=match):
        read_xray(path, **kwargs)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such X-ray file"):
        read_xray(tmp_path / "missing.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match=r"junk\.dcm"):
        read_xray(junk)
    rgb = tmp_path / "rgb.dcm"
    _write_dicom(rgb, np.ones((3, 3), np.uint16), "RGB")
    with pytest.raises(ValueError, match="greyscale"):
        read_xray(rgb)
    truncated = tmp_path / "truncated.dcm"
    _write_dicom(truncated, np.ones((64, 64), np.uint16))
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) - 4000])
    with pytest.raises(ValueError, match=r"truncated\.dcm"):
        read_xray(truncated)


def test_preprocess_refuses_what_it_cannot_use():
    flat = torch.zeros(8, 8)
    with pytest.raises(ValueError, match="i0"):
        preprocess_xray(flat, encoding="intensity")
    with pytest.raises(ValueError, match="constant"):
        preprocess_xray(torch.ones(8, 8), encoding="attenuation")
    with pytest.raises(ValueError, match="expected an image"):
        preprocess_xray(torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="border"):
        preprocess_xray(torch.rand(8, 8), border=4)
    with pytest.raises(ValueError, match="NaN"):
        preprocess_xray(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="mask: expected"):
        preprocess_xray(torch.rand(8, 8), mask=torch.ones(4, 4, dtype=torch.bool))


def test_preprocess_flip_and_background():
    image = torch.arange(1.0, 13.0).reshape(3, 4)
    p, _ = preprocess_xray(image, encoding="attenuation", air_percentile=100.0, flip_columns=False)
    torch.testing.assert_close(p[0, 0], image - 1.0)
    q, _ = preprocess_xray(image, encoding="attenuation", air_percentile=100.0)
    torch.testing.assert_close(q[0, 0], (image - 1.0).flip(-1))
    i = torch.full((4, 4), 110.0)
    i[1, 1] = 10.0 + 100.0 * np.exp(-2.0)
    r, _ = preprocess_xray(i, encoding="intensity", background=10.0, i0=100.0, flip_columns=False)
    assert r[0, 0, 1, 1].item() == pytest.approx(2.0, rel=1e-6) and r[0, 0, 0, 0].item() == 0.0

"""Reading real radiographs (DICOM, PNG/TIFF/NRRD/…) and taking them to the DRR's line-integral domain.

A DRR holds ∫μ ds along each ray, stored as seen from the source (docs/geometry.md). A radiograph holds
detector values in some encoding (proportional to the transmitted intensity I, to log I, or already to
the attenuation) and is stored in the conventional display orientation, seen from the detector.
:func:`read_xray` reads the pixels and whatever geometry the file records; :func:`preprocess_xray`
undoes the encoding and the orientation so that an X-ray and a DRR can be compared pixel for pixel.

DICOM geometry (PS3.3 C.8.7 and C.8.11): ``ImagerPixelSpacing`` is the spacing at the detector, which
is what the camera model wants; ``PixelSpacing`` may be calibrated to the patient plane and is taken
back to the detector with ``EstimatedRadiographicMagnificationFactor`` when that is present. Spacing
values are [row spacing, column spacing] = (dely, delx). ``DistanceSourceToDetector`` is the SDD,
``DistanceSourceToPatient`` the SOD, ``PositionerPrimaryAngle``/``PositionerSecondaryAngle`` the C-arm
angles of :func:`nanodrr_engine.carm_to_rt_inv`. Zero, negative or missing values count as absent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..camera.carm import carm_to_rt_inv
from ..camera.intrinsics import make_k_inv

#: How pixel values relate to the physics: proportional to the transmitted intensity I (raw detector
#: data), to log I (most processed CR/DX images), or to the attenuation ∫μ ds (a display image, bone bright).
ENCODINGS = ("intensity", "log", "attenuation")
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2")


@dataclass(frozen=True)
class XRay:
    """A radiograph and the geometry its file records (``None`` where it records none).

    Attributes:
        image: ``[1, 1, H, W]`` float32 stored values after the DICOM modality LUT (rescale slope and
            intercept), rows × columns as stored (seen from the detector).
        path: the file read.
        photometric: "MONOCHROME1" (high values display dark) or "MONOCHROME2" (high values bright).
        delx, dely: pixel spacing at the detector along columns / rows (mm).
        sdd, sod: source-to-detector and source-to-isocenter distances (mm).
        primary, secondary: DICOM positioner angles (degrees): + LAO / − RAO, + CRAN / − CAUD.
        spacing_source: where ``delx``/``dely`` came from (a DICOM keyword, or "caller").
        frame: the frame taken from a multi-frame file (None for single-frame files).
    """

    image: torch.Tensor
    path: str
    photometric: str = "MONOCHROME2"
    delx: float | None = None
    dely: float | None = None
    sdd: float | None = None
    sod: float | None = None
    primary: float | None = None
    secondary: float | None = None
    spacing_source: str | None = None
    frame: int | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[-2])

    @property
    def width(self) -> int:
        return int(self.image.shape[-1])

    def _require(self, fields: dict[str, str]) -> None:
        missing = [f"{name} ({tag})" for name, tag in fields.items() if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"xray {self.path}: the file records no {', '.join(missing)}; pass them to read_xray"
            )

    def k_inv(self, x0: float = 0.0, y0: float = 0.0) -> torch.Tensor:
        """``[1, 3, 3]`` inverse intrinsics of this detector (principal point at the centre by default)."""
        self._require(
            {"sdd": "DistanceSourceToDetector", "delx": "ImagerPixelSpacing", "dely": "ImagerPixelSpacing"}
        )
        return make_k_inv(
            self.sdd, self.delx, self.dely, x0, y0, self.height, self.width, dtype=torch.float64
        )

    def rt_inv(self, isocenter=None) -> torch.Tensor:
        """``[1, 4, 4]`` initial camera-to-world pose from the positioner angles and the SOD, about ``isocenter``.

        The file cannot say where the patient is: ``isocenter`` (e.g. ``subject.isocenter``) is assumed to be
        the C-arm's isocenter.
        """
        self._require(
            {
                "primary": "PositionerPrimaryAngle",
                "secondary": "PositionerSecondaryAngle",
                "sod": "DistanceSourceToPatient",
            }
        )
        return carm_to_rt_inv(self.primary, self.secondary, self.sod, isocenter)[None]


def read_xray(
    path: str | Path,
    *,
    frame: int | None = None,
    delx: float | None = None,
    dely: float | None = None,
    sdd: float | None = None,
    sod: float | None = None,
    primary: float | None = None,
    secondary: float | None = None,
    photometric: str | None = None,
) -> XRay:
    """Read a radiograph: DICOM (XA, RF, DX, CR, …) through pydicom, other 2D images through SimpleITK.

    Geometry given here overrides what the file records (for PNG/TIFF/NRRD the file records none).
    A multi-frame DICOM needs ``frame`` (0-based). ``photometric`` sets how a non-DICOM image displays
    (default "MONOCHROME2": high values bright); DICOM files say it themselves.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such X-ray file: {path}")
    if frame is not None and (
        isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or frame < 0
    ):
        raise ValueError(f"frame: expected a frame index >= 0, got {frame!r}")
    if photometric is not None and photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric: expected one of {PHOTOMETRICS}, got {photometric!r}")
    given = {
        "delx": _optional_positive(delx, "delx"),
        "dely": _optional_positive(dely, "dely"),
        "sdd": _optional_positive(sdd, "sdd"),
        "sod": _optional_positive(sod, "sod"),
        "primary": _optional_finite(primary, "primary"),
        "secondary": _optional_finite(secondary, "secondary"),
    }
    xray = _read_dicom(path, frame) if _is_dicom(path) else _read_image(path, frame)
    if photometric is not None:
        xray = replace(xray, photometric=photometric)
    updates = {k: v for k, v in given.items() if v is not None}
    if "delx" in updates or "dely" in updates:
        updates["spacing_source"] = "caller"
    xray = replace(xray, **updates)
    if (xray.delx is None) != (xray.dely is None):
        raise ValueError(f"delx, dely: {path} gives only one pixel spacing; pass both")
    if xray.sdd is not None and xray.sod is not None and not xray.sod < xray.sdd:
        raise ValueError(f"sod: {xray.sod:g} mm must be smaller than sdd ({xray.sdd:g} mm) for {path}")
    return xray


def preprocess_xray(
    xray: XRay | torch.Tensor,
    *,
    encoding: str | None = None,
    photometric: str | None = None,
    i0: float | None = None,
    background: float | torch.Tensor | None = None,
    border: int = 0,
    mask: torch.Tensor | None = None,
    flip_columns: bool = True,
    air_percentile: float = 99.5,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An X-ray in the DRR's domain: ``(line_integrals [1, 1, H, W] float32, mask [1, 1, H, W] bool)``.

    Args:
        xray: an :class:`XRay` or an image ``[H, W]``/``[1, 1, H, W]``.
        encoding: "intensity" (pixel ∝ I: ∫μ ds = −log(I / I0), in the DRR's units), "log" (pixel ∝ log I)
            or "attenuation" (pixel ∝ ∫μ ds); the last two give line integrals up to an unknown scale,
            which the NCC losses ignore. Default: "intensity" for MONOCHROME1, "attenuation" otherwise.
        photometric: overrides the X-ray's; for "log" and "attenuation" it says which way is bright.
        i0: the unattenuated intensity (default: the ``air_percentile`` of the masked pixels).
        background: subtracted from the pixels first (a dark-current offset or a scatter image).
        border: pixels masked on each side (a collimator border); ``mask``: pixels to use (True = use).
        flip_columns: flip from the detector's view (radiographs) to the source's view (DRRs); pass False
            for images already seen from the source, such as NanoDRR's own DRR nodes.

    Masked-out pixels are set to 0; pass the mask to the similarity metric.
    """
    if isinstance(xray, XRay):
        image, photometric = xray.image, photometric or xray.photometric
    else:
        image = xray
    image = _as_image(image)
    photometric = photometric or "MONOCHROME2"
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric: expected one of {PHOTOMETRICS}, got {photometric!r}")
    encoding = encoding or ("intensity" if photometric == "MONOCHROME1" else "attenuation")
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding: expected one of {ENCODINGS}, got {encoding!r}")
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border: expected a number of pixels >= 0, got {border!r}")
    H, W = image.shape[-2:]
    if 2 * border >= min(H, W):
        raise ValueError(f"border: {border} pixels on each side leaves nothing of a {H}×{W} image")
    if not 50.0 <= float(air_percentile) <= 100.0:
        raise ValueError(f"air_percentile: expected a percentile in [50, 100], got {air_percentile!r}")

    use = torch.ones_like(image, dtype=torch.bool)
    if mask is not None:
        m = torch.as_tensor(mask, device=image.device)
        if m.shape[-2:] != (H, W):
            raise ValueError(f"mask: expected {H}×{W} like the image, got {list(m.shape)}")
        use = use & m.reshape(1, 1, H, W).bool()
    if border:
        inner = torch.zeros_like(use)
        inner[..., border : H - border, border : W - border] = True
        use = use & inner
    if not bool(use.any()):
        raise ValueError("mask: no pixel is left to use")

    x = image.double()
    if background is not None:
        x = x - torch.as_tensor(background, dtype=torch.float64, device=x.device)
    values = x[use]
    if encoding == "intensity":
        if i0 is None:
            i0 = float(np.percentile(values.cpu().numpy(), air_percentile))
        i0 = float(i0)
        if not math.isfinite(i0) or i0 <= 0:
            raise ValueError(
                f"i0: the unattenuated intensity must be positive, got {i0:g} (an all-zero or inverted image? "
                "try encoding='log' or 'attenuation')"
            )
        out = -torch.log((x / i0).clamp(min=eps, max=1.0))
    else:
        bright = x if photometric == "MONOCHROME2" else -x  # high = attenuating
        air = float(np.percentile(bright[use].cpu().numpy(), 100.0 - air_percentile))
        out = (bright - air).clamp(min=0.0)
    out = torch.where(use, out, torch.zeros_like(out))
    if not bool((out[use] > 0).any()):
        raise ValueError("xray: the image is constant where used; there is nothing to register to")
    if flip_columns:
        out, use = out.flip(-1), use.flip(-1)
    return out.float(), use


def _as_image(image) -> torch.Tensor:
    t = torch.as_tensor(image)
    if t.ndim == 2:
        t = t[None, None]
    if t.ndim != 4 or t.shape[:2] != (1, 1):
        raise ValueError(f"xray: expected an image [H, W] or [1, 1, H, W], got shape {list(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"xray: expected real pixel values, got {t.dtype}")
    t = t.double()
    if not bool(torch.isfinite(t).all()):
        raise ValueError("xray: contains NaN or infinite pixels")
    return t


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom")


def _read_dicom(path: Path, frame: int | None) -> XRay:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as e:  # pragma: no cover - pydicom is a declared dependency of the "dicom" extra
        raise ImportError(
            "read_xray: reading DICOM needs pydicom (pip install 'nanodrr-engine[dicom]')"
        ) from e
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises InvalidDicomError, OSError, ValueError, ...
        raise ValueError(f"path: cannot read {path} as DICOM: {e}") from e
    if "PixelData" not in ds:
        raise ValueError(f"path: {path} holds no image (no PixelData)")
    kind = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or kind not in PHOTOMETRICS:
        raise ValueError(f"path: {path} is a {kind or 'colour'} image; a radiograph must be greyscale")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # compressed transfer syntax without a decoder, truncated pixel data, ...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(f"path: cannot decode the pixels of {path} (transfer syntax {syntax}): {e}") from e
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        if frame is None:
            raise ValueError(f"frame: {path} has {frames} frames; pass frame= (0 … {frames - 1})")
        if frame >= frames:
            raise ValueError(f"frame: {path} has {frames} frames, got frame={frame}")
        pixels = pixels[frame]
    elif frame not in (None, 0):
        raise ValueError(f"frame: {path} has a single frame, got frame={frame}")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)

    dely = delx = None
    source = None
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        spacing = _positive_pair(ds.get(keyword))
        if spacing is not None:
            dely, delx = spacing
            source = keyword
            if keyword == "PixelSpacing":
                magnification = _positive(ds.get("EstimatedRadiographicMagnificationFactor"))
                if magnification is not None:
                    dely, delx = dely * magnification, delx * magnification
                    source = "PixelSpacing × EstimatedRadiographicMagnificationFactor"
            break
    return XRay(
        image=torch.from_numpy(values)[None, None],
        path=str(path),
        photometric=kind,
        delx=delx,
        dely=dely,
        sdd=_positive(ds.get("DistanceSourceToDetector")),
        sod=_positive(ds.get("DistanceSourceToPatient")),
        primary=_finite(ds.get("PositionerPrimaryAngle")),
        secondary=_finite(ds.get("PositionerSecondaryAngle")),
        spacing_source=source,
        frame=frame if frames > 1 else None,
    )


def _read_image(path: Path, frame: int | None) -> XRay:
    from .io import read_image

    try:
        image = read_image(path)
    except ValueError as e:
        raise ValueError(f"path: cannot read {path} as an image: {e}") from e
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"path: {path} is a colour image; a radiograph must be greyscale")
    import SimpleITK as sitk

    values = sitk.GetArrayFromImage(image).astype(np.float32)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3:
        if frame is None or frame >= values.shape[0]:
            raise ValueError(
                f"frame: {path} has {values.shape[0]} slices; pass frame= (0 … {values.shape[0] - 1})"
            )
        values = values[frame]
    if values.ndim != 2:
        raise ValueError(f"path: {path} is not a 2D image (shape {list(values.shape)})")
    return XRay(image=torch.from_numpy(np.ascontiguousarray(values))[None, None], path=str(path))


def _positive(value) -> float | None:
    v = _finite(value)
    return v if v is not None and v > 0 else None


def _finite(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _positive_pair(value) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        pair = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return pair[0], pair[1]


def _optional_positive(value, name: str) -> float | None:
    if value is None:
        return None
    v = _optional_finite(value, name)
    if v <= 0:
        raise ValueError(f"{name}: must be positive, got {value!r}")
    return v


def _optional_finite(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return v

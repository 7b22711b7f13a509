"""Detector / C-arm intrinsics and the detector's pixel grid in camera coordinates.

Camera frame (docs/geometry.md): the source is at the origin, the detector plane is z = sdd, camera x
runs along detector columns (u) and y along rows (v). Pixel (u, v) is hit by the ray to
((u + ½ − W/2)·Δx − x0, (v + ½ − H/2)·Δy − y0, sdd).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import NanoDRRError

#: The engine computes in float32: numbers it cannot hold (overflow to inf, or a non-zero value
#: flushed to 0) are refused as out of range rather than reported later as "not finite".
FLOAT32_MAX = float(np.finfo(np.float32).max)  # ≈ 3.4e38
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # ≈ 1.2e-38, the smallest normal float32
#: Every pixel's ray must make at most this angle with the central beam (degrees). A real detector
#: stays within ~20°; rays near 90° run parallel to the detector and give NaN or meaningless DRRs.
MAX_RAY_ANGLE = 80.0

#: Typical detectors: name -> {"height", "width", "delx", "dely", "sdd"} (pixels, mm). Sizes are
#: binned to keep live rendering interactive; pick a finer spacing for final images.
DETECTOR_PRESETS: dict[str, dict] = {
    "Reference 200x200 @ 2mm": {"height": 200, "width": 200, "delx": 2.0, "dely": 2.0, "sdd": 1020.0},
    "Flat panel 30x40 (low res)": {"height": 300, "width": 400, "delx": 1.0, "dely": 1.0, "sdd": 1200.0},
    "Flat panel 30x40 (2x2 binned)": {
        "height": 960,
        "width": 1240,
        "delx": 0.308,
        "dely": 0.308,
        "sdd": 1200.0,
    },
    "Flat panel 20x20 (cardiac)": {"height": 512, "width": 512, "delx": 0.39, "dely": 0.39, "sdd": 1100.0},
    "Image intensifier 9in": {"height": 512, "width": 512, "delx": 0.45, "dely": 0.45, "sdd": 1000.0},
    "Image intensifier 12in": {"height": 512, "width": 512, "delx": 0.6, "dely": 0.6, "sdd": 1000.0},
}


@dataclass(frozen=True)
class CArmGeometry:
    """Detector intrinsics of a C-arm (nanodrr's ``from_carm_intrinsics`` parameters).

    Attributes:
        sdd: source-to-detector distance (mm).
        height, width: detector size in pixels (rows, columns).
        delx, dely: pixel spacing along columns / rows (mm).
        x0, y0: principal-point offset from the detector centre (mm).
    """

    sdd: float = 1020.0
    height: int = 200
    width: int = 200
    delx: float = 2.0
    dely: float = 2.0
    x0: float = 0.0
    y0: float = 0.0

    def validate(self, sod: float | None = None) -> CArmGeometry:
        """Raise :class:`NanoDRRError` naming the first bad field; returns ``self`` for chaining.

        Fields must be real numbers (not bools or strings, see :func:`checkNumber`); the detector must
        keep every ray within :data:`MAX_RAY_ANGLE` of the central beam. With ``sod``
        (source-to-isocenter distance) also checks that the isocenter lies between the source and the
        detector (``sod < sdd``).
        """
        for name in ("sdd", "delx", "dely"):
            checkNumber(getattr(self, name), f"geometry.{name}", positive=True, unit="mm")
        for name in ("x0", "y0"):
            checkNumber(getattr(self, name), f"geometry.{name}", unit="mm")
        for name in ("height", "width"):
            checkNumber(getattr(self, name), f"geometry.{name}", positive=True, integer=True, unit="pixels")
        angle = self.maxRayAngle()
        if not angle <= MAX_RAY_ANGLE:
            raise NanoDRRError(
                f"geometry: a {self.width} × {self.height} detector of {self.delx:g} × {self.dely:g} mm pixels "
                f"offset by (x0, y0) = ({self.x0:g}, {self.y0:g}) mm at sdd = {self.sdd:g} mm puts rays "
                f"{angle:.4g}° from the central beam; at most {MAX_RAY_ANGLE:g}° is allowed (check x0, y0, "
                "delx, dely, width, height and sdd)"
            )
        if sod is not None:
            sod = checkNumber(sod, "sod", positive=True, unit="mm")
            if sod >= self.sdd:
                raise NanoDRRError(
                    f"sod: the source-to-isocenter distance ({sod:g} mm) must be smaller than "
                    f"geometry.sdd ({self.sdd:g} mm), or the patient would be behind the detector"
                )
        return self

    def checked(self, sod: float | None = None) -> CArmGeometry:
        """:meth:`validate`, then the same geometry with plain ``float``/``int`` fields (NumPy or 0-d
        tensor fields would otherwise travel into caches and attributes)."""
        self.validate(sod)
        plain = {n: float(getattr(self, n)) for n in ("sdd", "delx", "dely", "x0", "y0")}
        plain.update(height=int(self.height), width=int(self.width))
        if all(type(getattr(self, n)) is type(v) and getattr(self, n) == v for n, v in plain.items()):
            return self
        return replace(self, **plain)

    def maxRayAngle(self) -> float:
        """Largest angle (degrees) between a pixel's ray (to a detector corner) and the central beam."""
        corners = self.detectorCorners()
        return math.degrees(math.atan(float(np.hypot(corners[:, 0], corners[:, 1]).max()) / float(self.sdd)))

    def scaled(self, factor: float) -> CArmGeometry:
        """Same field of view with ``factor`` × the pixels per side (e.g. 0.5 for a live preview).

        Pixel counts are rounded (at least 1) and spacings adjusted so the detector keeps its size.
        """
        factor = checkNumber(factor, "factor", positive=True)
        self.validate()
        h = max(1, round(self.height * factor))
        w = max(1, round(self.width * factor))
        return replace(
            self, height=h, width=w, delx=self.delx * self.width / w, dely=self.dely * self.height / h
        )

    @classmethod
    def fromPreset(cls, name: str, **overrides) -> CArmGeometry:
        """A geometry from :data:`DETECTOR_PRESETS` (fields may be overridden)."""
        if name not in DETECTOR_PRESETS:
            raise NanoDRRError(
                f"preset: unknown detector preset {name!r}; expected one of {list(DETECTOR_PRESETS)}"
            )
        return cls(**{**DETECTOR_PRESETS[name], **overrides})

    def toDict(self) -> dict:
        return asdict(self)

    def pixelToCamera(self) -> np.ndarray:
        """``[4, 4]`` matrix taking pixel index (u, v, k, 1) to camera coordinates (mm) at z = sdd + k.

        Pixel centres land on their rays' ends; k (slice index, 1 mm thick) is 0 for the DRR itself.
        """
        m = np.eye(4)
        m[0, 0], m[1, 1] = self.delx, self.dely
        m[0, 3] = (0.5 - self.width / 2.0) * self.delx - self.x0
        m[1, 3] = (0.5 - self.height / 2.0) * self.dely - self.y0
        m[2, 3] = self.sdd
        return m

    def detectorCorners(self) -> np.ndarray:
        """``[4, 3]`` outer corners of the detector (pixel edges) in camera coordinates, in ring order."""
        xl, xh = -self.width / 2.0 * self.delx - self.x0, self.width / 2.0 * self.delx - self.x0
        yl, yh = -self.height / 2.0 * self.dely - self.y0, self.height / 2.0 * self.dely - self.y0
        return np.array([[xl, yl, self.sdd], [xh, yl, self.sdd], [xh, yh, self.sdd], [xl, yh, self.sdd]])


def checkNumber(
    value,
    name: str,
    *,
    positive: bool = False,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    unit: str = "",
):
    """``value`` as a float (an int with ``integer``), else :class:`NanoDRRError` naming ``name``.

    The one check for every numeric parameter of the logic API. It refuses what ``float()`` would
    coerce silently: bools (``sod=True`` is not 1 mm), strings (``"1020"``, or ``"123"`` read as three
    angles), complex numbers, NaN and infinities, and magnitudes float32 cannot hold (above
    :data:`FLOAT32_MAX`, or non-zero below :data:`FLOAT32_TINY`). Python and NumPy numbers and
    0-d arrays/tensors are accepted; ``integer`` also takes whole floats (``200.0``).
    ``minimum``/``maximum`` are inclusive.
    """
    raw = value
    if not isinstance(value, numbers.Number) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # NumPy 0-d arrays, torch scalars
    what = _describe(positive, integer, minimum, maximum, unit)
    if isinstance(value, (bool, np.bool_)):
        raise NanoDRRError(f"{name}: must be {what}, got the boolean {raw!r}")
    if isinstance(value, (str, bytes)):
        raise NanoDRRError(f"{name}: must be {what}, got the string {raw!r} (strings are not parsed)")
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        raise NanoDRRError(f"{name}: must be {what}, got the complex number {raw!r}")
    if not isinstance(value, numbers.Real):
        raise NanoDRRError(f"{name}: must be {what}, got a {type(raw).__name__} ({raw!r})")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float64
        raise NanoDRRError(
            f"{name}: {raw!r} is out of range (|{name}| must be at most {FLOAT32_MAX:.3g})"
        ) from None
    if math.isnan(v):
        raise NanoDRRError(f"{name}: must be {what}, got NaN")
    if math.isinf(v) or abs(v) > FLOAT32_MAX:
        kind = "infinite" if math.isinf(v) else "out of range"
        raise NanoDRRError(
            f"{name}: {v:g} is {kind} (must be {what}; the engine's float32 holds magnitudes up to "
            f"{FLOAT32_MAX:.3g})"
        )
    if v != 0 and abs(v) < FLOAT32_TINY:
        raise NanoDRRError(
            f"{name}: {v:g} is out of range (non-zero magnitudes below {FLOAT32_TINY:.3g} underflow float32)"
        )
    if integer and not v.is_integer():
        raise NanoDRRError(f"{name}: must be {what}, got {raw!r}")
    if positive and not v > 0:
        raise NanoDRRError(f"{name}: must be {what}, got {raw!r}")
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise NanoDRRError(f"{name}: must be {what}, got {raw!r}")
    return int(value) if integer else v


def _describe(positive: bool, integer: bool, minimum, maximum, unit: str) -> str:
    kind = "whole number" if integer else "finite number"
    if positive:
        kind = f"positive {kind}"
    text = f"a {kind}" + (f" of {unit}" if unit else "")
    if minimum is not None and maximum is not None:
        text += f" in [{minimum:g}, {maximum:g}]"
    elif minimum is not None:
        text += f" >= {minimum:g}"
    elif maximum is not None:
        text += f" <= {maximum:g}"
    return text

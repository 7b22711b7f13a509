"""Detector / C-arm intrinsics and the detector's pixel grid in camera coordinates.

Camera frame (docs/geometry.md): the source is at the origin, the detector plane is z = sdd, camera x
runs along detector columns (u) and y along rows (v). Pixel (u, v) is hit by the ray to
((u + ½ − W/2)·Δx − x0, (v + ½ − H/2)·Δy − y0, sdd).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import NanoDRRError

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

        With ``sod`` (source-to-isocenter distance) also checks that the isocenter lies between
        the source and the detector (``sod < sdd``).
        """
        for name in ("sdd", "delx", "dely"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v) or v <= 0:
                raise NanoDRRError(f"geometry.{name}: must be a positive finite number of mm, got {v!r}")
        for name in ("x0", "y0"):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(v):
                raise NanoDRRError(f"geometry.{name}: must be a finite number of mm, got {v!r}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not _is_real(v) or not float(v).is_integer() or v < 1:
                raise NanoDRRError(f"geometry.{name}: must be a positive whole number of pixels, got {v!r}")
        if sod is not None:
            if not _is_real(sod) or not math.isfinite(sod) or sod <= 0:
                raise NanoDRRError(f"sod: must be a positive finite number of mm, got {sod!r}")
            if sod >= self.sdd:
                raise NanoDRRError(
                    f"sod: the source-to-isocenter distance ({sod:g} mm) must be smaller than "
                    f"geometry.sdd ({self.sdd:g} mm), or the patient would be behind the detector"
                )
        return self

    def scaled(self, factor: float) -> CArmGeometry:
        """Same field of view with ``factor`` × the pixels per side (e.g. 0.5 for a live preview).

        Pixel counts are rounded (at least 1) and spacings adjusted so the detector keeps its size.
        """
        if not _is_real(factor) or not math.isfinite(factor) or factor <= 0:
            raise NanoDRRError(f"factor: must be a positive finite number, got {factor!r}")
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


def _is_real(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, complex)

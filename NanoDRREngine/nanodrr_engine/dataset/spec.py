"""What a dataset is made of: detector, pose distribution, augmentations, size, seed (validated).

Everything here is plain numbers, so a spec round-trips through JSON (:meth:`DatasetSpec.to_dict`):
the store records it and a resumed run must ask for exactly the same one. Ranges are ``(lo, hi)``
tuples sampled uniformly; ``lo == hi`` fixes a value.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .._validation import as_number
from ..camera.carm import PRIMARY_RANGE, SECONDARY_RANGE
from ..data.preprocess import HU_BONE, MU_BONE, MU_WATER
from .errors import DatasetError

#: Typical detectors (the Slicer module's presets): pixels and mm. ``--size`` keeps the field of view.
DETECTOR_PRESETS: dict[str, dict] = {
    "reference": {"height": 200, "width": 200, "delx": 2.0, "dely": 2.0, "sdd": 1020.0},
    "flat-panel-30x40": {"height": 300, "width": 400, "delx": 1.0, "dely": 1.0, "sdd": 1200.0},
    "cardiac-20x20": {"height": 512, "width": 512, "delx": 0.39, "dely": 0.39, "sdd": 1100.0},
    "intensifier-9in": {"height": 512, "width": 512, "delx": 0.45, "dely": 0.45, "sdd": 1000.0},
    "intensifier-12in": {"height": 512, "width": 512, "delx": 0.6, "dely": 0.6, "sdd": 1000.0},
}
#: Rays may make at most this angle with the central beam (as the Slicer logic allows).
MAX_RAY_ANGLE = 80.0
DTYPES = ("float32", "float16")
METHODS = ("joseph", "raymarch")
OUTPUTS = ("attenuation", "transmission")
#: Largest dataset, chunk and detector side accepted (int32 indices; a chunk is rendered at once).
MAX_IMAGES = 2**31 - 1
MAX_CHUNK = 4096
MAX_SIDE = 16384


def number(value, name: str, lo: float = -math.inf, hi: float = math.inf, positive: bool = False) -> float:
    """A finite real number in ``[lo, hi]`` (``> 0`` with ``positive``), else an error naming ``name``."""
    v = as_number(value, name)
    if not math.isfinite(v):
        raise DatasetError(f"{name}: must be finite, got {value!r}")
    if positive and not v > 0:
        raise DatasetError(f"{name}: must be > 0, got {value!r}")
    if not lo <= v <= hi:
        raise DatasetError(f"{name}: must be in [{lo:g}, {hi:g}], got {value!r}")
    return v


def whole(value, name: str, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]`` (bools and fractions refused), else an error naming ``name``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        v = int(value)  # exact: a float would round 2**63 - 1
    else:
        f = as_number(value, name)
        if not (math.isfinite(f) and f == int(f)):
            raise DatasetError(f"{name}: must be a whole number, got {value!r}")
        v = int(f)
    if not lo <= v <= hi:
        raise DatasetError(f"{name}: must be in [{lo:,}, {hi:,}], got {value!r}")
    return v


def span(value, name: str, lo: float = -math.inf, hi: float = math.inf, positive: bool = False):
    """A range ``(a, b)`` with ``a <= b`` inside ``[lo, hi]``; one number ``x`` means ``(x, x)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        a, b = value
    except (TypeError, ValueError):
        raise DatasetError(f"{name}: expected a range (lo, hi), got {value!r}") from None
    a = number(a, f"{name}[0]", lo, hi, positive)
    b = number(b, f"{name}[1]", lo, hi, positive)
    if a > b:
        raise DatasetError(f"{name}: the range is inverted ({a:g} > {b:g}); give (lo, hi) with lo <= hi")
    return (a, b)


@dataclass(frozen=True)
class Detector:
    """Detector intrinsics (``make_k_inv``'s parameters): pixels, spacing and SDD in mm."""

    height: int = 200
    width: int = 200
    delx: float = 2.0
    dely: float = 2.0
    sdd: float = 1020.0
    x0: float = 0.0
    y0: float = 0.0

    @classmethod
    def preset(cls, name: str = "reference", size: int | None = None, **overrides) -> Detector:
        """A preset; ``size`` makes it ``size × size`` pixels over the same field of view."""
        if name not in DETECTOR_PRESETS:
            raise DatasetError(f"preset: unknown detector {name!r}; expected one of {list(DETECTOR_PRESETS)}")
        p = dict(DETECTOR_PRESETS[name])
        if size is not None:
            size = whole(size, "size", 1, MAX_SIDE)
            p.update(delx=p["delx"] * p["width"] / size, dely=p["dely"] * p["height"] / size)
            p.update(height=size, width=size)
        p.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**p).checked()

    def checked(self) -> Detector:
        """Validated copy with plain numbers (errors name the field)."""
        h = whole(self.height, "height", 1, MAX_SIDE)
        w = whole(self.width, "width", 1, MAX_SIDE)
        if (h * w) % 4:
            raise DatasetError(
                f"height, width: {h} × {w} pixels; height × width must be a multiple of 4 (e.g. even sides), "
                "which keeps every image's bytes independent of the batch and thread count it is rendered with"
            )
        d = Detector(
            h, w,
            number(self.delx, "delx", positive=True), number(self.dely, "dely", positive=True),
            number(self.sdd, "sdd", positive=True), number(self.x0, "x0"), number(self.y0, "y0"),
        )  # fmt: skip
        half_x = max(abs(-d.width / 2 * d.delx - d.x0), abs(d.width / 2 * d.delx - d.x0))
        half_y = max(abs(-d.height / 2 * d.dely - d.y0), abs(d.height / 2 * d.dely - d.y0))
        angle = math.degrees(math.atan(math.hypot(half_x, half_y) / d.sdd))
        if angle > MAX_RAY_ANGLE:
            raise DatasetError(
                f"detector: {w} × {h} pixels of {d.delx:g} × {d.dely:g} mm at sdd = {d.sdd:g} mm put rays "
                f"{angle:.3g}° off the central beam; at most {MAX_RAY_ANGLE:g}° is allowed"
            )
        return d


@dataclass(frozen=True)
class PoseRanges:
    """C-arm poses in clinical terms, each sampled uniformly.

    primary, secondary: DICOM positioner angles (degrees; + = LAO / CRAN). sod: source-to-isocenter
    distance (mm). jitter: isocenter offset, uniform in ±jitter mm along each RAS axis. roll: in-plane
    rotation of the detector about the beam (degrees).
    """

    primary: tuple[float, float] = (-30.0, 30.0)
    secondary: tuple[float, float] = (-20.0, 20.0)
    sod: tuple[float, float] = (800.0, 900.0)
    jitter: float = 10.0
    roll: tuple[float, float] = (0.0, 0.0)

    def checked(self, sdd: float) -> PoseRanges:
        p = PoseRanges(
            span(self.primary, "primary", *PRIMARY_RANGE),
            span(self.secondary, "secondary", *SECONDARY_RANGE),
            span(self.sod, "sod", positive=True),
            number(self.jitter, "jitter", 0.0, 1e4),
            span(self.roll, "roll", -180.0, 180.0),
        )
        if p.sod[1] >= sdd:
            raise DatasetError(
                f"sod: up to {p.sod[1]:g} mm must stay below sdd = {sdd:g} mm (source to detector)"
            )
        return p


#: Columns of a pose table: (primary, secondary, sod, roll, dx, dy, dz); the last four default to 0.
POSE_COLUMNS = ("primary", "secondary", "sod", "roll", "dx", "dy", "dz")


@dataclass(frozen=True)
class PoseList:
    """Poses from a file (see :func:`~nanodrr_engine.dataset.sources.read_poses`): sample ``i`` takes
    row ``i mod len(rows)``; ``(dx, dy, dz)`` offsets the isocenter (RAS mm)."""

    rows: tuple[tuple[float, ...], ...]
    source: str = ""

    def checked(self, sdd: float) -> PoseList:
        if not self.rows:
            raise DatasetError(f"poses: {self.source or 'the pose list'} holds no pose")
        rows = []
        for n, row in enumerate(self.rows):
            where = f"poses row {n + 1}"
            if len(row) != len(POSE_COLUMNS):
                raise DatasetError(
                    f"{where}: expected {len(POSE_COLUMNS)} values {POSE_COLUMNS}, got {len(row)}"
                )
            p = number(row[0], f"{where} primary", *PRIMARY_RANGE)
            s = number(row[1], f"{where} secondary", *SECONDARY_RANGE)
            sod = number(row[2], f"{where} sod", positive=True)
            if sod >= sdd:
                raise DatasetError(f"{where} sod: {sod:g} mm must stay below sdd = {sdd:g} mm")
            roll = number(row[3], f"{where} roll", -180.0, 180.0)
            rows.append(
                (
                    p,
                    s,
                    sod,
                    roll,
                    *(number(v, f"{where} {c}") for v, c in zip(row[4:], ("dx", "dy", "dz"), strict=True)),
                )
            )
        return PoseList(tuple(rows), self.source)


@dataclass(frozen=True)
class Augment:
    """Per-sample augmentations (all off by default).

    mu_bone: range of μ_bone (1/mm) for bone contrast, at least μ_water (bone is denser than water).
    photons: photons per pixel before the patient (I0): Poisson noise on the transmitted counts.
    blur: range of a Gaussian blur's sigma in pixels, applied to the transmitted intensity.
    output: ``"attenuation"`` stores ∫μ ds, ``"transmission"`` stores I/I0 = exp(−∫μ ds).
    """

    mu_bone: tuple[float, float] | None = None
    photons: float | None = None
    blur: tuple[float, float] | None = None
    output: str = "attenuation"

    def checked(self, mu_water: float) -> Augment:
        mu_bone = None if self.mu_bone is None else span(self.mu_bone, "mu_bone", positive=True)
        if mu_bone is not None and mu_bone[0] < mu_water:
            raise DatasetError(
                f"mu_bone: the range starts at {mu_bone[0]:g} /mm, below mu_water = {mu_water:g} /mm; bone must "
                "be at least as dense as water (the contrast is then linear in mu_bone)"
            )
        photons = None if self.photons is None else number(self.photons, "photons", 1.0, 1e15)
        blur = None if self.blur is None else span(self.blur, "blur", 0.0, 64.0)
        if self.output not in OUTPUTS:
            raise DatasetError(f"output: expected one of {OUTPUTS}, got {self.output!r}")
        return Augment(mu_bone, photons, blur, self.output)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: ``n`` samples from ``seed``, rendered ``chunk`` at a time.

    Sample ``i`` depends only on ``(seed, i)``; ``chunk`` sets the store's chunking and the unit of
    work and of resumption, never the data.
    """

    n: int
    seed: int = 0
    chunk: int = 64
    detector: Detector = field(default_factory=Detector)
    poses: PoseRanges | PoseList = field(default_factory=PoseRanges)
    augment: Augment = field(default_factory=Augment)
    dtype: str = "float32"
    method: str = "joseph"
    n_samples: int = 500
    mu_water: float = MU_WATER
    mu_bone: float = MU_BONE
    hu_bone: float = HU_BONE
    max_label: int | None = None

    def checked(self) -> DatasetSpec:
        n = whole(self.n, "n", 1, MAX_IMAGES)
        seed = whole(self.seed, "seed", 0, 2**63 - 1)
        chunk = whole(self.chunk, "chunk", 1, MAX_CHUNK)
        if not isinstance(self.detector, Detector):
            raise DatasetError(f"detector: expected a Detector, got {type(self.detector).__name__}")
        detector = self.detector.checked()
        if not isinstance(self.poses, (PoseRanges, PoseList)):
            raise DatasetError(f"poses: expected PoseRanges or PoseList, got {type(self.poses).__name__}")
        poses = self.poses.checked(detector.sdd)
        mu_water = number(self.mu_water, "mu_water", positive=True)
        if not isinstance(self.augment, Augment):
            raise DatasetError(f"augment: expected an Augment, got {type(self.augment).__name__}")
        augment = self.augment.checked(mu_water)
        for name, value, choices in (("dtype", self.dtype, DTYPES), ("method", self.method, METHODS)):
            if value not in choices:
                raise DatasetError(f"{name}: expected one of {choices}, got {value!r}")
        max_label = None if self.max_label is None else whole(self.max_label, "max_label", 0, 65535)
        return replace(
            self, n=n, seed=seed, chunk=chunk, detector=detector, poses=poses, augment=augment,
            n_samples=whole(self.n_samples, "n_samples", 1, 1_000_000), mu_water=mu_water,
            mu_bone=number(self.mu_bone, "mu_bone", positive=True),
            hu_bone=number(self.hu_bone, "hu_bone", positive=True), max_label=max_label,
        )  # fmt: skip

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk)

    def chunk_range(self, c: int) -> range:
        return range(c * self.chunk, min(self.n, (c + 1) * self.chunk))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["poses"] = {"kind": "list" if isinstance(self.poses, PoseList) else "ranges", **d["poses"]}
        return _lists(d)

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        d = dict(d)
        poses = dict(d.pop("poses"))
        kind = poses.pop("kind")
        if kind == "list":
            poses = PoseList(tuple(tuple(r) for r in poses["rows"]), poses.get("source", ""))
        else:
            poses = PoseRanges(**{k: tuple(v) if isinstance(v, list) else v for k, v in poses.items()})
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in d.pop("augment").items()}
        return cls(detector=Detector(**d.pop("detector")), poses=poses, augment=Augment(**aug), **d)


def _lists(value):
    """Tuples as lists, recursively (what JSON gives back), so stored and new specs compare equal."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


__all__ = [
    "DETECTOR_PRESETS",
    "POSE_COLUMNS",
    "Augment",
    "DatasetSpec",
    "Detector",
    "PoseList",
    "PoseRanges",
]

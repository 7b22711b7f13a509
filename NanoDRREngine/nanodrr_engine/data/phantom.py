"""Analytic chest phantom with exact (closed-form) line integrals.

The phantom is a painter's-order stack of constant-HU primitives (ellipsoids, finite elliptic cylinders
and elliptic cylinder tubes), each with an arbitrary rotation. Because every boundary is a quadric or a
plane, the entry/exit parameters of a ray are roots of quadratics, so ``line_integral`` is exact up to
floating-point rounding. That makes the phantom both the demo's default CT (``voxelize``) and the
accuracy oracle for the renderers.

Conventions (see ``shared/docs/geometry.md``): world = RAS millimetres (+x patient Right, +y Anterior,
+z Superior); volumes are ``[K, J, I]`` with i fastest; ``voxel_to_world`` = direction · diag(spacing)
plus origin, voxel centres at integer indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nanodrr_engine.data.preprocess import HU_BONE, MU_BONE, MU_WATER

__all__ = [
    "AnalyticPhantom",
    "ChestPhantom",
    "Ellipsoid",
    "EllipticCylinder",
    "hu_to_mu_np",
    "make_chest_phantom",
    "rotation_matrix",
]

#: HU of air, the phantom's background.
HU_AIR = -1000.0


def hu_to_mu_np(
    hu: np.ndarray | float, mu_water: float = MU_WATER, mu_bone: float = MU_BONE, hu_bone: float = HU_BONE
) -> np.ndarray:
    """NumPy twin of :func:`nanodrr_engine.data.preprocess.hu_to_mu` (bilinear model, never negative)."""
    h = np.maximum(np.asarray(hu, dtype=np.float64), -1000.0)
    low = mu_water * (1.0 + h / 1000.0)
    high = mu_water + (mu_bone - mu_water) * (h / hu_bone)
    return np.maximum(np.where(h <= 0, low, high), 0.0)


def rotation_matrix(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation Rz(rz) · Ry(ry) · Rx(rx), angles in degrees, as a (3, 3) float64 array."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def _as_rotation(rotation: np.ndarray | None) -> np.ndarray:
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    if r.shape != (3, 3) or not np.allclose(r.T @ r, np.eye(3), atol=1e-9) or np.linalg.det(r) < 0:
        raise ValueError(f"rotation must be a proper 3x3 rotation matrix, got {r.tolist()}")
    return r


def _quadratic_roots(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted real roots of a·t² + 2b·t + c = 0 (NaN where none or a == 0), cancellation-free."""
    disc = b * b - a * c
    ok = (disc >= 0) & (a > 0)
    sq = np.sqrt(np.where(ok, disc, 0.0))
    q = -(b + np.where(b >= 0, sq, -sq))  # |q| >= |b|; q == 0 only if b == disc == 0 (then c == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r1 = q / np.where(ok, a, 1.0)
        r2 = np.where(q != 0, c / np.where(q != 0, q, 1.0), 0.0)
    lo = np.where(ok, np.minimum(r1, r2), np.nan)
    hi = np.where(ok, np.maximum(r1, r2), np.nan)
    return lo, hi


def _ellipse_interval(q0: np.ndarray, qd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameter interval where |q0 + t·qd|² <= 1 (over the given components); (NaN, NaN) if empty.

    A ray parallel to the (cylinder) axis gives (-inf, inf) if it runs inside, otherwise empty.
    """
    a = np.sum(qd * qd, axis=-1)
    b = np.sum(q0 * qd, axis=-1)
    c = np.sum(q0 * q0, axis=-1) - 1.0
    lo, hi = _quadratic_roots(a, b, c)
    parallel_inside = (a == 0) & (c <= 0)
    lo = np.where(parallel_inside, -np.inf, lo)
    hi = np.where(parallel_inside, np.inf, hi)
    return lo, hi


def _slab_interval(q0: np.ndarray, qd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parameter interval where |q0 + t·qd| <= 1 (scalars per ray); (NaN, NaN) if empty."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-1.0 - q0) / qd
        t2 = (1.0 - q0) / qd
    lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
    parallel = qd == 0
    inside = np.abs(q0) <= 1.0
    lo = np.where(parallel, np.where(inside, -np.inf, np.nan), lo)
    hi = np.where(parallel, np.where(inside, np.inf, np.nan), hi)
    return lo, hi


def _intersect(lo1, hi1, lo2, hi2) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.fmax(lo1, lo2), np.fmin(hi1, hi2)
    empty = np.isnan(lo1) | np.isnan(lo2) | (lo > hi)
    return np.where(empty, np.nan, lo), np.where(empty, np.nan, hi)


def _check_segments(src, tgt) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(src, dtype=np.float64)
    t = np.asarray(tgt, dtype=np.float64)
    if s.ndim != 2 or s.shape[-1] != 3:
        raise ValueError(f"src must have shape [N, 3], got {s.shape}")
    if t.shape != s.shape:
        raise ValueError(f"tgt must have the same shape as src {s.shape}, got {t.shape}")
    return s, t


@dataclass(frozen=True, eq=False)
class _Primitive:
    """Constant-HU solid in a local frame: world = center + rotation @ local (columns = local axes)."""

    center: np.ndarray
    rotation: np.ndarray
    hu: float
    label: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "center", np.asarray(self.center, dtype=np.float64).reshape(3))
        object.__setattr__(self, "rotation", _as_rotation(self.rotation))
        if int(self.label) < 0 or int(self.label) > 255:
            raise ValueError(f"label must be in 0..255, got {self.label}")

    # -- subclass interface (normalised local coordinates: the boundary is at |·| = 1) -------------
    def _scale(self) -> np.ndarray:  # (3,) local half-sizes used to normalise coordinates
        raise NotImplementedError

    def _inside_local(self, q0, q1, q2) -> np.ndarray:  # broadcastable normalised coordinates -> bool
        raise NotImplementedError

    def _intervals_local(self, q0: np.ndarray, qd: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Disjoint inside intervals of q0 + t·qd ([N, 3] each) as (lo, hi) pairs, NaN when empty."""
        raise NotImplementedError

    def half_extent(self) -> np.ndarray:
        """(3,) half-size of the world axis-aligned bounding box around ``center``."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------------------------
    def _world_to_local(self) -> np.ndarray:
        """(3, 3) M with q = (p − center) @ M, the normalised local coordinates."""
        return self.rotation / self._scale()[None, :]

    def contains(self, points) -> np.ndarray:
        """points [..., 3] world mm -> bool [...] (boundary counts as inside)."""
        p = np.asarray(points, dtype=np.float64)
        q = (p - self.center) @ self._world_to_local()
        return self._inside_local(q[..., 0], q[..., 1], q[..., 2])

    def intervals(self, src, tgt) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact inside intervals of p(t) = src + t·(tgt − src), unclipped t; (NaN, NaN) = empty. [N] each."""
        s, t = _check_segments(src, tgt)
        m = self._world_to_local()
        return self._intervals_local((s - self.center) @ m, (t - s) @ m)

    def chord_length(self, src, tgt) -> np.ndarray:
        """Length (mm) of the segment src→tgt ([N, 3] each) inside the primitive, float64 [N]."""
        s, t = _check_segments(src, tgt)
        total = np.zeros(len(s))
        for lo, hi in self.intervals(s, t):
            total += np.nan_to_num(np.clip(np.minimum(hi, 1.0) - np.maximum(lo, 0.0), 0.0, None))
        return total * np.linalg.norm(t - s, axis=-1)


@dataclass(frozen=True, eq=False)
class Ellipsoid(_Primitive):
    """Solid ellipsoid with semi-axes (a, b, c) along the rotation's columns."""

    semi_axes: np.ndarray = field(default_factory=lambda: np.ones(3))

    def __post_init__(self) -> None:
        super().__post_init__()
        a = np.asarray(self.semi_axes, dtype=np.float64).reshape(3)
        if np.any(a <= 0):
            raise ValueError(f"semi_axes must be positive, got {a.tolist()}")
        object.__setattr__(self, "semi_axes", a)

    def _scale(self):
        return self.semi_axes

    def _inside_local(self, q0, q1, q2):
        return q0 * q0 + q1 * q1 + q2 * q2 <= 1.0

    def _intervals_local(self, q0, qd):
        return [_ellipse_interval(q0, qd)]

    def half_extent(self):
        return np.sqrt(np.sum((self.rotation * self.semi_axes[None, :]) ** 2, axis=1))


@dataclass(frozen=True, eq=False)
class EllipticCylinder(_Primitive):
    """Finite elliptic cylinder along the local z axis (rotation column 2), length 2·half_length.

    With ``inner_semi_axes`` it is a tube: the coaxial inner elliptic cylinder is hollow (not part of
    this primitive, so whatever was painted before shows through) — used for the rib rings.
    """

    semi_axes: tuple[float, float] = (1.0, 1.0)
    half_length: float = 1.0
    inner_semi_axes: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        a = np.asarray(self.semi_axes, dtype=np.float64).reshape(2)
        if np.any(a <= 0) or self.half_length <= 0:
            raise ValueError(f"semi_axes, half_length must be positive, got {a.tolist()}, {self.half_length}")
        object.__setattr__(self, "semi_axes", a)
        if self.inner_semi_axes is not None:
            b = np.asarray(self.inner_semi_axes, dtype=np.float64).reshape(2)
            if np.any(b <= 0) or np.any(b >= a):
                raise ValueError(f"inner_semi_axes must be in (0, semi_axes={a.tolist()}), got {b.tolist()}")
            object.__setattr__(self, "inner_semi_axes", b)

    def _scale(self):
        return np.array([self.semi_axes[0], self.semi_axes[1], self.half_length])

    def _inner_ratio(self) -> np.ndarray:
        return np.asarray(self.inner_semi_axes) / self.semi_axes

    def _inside_local(self, q0, q1, q2):
        inside = (q0 * q0 + q1 * q1 <= 1.0) & (np.abs(q2) <= 1.0)
        if self.inner_semi_axes is not None:
            r0, r1 = self._inner_ratio()
            u0, u1 = q0 / r0, q1 / r1
            inside = inside & (u0 * u0 + u1 * u1 > 1.0)
        return inside

    def _intervals_local(self, q0, qd):
        lo, hi = _intersect(*_ellipse_interval(q0[:, :2], qd[:, :2]), *_slab_interval(q0[:, 2], qd[:, 2]))
        if self.inner_semi_axes is None:
            return [(lo, hi)]
        r = self._inner_ratio()
        ilo, ihi = _ellipse_interval(q0[:, :2] / r, qd[:, :2] / r)
        no_hole = np.isnan(ilo)
        ilo, ihi = np.where(no_hole, np.inf, ilo), np.where(no_hole, np.inf, ihi)
        # outer minus hole = [lo, min(hi, ilo)] ∪ [max(lo, ihi), hi]
        a_lo, a_hi = lo, np.fmin(hi, ilo)
        b_lo, b_hi = np.fmax(lo, ihi), hi
        a_empty = np.isnan(lo) | (a_lo > a_hi)
        b_empty = np.isnan(lo) | (b_lo > b_hi) | np.isinf(b_lo)
        return [
            (np.where(a_empty, np.nan, a_lo), np.where(a_empty, np.nan, a_hi)),
            (np.where(b_empty, np.nan, b_lo), np.where(b_empty, np.nan, b_hi)),
        ]

    def half_extent(self):
        r = self.rotation
        return np.sqrt((r[:, 0] * self.semi_axes[0]) ** 2 + (r[:, 1] * self.semi_axes[1]) ** 2) + np.abs(
            r[:, 2] * self.half_length
        )


class AnalyticPhantom:
    """Painter's-order stack of primitives: a point takes HU and label of the last primitive containing it.

    Outside every primitive is background: ``background_hu`` (air, μ = 0) with label 0.

    Args:
        primitives: painted in order (later ones overwrite earlier ones).
        structures: label id -> name; must contain 0 and every primitive's label.
        background_hu: HU outside all primitives.
    """

    def __init__(
        self, primitives: Sequence[_Primitive], structures: dict[int, str], background_hu: float = HU_AIR
    ) -> None:
        self.primitives = tuple(primitives)
        if not self.primitives or len(self.primitives) > 32767:
            raise ValueError(f"primitives must hold 1..32767 primitives, got {len(self.primitives)}")
        missing = {0} | {p.label for p in self.primitives}
        missing -= set(structures)
        if missing:
            raise ValueError(f"structures lacks names for labels {sorted(missing)}")
        self.structures = dict(sorted(structures.items()))
        self.background_hu = float(background_hu)
        # Lookup tables indexed by top primitive + 1 (0 = background).
        self._hu_lut = np.array([self.background_hu] + [p.hu for p in self.primitives], dtype=np.float64)
        self._label_lut = np.array([0] + [p.label for p in self.primitives], dtype=np.uint8)

    @property
    def num_labels(self) -> int:
        """Number of label channels (max label + 1), as a labelmap render would output."""
        return int(max(self.structures)) + 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounding box (lo, hi), each (3,), of all primitives."""
        lo = np.min([p.center - p.half_extent() for p in self.primitives], axis=0)
        hi = np.max([p.center + p.half_extent() for p in self.primitives], axis=0)
        return lo, hi

    # -- point queries ----------------------------------------------------------------------------
    def _top(self, points) -> np.ndarray:
        """Index+1 of the topmost primitive containing each point (0 = background), int16 [...]."""
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1:] != (3,):
            raise ValueError(f"points must have shape [..., 3], got {p.shape}")
        top = np.zeros(p.shape[:-1], dtype=np.int16)
        for n, prim in enumerate(self.primitives, start=1):
            np.copyto(top, n, where=prim.contains(p))
        return top

    def hu_at(self, points) -> np.ndarray:
        """points [..., 3] world mm -> HU float64 [...]."""
        return self._hu_lut[self._top(points)]

    def label_at(self, points) -> np.ndarray:
        """points [..., 3] world mm -> label uint8 [...] (0 = background)."""
        return self._label_lut[self._top(points)]

    # -- exact line integrals -----------------------------------------------------------------------
    def _segments(self, src, tgt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split each segment at every primitive boundary.

        Returns (dt [N, M], top [N, M], length [N]): sub-interval lengths in parameter units, the
        index+1 of the topmost primitive over each sub-interval, and the segment lengths in mm.
        """
        s, t = _check_segments(src, tgt)
        all_intervals = [prim.intervals(s, t) for prim in self.primitives]
        cuts = [np.zeros(len(s)), np.ones(len(s))]
        for ivs in all_intervals:
            for lo, hi in ivs:
                cuts += [lo, hi]
        cuts = np.clip(np.stack(cuts, axis=1), 0.0, 1.0)
        cuts = np.sort(np.where(np.isnan(cuts), 1.0, cuts), axis=1)
        dt = np.diff(cuts, axis=1)
        mid = 0.5 * (cuts[:, 1:] + cuts[:, :-1])
        # Each sub-interval lies entirely inside or outside every primitive: test its midpoint.
        top = np.zeros(mid.shape, dtype=np.int16)
        for n, ivs in enumerate(all_intervals, start=1):
            inside = np.zeros(mid.shape, dtype=bool)
            for lo, hi in ivs:
                inside |= (mid >= lo[:, None]) & (mid <= hi[:, None])
            np.copyto(top, n, where=inside)
        return dt, top, np.linalg.norm(t - s, axis=-1)

    def line_integrals_by_label(
        self,
        src,
        tgt,
        mu_water: float = MU_WATER,
        mu_bone: float = MU_BONE,
        hu_bone: float = HU_BONE,
        convert_to_mu: bool = True,
    ) -> np.ndarray:
        """Exact integrals split by label: float64 [N, num_labels]; column c = label c, rows sum to the total.

        This is what a labelmap render outputs channel by channel (channel 0 = background).
        """
        dt, top, length = self._segments(src, tgt)
        values = self._hu_lut
        if convert_to_mu:
            values = hu_to_mu_np(values, mu_water, mu_bone, hu_bone)
        contrib = values[top] * dt * length[:, None]
        n_rays, n_lab = len(length), self.num_labels
        flat = (np.arange(n_rays)[:, None] * n_lab + self._label_lut[top]).ravel()
        return np.bincount(flat, weights=contrib.ravel(), minlength=n_rays * n_lab).reshape(n_rays, n_lab)

    def line_integral(
        self,
        src,
        tgt,
        mu_water: float = MU_WATER,
        mu_bone: float = MU_BONE,
        hu_bone: float = HU_BONE,
        convert_to_mu: bool = True,
        label: int | None = None,
    ) -> np.ndarray:
        """Exact ∫ μ ds (dimensionless) along each segment src→tgt, float64 [N].

        Args:
            src, tgt: [N, 3] world mm (e.g. the source and the pixel centre of each ray).
            mu_water, mu_bone, hu_bone: HU → μ model of ``geometry.md`` (applied per constant region).
            convert_to_mu: False integrates the raw HU field instead, ∫ HU ds in HU·mm, where the
                background counts as ``background_hu`` (−1000) along the whole segment. A renderer in raw
                mode integrates voxel values with zero padding *outside its grid*, so compare it with this
                after clipping src/tgt to the grid's voxel box (index range [−½, S−½] per axis).
            label: if given, integrate only the parts whose topmost primitive has this label
                (0 = background); the integrals over all labels sum to the full one.
        """
        dt, top, length = self._segments(src, tgt)
        values = self._hu_lut
        if convert_to_mu:
            values = hu_to_mu_np(values, mu_water, mu_bone, hu_bone)
        w = values[top] * dt
        if label is not None:
            w = np.where(self._label_lut[top] == int(label), w, 0.0)
        return w.sum(axis=1) * length

    def chord_length(self, src, tgt, label: int | None = None) -> np.ndarray:
        """Length (mm) of each segment src→tgt ([N, 3]) inside the body (any primitive), float64 [N].

        With ``label`` only the parts whose topmost primitive has that label count.
        """
        dt, top, length = self._segments(src, tgt)
        sel = top > 0 if label is None else self._label_lut[top] == int(label)
        return np.where(sel, dt, 0.0).sum(axis=1) * length

    # -- voxelisation -------------------------------------------------------------------------------
    def default_shape(self, spacing, direction=None, margin: float = 10.0) -> tuple[int, int, int]:
        """Array shape (K, J, I) of a grid centred on ``self.center`` covering the bounds + margin (mm)."""
        sp = np.asarray(spacing, dtype=np.float64).reshape(3)
        d = _as_rotation(direction)
        lo, hi = self.bounds()
        centre = self.grid_center()
        half = np.maximum(np.abs(lo - centre), np.abs(hi - centre))  # symmetric box about the centre
        # Half-extent of that box along each grid axis (columns of the direction matrix).
        half_grid = np.abs(d.T) @ half + margin
        n = np.ceil(2.0 * half_grid / sp).astype(int) + 1
        return int(n[2]), int(n[1]), int(n[0])

    def grid_center(self) -> np.ndarray:
        """World point the default voxel grid is centred on (centre of the bounding box)."""
        lo, hi = self.bounds()
        return 0.5 * (lo + hi)

    def _top_grid(self, shape, affine: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """``_top`` at voxel centres + offset (index units); separable per primitive, within its bbox."""
        k_n, j_n, i_n = shape
        a, o = affine[:3, :3], affine[:3, 3]
        a_inv = np.linalg.inv(a)
        top = np.zeros(shape, dtype=np.int16)
        for n, prim in enumerate(self.primitives, start=1):
            # Index-space bounding box of the primitive (conservative for oblique grids).
            signs = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij")).reshape(3, -1).T
            corners = prim.center + signs * prim.half_extent()
            idx = (corners - o) @ a_inv.T - offset
            lo = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
            hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, [i_n - 1, j_n - 1, k_n - 1])
            if np.any(lo > hi):
                continue
            # q = (A·(idx + offset) + o − c) @ M = idx @ (Aᵀ M) + b, split into per-axis 1-D terms.
            m = prim._world_to_local()
            g = a.T @ m
            b = (o - prim.center) @ m + offset @ g
            axes = [np.arange(lo[d], hi[d] + 1, dtype=np.float64) for d in range(3)]
            shapes = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]  # i, j, k as broadcastable [K, J, I]
            q = []
            for c in range(3):
                qc = b[c]
                for d in range(3):
                    if g[d, c] != 0.0:
                        qc = qc + (g[d, c] * axes[d]).reshape(shapes[d])
                q.append(np.asarray(qc))
            inside = prim._inside_local(*q)
            sub = top[lo[2] : hi[2] + 1, lo[1] : hi[1] + 1, lo[0] : hi[0] + 1]
            np.copyto(sub, n, where=np.broadcast_to(inside, sub.shape))
        return top

    def voxelize(
        self,
        spacing: Sequence[float] = (2.0, 2.0, 2.0),
        shape: Sequence[int] | None = None,
        direction=None,
        supersample: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample the phantom on a (possibly oblique) voxel grid centred on :meth:`grid_center`.

        Args:
            spacing: (sx, sy, sz) mm along i, j, k.
            shape: array shape (K, J, I); default covers the bounding box + 10 mm margin.
            direction: 3x3 rotation whose columns are the i, j, k axes in world; default identity.
            supersample: n -> each voxel's HU is the mean of n³ regularly spaced sub-voxel samples
                (partial-volume anti-aliasing). Labels always come from the voxel centre.

        Returns:
            vol_hu float32 [K, J, I], labels uint8 [K, J, I], voxel_to_world float64 (4, 4).
        """
        sp = np.asarray(spacing, dtype=np.float64).reshape(3)
        if np.any(sp <= 0):
            raise ValueError(f"spacing must be positive, got {sp.tolist()}")
        d = _as_rotation(direction)
        if shape is None:
            shape = self.default_shape(sp, d)
        shape = tuple(int(x) for x in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (K, J, I) positive ints, got {shape}")
        n = int(supersample)
        if n < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")

        a = d * sp[None, :]
        k_n, j_n, i_n = shape
        centre_idx = np.array([(i_n - 1) / 2, (j_n - 1) / 2, (k_n - 1) / 2])
        affine = np.eye(4)
        affine[:3, :3] = a
        affine[:3, 3] = self.grid_center() - a @ centre_idx

        top_centre = self._top_grid(shape, affine, np.zeros(3))
        labels = self._label_lut[top_centre]
        if n == 1:
            return self._hu_lut[top_centre].astype(np.float32), labels, affine
        sub = (np.arange(n) + 0.5) / n - 0.5
        acc = np.zeros(shape, dtype=np.float64)
        for dz in sub:
            for dy in sub:
                for dx in sub:
                    acc += self._hu_lut[self._top_grid(shape, affine, np.array([dx, dy, dz]))]
        return (acc / n**3).astype(np.float32), labels, affine


class ChestPhantom(AnalyticPhantom):
    """Chest-like phantom in RAS mm: body with fat layer, lungs, heart, aorta, trachea, spine, ribs, sternum.

    Body ≈ 320 mm L-R × 220 mm A-P × 300 mm S-I. Lungs are left/right (+x = patient Right), the heart is
    left-anterior, spine posterior (−y). Ribs are thin elliptic tubes tilted so their anterior ends lie
    lower, as in a real chest; bone (spine 700 HU, ribs 600 HU, sternum 500 HU) is bright in an AP DRR.
    """

    STRUCTURES: dict[int, str] = {  # noqa: RUF012
        0: "background",
        1: "body",
        2: "lung_left",
        3: "lung_right",
        4: "heart",
        5: "aorta",
        6: "trachea",
        7: "spine",
        8: "ribs",
        9: "sternum",
    }

    def __init__(self, center: Sequence[float] = (0.0, 0.0, 0.0)) -> None:
        c = np.asarray(center, dtype=np.float64).reshape(3)
        self.center = c
        E, C, R = Ellipsoid, EllipticCylinder, rotation_matrix

        def at(x: float, y: float, z: float) -> np.ndarray:
            return c + np.array([x, y, z])

        prims: list[_Primitive] = [
            # body: subcutaneous fat, then soft tissue
            C(c, None, -100.0, 1, semi_axes=(160.0, 110.0), half_length=150.0),
            C(c, None, 40.0, 1, semi_axes=(150.0, 100.0), half_length=150.0),
            # lungs (RAS: patient right = +x)
            E(at(72.0, 0.0, 15.0), R(rz=-5.0), -800.0, 3, semi_axes=(50.0, 70.0, 105.0)),
            E(at(-72.0, 0.0, 15.0), R(rz=5.0), -800.0, 2, semi_axes=(50.0, 70.0, 105.0)),
            # heart: left-anterior, long axis tilted to the left and down
            E(at(-25.0, 35.0, -25.0), R(ry=-30.0, rz=30.0), 45.0, 4, semi_axes=(55.0, 45.0, 50.0)),
            # descending aorta, left of the spine, slightly tilted
            C(at(-25.0, -42.0, -20.0), R(rx=5.0), 150.0, 5, semi_axes=(13.0, 13.0), half_length=95.0),
            # trachea: air column above the carina
            C(at(0.0, 15.0, 100.0), None, -1000.0, 6, semi_axes=(9.0, 8.0), half_length=50.0),
            # spine: vertebral bodies and a posterior column of spinous processes
            C(at(0.0, -62.0, 0.0), None, 700.0, 7, semi_axes=(20.0, 17.0), half_length=150.0),
            C(at(0.0, -86.0, 0.0), None, 500.0, 7, semi_axes=(6.0, 12.0), half_length=150.0),
        ]
        # ribs: thin tilted elliptic tubes (anterior end lower)
        for z in (-95.0, -70.0, -45.0, -20.0, 5.0, 30.0, 55.0, 80.0):
            prims.append(
                C(at(0.0, -3.0, z), R(rx=-15.0), 600.0, 8, (140.0, 92.0), 4.5, inner_semi_axes=(132.0, 85.0))
            )
        # sternum, slightly tilted (lower end more anterior)
        prims.append(C(at(0.0, 90.0, 0.0), R(rx=-8.0), 500.0, 9, semi_axes=(16.0, 6.0), half_length=65.0))
        super().__init__(prims, self.STRUCTURES, background_hu=HU_AIR)

    def grid_center(self) -> np.ndarray:
        """The phantom centre (the body cylinder's centre), where voxel grids are centred."""
        return self.center.copy()


def make_chest_phantom(
    spacing: Sequence[float] = (2.0, 2.0, 2.5),
    direction=None,
    supersample: int = 2,
    center: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ChestPhantom]:
    """Default demo CT: voxelised :class:`ChestPhantom`.

    Returns:
        vol_hu float32 [K, J, I], labels uint8 [K, J, I], voxel_to_world (4, 4), and the phantom
        (whose ``line_integral`` is the exact reference for renders of this volume).
    """
    phantom = ChestPhantom(center=center)
    vol_hu, labels, voxel_to_world = phantom.voxelize(spacing, direction=direction, supersample=supersample)
    return vol_hu, labels, voxel_to_world, phantom

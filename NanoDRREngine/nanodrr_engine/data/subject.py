"""A CT volume (and optional labelmap) ready for rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Shaped

from .._validation import as_matrix, check_bool, check_finite, check_positive, check_whole, refuse_non_real
from .preprocess import HU_BONE, MU_BONE, MU_WATER, hu_to_mu

_MU_FIELDS = frozenset({"convert_to_mu", "mu_water", "mu_bone", "hu_bone"})


def _check_mu_kwargs(mu: dict) -> None:
    unknown = mu.keys() - _MU_FIELDS
    if unknown:
        raise TypeError(
            f"Unknown mu parameter(s): {', '.join(sorted(map(repr, unknown)))}; expected {sorted(_MU_FIELDS)}"
        )


class _MuParam:
    """A HU → μ parameter whose change invalidates the cached μ volume."""

    def __init__(self, default) -> None:
        self.default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self.public = name
        self.name = f"_{name}"

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return obj.__dict__.get(self.name, self.default)

    def __set__(self, obj, value) -> None:
        if self.public == "convert_to_mu":
            value = check_bool(value, self.public)  # "no" would be truthy
        else:
            check_positive(value, self.public)  # in float64: 1e300 is out of float32's range, not infinite
        current = obj.__dict__.get(self.name, self.default)
        tensors = isinstance(value, torch.Tensor) or isinstance(current, torch.Tensor)
        if current is not value and (tensors or current != value):
            obj.__dict__[self.name] = value
            obj._mu_cache = None


def voxel_to_grid_matrix(shape: tuple[int, int, int]) -> torch.Tensor:
    """IJK → ``grid_sample`` coordinates (``align_corners=False``): g = (2·idx + 1)/S − 1 per axis.

    Args:
        shape: volume shape ``(K, J, I)``.

    Returns:
        ``[4, 4]`` float32.
    """
    k, j, i = shape
    size = torch.tensor([i, j, k], dtype=torch.float64)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.diag(2.0 / size)
    m[:3, 3] = 1.0 / size - 1.0
    return m.float()


class Subject(torch.nn.Module):
    """CT volume (HU) with its IJK → RAS geometry and an optional integer labelmap.

    The HU → μ conversion is applied lazily and cached; setting ``mu_water``, ``mu_bone``,
    ``hu_bone`` or ``convert_to_mu`` invalidates the cache. No label volume is allocated when
    there is no labelmap (``label is None`` and ``n_classes == 1``).

    Buffers: ``_image_hu [1, 1, K, J, I]``, ``label [1, 1, K, J, I]`` (integer) or None,
    ``voxel_to_world``, ``world_to_voxel``, ``voxel_to_grid``, ``world_to_grid`` ``[4, 4]`` and
    ``isocenter [3]`` (float32; geometry stays float32 when the volume is half precision).
    """

    convert_to_mu: bool = _MuParam(True)  # type: ignore[assignment]
    mu_water: float = _MuParam(MU_WATER)  # type: ignore[assignment]
    mu_bone: float = _MuParam(MU_BONE)  # type: ignore[assignment]
    hu_bone: float = _MuParam(HU_BONE)  # type: ignore[assignment]

    def __init__(
        self,
        imagedata: Float[torch.Tensor, "1 1 D H W"],
        labeldata: Shaped[torch.Tensor, "1 1 D H W"] | None,
        voxel_to_world: Float[torch.Tensor, "4 4"],
        world_to_voxel: Float[torch.Tensor, "4 4"],
        voxel_to_grid: Float[torch.Tensor, "4 4"],
        isocenter: Float[torch.Tensor, "3"],
        max_label: int | None = None,
        **mu,
    ) -> None:
        _check_mu_kwargs(mu)
        super().__init__()
        self._mu_cache: torch.Tensor | None = None
        self.register_buffer("_image_hu", imagedata)
        self.register_buffer("label", labeldata)
        self.register_buffer("voxel_to_world", voxel_to_world)
        self.register_buffer("world_to_voxel", world_to_voxel)
        self.register_buffer("voxel_to_grid", voxel_to_grid)
        self.register_buffer("world_to_grid", voxel_to_grid @ world_to_voxel)
        self.register_buffer("isocenter", isocenter)
        for key, value in mu.items():
            setattr(self, key, value)
        if max_label is not None:
            self.n_classes = check_whole(max_label, "max_label", "a whole number >= 0") + 1
        elif labeldata is not None and labeldata.numel():
            self.n_classes = int(labeldata.max().item()) + 1
        else:
            self.n_classes = 1

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_array(
        cls,
        volume: Shaped[np.ndarray, "K J I"] | Shaped[torch.Tensor, "K J I"],
        voxel_to_world: Float[np.ndarray, "4 4"] | Float[torch.Tensor, "4 4"],
        label: Shaped[np.ndarray, "K J I"] | Shaped[torch.Tensor, "K J I"] | None = None,
        max_label: int | None = None,
        **mu,
    ) -> Subject:
        """Build a subject from arrays in Slicer's order.

        Args:
            volume: HU (or raw values) ``[K, J, I]``, any real dtype; float16/bfloat16 are kept as is.
            voxel_to_world: ``[4, 4]`` IJK → RAS (direction · spacing, origin), e.g. Slicer's IJKToRAS.
            label: optional integer labelmap ``[K, J, I]`` on the same grid (label 0 = background).
            max_label: number of channels − 1 (default: the largest label present).
            **mu: ``convert_to_mu``, ``mu_water``, ``mu_bone``, ``hu_bone``.
        """
        _check_mu_kwargs(mu)
        if max_label is not None:  # before any work, and before a labelmap is read
            check_whole(max_label, "max_label", "a whole number >= 0")
        vol = _as_tensor(volume, "volume")
        if vol.ndim != 3:
            raise ValueError(f"volume: expected a 3D array [K, J, I], got shape {list(vol.shape)}")
        if vol.numel() == 0:
            raise ValueError(f"volume: is empty (shape {list(vol.shape)})")
        if vol.dtype == torch.bool or vol.is_complex():
            raise TypeError(f"volume: expected real numbers (HU), got dtype {vol.dtype}")
        if vol.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            vol = vol.to(torch.float32)
        check_finite(vol, "volume")

        v2w64 = as_matrix(voxel_to_world, "voxel_to_world", (4, 4), dtype=torch.float64).cpu()
        if v2w64.ndim != 2:
            raise ValueError(f"voxel_to_world: expected a single [4, 4] matrix, got {list(v2w64.shape)}")
        if (v2w64[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)).abs().max() > 1e-9:
            raise ValueError(f"voxel_to_world: last row must be [0, 0, 0, 1], got {v2w64[3].tolist()}")
        if abs(torch.linalg.det(v2w64[:3, :3]).item()) < 1e-12:
            raise ValueError(
                "voxel_to_world: the 3×3 part is singular (zero spacing or degenerate directions)"
            )
        w2v64 = torch.linalg.inv(v2w64)

        lab = None if label is None else _as_labelmap(label, tuple(vol.shape))

        shape = tuple(vol.shape)
        k, j, i = shape
        centre = v2w64 @ torch.tensor([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0], dtype=torch.float64)
        return cls(
            vol.reshape(1, 1, *shape).contiguous(),
            lab,
            v2w64.float(),
            w2v64.float(),
            voxel_to_grid_matrix(shape),
            centre[:3].float(),
            max_label,
            **mu,
        )

    @classmethod
    def from_filepath(
        cls,
        imagepath: str | Path,
        labelpath: str | Path | None = None,
        max_label: int | None = None,
        **mu,
    ) -> Subject:
        """Read a CT (NIfTI, NRRD, MHA or a DICOM series folder) and an optional labelmap into RAS.

        A labelmap on another grid is resampled (nearest neighbour) onto the CT's grid.
        """
        import SimpleITK as sitk

        from .io import load_labelmap_on_grid, read_image, voxel_to_world_ras

        _check_mu_kwargs(mu)
        if max_label is not None:  # before the files are read
            check_whole(max_label, "max_label", "a whole number >= 0")
        image = read_image(imagepath)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"imagepath: {imagepath} is not a scalar volume")
        label = load_labelmap_on_grid(labelpath, image) if labelpath is not None else None
        return cls.from_array(
            sitk.GetArrayFromImage(image), voxel_to_world_ras(image), label, max_label, **mu
        )

    def with_labels(self, label: np.ndarray | torch.Tensor | None, max_label: int | None = None) -> Subject:
        """A subject with another labelmap that shares this one's voxels, geometry, μ parameters and μ cache.

        No voxel is copied, so per-segment renders of one CT cost only their label volumes.
        """
        lab = None if label is None else _as_labelmap(label, self.shape).to(self._image_hu.device)
        mu = {k: getattr(self, k) for k in _MU_FIELDS}
        other = type(self)(
            self._image_hu,
            lab,
            self.voxel_to_world,
            self.world_to_voxel,
            self.voxel_to_grid,
            self.isocenter,
            max_label,
            **mu,
        )
        other._mu_cache = self._mu_cache
        return other

    # --- μ volume -----------------------------------------------------------------------------

    @property
    def image(self) -> torch.Tensor:
        """``[1, 1, K, J, I]`` μ (1/mm), or the raw values when ``convert_to_mu`` is False. Cached."""
        if not self.convert_to_mu:
            return self._image_hu
        if self._mu_cache is None:
            self._mu_cache = hu_to_mu(self._image_hu, self.mu_water, self.mu_bone, self.hu_bone)
        return self._mu_cache

    def set_mu(self, mu_water=None, mu_bone=None, hu_bone=None) -> None:
        """Recompute the μ cache from (possibly tensor, differentiable) parameters in one op.

        The stored scalar parameters are left unchanged (as in nanodrr), which keeps
        ``torch.compile`` graphs free of attribute mutation. Numbers are checked as the attributes are;
        tensors are not (a check would synchronise a GPU on every step of a fit).
        """
        for name, value in (("mu_water", mu_water), ("mu_bone", mu_bone), ("hu_bone", hu_bone)):
            if value is not None and not isinstance(value, torch.Tensor):
                check_positive(value, name)
        self._mu_cache = hu_to_mu(
            self._image_hu,
            self.mu_water if mu_water is None else mu_water,
            self.mu_bone if mu_bone is None else mu_bone,
            self.hu_bone if hu_bone is None else hu_bone,
        )

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "_image_hu":
            self.__dict__["_mu_cache"] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, J, I)``."""
        return tuple(self._image_hu.shape[-3:])

    @property
    def spacing(self) -> torch.Tensor:
        """Voxel size (mm) along i, j, k."""
        return self.voxel_to_world[:3, :3].norm(dim=0)

    def to(self, *args, **kwargs) -> Subject:
        """Move to a device; a floating dtype applies to the volume only (geometry stays float32)."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        had_cache = self._mu_cache is not None
        result = super().to(device=device, non_blocking=non_blocking) if device is not None else self
        if dtype is not None:
            if not dtype.is_floating_point:
                raise TypeError(f"dtype: the volume must stay floating point, got {dtype}")
            result._image_hu = result._image_hu.to(dtype)
        result._mu_cache = None
        if had_cache:
            _ = result.image
        return result

    def extra_repr(self) -> str:
        return (
            f"shape={list(self.shape)}, spacing={[round(s, 4) for s in self.spacing.tolist()]}, "
            f"n_classes={self.n_classes}, dtype={self._image_hu.dtype}"
        )


def _as_labelmap(label, shape: tuple[int, int, int]) -> torch.Tensor:
    """Validated integer labelmap ``[1, 1, K, J, I]`` in the smallest integer dtype."""
    lab = _as_tensor(label, "label", bools=True)
    if tuple(lab.shape) != tuple(shape):
        raise ValueError(f"label: shape {list(lab.shape)} differs from the volume's {list(shape)}")
    if lab.dtype == torch.bool:
        lab = lab.to(torch.uint8)
    if lab.is_floating_point():
        if not bool((lab == lab.round()).all()):
            raise ValueError("label: must hold integer labels, got fractional values")
        lab = lab.to(torch.int32)
    if lab.numel() and int(lab.min()) < 0:
        raise ValueError(f"label: labels must be >= 0, got minimum {int(lab.min())}")
    return _compact_int(lab).reshape(1, 1, *shape).contiguous()


def _as_tensor(value, name: str, bools: bool = False) -> torch.Tensor:
    """An array or tensor of real numbers as a tensor (no copy), else TypeError naming ``name``
    (strings, objects, complex numbers; booleans unless ``bools``)."""
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            t = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: expected an array of real numbers, got {type(value).__name__}") from e
    is_bool = t.dtype == torch.bool if isinstance(t, torch.Tensor) else t.dtype == np.bool_
    if not (bools and is_bool):
        refuse_non_real(t, name, "an array of real numbers")
    try:
        return torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected an array of real numbers, got dtype {t.dtype}") from e


def _compact_int(lab: torch.Tensor) -> torch.Tensor:
    """The smallest integer dtype that holds the labels (a 118-label map fits in uint8)."""
    top = int(lab.max()) if lab.numel() else 0
    for dtype, limit in ((torch.uint8, 255), (torch.int16, 32767), (torch.int32, 2**31 - 1)):
        if top <= limit:
            return lab.to(dtype)
    return lab.to(torch.int64)

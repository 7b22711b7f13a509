"""Reading CT volumes and labelmaps into RAS through SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: ITK images are LPS; Slicer, NIfTI tools and this engine use RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_image(path: str | Path):
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder as a SimpleITK image."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"imagepath: no such file or folder: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ValueError(f"imagepath: no DICOM series found in folder {path}")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK reports unreadable files as RuntimeError
        raise ValueError(f"imagepath: cannot read {path}: {str(e).strip().splitlines()[-1]}") from e


def voxel_to_world_ras(image) -> np.ndarray:
    """The 4×4 IJK → RAS matrix (direction · spacing, plus origin) of a SimpleITK image."""
    d = image.GetDimension()
    if d != 3:
        raise ValueError(f"imagepath: expected a 3D image, got {d}D")
    m = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    m[:3, :3] = direction @ np.diag(image.GetSpacing())
    m[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ m


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Array ``[K, J, I]`` (i fastest, as Slicer's ``arrayFromVolume``) and its IJK → RAS matrix."""
    import SimpleITK as sitk

    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"imagepath: {path} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a CT must be a scalar volume"
        )
    return sitk.GetArrayFromImage(image), voxel_to_world_ras(image)


def load_labelmap_on_grid(path: str | Path, reference_path: str | Path) -> np.ndarray:
    """A labelmap as ``[K, J, I]`` on the reference image's grid (nearest-neighbour resampled if needed)."""
    import SimpleITK as sitk

    label = read_image(path)
    ref = read_image(reference_path) if not hasattr(reference_path, "GetSize") else reference_path
    same = (
        label.GetSize() == ref.GetSize()
        and np.allclose(label.GetSpacing(), ref.GetSpacing(), atol=1e-4)
        and np.allclose(label.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        and np.allclose(label.GetDirection(), ref.GetDirection(), atol=1e-5)
    )
    if not same:
        label = sitk.Resample(label, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return sitk.GetArrayFromImage(label)

"""Inputs: CTs (files, manifests or arrays) with their SHA-256, and pose tables.

A CT is read exactly as :meth:`Subject.from_filepath` reads it, so a stored sample re-renders from
the file with plain :func:`~nanodrr_engine.render`. Its SHA-256 (of the file, or of an array's dtype,
shape and bytes) goes into the store: a resumed run refuses CTs that changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CTReadError, DatasetError
from .spec import POSE_COLUMNS, PoseList


@dataclass(frozen=True)
class CTFile:
    """A CT file (NIfTI, NRRD, MHA or a DICOM folder) and an optional labelmap file."""

    ct: str
    labels: str | None = None


@dataclass(frozen=True, eq=False)
class CTArray:
    """A CT in memory: HU ``[K, J, I]``, its IJK → RAS ``[4, 4]`` and an optional labelmap (e.g. from Slicer)."""

    volume: np.ndarray
    voxel_to_world: np.ndarray
    labels: np.ndarray | None = None
    name: str = "array"


@dataclass(eq=False)
class LoadedCT:
    """What a worker builds a subject from, and the store's record of it."""

    hu: np.ndarray
    voxel_to_world: np.ndarray
    labels: np.ndarray | None
    record: dict

    @property
    def max_label(self) -> int:
        return 0 if self.labels is None or not self.labels.size else int(self.labels.max())


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and bytes, sorted: a DICOM series)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def sha256_arrays(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def as_inputs(cts) -> list[CTFile | CTArray]:
    """One CT or a list of them: paths, ``(ct, labels)`` pairs, :class:`CTFile` or :class:`CTArray`."""
    if isinstance(cts, (str, Path, CTFile, CTArray)) or (isinstance(cts, tuple) and len(cts) == 2):
        cts = [cts]
    try:
        items = list(cts)
    except TypeError:
        raise DatasetError(f"ct: expected CT paths, pairs (ct, labels) or CTArray, got {cts!r}") from None
    if not items:
        raise DatasetError("ct: no CT given")
    out = []
    for item in items:
        if isinstance(item, (CTFile, CTArray)):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.append(CTFile(str(item)))
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            out.append(CTFile(str(item[0]), None if item[1] is None else str(item[1])))
        else:
            raise DatasetError(f"ct: expected a path, a pair (ct, labels) or a CTArray, got {item!r}")
    if len({c.labels is None for c in out}) > 1:
        raise DatasetError("labels: give a labelmap for every CT or for none (the channels must agree)")
    return out


def read_manifest(path: str | Path) -> list[CTFile]:
    """CT/labelmap pairs from a CSV (columns ``ct`` and optionally ``labels``) or a JSON list of
    ``{"ct": ..., "labels": ...}``; relative paths are relative to the manifest's folder."""
    p = Path(path)
    if not p.is_file():
        raise CTReadError(f"manifest: no such file: {p}")
    try:
        if p.suffix.lower() == ".json":
            rows = json.loads(p.read_text())
            rows = rows.get("cts", rows) if isinstance(rows, dict) else rows
        else:
            with open(p, newline="") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise CTReadError(f"manifest: cannot read {p}: {e}") from None
    if not isinstance(rows, list) or not rows:
        raise CTReadError(f"manifest: {p} lists no CT")
    out = []
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("ct"):
            raise CTReadError(f"manifest: {p} entry {n} has no 'ct' (columns/keys: ct, labels)")
        labels = row.get("labels") or None
        out.append(CTFile(str(p.parent / row["ct"]), None if labels is None else str(p.parent / labels)))
    return out


def load(ct: CTFile | CTArray, checksum: bool = True) -> LoadedCT:
    """Read one CT (and labelmap) as :meth:`Subject.from_filepath` does; errors name the file.

    ``checksum=False`` skips the SHA-256 (workers re-reading a file the coordinator hashed).
    """
    digest = sha256_file if checksum else (lambda p: None)
    if isinstance(ct, CTArray):
        hu = np.asarray(ct.volume)
        v2w = np.asarray(ct.voxel_to_world, dtype=np.float64)
        labels = None if ct.labels is None else np.asarray(ct.labels)
        if hu.ndim != 3 or v2w.shape != (4, 4) or (labels is not None and labels.shape != hu.shape):
            raise CTReadError(
                f"ct {ct.name!r}: expected volume [K, J, I], voxel_to_world [4, 4] and labels like the volume, "
                f"got {hu.shape}, {v2w.shape}, {None if labels is None else labels.shape}"
            )
        record = {"name": ct.name, "sha256": sha256_arrays(hu, v2w), "labels_sha256": None}
        if labels is not None:
            record["labels_sha256"] = sha256_arrays(labels)
        return LoadedCT(hu, v2w, labels, record)
    import SimpleITK as sitk

    from ..data.io import load_labelmap_on_grid, read_image, voxel_to_world_ras

    path = Path(ct.ct).expanduser().resolve()
    labels = None
    try:
        image = read_image(path)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"{path} is not a scalar volume")
        hu = sitk.GetArrayFromImage(image)
        v2w = voxel_to_world_ras(image)
    except (OSError, ValueError, RuntimeError) as e:
        raise CTReadError(f"ct: cannot read {path}: {e}") from None
    record = {"ct": str(path), "sha256": digest(path), "labels": None, "labels_sha256": None}
    if ct.labels is not None:
        lpath = Path(ct.labels).expanduser().resolve()
        try:
            labels = load_labelmap_on_grid(lpath, image)
        except (OSError, ValueError, RuntimeError) as e:
            raise CTReadError(f"labels: cannot read {lpath} (labelmap of {path}): {e}") from None
        record.update(labels=str(lpath), labels_sha256=digest(lpath))
    return LoadedCT(hu, v2w, labels, record)


def read_poses(path: str | Path) -> PoseList:
    """A pose table: CSV with a header, or JSON (a list of objects), with columns ``primary``,
    ``secondary``, ``sod`` and optionally ``roll``, ``dx``, ``dy``, ``dz`` (degrees and mm; 0 if absent)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"poses: no such file: {p}")
    try:
        if p.suffix.lower() == ".json":
            rows = json.loads(p.read_text())
        else:
            with open(p, newline="") as f:
                rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise DatasetError(f"poses: cannot read {p}: {e}") from None
    if not isinstance(rows, list):
        raise DatasetError(f"poses: {p} must hold a list of poses")
    table = []
    for n, row in enumerate(rows, start=1):
        missing = [c for c in POSE_COLUMNS[:3] if not isinstance(row, dict) or row.get(c) in (None, "")]
        if missing:
            raise DatasetError(f"poses: {p} row {n} lacks {missing} (columns: {', '.join(POSE_COLUMNS)})")
        try:
            table.append(tuple(float(row.get(c) or 0.0) for c in POSE_COLUMNS))
        except (TypeError, ValueError):
            raise DatasetError(f"poses: {p} row {n} holds a value that is not a number: {row}") from None
    return PoseList(tuple(table), str(p.resolve()))


__all__ = ["CTArray", "CTFile", "LoadedCT", "as_inputs", "load", "read_manifest", "read_poses", "sha256_file"]

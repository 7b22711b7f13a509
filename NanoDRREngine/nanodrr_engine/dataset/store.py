"""The Zarr (v3) store: layout, creation, resumption and chunk completion.

Layout (``N`` samples, ``C`` channels, chunks of ``chunk`` samples)::

    images   [N, C, H, W]  float16/float32, one shard (file) per chunk, one inner chunk per image
    rt_inv   [N, 4, 4]     float64 camera-to-world (RAS mm)
    k_inv    [N, 3, 3]     float64 inverse intrinsics
    sdd      [N]           float64 (mm)
    subject  [N]           int32 index into the ``cts`` attribute
    params/  primary, secondary, sod, roll [N], jitter [N, 3], mu_bone, blur [N], pose_row [N]
    done     [n_chunks]    uint8, 1 once chunk c is completely written (one file per chunk)

A chunk's arrays are written first and its ``done`` marker last; every file is written to a
temporary name and renamed (Zarr's local store), so an interrupted run leaves at worst chunks that
are not marked done, and a resumed run rewrites exactly those. Different chunks are different files:
any number of workers write concurrently. The store's metadata is built in a temporary folder beside
``out`` and renamed into place, so ``out`` is either absent or a complete, empty dataset.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from .errors import DatasetMismatchError, DiskFullError, NotADatasetError
from .sampling import PARAMS
from .spec import DatasetSpec

try:
    import zarr
    from zarr.codecs import ZstdCodec
except ImportError as _e:  # zarr 3 needs Python >= 3.11
    import sys

    raise ImportError(
        "nanodrr_engine.dataset needs zarr >= 3 (Python >= 3.11): pip install 'nanodrr-engine[dataset]'"
        + (
            f"; this is Python {sys.version_info.major}.{sys.version_info.minor}"
            if sys.version_info < (3, 11)
            else ""
        )
    ) from _e

ATTR = "nanodrr_dataset"
FORMAT_VERSION = 1
CONVENTIONS = {
    "frames": "world = RAS mm; rt_inv = camera-to-world, camera at the source, detector at z = sdd (docs/geometry.md)",
    "images": "[N, C, H, W] as rendered, seen from the source (camera.to_display flips columns for the detector view)",
    "channels": "C = 1 without labelmaps; else channel c = voxels labelled c (0 = unlabelled), summing to the plain DRR",
    "values": "attenuation: line integral of mu (1/mm) over mm; transmission: I/I0 = exp(-attenuation)",
    "angles": "DICOM positioner: primary + = LAO, secondary + = CRAN, degrees; roll = detector rotation about the beam",
    "k_inv": "inverse pinhole intrinsics: fx = sdd/delx, cx = x0/delx + W/2 (make_k_inv)",
}
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def is_dataset(path: str | Path) -> bool:
    """True when ``path`` is the root of a NanoDRR dataset store."""
    meta = Path(path) / "zarr.json"
    try:
        return ATTR in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return False


def check_out(path: str | Path, overwrite: bool) -> str:
    """``"new"``, ``"resume"`` or ``"overwrite"`` for ``out``; a non-dataset file or non-empty folder is refused."""
    p = Path(path)
    if not p.exists():
        if not p.parent.is_dir():
            raise NotADatasetError(f"out: the folder {p.parent} does not exist")
        return "new"
    if is_dataset(p):
        return "overwrite" if overwrite else "resume"
    if p.is_dir() and not any(p.iterdir()):
        return "new"
    kind = "folder" if p.is_dir() else "file"
    raise NotADatasetError(
        f"out: {p} is an existing {kind} that is not a NanoDRR dataset; it is never written into "
        "(--overwrite replaces only a dataset): choose another path"
    )


def estimate_bytes(spec: DatasetSpec, channels: int, chunks: int | None = None) -> int:
    """Upper bound of the bytes ``chunks`` chunks (default all) take on disk, uncompressed."""
    d = spec.detector
    per = channels * d.height * d.width * np.dtype(spec.dtype).itemsize
    per += 8 * (16 + 9 + 1) + 4 + sum(8 * int(np.prod(shape)) for shape, _ in PARAMS.values())
    n = spec.n if chunks is None else min(spec.n, chunks * spec.chunk)
    files = (5 + len(PARAMS)) * 4096  # one file per array and chunk, a file-system block at least
    return n * per + (spec.n_chunks if chunks is None else chunks) * files + 64 * 1024


def free_bytes(path: str | Path) -> int:
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def disk_bytes(path: str | Path) -> int:
    """Bytes the store's files take."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def create(path: str | Path, spec: DatasetSpec, channels: int, record: dict) -> None:
    """A new, empty dataset at ``path`` (metadata only), built beside it and renamed into place."""
    p = Path(path)
    tmp = p.parent / f".{p.name}.creating-{uuid.uuid4().hex[:8]}"
    try:
        root = zarr.open_group(store=str(tmp), mode="w-", zarr_format=3)
        d, n, ch = spec.detector, spec.n, spec.chunk
        zstd = ZstdCodec(level=3)
        root.create_array(
            "images", shape=(n, channels, d.height, d.width), dtype=spec.dtype,
            chunks=(1, channels, d.height, d.width), shards=(ch, channels, d.height, d.width),
            compressors=zstd, fill_value=0,
        )  # fmt: skip
        for name, shape, dtype in (("rt_inv", (4, 4), "float64"), ("k_inv", (3, 3), "float64"),
                                   ("sdd", (), "float64"), ("subject", (), "int32")):  # fmt: skip
            root.create_array(
                name, shape=(n, *shape), chunks=(ch, *shape), dtype=dtype, compressors=zstd, fill_value=0
            )
        params = root.create_group("params")
        for name, (shape, dtype) in PARAMS.items():
            params.create_array(
                name, shape=(n, *shape), chunks=(ch, *shape), dtype=dtype, compressors=zstd, fill_value=0
            )
        root.create_array(
            "done", shape=(spec.n_chunks,), chunks=(1,), dtype="uint8", compressors=None, fill_value=0
        )
        root.attrs[ATTR] = record
        if p.exists():
            p.rmdir()  # an empty folder (check_out allowed it)
        os.rename(tmp, p)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove(path: str | Path) -> None:
    """Delete an existing dataset (only a dataset: checked first)."""
    if not is_dataset(path):
        raise NotADatasetError(f"out: {path} is not a NanoDRR dataset; not deleting it")
    shutil.rmtree(path)


def open_store(path: str | Path, mode: str = "r"):
    if not is_dataset(path):
        raise NotADatasetError(
            f"path: {path} is not a NanoDRR dataset (no '{ATTR}' attribute in its zarr.json)"
        )
    return zarr.open_group(store=str(path), mode=mode, zarr_format=3)


def record_of(group) -> dict:
    return dict(group.attrs[ATTR])


def check_matches(group, record: dict) -> None:
    """Refuse to resume a dataset made with another spec, other channels or other CT contents."""
    old = record_of(group)
    problems = []
    for key in ("format", "channels"):
        if old.get(key) != record[key]:
            problems.append(f"{key}: stored {old.get(key)!r}, asked {record[key]!r}")
    old_spec, new_spec = old.get("spec", {}), record["spec"]
    for key in sorted(set(old_spec) | set(new_spec)):
        if old_spec.get(key) != new_spec.get(key):
            problems.append(f"{key}: stored {old_spec.get(key)!r}, asked {new_spec.get(key)!r}")
    hashes = [(c.get("sha256"), c.get("labels_sha256")) for c in old.get("cts", [])]
    if hashes != [(c["sha256"], c["labels_sha256"]) for c in record["cts"]]:
        problems.append("cts: the CT or labelmap files (their SHA-256) differ from the stored ones")
    if problems:
        raise DatasetMismatchError(
            "out: the existing dataset was made differently; resuming would mix two datasets "
            f"({'; '.join(problems)}). Use --overwrite (overwrite=True) to start again, or another --out"
        )


def done_chunks(group) -> np.ndarray:
    """``[n_chunks]`` bool: chunks completely written."""
    return np.asarray(group["done"][:]).astype(bool)


def write_chunk(group, spec: DatasetSpec, c: int, arrays: dict[str, np.ndarray]) -> int:
    """Write chunk ``c``'s arrays, then its done marker; returns the image bytes written.

    Raises:
        DiskFullError: the disk filled up; the chunk stays unmarked, so a re-run rewrites it.
    """
    r = spec.chunk_range(c)
    try:
        for name, value in arrays.items():
            group[name][r.start : r.stop] = value
        group["done"][c] = 1
    except OSError as e:
        if e.errno in _FULL:
            raise DiskFullError(
                e.errno,
                f"out: the disk holding {group.store} is full (chunk {c} of {spec.n_chunks} not written); free "
                "space and re-run the same command: finished chunks are kept and only the missing ones are made",
            ) from e
        raise
    return int(arrays["images"].nbytes)


def finish(group, seconds: float) -> None:
    """Mark the dataset complete (after every chunk is done)."""
    rec = record_of(group)
    rec.update(
        complete=True, completed=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds_last_run=round(seconds, 3)
    )
    group.attrs[ATTR] = rec


__all__ = [
    "ATTR",
    "CONVENTIONS",
    "check_matches",
    "check_out",
    "create",
    "disk_bytes",
    "done_chunks",
    "estimate_bytes",
    "free_bytes",
    "is_dataset",
    "open_store",
    "remove",
    "write_chunk",
]

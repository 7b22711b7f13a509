"""DRR training data: reproducible, resumable datasets in Zarr, on one machine or a Ray cluster.

``generate(ct, out, n, ...)`` (or ``python -m nanodrr_engine.dataset generate ...``) renders ``n``
samples with poses, detector and augmentations from a :class:`DatasetSpec`; sample ``i`` depends only
on ``(seed, i)``, so the bytes are the same whatever the engine, the number of workers or the
chunking. :class:`DRRDataset` reads a store for PyTorch; :class:`DRRStream` renders the same
samples on the fly on the training device. Needs zarr >= 3 (Python >= 3.11) and tqdm: the
``dataset`` extra; the Ray engine also needs the ``ray`` extra.
"""

from .errors import (
    CTReadError,
    DatasetError,
    DatasetMismatchError,
    DatasetTooLargeError,
    DiskFullError,
    IncompleteDatasetError,
    NotADatasetError,
)
from .generate import Summary, generate
from .reader import DRRDataset, DRRStream
from .sources import CTArray, CTFile, read_manifest, read_poses
from .spec import DETECTOR_PRESETS, Augment, DatasetSpec, Detector, PoseList, PoseRanges

__all__ = [
    "DETECTOR_PRESETS",
    "Augment",
    "CTArray",
    "CTFile",
    "CTReadError",
    "DRRDataset",
    "DRRStream",
    "DatasetError",
    "DatasetMismatchError",
    "DatasetSpec",
    "DatasetTooLargeError",
    "Detector",
    "DiskFullError",
    "IncompleteDatasetError",
    "NotADatasetError",
    "PoseList",
    "PoseRanges",
    "Summary",
    "generate",
    "read_manifest",
    "read_poses",
]

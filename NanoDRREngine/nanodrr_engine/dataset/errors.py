"""Named errors of dataset generation: each says which input is wrong and what to do about it.

All are ``ValueError`` subclasses (bad input), except :class:`DiskFullError`, an ``OSError`` raised
while writing: the store stays resumable (the chunk being written is not marked done).
"""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset request that cannot be carried out (raised before anything is written)."""


class CTReadError(DatasetError):
    """A CT or labelmap that is missing, unreadable or unusable."""


class NotADatasetError(DatasetError):
    """``out`` is an existing folder or file that is not a NanoDRR dataset: it is never written into."""


class DatasetMismatchError(DatasetError):
    """An existing dataset was made with other settings or CTs: resuming would mix two datasets."""


class DatasetTooLargeError(DatasetError):
    """The dataset would not fit (estimated bytes on disk against free space or a size limit)."""

    def __init__(self, message: str, estimated_bytes: int) -> None:
        super().__init__(message)
        self.estimated_bytes = estimated_bytes


class IncompleteDatasetError(DatasetError):
    """A reader was pointed at a dataset whose generation has not finished."""


class DiskFullError(OSError):
    """The disk filled up while writing; free space and re-run the same command to resume."""


__all__ = [
    "CTReadError",
    "DatasetError",
    "DatasetMismatchError",
    "DatasetTooLargeError",
    "DiskFullError",
    "IncompleteDatasetError",
    "NotADatasetError",
]

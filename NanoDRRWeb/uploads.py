"""Files uploaded from the browser: size limit, name and format checks, written to a private folder.

A file is accepted only if its declared and actual sizes agree and are within the limit, its name has a
volume extension Slicer reads from one file, and it then loads (see :mod:`NanoDRRWeb.data`). Anything else
is a :class:`NanoDRRError` naming the file; the scene is only changed once everything passed.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from NanoDRRLib.errors import NanoDRRError

#: Single-file volume formats (NRRD with a detached header, .mhd + .raw, DICOM series need several files).
VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd")
#: X-ray files nanodrr_engine.data.xray.read_xray reads.
XRAY_EXTENSIONS = (".dcm", ".dicom", ".png", ".tif", ".tiff", ".nrrd")
DEFAULT_MAX_UPLOAD_MB = 512


def _safeName(name: str) -> str:
    base = Path(str(name)).name  # no folders from the client
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"


def checkUpload(
    file: dict | None, role: str, maxBytes: int, extensions: tuple[str, ...] = VOLUME_EXTENSIONS
) -> tuple[str, bytes]:
    """``(safe file name, content)`` of a trame client file dict, or NanoDRRError naming ``role``."""
    if not isinstance(file, dict):
        raise NanoDRRError(f"{role}: no file received")
    name = file.get("name")
    if not isinstance(name, str) or not name:
        raise NanoDRRError(f"{role}: the upload has no file name")
    lower = name.lower()
    if not lower.endswith(extensions):
        kind = "a single-file volume" if extensions == VOLUME_EXTENSIONS else "a file of a known format"
        raise NanoDRRError(f"{role}: {name!r} is not {kind}; expected one of {', '.join(extensions)}")
    declared = file.get("size")
    if isinstance(declared, (int, float)) and declared > maxBytes:
        raise NanoDRRError(
            f"{role}: {name!r} is {declared / 2**20:.1f} MB; the limit is {maxBytes / 2**20:.0f} MB"
        )
    content = file.get("content")
    if isinstance(content, list):
        content = b"".join(content)
    if not isinstance(content, (bytes, bytearray)) or len(content) == 0:
        raise NanoDRRError(f"{role}: {name!r} arrived empty")
    if len(content) > maxBytes:
        raise NanoDRRError(
            f"{role}: {name!r} is {len(content) / 2**20:.1f} MB; the limit is {maxBytes / 2**20:.0f} MB"
        )
    if isinstance(declared, (int, float)) and int(declared) != len(content):
        raise NanoDRRError(f"{role}: {name!r} arrived incomplete ({len(content)} of {int(declared)} bytes)")
    return _safeName(name), bytes(content)


class UploadFolder:
    """A private temporary folder for uploaded files (removed with the app)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="nanodrr-web-")
        self.path = Path(self._dir.name)
        self._n = 0

    def write(self, name: str, content: bytes) -> Path:
        self._n += 1
        folder = self.path / str(self._n)  # one folder per upload: names never collide
        folder.mkdir()
        path = folder / name
        path.write_bytes(content)
        return path

    def cleanup(self) -> None:
        self._dir.cleanup()

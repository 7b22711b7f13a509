"""Reading CT volumes and labelmaps into RAS through SimpleITK.

:func:`check_complete` verifies, independently of the readers, that a volume file holds all the voxel
bytes its header promises (and that compressed data is an intact stream): ITK's NIfTI reader (so
SimpleITK and Slicer) fills a truncated file's missing voxels with 0 without any error or warning,
and the NRRD/MetaImage readers decode a damaged compressed stream without checking it.
"""

from __future__ import annotations

import bz2
import math
import struct
import zlib
from pathlib import Path

import numpy as np

#: ITK images are LPS; Slicer, NIfTI tools and this engine use RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_BLOCK = 1 << 22  # bytes read (and at most inflated) at a time: the check holds no whole volume
_GZIP_MAGIC = b"\x1f\x8b"
_BZ2_MAGIC = b"BZh"


class _Corrupt(Exception):
    """A reason a data file is incomplete or damaged (turned into a ValueError naming the file)."""

    def __init__(self, reason: str, datafile: Path | None = None) -> None:
        super().__init__(reason)
        self.datafile = datafile


def check_complete(path: str | Path, name: str = "imagepath") -> None:
    """Raise ValueError (naming ``name`` and the file) when a volume file is truncated or corrupt.

    Checks NIfTI (.nii, .nii.gz, .hdr/.img), NRRD (.nrrd, .nhdr, gzip/bzip2/raw) and MetaImage
    (.mha, .mhd): the header's dimensions and voxel type give the bytes of voxel data there must be,
    which the (inflated) data must hold; a compressed stream must end properly and pass its checksum.
    Headers this check cannot parse, and other formats, are left to the reader.
    """
    path = Path(path)
    lower = path.name.lower()
    try:
        if lower.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz")):
            _check_nifti(path)
        elif lower.endswith((".nrrd", ".nhdr")):
            _check_nrrd(path)
        elif lower.endswith((".mha", ".mhd")):
            _check_meta(path)
    except _Corrupt as e:
        where = f"{path}: its data file {e.datafile}" if e.datafile is not None else str(path)
        raise ValueError(f"{name}: {where} is truncated or corrupt: {e}") from None
    except (ValueError, struct.error):
        return  # a header field this check cannot parse: the reader reports the header
    except OSError as e:
        raise ValueError(f"{name}: cannot read {path}: {e}") from e


def _inflate(path: Path, offset: int, head_size: int = 0) -> tuple[int, bytes]:
    """``(bytes, first head_size bytes)`` of the gzip/zlib (or bzip2) data from ``offset`` to the end of
    the file, concatenated members read as zlib's gzread reads them. Raises _Corrupt for a stream that
    is damaged (a format or checksum error) or ends before its end marker."""
    total, head = 0, bytearray()

    def take(out: bytes) -> None:
        nonlocal total
        total += len(out)
        if len(head) < head_size:
            head.extend(out[: head_size - len(head)])

    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(_BLOCK)
        if not data:
            raise _Corrupt("there is no data after the header")
        bzip = data.startswith(_BZ2_MAGIC)
        magic, new = (
            (_BZ2_MAGIC, bz2.BZ2Decompressor) if bzip else (_GZIP_MAGIC, lambda: zlib.decompressobj(47))
        )
        d = new()  # zlib's wbits 47: a gzip or a zlib header (NRRD, NIfTI: gzip; MetaImage: zlib)
        try:
            while True:
                if not data:
                    data = f.read(_BLOCK)
                    if not data:  # the end of the file: what zlib still holds back may end the stream
                        if not bzip:
                            take(d.flush())
                        if d.eof:
                            return total, bytes(head)
                        raise _Corrupt(
                            f"its compressed data ends early (no end of stream after {total:,} bytes)"
                        )
                take(d.decompress(data) if bzip else d.decompress(data, _BLOCK))  # bounded output
                data = b"" if bzip else d.unconsumed_tail
                if d.eof:
                    data = d.unused_data or f.read(_BLOCK)
                    if not data.startswith(magic):
                        return total, bytes(head)  # bytes after the last member are ignored, as by gzread
                    d = new()
        except (zlib.error, OSError, EOFError) as e:
            raise _Corrupt(f"its compressed data is damaged ({e})") from None


def _is_compressed(path: Path, offset: int = 0) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        magic = f.read(3)
    return magic.startswith(_GZIP_MAGIC) or magic == _BZ2_MAGIC


def _data_bytes(path: Path, offset: int, compressed: bool | None = None, head_size: int = 0):
    """Bytes of data in ``path`` from ``offset`` (inflated if compressed; detected when None)."""
    if compressed is None:
        compressed = _is_compressed(path, offset)
    if compressed:
        return _inflate(path, offset, head_size)
    size = path.stat().st_size - offset
    head = b""
    if head_size:
        with open(path, "rb") as f:
            f.seek(offset)
            head = f.read(head_size)
    return max(size, 0), head


def _require(have: int, want: int, what: str) -> None:
    if have < want:
        raise _Corrupt(f"its header promises {want:,} bytes of {what}, the data holds {have:,}")


def _check_data(
    header: Path, data: Path, offset: int, compressed: bool | None, skip: int, want: int, what: str
):
    """The data (in ``header`` itself, or a detached file) from ``offset``, after ``skip`` bytes, must
    hold ``want`` bytes."""
    try:
        if not data.is_file():
            raise _Corrupt("it does not exist")
        _require(_data_bytes(data, offset, compressed)[0] - skip, want, what)
    except _Corrupt as e:
        raise _Corrupt(str(e), None if data == header else data) from None


# --- NIfTI -----------------------------------------------------------------------------------------


def _nifti_header(head: bytes):
    """``(voxel bytes, vox_offset, single file)`` from a NIfTI-1/-2 (or Analyze) header, or None."""
    for e in "<>":
        if len(head) >= 4 and struct.unpack(e + "i", head[:4])[0] == 348 and len(head) >= 348:
            dims = struct.unpack(e + "8h", head[40:56])
            bitpix = struct.unpack(e + "h", head[72:74])[0]
            offset = struct.unpack(e + "f", head[108:112])[0]
            single = head[344:347] == b"n+1"
            break
        if len(head) >= 4 and struct.unpack(e + "i", head[:4])[0] == 540 and len(head) >= 540:
            bitpix = struct.unpack(e + "h", head[14:16])[0]
            dims = struct.unpack(e + "8q", head[16:80])
            offset = struct.unpack(e + "q", head[168:176])[0]
            single = head[4:7] == b"n+2"
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or not math.isfinite(offset) or offset < 0:
        return None
    n = math.prod(max(int(d), 1) for d in dims[1 : dims[0] + 1])
    return (n * bitpix + 7) // 8, int(offset), single, dims[1 : dims[0] + 1], bitpix


def _check_nifti(path: Path) -> None:
    total, head = _data_bytes(path, 0, head_size=540)
    header = _nifti_header(head)
    if header is None:
        return
    nbytes, offset, single, dims, bitpix = header
    what = f"voxel data ({'×'.join(map(str, dims))} voxels of {bitpix} bits)"
    if single:
        _require(total - offset, nbytes, what)
        return
    stem = path.name[: -len(".hdr.gz")] if path.name.lower().endswith(".gz") else path.name[: -len(".hdr")]
    for ext in (".img", ".IMG", ".img.gz", ".IMG.GZ"):
        img = path.with_name(stem + ext)
        if img.is_file():
            _check_data(path, img, 0, None, offset, nbytes, what)
            return


# --- NRRD ------------------------------------------------------------------------------------------

_NRRD_TYPES = {  # teem's type names and their aliases → bytes per value
    name: size
    for size, names in (
        (1, "signed char,int8,int8_t,uchar,unsigned char,uint8,uint8_t"),
        (2, "short,short int,signed short,signed short int,int16,int16_t,ushort,unsigned short,"
            "unsigned short int,uint16,uint16_t"),
        (4, "int,signed int,int32,int32_t,uint,unsigned int,uint32,uint32_t,float"),
        (8, "longlong,long long,long long int,signed long long,signed long long int,int64,int64_t,"
            "ulonglong,unsigned long long,unsigned long long int,uint64,uint64_t,double"),
    )
    for name in names.split(",")
}  # fmt: skip


def _read_header(path: Path, first: bytes, limit: int = 1 << 20) -> tuple[list[str], int]:
    """Header lines up to the first empty line (or the end of the file) and the data's byte offset."""
    with open(path, "rb") as f:
        if not f.read(len(first)).startswith(first):
            return [], -1
        f.seek(0)
        lines, offset = [], 0
        while offset < limit:
            raw = f.readline()
            if not raw:
                break
            offset += len(raw)
            line = raw.rstrip(b"\r\n").decode("latin-1")
            if not line:
                break
            lines.append(line)
        return lines, offset


def _check_nrrd(path: Path) -> None:
    lines, offset = _read_header(path, b"NRRD000")
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or ": " not in line:
            continue
        key, value = line.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    size = _NRRD_TYPES.get(fields.get("type", "").lower())
    if fields.get("type", "").lower() == "block":
        size = int(fields.get("blocksize", "0") or 0) or None
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
    except (KeyError, ValueError):
        return
    encoding = fields.get("encoding", "").lower()
    if size is None or not sizes or encoding not in ("raw", "gzip", "gz", "bzip2", "bz2"):
        return  # text encodings: the reader counts the values itself
    datafile = fields.get("datafile")
    if datafile is not None:
        if datafile.startswith("LIST") or "%" in datafile or len(datafile.split()) > 1:
            return  # one file per slice: left to the reader
        data = Path(datafile) if Path(datafile).is_absolute() else path.parent / datafile
        offset = 0
    else:
        data = path
    offset = _skip_lines(data, offset, int(fields.get("lineskip", "0"))) if data.is_file() else offset
    skip = max(int(fields.get("byteskip", "0")), 0)  # -1: raw data at the end of the file
    what = f"voxel data ({'×'.join(map(str, sizes))} × {fields['type']})"
    _check_data(path, data, offset, encoding != "raw", skip, math.prod(sizes) * size, what)


def _skip_lines(path: Path, offset: int, n: int) -> int:
    if n <= 0:
        return offset
    with open(path, "rb") as f:
        f.seek(offset)
        for _ in range(n):
            offset += len(f.readline())
    return offset


# --- MetaImage -------------------------------------------------------------------------------------

_META_TYPES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}  # fmt: skip


def _check_meta(path: Path) -> None:
    fields, offset = {}, 0
    with open(path, "rb") as f:
        for raw in iter(lambda: f.readline(1 << 16), b""):
            offset += len(raw)
            key, eq, value = raw.decode("latin-1").partition("=")
            if not eq:
                return  # not a MetaImage header: left to the reader
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break
            if offset > 1 << 20:
                return
    size = _META_TYPES.get(fields.get("elementtype", "").upper())
    try:
        dims = [int(s) for s in fields["dimsize"].split()]
        channels = int(fields.get("elementnumberofchannels", "1"))
    except (KeyError, ValueError):
        return
    datafile = fields.get("elementdatafile", "")
    if size is None or not dims or not datafile or datafile.upper() == "LIST" or "%" in datafile:
        return  # file lists and patterns: left to the reader
    if datafile.upper() == "LOCAL":
        data = path
    else:
        data = Path(datafile) if Path(datafile).is_absolute() else path.parent / datafile
        offset = max(int(fields.get("headersize", "0")), 0)  # -1: data at the end of the file
    compressed = fields.get("compresseddata", "false").lower() == "true"
    what = f"voxel data ({'×'.join(map(str, dims))} × {fields['elementtype']})"
    _check_data(path, data, offset, compressed, 0, math.prod(dims) * channels * size, what)


# --- reading ---------------------------------------------------------------------------------------


def read_image(path: str | Path, name: str = "imagepath"):
    """Read a NIfTI/NRRD/MHA file or a DICOM series folder as a SimpleITK image.

    Files are first checked by :func:`check_complete` (a truncated or corrupt file is an error, not
    an image with missing voxels).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file or folder: {path}")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise ValueError(f"{name}: no DICOM series found in folder {path}")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            return reader.Execute()
        check_complete(path, name)
        return sitk.ReadImage(str(path))
    except RuntimeError as e:  # SimpleITK reports unreadable files as RuntimeError
        raise ValueError(f"{name}: cannot read {path}: {str(e).strip().splitlines()[-1]}") from e


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

    label = read_image(path, "labelpath")
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

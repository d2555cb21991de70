"""Reading and writing medical image files as :class:`~napari_medlearn.imaging.volume.Volume`.

Formats
-------
* NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel, read and written. The array is
  transposed from NIfTI's ``(x, y, z[, t])`` to napari's ``(z, y, x)`` / ``(t, z, y, x)``
  and the affine's columns are permuted to match; the writer undoes both, so a file read
  and written back has the same array, dtype and affine (NIfTI-1 stores the sform as
  float32, so an affine that did not come from a file is rounded to float32 on writing).
* DICOM series (a folder of single-frame files) through pydicom, read only. Geometry comes
  from ImagePositionPatient (IPP), ImageOrientationPatient (IOP) and PixelSpacing, never
  from SliceLocation or SliceThickness, which scanners fill in inconsistently. Slices are
  ordered by IPP projected on the slice normal (the cross product of the two IOP vectors);
  cine phases of one slice by TriggerTime. DICOM's patient frame is LPS; the affine is
  converted to RAS like NIfTI's. Enhanced (multi-frame) MR/CT files are read frame by frame
  from their functional groups by the same code (:mod:`napari_medlearn.imaging.dicom_enhanced`).
* NRRD and MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through SimpleITK, read only.

Conventions follow the DICOM standard (PS3.3 C.7.6.2.1.1, "Image Position and Image
Orientation") and the NIfTI-1 header definition (nifti1.h, qform/sform). Only numpy,
nibabel, pydicom and SimpleITK are imported here: no torch, napari or Qt.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import structures
from .atomic import atomic_path
from .volume import SPATIAL_AXES, Volume

__all__ = [
    "read_nifti",
    "write_nifti",
    "read_dicom_series",
    "read_dicom_folder",
    "read_itk_image",
    "read_volume",
    "is_dicom_file",
    "dicom_series_uid",
    "folder_has_dicom",
    "NIFTI_SUFFIXES",
    "ITK_SUFFIXES",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")

# (k_z, j_y, i_x) <-> (i, j, k): the permutation is its own inverse.
_ZYX_FROM_IJK = [2, 1, 0, 3]
# DICOM and ITK use LPS; NIfTI and Volume use RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# NIfTI time units -> milliseconds. NIfTI files often leave the unit unknown; like FSL we
# then take pixdim[4] to be in seconds.
_MS_PER_TIME_UNIT = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3, "unknown": 1000.0}
_MM_PER_SPACE_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}


def _has_suffix(path: str | os.PathLike, suffixes: tuple[str, ...]) -> bool:
    name = os.fspath(path).lower()
    return any(name.endswith(s) for s in suffixes)


# ---------------------------------------------------------------------------------------
# claimed sizes: a header is checked against the file before what it claims is allocated
# ---------------------------------------------------------------------------------------
class _Refused(ValueError):
    """A file refused with a message that already names it and the problem (never re-wrapped)."""


# The readers hold the decoded bytes and the array, or the array and its napari-ordered copy,
# at once: a claim may take at most this share of the memory available.
_MEMORY_SHARE = 0.5
# Compressed data are decoded in pieces of this size, so a stream shorter than its header
# claims is found after reading what it holds, never after allocating what it claims.
_DECODE_CHUNK = 1 << 22


def _available_memory() -> int | None:
    """Bytes this process may still allocate, or None when nothing tells.

    The memory the system has available (psutil's ``virtual_memory().available`` when psutil
    is installed, else ``MemAvailable`` from ``/proc/meminfo``, else free pages from
    ``os.sysconf``), lowered to what an address-space limit (``RLIMIT_AS``, as set by a batch
    system or ``ulimit -v``) leaves this process.
    """
    avail = None
    try:
        import psutil

        avail = int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no access to the counters
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError, IndexError):
            pass
        if avail is None:
            try:
                avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (AttributeError, ValueError, OSError):
                pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            used = 0
            with open("/proc/self/statm") as f:   # first field: the address space now, in pages
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            left = max(0, int(limit) - used)
            avail = left if avail is None else min(avail, left)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return avail


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _claim(kind: str, shape: tuple[int, ...], dtype: str, nbytes: int) -> str:
    return f"its {kind} header claims shape {tuple(int(s) for s in shape)} {dtype} ({_fmt_bytes(nbytes)})"


def _check_shape(path: Path, kind: str, shape: tuple[int, ...]) -> None:
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise _Refused(f"cannot read {path}: {kind} header has a negative dimension: shape {shape}")
    if not shape or any(s == 0 for s in shape):
        raise _Refused(f"cannot read {path}: {kind} header has a zero-size dimension: shape {shape}")


def _check_memory(path: Path, claim: str, nbytes: int) -> None:
    """Refuse a claim larger than the memory this process can give it (see _MEMORY_SHARE)."""
    avail = _available_memory()
    if avail is not None and nbytes > _MEMORY_SHARE * avail:
        raise _Refused(f"cannot read {path}: {claim}, more than this machine can hold now "
                       f"({_fmt_bytes(avail)} available); its header is damaged or the image is too large")


def _check_stored(path: Path, claim: str, need_end: int, size: int, where: str = "") -> None:
    """Refuse uncompressed data that would end past the end of its file."""
    if need_end > size:
        raise _Refused(f"cannot read {path}: {claim}, ending at byte {need_end}{where}, but the "
                       f"file has {size} bytes; it is truncated or its header is damaged")


def _read_decoded(raw: io.BufferedIOBase, need: int) -> bytes:
    """Up to ``need`` bytes decoded from a decompressing file object, in pieces.

    Reading stops at ``need`` (data after it are never decoded) or where the stream ends; a
    stream cut short (``EOFError``) ends the data like a short one, so the caller compares
    the length with the claim. Memory grows with the data that are there, never with a claim.
    """
    pieces, have = [], 0
    try:
        while have < need:
            piece = raw.read(min(_DECODE_CHUNK, need - have))
            if not piece:
                break
            pieces.append(piece)
            have += len(piece)
    except EOFError:
        pass
    return b"".join(pieces)


def _inflate_zlib(f: io.BufferedIOBase, need: int) -> bytes:
    """Up to ``need`` bytes of a zlib (or gzip) stream read from ``f``, in pieces (see
    :func:`_read_decoded`); MetaImage's CompressedData are zlib, which no stdlib file object reads."""
    d = zlib.decompressobj(zlib.MAX_WBITS | 32)     # +32: zlib or gzip header, told by its magic
    pieces, have, pending = [], 0, b""
    while have < need and not d.eof:
        if not pending:
            pending = f.read(_DECODE_CHUNK)
            if not pending:
                pieces.append(d.flush()[: need - have])
                break
        piece = d.decompress(pending, min(_DECODE_CHUNK, need - have))
        pending = d.unconsumed_tail
        pieces.append(piece)
        have += len(piece)
    return b"".join(pieces)[:need]


# ---------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------
def read_nifti(path: str | os.PathLike) -> Volume:
    """Read a NIfTI file into a :class:`Volume` in napari axis order.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz`` file holding a 2-D ``(x, y)``, 3-D ``(x, y, z)`` or 4-D
        ``(x, y, z, t)`` image.

    Returns
    -------
    Volume
        ``data`` of shape ``(y, x)``, ``(z, y, x)`` or ``(t, z, y, x)`` (a singleton z stays
        a z axis of length 1). Unscaled files keep their stored dtype in native byte order
        (integer labels stay integer); files with a non-trivial ``scl_slope``/``scl_inter``
        are read as scaled float32. ``affine`` maps ``(k_z, j_y, i_x)`` to RAS mm (nibabel's
        best affine: sform if set, else qform). ``meta`` holds ``source``,
        ``nifti_header`` (a copy of the header object), ``nifti_dtype``, ``sform_code``,
        ``qform_code`` and, for 4-D files, ``time_step`` in ms (pixdim[4] in its unit).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read as NIfTI or has more than 4 dimensions.
    """
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        img = _load_nifti(path)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"{type(img).__name__} is not NIfTI")
        header = img.header
        proxy = img.dataobj
        scaled = not (float(getattr(proxy, "slope", 1.0)) == 1.0
                      and float(getattr(proxy, "inter", 0.0)) == 0.0)
        arr = np.asanyarray(proxy)
        affine_ijk, repaired = _nifti_affine(img)
        del img, proxy          # a decoded .nii.gz is held by the image: free it before the copies below
    except _Refused:
        raise
    except Exception as exc:  # nibabel raises many types for a broken file
        raise ValueError(f"cannot read {path} as NIfTI: {_one_line(exc)}") from None
    arr = np.asarray(arr)
    if scaled:
        arr = arr.astype(np.float32)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.writeable:
        arr = arr.copy()
    if arr.dtype.fields is not None or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        what = "colour (RGB) voxels" if arr.dtype.fields else f"voxels of type {arr.dtype}"
        raise ValueError(f"cannot read {path}: it holds {what}, not grey values; convert it to grey first")
    if arr.ndim not in (2, 3, 4):
        raise ValueError(f"cannot read {path}: {arr.ndim}-D NIfTI of shape {arr.shape} "
                         "(only 2-D, 3-D and 4-D are supported)")

    data = np.ascontiguousarray(arr.T)  # (x, y[, z[, t]]) -> ([t,] [z,] y, x)
    axes = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("t", "z", "y", "x")}[arr.ndim]
    space_unit = _xyzt_units(header)[0]
    if space_unit in _MM_PER_SPACE_UNIT:          # "unknown" is read as mm, like every tool does
        affine_ijk = affine_ijk.copy()
        affine_ijk[:3] *= _MM_PER_SPACE_UNIT[space_unit]
    affine = affine_ijk[:, _ZYX_FROM_IJK]
    if repaired:
        warnings.warn(f"{path.name}: {repaired}", stacklevel=2)
    meta: dict[str, Any] = {
        "source": str(path),
        "nifti_header": header.copy(),
        "nifti_dtype": np.dtype(header.get_data_dtype()).newbyteorder("="),
        "sform_code": int(header["sform_code"]),
        "qform_code": int(header["qform_code"]),
    }
    if repaired:
        meta["geometry_repaired"] = repaired
    kind = structures.kind_from_nifti(header)
    if kind is not None:
        meta[structures.META_KEY] = kind
    if arr.ndim == 4:
        t_unit = _xyzt_units(header)[1]
        step = float(header["pixdim"][4])
        if t_unit in _MS_PER_TIME_UNIT and step > 0:
            meta["time_step"] = step * _MS_PER_TIME_UNIT[t_unit]
    return Volume(data, affine, axes, meta)


def _load_nifti(path: Path):
    """A nibabel image of ``path`` whose data are known to be there as its header claims.

    The header (the first 540 bytes, decoded for ``.nii.gz``) gives shape, dtype and data
    offset. A ``.nii`` must hold the data within the file (vox_offset + bytes <= file size);
    a ``.nii.gz`` is decoded in pieces (gzip's ISIZE trailer counts modulo 4 GiB, so only
    decoding tells its length) up to the claimed end and no further, and refused where the
    stream ends first. Either way a claim larger than the memory available is refused before
    anything is read. Raises :class:`_Refused` naming the claim, else nibabel's errors.
    """
    import nibabel as nib

    gz = path.name.lower().endswith(".gz")
    with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
        head = _read_decoded(f, 540)
    sizeof = [int.from_bytes(head[:4], order) for order in ("little", "big")] if len(head) >= 4 else []
    klass = nib.Nifti2Image if 540 in sizeof else nib.Nifti1Image
    if not ({348, 540} & set(sizeof)) or len(head) < (540 if klass is nib.Nifti2Image else 348):
        raise _Refused(f"cannot read {path} as NIfTI: no NIfTI header (the file starts with "
                       f"{len(head)} bytes that are not one)")
    # the fixed header alone: extensions follow it up to vox_offset, and nibabel reads them below
    header = klass.header_class(head[: 540 if klass is nib.Nifti2Image else 348])
    shape = tuple(int(s) for s in header.get_data_shape())
    _check_shape(path, "NIfTI", shape)
    dtype = np.dtype(header.get_data_dtype())
    nbytes = math.prod(shape) * dtype.itemsize
    offset = int(header.get_data_offset())
    claim = _claim("NIfTI", shape, dtype.name, nbytes)
    _check_memory(path, claim, nbytes)
    if not gz:
        _check_stored(path, claim, offset + nbytes, path.stat().st_size, f" (data from byte {offset})")
        return nib.load(str(path), mmap=False)
    with gzip.open(path, "rb") as f:
        raw = _read_decoded(f, offset + nbytes)
    if len(raw) < offset + nbytes:
        raise _Refused(f"cannot read {path}: {claim} from byte {offset}, but its gzip stream decodes to "
                       f"{len(raw)} bytes; it is truncated or its header is damaged")
    return klass.from_bytes(raw)


def _xyzt_units(header) -> tuple[str, str]:
    """(space, time) unit names of a NIfTI header; a code NIfTI does not define reads as unknown
    (nibabel's ``get_xyzt_units`` raises KeyError for one)."""
    from nibabel.nifti1 import unit_codes

    code = int(header["xyzt_units"])
    names = []
    for part in (code % 8, code - code % 8):
        try:
            names.append(str(unit_codes.label[part]))
        except KeyError:
            names.append("unknown")
    return names[0], names[1]


def _nifti_affine(img) -> tuple[np.ndarray, str | None]:
    """nibabel's best affine, repaired when its voxel sizes contradict ``pixdim``.

    Some exporters write an sform whose columns have unit length while ``pixdim`` holds the
    real voxel size (the public ACDC copies do: 1 mm in the sform, 1.76 x 1.76 x 10 mm in
    pixdim). Trusting such an sform makes every volume in mL wrong by the voxel volume. When
    the sform's sizes disagree with pixdim, the qform is used if it agrees; otherwise the
    sform keeps its directions and origin and takes its voxel sizes from pixdim. An affine
    that is no geometry at all (a NaN, infinite or absurd entry, or a singular matrix: a
    damaged header) is replaced by the qform, else by pixdim alone (1 mm for a voxel size that
    is not finite and at least 1e-3), and the repair is said. Returns the ``(i, j, k)`` affine and a note of the repair (None when
    nothing was changed).
    """
    header = img.header
    # pixdim[1:4], not get_zooms(): a 2-D file's zooms stop at two, but its pixdim[3] is the
    # slice thickness its sform's third column also holds
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    zooms_ok = bool(np.all(_usable_zooms(zooms)))
    try:
        aff = np.asarray(img.affine, dtype=float)
    except Exception:   # nibabel computing a qform from a damaged quaternion
        aff = np.full((4, 4), np.nan)
    if not _is_geometry(aff):
        return _fallback_affine(header, zooms, "the header's affine is not a geometry (non-finite or singular)")
    norms = np.linalg.norm(aff[:3, :3], axis=0)
    if int(header["sform_code"]) <= 0 or not zooms_ok or np.allclose(norms, zooms, rtol=1e-3):
        return aff, None
    fmt = lambda v: " x ".join(f"{float(x):.4g}" for x in v)  # noqa: E731
    what = f"sform voxel size {fmt(norms)} mm disagrees with pixdim {fmt(zooms)} mm"
    if int(header["qform_code"]) > 0:
        q = _nifti_qform(header)
        if _is_geometry(q) and np.allclose(np.linalg.norm(q[:3, :3], axis=0), zooms, rtol=1e-3):
            return q, what + "; used the qform, which agrees with pixdim"
    fixed = aff.copy()
    fixed[:3, :3] = aff[:3, :3] / norms * zooms
    if not _is_geometry(fixed):
        return _fallback_affine(header, zooms, what)
    return fixed, what + "; kept the sform's directions and origin with pixdim's voxel size"


def _usable_zooms(zooms: np.ndarray) -> np.ndarray:
    """Which voxel sizes (in the file's unit) are sizes: finite and at least 1e-3 (1 um in mm)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(zooms) & (zooms >= 1e-3)


def _is_geometry(aff: np.ndarray) -> bool:
    """True for a 4x4 voxel-to-world matrix that places voxels: finite, within 10 km of the
    scanner (in the file's unit) and invertible."""
    return bool(np.all(np.isfinite(aff)) and np.all(np.abs(aff) < 1e7)
                and abs(np.linalg.det(aff[:3, :3])) > 1e-12)


def _nifti_qform(header) -> np.ndarray:
    try:
        return np.asarray(header.get_qform(), dtype=float)
    except Exception:   # a damaged quaternion
        return np.full((4, 4), np.nan)


def _fallback_affine(header, zooms: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """The qform when it is a geometry, else pixdim's axis-aligned affine (see _nifti_affine)."""
    if int(header["sform_code"]) > 0 and int(header["qform_code"]) > 0:
        q = _nifti_qform(header)
        if _is_geometry(q):
            return q, what + "; used the qform"
    good = _usable_zooms(zooms)
    h = header.copy()
    pixdim = np.asarray(h["pixdim"], dtype=float)
    pixdim[1:4] = np.where(good, zooms, 1.0)
    h["pixdim"] = pixdim
    note = "pixdim alone" if good.all() else "pixdim, with 1 mm for voxel sizes that are not sizes"
    return np.asarray(h.get_base_affine(), dtype=float), f"{what}; used {note}"


def _nifti_output_dtype(data: np.ndarray, meta: dict[str, Any]) -> np.dtype:
    """The dtype to store ``data`` as: the source file's dtype when the array still has it,
    the smallest of uint8/int16/int32 for other integer labels, float32/float64 for floats."""
    dt = data.dtype
    if dt == bool:
        return np.dtype(np.uint8)
    if np.issubdtype(dt, np.integer):
        src = meta.get("nifti_dtype")
        if src is not None and np.dtype(src) == dt:
            return dt
        if data.size == 0:
            return np.dtype(np.uint8)
        lo, hi = int(data.min()), int(data.max())
        for cand in (np.uint8, np.int16, np.int32):
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max:
                return np.dtype(cand)
        return np.dtype(np.int64)
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt in (np.float32, np.float64, np.complex64, np.complex128):
        return dt
    raise ValueError(f"cannot write a {dt} array as NIfTI")


def _nifti_layout(volume: Volume) -> tuple[np.ndarray, bool]:
    """Array in NIfTI order ``(x, y[, z[, t]])`` and whether it has a time axis."""
    axes = tuple(volume.axes)
    n_sp = len(volume.spatial_axes)
    if n_sp not in (2, 3) or axes[-n_sp:] != SPATIAL_AXES[-n_sp:] or len(axes) - n_sp > 1:
        raise ValueError(f"cannot write axes {axes} as NIfTI: expected ([t,] [z,] y, x)")
    data = np.asarray(volume.data)
    has_time = len(axes) > n_sp
    if has_time and n_sp == 2:
        data = data[:, None]  # (t, y, x) -> (t, 1, y, x): NIfTI's 4th axis must be the 4th dim
    return data.T, has_time


def write_nifti(volume: Volume, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a :class:`Volume` as NIfTI, atomically.

    The array is transposed back to ``(x, y[, z[, t]])`` and the affine's columns permuted
    back to ``(i, j, k)``. The affine is written as both sform and qform, with the codes in
    ``meta['sform_code']``/``meta['qform_code']`` when they are non-zero, else 1 (scanner
    anatomical). When ``meta['nifti_header']`` is present (a volume read by
    :func:`read_nifti`, or derived from one with ``with_data``) it is the template, so units,
    description and intent survive; for an array whose dtype differs from the source file's
    (e.g. labels predicted from a scan) the intent and display range are reset.

    Parameters
    ----------
    volume
        Volume with axes ``(y, x)``, ``(z, y, x)``, ``(t, z, y, x)`` or ``(t, y, x)``.
    path
        Output file, ending in ``.nii`` or ``.nii.gz`` (gzipped).
    overwrite
        Replace an existing file. Without it an existing file raises ``FileExistsError``.

    Returns
    -------
    Path
        The written file.

    Notes
    -----
    Dtypes: integer arrays keep the source file's dtype when they still have it; otherwise
    they are stored as uint8 if the values fit 0..255, else int16 or int32 (bool as uint8).
    float32/float64 are kept. The ``time_step`` (ms) goes to pixdim[4] in the template
    header's time unit, or in seconds when there is no template. The file is first written
    to a temporary file in the same directory and then moved into place with
    :func:`os.replace`, so a reader never sees a half-written file.
    """
    import nibabel as nib

    path = Path(path)
    if not _has_suffix(path, NIFTI_SUFFIXES):
        raise ValueError(f"cannot write {path}: a NIfTI file name ends in .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")

    meta = dict(volume.meta)
    data_xyz, has_time = _nifti_layout(volume)
    out_dtype = _nifti_output_dtype(np.asarray(volume.data), meta)
    affine_ijk = np.asarray(volume.affine, dtype=float)[:, _ZYX_FROM_IJK]

    template = meta.get("nifti_header")
    if isinstance(template, (bytes, bytearray)):
        template = nib.Nifti1Header(bytes(template)[:348])
    image_class = nib.Nifti2Image if isinstance(template, nib.Nifti2Header) else nib.Nifti1Image
    header = template.copy() if isinstance(template, nib.Nifti1Header) else None

    # the cast is exact: out_dtype holds every value (see _nifti_output_dtype)
    img = image_class(data_xyz.astype(out_dtype, copy=False), affine_ijk, header=header, dtype=out_dtype)
    hdr = img.header
    hdr.set_data_dtype(out_dtype)
    hdr.set_slope_inter(np.nan, np.nan)
    if header is not None:
        src_dtype = meta.get("nifti_dtype")
        if src_dtype is None or np.dtype(src_dtype) != np.asarray(volume.data).dtype:
            hdr.set_intent("none")
            hdr["cal_min"] = 0.0
            hdr["cal_max"] = 0.0
        hdr.set_xyzt_units("mm", _xyzt_units(hdr)[1])   # the affine is in mm, whatever the source's unit
    else:
        hdr.set_xyzt_units("mm", "sec")

    # which structures an integer map holds travels inside the file (imaging.structures)
    kind = structures.kind_of(meta)
    integer = np.issubdtype(out_dtype, np.integer) or out_dtype == bool
    structures.set_nifti_kind(hdr, kind if integer else None)

    sform_code = int(meta.get("sform_code") or 0)
    qform_code = int(meta.get("qform_code") or 0)
    sform_code = sform_code or qform_code or 1
    qform_code = qform_code or sform_code
    img.set_sform(affine_ijk, code=sform_code)
    img.set_qform(affine_ijk, code=qform_code)

    if has_time and meta.get("time_step"):
        t_unit = _xyzt_units(hdr)[1]
        if t_unit not in _MS_PER_TIME_UNIT:
            hdr.set_xyzt_units(_xyzt_units(hdr)[0], "sec")
            t_unit = "sec"
        hdr["pixdim"][4] = float(meta["time_step"]) / _MS_PER_TIME_UNIT[t_unit]
    elif has_time:
        # no known step (e.g. ED and ES frames from separate files): 0 reads back as none, where
        # nibabel's default 1 would read back as a 1 s step
        hdr["pixdim"][4] = 0.0

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


# ---------------------------------------------------------------------------------------
# NRRD / MetaImage
# ---------------------------------------------------------------------------------------
def read_itk_image(path: str | os.PathLike) -> Volume:
    """Read a 2-D or 3-D scalar NRRD/MetaImage file with SimpleITK.

    Parameters
    ----------
    path
        ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.

    Returns
    -------
    Volume
        ``(z, y, x)`` or ``(y, x)`` data; the affine is ITK's direction, spacing and origin
        converted from LPS to RAS, columns in ``(z, y, x)`` order.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()       # the header alone: nothing allocated yet
        shape = tuple(int(n) for n in reader.GetSize())
        dim, comps = len(shape), int(reader.GetNumberOfComponents())
        if dim not in (2, 3) or comps != 1:
            raise _Refused(f"cannot read {path}: only 2-D/3-D scalar images are supported (got "
                           f"{dim}-D of shape {shape} with {comps} component(s) per pixel)")
        _check_itk_claim(path, shape, comps, reader.GetPixelID())
        img = reader.Execute()
    except _Refused:
        raise
    except RuntimeError as exc:
        raise ValueError(f"cannot read {path}: {_one_line(exc)}") from None
    dim = img.GetDimension()
    data = sitk.GetArrayFromImage(img)  # already (z, y, x) / (y, x)
    direction = np.eye(3)
    direction[:dim, :dim] = np.reshape(img.GetDirection(), (dim, dim))
    spacing = np.ones(3)
    spacing[:dim] = img.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = img.GetOrigin()
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing  # columns i, j, k
    lps[:3, 3] = origin
    affine = (_LPS_TO_RAS @ lps)[:, _ZYX_FROM_IJK]
    axes = ("z", "y", "x") if dim == 3 else ("y", "x")
    return Volume(np.ascontiguousarray(data), affine, axes, {"source": str(path)})


def _itk_component_bytes(pixel_id: int) -> int | None:
    import SimpleITK as sitk

    sizes = {"Int8": 1, "UInt8": 1, "Int16": 2, "UInt16": 2, "Int32": 4, "UInt32": 4, "Int64": 8,
             "UInt64": 8, "Float32": 4, "Float64": 8}
    for name, n in sizes.items():
        for prefix in ("sitk", "sitkVector", "sitkLabel"):
            if getattr(sitk, prefix + name, None) == pixel_id:
                return n
    return {getattr(sitk, "sitkComplexFloat32", -9): 8, getattr(sitk, "sitkComplexFloat64", -9): 16}.get(pixel_id)


def _text_header(path: Path, first: bytes) -> tuple[list[str], int] | None:
    """The lines of a text header starting with ``first`` and the byte where its data start
    (after the blank line for NRRD, after ``ElementDataFile`` for MetaImage), or None."""
    with open(path, "rb") as f:
        blob = f.read(1 << 16)              # headers are a few hundred bytes; data follow
    if not blob.startswith(first):
        return None
    lines, pos = [], 0
    nrrd = first == b"NRRD"
    while pos < len(blob):
        end = blob.find(b"\n", pos)
        if end < 0:
            if len(blob) == 1 << 16:
                return None
            end = len(blob)                  # a detached header may end without a newline
        line = blob[pos:end].decode("latin-1").rstrip("\r")
        pos = end + 1
        if nrrd and not line.strip():
            return lines, pos
        lines.append(line)
        if not nrrd and line.replace(" ", "").lower().startswith("elementdatafile="):
            return lines, pos
    # a detached NRRD header ends with the file
    return (lines, len(blob)) if nrrd and len(blob) < 1 << 16 else None


def _header_fields(lines, sep: str) -> dict[str, str]:
    """``key<sep>value`` lines of a text header, keys lower-cased; comments (``#``) and NRRD's
    ``key:=value`` pairs are not fields."""
    fields = {}
    for line in lines:
        key, found, value = line.partition(sep)
        if found and not line.startswith("#") and not (sep == ":" and ":=" in line):
            fields[key.strip().lower()] = value.strip()
    return fields


def _itk_data_source(path: Path) -> tuple[Path, int, str, int] | None:
    """Where an NRRD / MetaImage file's data are and how they are stored:
    ``(data file, first byte, encoding, bytes to skip after decoding)``, encoding one of
    raw, gzip, bzip2, zlib, text; None when the header names several data files or is not
    understood (then only the memory check applies)."""
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        parsed = _text_header(path, b"NRRD")
        if parsed is None:
            return None
        lines, start = parsed
        fields = _header_fields(lines[1:], ":")
        encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
                    "ascii": "text", "text": "text", "txt": "text"}.get(fields.get("encoding", "").lower())
        data = fields.get("data file", fields.get("datafile"))
        try:
            line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
            byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        except ValueError:
            return None
        if encoding is None or line_skip:
            return None
        if data is not None:
            if " " in data or data.upper().startswith("LIST"):
                return None                  # several data files
            target = (path.parent / data) if not os.path.isabs(data) else Path(data)
            start = 0
        else:
            target = path
        if encoding == "raw":
            return target, (-1 if byte_skip == -1 else start + byte_skip), "raw", 0
        return target, start, encoding, max(byte_skip, 0)
    if name.endswith((".mha", ".mhd")):
        parsed = _text_header(path, b"")
        if parsed is None:
            return None
        lines, start = parsed
        fields = _header_fields(lines, "=")
        data = fields.get("elementdatafile", "")
        compressed = fields.get("compresseddata", "false").lower() == "true"
        try:
            header_size = int(fields.get("headersize", "0"))
        except ValueError:
            return None
        if data.upper() == "LOCAL":
            target = path
        elif data and " " not in data and data.upper() != "LIST" and "%" not in data:
            target, start = (path.parent / data) if not os.path.isabs(data) else Path(data), 0
        else:
            return None
        if compressed:
            return target, start, "zlib", 0
        return target, (-1 if header_size == -1 else start + header_size), "raw", 0
    return None


def _check_itk_claim(path: Path, shape: tuple[int, ...], comps: int, pixel_id: int) -> None:
    """Refuse an NRRD / MetaImage file whose header claims more data than it holds, before
    SimpleITK allocates the claim: raw data must fit in their file; compressed data are
    decoded in pieces up to the claimed length (no further) and refused where they end first;
    text data need at least one character per value. A claim larger than the memory
    available is refused first."""
    kind = "NRRD" if path.name.lower().endswith((".nrrd", ".nhdr")) else "MetaImage"
    _check_shape(path, kind, shape)
    item = _itk_component_bytes(pixel_id)
    if item is None:
        return                               # a pixel type SimpleITK will refuse itself
    nvalues = math.prod(shape) * comps
    nbytes = nvalues * item
    import SimpleITK as sitk

    claim = _claim(kind, shape, sitk.GetPixelIDValueAsString(pixel_id), nbytes)
    _check_memory(path, claim, nbytes)
    source = _itk_data_source(path)
    if source is None:
        return
    target, start, encoding, skip = source
    if not target.is_file():
        raise _Refused(f"cannot read {path}: its data file {target} does not exist")
    size = target.stat().st_size
    where = "" if target == path else f" of {target.name}"
    if encoding == "raw":
        end = nbytes if start == -1 else start + nbytes
        _check_stored(path, claim, end, size, where)
        return
    if encoding == "text":
        if size - start < 2 * nvalues - 1:
            raise _Refused(f"cannot read {path}: {claim}, {nvalues} values as text, but{where or ' the file'} "
                           f"holds {size - start} characters of data; it is truncated or its header is damaged")
        return
    need = skip + nbytes
    with open(target, "rb") as f:
        f.seek(start)
        try:
            if encoding == "zlib":
                got = len(_inflate_zlib(f, need))
            else:
                with (gzip.GzipFile(fileobj=f) if encoding == "gzip" else bz2.BZ2File(f)) as z:
                    got = len(_read_decoded(z, need))
        except (OSError, zlib.error, EOFError) as exc:
            raise _Refused(f"cannot read {path}: its {encoding} data are damaged: {_one_line(exc)}") from None
    if got < need:
        raise _Refused(f"cannot read {path}: {claim}, but its {encoding} data{where} decode to {got} bytes; "
                       "it is truncated or its header is damaged")


# ---------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Positions within this distance (mm) along the normal belong to the same slice.
_SAME_SLICE_MM = 1e-2
# A gap may differ from the median gap by this fraction before a slice counts as missing.
_GAP_TOLERANCE = 0.02
_IOP_TOLERANCE = 1e-3


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_series_uid(path: str | os.PathLike) -> str | None:
    """SeriesInstanceUID of a DICOM image file, or ``None`` if it is not a DICOM image.

    ``ValueError`` naming the problem for a damaged DICOM image file."""
    found = _inspect_file(Path(path))
    if isinstance(found, _Damaged):
        raise ValueError(f"cannot read {path}: it is a damaged DICOM file: {found.problem}")
    return found.series_uid if isinstance(found, _SliceHeader) else None


def _candidate_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def folder_has_dicom(folder: str | os.PathLike) -> bool:
    """True if ``folder`` (not its subfolders) holds at least one DICOM file."""
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(p) for p in _candidate_files(folder))


@dataclass(frozen=True)
class _SliceHeader:
    """The header fields of one DICOM file that decide where its pixels go."""

    path: Path
    series_uid: str
    description: str
    series_number: int | None
    modality: str
    rows: int
    columns: int
    position: np.ndarray | None      # IPP, LPS mm
    orientation: np.ndarray | None   # IOP: row (x) cosines then column (y) cosines
    pixel_spacing: tuple[float, float] | None  # (between rows = dy, between columns = dx)
    trigger_time: float | None
    instance_number: int | None
    slope: float
    intercept: float
    frames: int
    samples_per_pixel: int
    slice_spacing_tag: float | None  # SpacingBetweenSlices, else SliceThickness: 1-slice only
    sop_uid: str = ""                 # SOPInstanceUID: the same image copied twice has the same one
    frame: int | None = None          # the frame of an enhanced (multi-frame) file, see dicom_enhanced
    palette: bool = False             # PhotometricInterpretation PALETTE COLOR
    # counts some scanners write, which can tell that images are missing at an end of a stack
    images_in_acquisition: int | None = None   # ImagesInAcquisition
    number_of_slices: int | None = None        # NumberOfSlices (NM, PET)
    cardiac_images: int | None = None          # CardiacNumberOfImages: phases per slice


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    """An integer tag (IS, US, ...) as int; None when absent, not a number, or beyond IS's 32 bits."""
    f = _float_or_none(value)
    return None if f is None or not math.isfinite(f) or abs(f) >= 2**31 else int(f)


# names a DICOM file often has; files without the DICM marker named so are looked at twice
_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom", ".dic")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class _Damaged:
    """A file that is, or looks like, a DICOM image but cannot be used: what is wrong, and
    the series it names ('' when it does not tell)."""

    path: Path
    problem: str
    series_uid: str = ""


@dataclass(frozen=True)
class _Foreign:
    """A file without the DICM marker. ``cut``: empty, or nothing but a zero preamble, i.e. a
    DICOM file cut before its marker (or unreadable), which a name like DICOM's makes damaged."""

    path: Path
    cut: bool
    problem: str


def _read_slice_header(path: Path) -> _SliceHeader | None:
    """Header of one file, or None for files that are not (usable) DICOM images."""
    found = _inspect_file(path)
    return found if isinstance(found, _SliceHeader) else None


def _inspect_file(path: Path) -> _SliceHeader | _Damaged | _Foreign | None:
    """What one file of a folder is: a DICOM image header, a damaged DICOM image, a file
    without the DICM marker, or None (a DICOM file that is no image: DICOMDIR, report, ...).

    A file with the marker is damaged when pydicom cannot read it, when its header is cut
    before the SOP class, before Rows/Columns (image classes), or before the pixel data, and
    when its pixel data end past the end of the file or are shorter than Rows x Columns x
    BitsAllocated say. pydicom reads a cut file without complaint (it stops where the file
    does), so these are checked here. Large values (pixels, private blocks) are not read.
    """
    import pydicom
    from pydicom.uid import UID

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        return _Foreign(path, True, f"cannot be opened: {exc.strerror or _one_line(exc)}")
    if len(head) < 132 or head[128:132] != b"DICM":
        # cut before the marker: a zero preamble (what writers put there), maybe part of "DICM"
        cut = len(head) < 132 and not head[:128].strip(b"\0") and b"DICM".startswith(head[128:])
        return _Foreign(path, cut, "is empty" if not head else f"holds {size} bytes and no DICM marker")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # pydicom warns of a cut stream: said below instead
            ds = pydicom.dcmread(str(path), defer_size=1024)
        meta = getattr(ds, "file_meta", None)
        sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", "") or "")
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if sop_class == _DICOMDIR_SOP_CLASS:
            return None
        if not sop_class:
            return _Damaged(path, "its header is cut short, without a SOP class", uid)
        image_class = "Image Storage" in UID(sop_class).name
        if "Rows" not in ds or "Columns" not in ds:
            return _Damaged(path, "its header is cut short, without Rows and Columns", uid) if image_class else None
        keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
        if keyword is None:
            return _Damaged(path, "it is cut short before its pixel data", uid) if image_class else None
        problem = _pixel_data_problem(ds, keyword, size)
        if problem:
            return _Damaged(path, problem, uid)
        return _header_from_dataset(path, ds)
    except Exception as exc:   # pydicom, or a value of the wrong type in a damaged header
        return _Damaged(path, f"its header cannot be read: {_one_line(exc)}", locals().get("uid", ""))


def _pixel_data_problem(ds, keyword: str, size: int) -> str | None:
    """Why the pixel data of a DICOM dataset read with deferred values are incomplete, or None."""
    el = ds.get_item(keyword, keep_deferred=True)
    length = getattr(el, "length", None)
    tell = getattr(el, "value_tell", None)
    value = getattr(el, "value", None)
    if length is None or length == 0xFFFFFFFF:      # encapsulated: pydicom drops a cut one
        return None
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    have = length
    if ts == "1.2.840.10008.1.2.1.99":
        pass        # deflated: positions are in the inflated stream, not the file (zlib says a cut)
    elif value is None and tell is not None:
        have = min(length, max(0, size - tell))
    elif value is not None:
        have = len(value)
    if have < length:
        return f"truncated pixel data: {have} of {length} bytes"
    bits = _int_or_none(ds.get("BitsAllocated")) or 0
    if ts is not None and not ts.is_compressed and keyword == "PixelData" and bits % 8 == 0 and bits:
        need = (int(ds.Rows) * int(ds.Columns) * (_int_or_none(ds.get("NumberOfFrames")) or 1)
                * (_int_or_none(ds.get("SamplesPerPixel")) or 1) * bits // 8)
        if length < need:
            return (f"its pixel data hold {length} bytes, fewer than {int(ds.Rows)} x {int(ds.Columns)} "
                    f"x {bits}-bit need ({need})")
    return None


def _header_from_dataset(path: Path, ds) -> _SliceHeader:
    """The :class:`_SliceHeader` of a DICOM image dataset."""
    from pydicom.multival import MultiValue

    def vec(name: str, n: int) -> np.ndarray | None:
        """A numeric tag of n finite values, else None (absent, or damaged: no geometry)."""
        v = ds.get(name)
        if v is None:
            return None
        try:
            arr = np.asarray([float(x) for x in (v if isinstance(v, (list, tuple, MultiValue)) else [v])],
                             dtype=float)
        except (TypeError, ValueError):
            return None
        return arr if arr.shape == (n,) and np.all(np.isfinite(arr)) and np.all(np.abs(arr) < 1e9) else None

    ps = vec("PixelSpacing", 2)
    if ps is not None and not np.all(ps > 0):
        ps = None
    iop = vec("ImageOrientationPatient", 6)
    if iop is not None:
        # two unit vectors at right angles (PS3.3 C.7.6.2.1.1); anything else places no pixel
        norms = np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])
        if min(norms) < 1e-3 or abs(iop[:3] @ iop[3:]) > 1e-2 * norms[0] * norms[1]:
            iop = None

    def positive(name: str) -> float | None:
        v = _float_or_none(ds.get(name))
        return v if v is not None and math.isfinite(v) and v > 0 else None

    trigger = _float_or_none(ds.get("TriggerTime"))
    spacing_tag = positive("SpacingBetweenSlices") or positive("SliceThickness")
    slope = _float_or_none(ds.get("RescaleSlope"))
    intercept = _float_or_none(ds.get("RescaleIntercept"))
    return _SliceHeader(
        path=path,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        description=str(ds.get("SeriesDescription", "") or ""),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        modality=str(ds.get("Modality", "") or ""),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        position=vec("ImagePositionPatient", 3),
        orientation=iop,
        pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
        trigger_time=trigger if trigger is not None and math.isfinite(trigger) else None,
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        frames=_int_or_none(ds.get("NumberOfFrames")) or 1,
        samples_per_pixel=_int_or_none(ds.get("SamplesPerPixel")) or 1,
        slice_spacing_tag=spacing_tag,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        palette=str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR",
        images_in_acquisition=_int_or_none(ds.get("ImagesInAcquisition")),
        number_of_slices=_int_or_none(ds.get("NumberOfSlices")),
        cardiac_images=_int_or_none(ds.get("CardiacNumberOfImages")),
    )


def _looks_like_dicom(path: Path, sibling_masks: set[str]) -> str | None:
    """Why a file without the DICM marker may be a DICOM file of this folder, or None."""
    name = path.name.lower()
    if name.endswith(_DICOM_SUFFIXES):
        return f"by its {name[name.rindex('.'):]} name"
    if _name_mask(path.name) in sibling_masks:
        return "by its name, numbered like the DICOM files beside it"
    return None


def _name_mask(name: str) -> str:
    """A file name with its numbers masked: IM_0001 and IM_0030 (or two UIDs) share it."""
    return re.sub(r"[0-9.]+", "#", name.lower())


@dataclass(frozen=True)
class _Scan:
    """The DICOM images of a folder by series, and the series that must be refused."""

    groups: dict[str, list[_SliceHeader]]   # SeriesInstanceUID -> headers, in SeriesNumber order
    refused: dict[str, str]                 # SeriesInstanceUID -> the one line saying why


def _scan_series(folder: str | os.PathLike, skip_video: bool = False) -> _Scan:
    """DICOM image headers in ``folder`` grouped by SeriesInstanceUID, series in
    SeriesNumber order (without clips when ``skip_video``), and the series refused for a
    damaged file. Raises ``ValueError`` when there are no readable images.

    A damaged file (see :func:`_inspect_file`) that names its series refuses that series; one
    that does not (cut before its SeriesInstanceUID, or before the DICM marker: an empty or
    zero-filled file named like a DICOM file) refuses every series of the folder, since it
    may be a slice of any. A series is never read without one of its images: a stack one slice
    short at an end has regular spacing, and nothing else would show it. A file that is named
    like DICOM but holds something else is reported by a warning and ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    found = {p: _inspect_file(p) for p in _candidate_files(folder)}
    masks = {_name_mask(p.name) for p, f in found.items() if isinstance(f, (_SliceHeader, _Damaged))}
    damaged: list[_Damaged] = []
    foreign: list[tuple[Path, str]] = []
    groups: dict[str, list[_SliceHeader]] = {}
    seen: dict[tuple[str, str], Path] = {}
    copies: list[tuple[Path, Path]] = []
    for p, h in found.items():
        if isinstance(h, _Foreign):
            why = _looks_like_dicom(p, masks)
            if why is not None and h.cut:
                damaged.append(_Damaged(p, f"it looks like DICOM {why} but {h.problem}"))
            elif why is not None:
                foreign.append((p, why))
            continue
        if isinstance(h, _Damaged):
            damaged.append(h)
            continue
        if h is None or (skip_video and _is_video(h)):
            continue
        if h.frames > 1 or h.modality == "SEG":  # enhanced MR/CT: a header per frame; SEG, maps: none
            from .dicom_enhanced import series_headers

            frames = series_headers(h)
            if frames:
                groups.setdefault(h.series_uid, []).extend(frames)
            continue
        if h.sop_uid:
            # a second file of an image already read (an export copied twice) is the same image,
            # not another phase
            first = seen.setdefault((h.series_uid, h.sop_uid), p)
            if first != p:
                copies.append((p, first))
                continue
        groups.setdefault(h.series_uid, []).append(h)
    if not groups:
        if damaged:
            d = damaged[0]
            raise ValueError(f"no DICOM files in {folder} could be read: {d.path.name} is damaged "
                             f"({d.problem})" + (f", and {len(damaged) - 1} more" if len(damaged) > 1 else ""))
        extra = f" ({foreign[0][0].name} looks like DICOM {foreign[0][1]} but is not one)" if foreign else ""
        raise ValueError(f"no DICOM files in {folder}{extra}")
    for p, why in foreign:
        warnings.warn(f"{folder}: {p.name} looks like DICOM {why} but is not a DICOM file (no DICM marker); ignored",
                      stacklevel=3)
    if copies:
        warnings.warn(f"{folder}: {len(copies)} file(s) repeat an image already read (same SOPInstanceUID, "
                      f"e.g. {copies[0][0].name} = {copies[0][1].name}); each image is used once",
                      stacklevel=3)

    def order(uid: str) -> tuple:
        n = groups[uid][0].series_number
        return (n is None, n if n is not None else 0, uid)

    groups = {uid: groups[uid] for uid in sorted(groups, key=order)}
    return _Scan(groups, _refusals(folder, groups, damaged))


def _refusals(folder: Path, groups: dict[str, list[_SliceHeader]], damaged: list[_Damaged]) -> dict[str, str]:
    """The one-line refusal of each series a damaged file belongs to (or may belong to)."""
    refused: dict[str, str] = {}
    own: dict[str, list[_Damaged]] = {}
    for d in damaged:
        if d.series_uid in groups:
            own.setdefault(d.series_uid, []).append(d)
    # a UID of no series here tells nothing: the value itself may be cut (pydicom keeps the part read)
    unknown = [d for d in damaged if d.series_uid not in groups]

    def names(ds: list[_Damaged]) -> str:
        shown = ", ".join(f"{d.path.name} ({d.problem})" for d in ds[:3])
        return shown + (f" and {len(ds) - 3} more" if len(ds) > 3 else "")

    for uid, ds in own.items():
        label = _series_label(groups[uid])
        verb = "is" if len(ds) == 1 else "are"
        refused[uid] = (f"DICOM series {label} in {folder}: {names(ds)} {verb} damaged; refusing a stack "
                        f"that would be {len(ds)} image(s) short")
    if unknown:
        verb = "is" if len(unknown) == 1 else "are"
        for uid, headers in groups.items():
            refused.setdefault(uid, f"DICOM series {_series_label(headers)} in {folder}: {names(unknown)} "
                                    f"{verb} damaged and may be an image of this series; refusing a stack that "
                                    "may be a slice short (remove the file if it does not belong to the series)")
    return refused


def _series_label(headers: list[_SliceHeader]) -> str:
    h = headers[0]
    desc = f"'{h.description}'" if h.description else "(no description)"
    num = f"series {h.series_number}" if h.series_number is not None else "no series number"
    return f"{desc} ({num}, UID {h.series_uid or '?'})"


@dataclass(frozen=True)
class _SeriesPlan:
    """Where every file of a series goes, decided from headers before any pixel is read."""

    files: list[list[_SliceHeader]]  # [slice][phase], slices by increasing projected position
    affine: np.ndarray
    time_step: float | None
    trigger_times: tuple[float, ...] | None


def _plan_series(headers: list[_SliceHeader]) -> _SeriesPlan:
    """Check a series' geometry and order its files; ``ValueError`` on anything irregular."""
    label = _series_label(headers)

    def fail(problem: str) -> ValueError:
        return ValueError(f"DICOM series {label}: {problem}")

    if any(h.frames > 1 and h.frame is None for h in headers):
        raise fail("multi-frame (enhanced) DICOM files are not supported")
    if any(h.samples_per_pixel != 1 for h in headers):
        raise fail("colour images (SamplesPerPixel > 1) are not supported")
    missing = [h.path.name for h in headers
               if h.position is None or h.orientation is None or h.pixel_spacing is None]
    if missing:
        raise fail(f"{len(missing)} file(s) lack a valid ImagePositionPatient, ImageOrientationPatient "
                   f"or PixelSpacing (e.g. {missing[0]})")
    odd_scale = [h.path.name for h in headers if not (math.isfinite(h.slope) and math.isfinite(h.intercept))]
    if odd_scale:
        raise fail(f"{len(odd_scale)} file(s) have a RescaleSlope or RescaleIntercept that is not a finite "
                   f"number (e.g. {odd_scale[0]})")
    sizes = sorted({(h.rows, h.columns) for h in headers})
    if len(sizes) > 1:
        raise fail("inconsistent image sizes: " + ", ".join(f"{r}x{c}" for r, c in sizes))
    iop0 = headers[0].orientation
    odd = [h for h in headers if np.max(np.abs(h.orientation - iop0)) > _IOP_TOLERANCE]
    if odd:
        raise fail(f"mixed orientations: {odd[0].path.name} has ImageOrientationPatient "
                   f"{np.round(odd[0].orientation, 4).tolist()}, {headers[0].path.name} has "
                   f"{np.round(iop0, 4).tolist()}")
    ps0 = np.asarray(headers[0].pixel_spacing)
    if any(np.max(np.abs(np.asarray(h.pixel_spacing) - ps0)) > 1e-4 for h in headers):
        raise fail("inconsistent PixelSpacing between files")

    row = iop0[:3] / np.linalg.norm(iop0[:3])   # direction of increasing column index (x)
    col = iop0[3:] / np.linalg.norm(iop0[3:])   # direction of increasing row index (y)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)

    # group by position along the normal; never by SliceLocation
    proj = np.array([float(h.position @ normal) for h in headers])
    by_pos = np.argsort(proj, kind="stable")
    slices: list[list[int]] = [[int(by_pos[0])]]
    for a, b in zip(by_pos[:-1], by_pos[1:]):
        if proj[b] - proj[a] > _SAME_SLICE_MM:
            slices.append([])
        slices[-1].append(int(b))
    positions = np.array([np.mean(proj[s]) for s in slices])

    counts = [len(s) for s in slices]
    if len(set(counts)) > 1:
        worst = int(np.argmin(counts))
        raise fail(f"missing phase: slices hold {min(counts)} to {max(counts)} images "
                   f"(the slice at {positions[worst]:.2f} mm along the normal has {counts[worst]})")
    n_z, n_t = len(slices), counts[0]

    if n_z >= 3:
        gaps = np.diff(positions)
        med = float(np.median(gaps))
        bad = np.abs(gaps - med) > max(_GAP_TOLERANCE * med, 1e-3)
        if bad.any():
            i = int(np.argmax(bad))
            raise fail(f"missing slice or irregular spacing: gap of {gaps[i]:.3f} mm between "
                       f"{positions[i]:.2f} and {positions[i + 1]:.2f} mm, median gap {med:.3f} mm")
    if n_z >= 2:
        dz = float(positions[-1] - positions[0]) / (n_z - 1)
        first = headers[slices[0][0]].position
        offsets = [headers[s[0]].position - first for s in slices]
        inplane = max(float(np.linalg.norm(o - (o @ normal) * normal)) for o in offsets)
        if inplane > max(0.1 * min(ps0), 1e-2):
            warnings.warn(f"DICOM series {label}: slice positions drift {inplane:.2f} mm in plane "
                          "(gantry tilt?); the affine assumes slices stacked along the normal",
                          stacklevel=3)
    else:
        dz = headers[0].slice_spacing_tag or 1.0

    # phases within a slice: TriggerTime when every file has a distinct one, else InstanceNumber
    use_trigger = all(h.trigger_time is not None for h in headers) and all(
        len({headers[i].trigger_time for i in s}) == len(s) for s in slices)

    def phase_key(i: int) -> tuple:
        h = headers[i]
        inst = h.instance_number if h.instance_number is not None else 0
        return ((h.trigger_time, inst, h.path.name) if use_trigger else (inst, h.path.name))

    files = [[headers[i] for i in sorted(s, key=phase_key)] for s in slices]
    refuse, warn = _missing_at_ends(files)
    if refuse:
        raise fail(refuse + "; refusing a stack with a slice missing at an end")
    if warn:
        warnings.warn(f"DICOM series {label}: {warn}", stacklevel=3)

    time_step = None
    trigger_times = None
    if n_t > 1 and use_trigger:
        diffs = np.concatenate([np.diff([h.trigger_time for h in s]) for s in files])
        time_step = float(np.median(diffs))
        trigger_times = tuple(float(h.trigger_time) for h in files[0])

    dy, dx = (float(v) for v in ps0)
    lps = np.eye(4)
    lps[:3, 0] = normal * dz
    lps[:3, 1] = col * dy
    lps[:3, 2] = row * dx
    lps[:3, 3] = files[0][0].position
    return _SeriesPlan(files, _LPS_TO_RAS @ lps, time_step, trigger_times)


def _missing_at_ends(files: list[list[_SliceHeader]]) -> tuple[str | None, str | None]:
    """``(refusal, warning)`` when the headers of a series tell that slices (or phases) are
    missing at an end of its stack, where the geometry cannot: the positions of the slices
    left are as regular as those of the whole stack.

    Refused, because the evidence is unambiguous: InstanceNumbers numbered phase by phase
    whose blocks hold more numbers than the slices found (the numbers between blocks are
    missing slices); InstanceNumbers starting past 1 by whole slices where ImagesInAcquisition
    counts exactly the images before them; fewer slices than PET/NM's NumberOfSlices. Only
    warned, since exports may renumber or split a series: numbers starting past 1 by whole
    slices alone; fewer images than ImagesInAcquisition, or fewer phases than
    CardiacNumberOfImages. Irregular numbering tells nothing and says nothing.
    """
    n_z, n_t = len(files), len(files[0])
    flat = [h for s in files for h in s]
    n = len(flat)

    def common(field: str) -> int | None:
        values = {getattr(h, field) for h in flat}
        v = values.pop() if len(values) == 1 else None
        return v if v is not None and v > 0 else None

    slices_tag = common("number_of_slices")
    if slices_tag is not None and slices_tag > n_z and flat[0].modality in ("PT", "NM"):
        return f"NumberOfSlices says {slices_tag} slices, the folder holds {n_z}", None
    numbers = np.array([[h.instance_number if h.instance_number is not None else -1 for h in s]
                        for s in files])
    warn = None
    in_acq = common("images_in_acquisition")
    cardiac = common("cardiac_images")
    if n_t > 1 and cardiac is not None and cardiac > n_t:
        warn = f"CardiacNumberOfImages says {cardiac} phases, the series has {n_t}: phases may be missing"
    regular = bool(numbers.min() >= 0) and len(np.unique(numbers)) == n
    if regular:
        dz = int(numbers[1, 0] - numbers[0, 0]) if n_z > 1 else n_t
        dt = int(numbers[0, 1] - numbers[0, 0]) if n_t > 1 else 1
        zz, tt = np.mgrid[:n_z, :n_t]
        regular = bool(np.array_equal(numbers, numbers[0, 0] + dz * zz + dt * tt))
    if not regular:
        if in_acq is not None and in_acq > n:
            warn = warn or f"ImagesInAcquisition says {in_acq} images, the series has {n}: slices may be missing"
        return None, warn
    lo, hi = int(numbers.min()), int(numbers.max())
    if n_t > 1 and abs(dz) == 1 and abs(dt) > n_z:
        k = abs(dt) - n_z
        return (f"its InstanceNumbers run phase by phase in blocks of {abs(dt)} but each phase has "
                f"{n_z} slices ({lo}-{hi}): {k} slice(s) of every phase are not in the folder"), None
    slice_major = abs(dt) == 1 and abs(dz) == n_t
    if slice_major and lo > 1 and (lo - 1) % n_t == 0:
        k = (lo - 1) // n_t
        what = f"its InstanceNumbers start at {lo}, after {k} slice(s) of {n_t} image(s)"
        if in_acq is not None and in_acq == n + lo - 1:
            return f"{what}, and ImagesInAcquisition counts {in_acq} images: those slices are not in the folder", None
        if in_acq is None or in_acq > n:
            return None, warn or f"{what}: the first slice(s) may be missing from the folder"
    if in_acq is not None and in_acq > n:
        warn = warn or (f"ImagesInAcquisition says {in_acq} images, the series has {n} (numbered {lo}-{hi}): "
                        "slices may be missing")
    return None, warn


def _load_series(headers: list[_SliceHeader], folder: Path, plan: _SeriesPlan | None = None) -> Volume:
    """Pixels of one series, placed by its plan, rescaled to modality values."""
    import pydicom

    plan = plan or _plan_series(headers)
    label = _series_label(headers)
    n_z, n_t = len(plan.files), len(plan.files[0])
    rows, cols = headers[0].rows, headers[0].columns
    rescaled = any(h.slope != 1.0 or h.intercept != 0.0 for h in headers)

    planes: list[np.ndarray] = []
    multi: dict[Path, np.ndarray] = {}       # an enhanced file's frames, decoded once
    for t in range(n_t):
        for z in range(n_z):
            h = plan.files[z][t]
            try:
                if h.frame is not None:
                    if h.path not in multi:
                        multi[h.path] = pydicom.dcmread(str(h.path)).pixel_array.reshape(h.frames, h.rows, h.columns)
                    px = multi[h.path][h.frame]
                else:
                    px = pydicom.dcmread(str(h.path)).pixel_array
            except Exception as exc:
                raise ValueError(f"DICOM series {label}: cannot decode pixels of {h.path.name}: "
                                 f"{_one_line(exc)}") from None
            if px.shape != (rows, cols):
                raise ValueError(f"DICOM series {label}: {h.path.name} holds pixels of shape "
                                 f"{px.shape}, header says {(rows, cols)}")
            if rescaled:
                px = px.astype(np.float32) * np.float32(h.slope) + np.float32(h.intercept)
            planes.append(px)
    dtype = np.float32 if rescaled else np.result_type(*planes)
    data = np.stack(planes).astype(dtype, copy=False).reshape(n_t, n_z, rows, cols)

    h0 = headers[0]
    meta: dict[str, Any] = {
        "source": str(folder),
        "series": h0.description,
        "series_number": h0.series_number,
        "series_uid": h0.series_uid,
        "modality": h0.modality,
    }
    if n_t > 1:
        if plan.time_step is not None:
            meta["time_step"] = plan.time_step
            meta["trigger_times"] = plan.trigger_times
        return Volume(data, plan.affine, ("t", "z", "y", "x"), meta)
    return Volume(data[0], plan.affine, ("z", "y", "x"), meta)


def read_dicom_series(folder: str | os.PathLike, skip_invalid: bool = False,
                      skip_video: bool = False) -> list[Volume]:
    """Read every DICOM series in a folder, one :class:`Volume` per SeriesInstanceUID.

    Parameters
    ----------
    folder
        Folder holding single-frame DICOM files (subfolders are not searched; files that are
        not DICOM images are ignored).
    skip_invalid
        Skip a series that cannot be assembled (with a warning naming it and the problem)
        instead of raising; useful for whole exams with localisers. If no series is left,
        the error of the first series is raised.
    skip_video
        Leave out DICOM clips (:func:`is_dicom_video`: ultrasound and other multi-frame or
        colour pictures), which :func:`read_dicom_video` reads one file at a time.

    Returns
    -------
    list of Volume
        In SeriesNumber order. A single-phase series is ``(z, y, x)``; a cine is
        ``(t, z, y, x)`` with ``meta['time_step']`` = median TriggerTime step (ms). Slices are
        ordered by ImagePositionPatient projected on the normal of ImageOrientationPatient,
        phases by TriggerTime (InstanceNumber when TriggerTime is missing or repeated). The
        slice spacing comes from the positions (for a one-slice series from
        SpacingBetweenSlices or SliceThickness, else 1 mm). Pixels have RescaleSlope and
        RescaleIntercept applied (float32 unless they are 1 and 0). The affine maps
        ``(k_z, j_y, i_x)`` to RAS mm; its z column points towards increasing position.
        ``meta`` holds ``series`` (SeriesDescription), ``series_number``, ``series_uid``,
        ``modality`` and ``source``.

    Raises
    ------
    ValueError
        No DICOM files; within a series: mixed orientations, a missing slice (irregular
        gaps), a missing phase (unequal images per slice), inconsistent image sizes or pixel
        spacing, missing geometry tags, undecodable pixels. Every series is checked from its
        headers before any pixels are read.

    Notes
    -----
    A series is never read without one of its images. A file that is, or looks like, a DICOM
    image of the folder (the DICM marker; else a ``.dcm``/``.ima`` name or the numbered name
    of its neighbours, when it is empty or cut before the marker) but cannot be read, or whose
    header or pixel data are cut short, refuses its series with one line naming the file and
    the series; when the file does not tell its series, every series of the folder is refused
    (remove the file if it is junk). A slice missing in the middle shows as a gap in the
    positions; one missing at an end (its file absent) only in the headers: InstanceNumbers
    numbered phase by phase in blocks larger than the slices found, or numbered from more
    than 1 where ImagesInAcquisition counts the images missing, or fewer slices than PET/NM's
    NumberOfSlices refuse the series; numbers starting past 1 alone, or fewer images or phases
    than ImagesInAcquisition or CardiacNumberOfImages count, give a warning.
    """
    folder = Path(folder)
    scan = _scan_series(folder, skip_video=skip_video)
    if not skip_invalid:
        for uid in scan.groups:                           # fail fast, before reading pixels
            if uid in scan.refused:
                raise ValueError(scan.refused[uid])
        plans = [_plan_series(h) for h in scan.groups.values()]
        return [_load_series(h, folder, plan) for h, plan in zip(scan.groups.values(), plans)]
    volumes, first_error = [], None
    for uid in scan.groups:
        try:
            if uid in scan.refused:
                raise ValueError(scan.refused[uid])
            volumes.append(_load_series(scan.groups[uid], folder))
        except ValueError as exc:
            first_error = first_error or exc
            warnings.warn(f"skipped {exc}", stacklevel=2)
    if not volumes:
        raise first_error  # type: ignore[misc]
    return volumes


def read_dicom_folder(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read the one DICOM series in ``folder`` (or the one with ``series_uid``).

    See :func:`read_dicom_series` for ordering, geometry and errors. Raises ``ValueError``
    naming every series when the folder holds more than one and ``series_uid`` is not given.
    """
    folder = Path(folder)
    scan = _scan_series(folder)
    groups = scan.groups
    if series_uid is None:
        if len(groups) > 1:
            names = "; ".join(_series_label(h) for h in groups.values())
            raise ValueError(f"{folder} holds {len(groups)} DICOM series, expected one: {names}")
        series_uid = next(iter(groups))
    if series_uid in scan.refused:
        raise ValueError(scan.refused[series_uid])
    if series_uid not in groups:
        raise ValueError(f"no DICOM series with UID {series_uid} in {folder}")
    return _load_series(groups[series_uid], folder)


# ---------------------------------------------------------------------------------------
# DICOM clips: ultrasound (and other) multi-frame or colour images of one file
# ---------------------------------------------------------------------------------------
_VIDEO_MODALITIES = ("US", "XA", "RF", "ES", "XC", "OT")


def is_dicom_video(path: str | os.PathLike) -> bool:
    """True for a DICOM image file that is a clip or a picture rather than a slice of a
    series: ultrasound, angiography, fluoroscopy, endoscopy or a secondary capture (one frame
    or many), or any colour / palette image. Such a file is read by :func:`read_dicom_video`,
    not as part of a series (a multi-frame MR or CT is a series in one file: see
    :mod:`napari_medlearn.imaging.dicom_enhanced`)."""
    h = _read_slice_header(Path(path)) if Path(path).is_file() else None
    return h is not None and _is_video(h)


def _is_video(h: "_SliceHeader") -> bool:
    return h.modality in _VIDEO_MODALITIES or h.samples_per_pixel > 1 or h.palette


def dicom_videos(folder: str | os.PathLike) -> list[Path]:
    """The DICOM clips (see :func:`is_dicom_video`) in ``folder``, not its subfolders."""
    return [p for p in _candidate_files(Path(folder)) if is_dicom_video(p)]


def read_dicom_video(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The frames of one DICOM clip, as an ultrasound machine or a video capture stores them.

    Returns ``(frames, meta)``: ``frames`` is ``(t, H, W)`` grey or ``(t, H, W, 3)`` RGB in the
    file's integer type (YBR colour converted to RGB, palettes applied, MONOCHROME1 inverted,
    a modality rescale applied as float32); a single frame has ``t = 1``. ``meta`` holds
    ``source``, ``modality``, ``series``, ``photometric``, ``time_step`` (ms, from FrameTime,
    FrameTimeVector or CineRate, when given) and ``spacing`` ``(dy, dx)`` in mm (from
    PixelSpacing, else from the ultrasound region calibration in cm, when given).
    Compressed files need pydicom's decoder for their transfer syntax (JPEG: pillow or
    pylibjpeg). Raises ``ValueError`` with one line naming the file and the problem.
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        frames = np.asarray(ds.pixel_array)      # pydicom converts YBR colour spaces to RGB
    except Exception as exc:
        raise ValueError(f"cannot read the frames of DICOM file {path}: {_one_line(exc)}") from None
    n_frames = int(_int_or_none(ds.get("NumberOfFrames")) or 1)
    samples = int(_int_or_none(ds.get("SamplesPerPixel")) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
    if photometric == "PALETTE COLOR":
        try:
            frames = np.asarray(apply_color_lut(frames, ds))
        except Exception as exc:
            raise ValueError(f"cannot apply the colour palette of {path}: {_one_line(exc)}") from None
        samples = 3
        if frames.dtype == np.uint16:            # a 16-bit palette: the 8-bit colours a display shows
            frames = (frames >> 8).astype(np.uint8)
    elif samples == 1:
        if ds.get("RescaleSlope") is not None or ds.get("RescaleIntercept") is not None:
            frames = np.asarray(apply_modality_lut(frames, ds), dtype=np.float32)
        if photometric == "MONOCHROME1":
            frames = frames.max() - frames
    colour = samples > 1
    if n_frames == 1:
        frames = frames[None]
    if frames.ndim != (4 if colour else 3) or (colour and frames.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot read {path}: unexpected frame array {frames.shape} for "
                         f"{n_frames} frame(s) of {samples} sample(s)")
    frames = frames[..., :3] if colour else frames

    meta: dict[str, Any] = {"source": str(path), "modality": str(ds.get("Modality", "") or ""),
                            "series": str(ds.get("SeriesDescription", "") or "") or path.stem,
                            "photometric": photometric}
    step = _float_or_none(ds.get("FrameTime"))
    if not step and ds.get("FrameTimeVector") is not None:
        try:
            vec = [float(v) for v in ds.FrameTimeVector][1:]   # the first entry is 0
            step = float(np.median(vec)) if vec else None
        except (TypeError, ValueError):
            step = None
    if not step:
        rate = _float_or_none(ds.get("CineRate")) or _float_or_none(ds.get("RecommendedDisplayFrameRate"))
        step = 1000.0 / rate if rate else None
    if step and step > 0:
        meta["time_step"] = float(step)
    ps = ds.get("PixelSpacing")
    spacing = None
    try:
        if ps is not None and len(ps) == 2 and float(ps[0]) > 0 and float(ps[1]) > 0:
            spacing = (float(ps[0]), float(ps[1]))
        else:
            for region in ds.get("SequenceOfUltrasoundRegions", []):
                # units 3 = cm; a 2D tissue region (spatial format 1) calibrates the image
                if int(region.get("PhysicalUnitsXDirection", 0)) == 3 and \
                        int(region.get("PhysicalUnitsYDirection", 0)) == 3 and \
                        int(region.get("RegionSpatialFormat", 0)) == 1:
                    dy, dx = abs(float(region.PhysicalDeltaY)) * 10, abs(float(region.PhysicalDeltaX)) * 10
                    if dy > 0 and dx > 0:
                        spacing = (dy, dx)
                        break
    except (TypeError, ValueError, AttributeError):
        spacing = None
    if spacing is not None:
        meta["spacing"] = spacing
    return frames, meta


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------
def read_volume(path: str | os.PathLike) -> Volume | list[Volume]:
    """Read any supported image, choosing the reader from the path.

    Parameters
    ----------
    path
        ``.nii``/``.nii.gz`` (NIfTI), ``.nrrd``/``.nhdr``/``.mha``/``.mhd`` (SimpleITK), a
        DICOM file (the whole series it belongs to, from its folder) or a folder of DICOM
        files.

    Returns
    -------
    Volume or list of Volume
        A single Volume for a file, and for a folder holding one series; a list (one per
        series, in SeriesNumber order) for a folder holding several.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        One line naming the file and the problem, for unknown or unreadable files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir():
        volumes = read_dicom_series(path)
        return volumes[0] if len(volumes) == 1 else volumes
    if _has_suffix(path, NIFTI_SUFFIXES):
        return read_nifti(path)
    if _has_suffix(path, ITK_SUFFIXES):
        return read_itk_image(path)
    series_uid = dicom_series_uid(path)
    if series_uid is None:
        raise ValueError(f"cannot read {path}: not a NIfTI, NRRD/MetaImage or DICOM image file")
    from .dicom_enhanced import read_dicom_file  # its series, or the file alone if that is no series

    return read_dicom_file(path, series_uid)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

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

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
        img = nib.load(str(path), mmap=False)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise ValueError(f"{type(img).__name__} is not NIfTI")
        header = img.header
        proxy = img.dataobj
        scaled = not (float(getattr(proxy, "slope", 1.0)) == 1.0
                      and float(getattr(proxy, "inter", 0.0)) == 0.0)
        arr = np.asanyarray(proxy)
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
        raise ValueError(f"cannot read {path}: {arr.ndim}-D NIfTI (only 2-D, 3-D and 4-D are supported)")

    data = np.ascontiguousarray(arr.T)  # (x, y[, z[, t]]) -> ([t,] [z,] y, x)
    axes = {2: ("y", "x"), 3: ("z", "y", "x"), 4: ("t", "z", "y", "x")}[arr.ndim]
    affine_ijk, repaired = _nifti_affine(img)
    space_unit = header.get_xyzt_units()[0]
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
    if arr.ndim == 4:
        t_unit = header.get_xyzt_units()[1]
        step = float(header["pixdim"][4])
        if t_unit in _MS_PER_TIME_UNIT and step > 0:
            meta["time_step"] = step * _MS_PER_TIME_UNIT[t_unit]
    return Volume(data, affine, axes, meta)


def _nifti_affine(img) -> tuple[np.ndarray, str | None]:
    """nibabel's best affine, repaired when its voxel sizes contradict ``pixdim``.

    Some exporters write an sform whose columns have unit length while ``pixdim`` holds the
    real voxel size (the public ACDC copies do: 1 mm in the sform, 1.76 x 1.76 x 10 mm in
    pixdim). Trusting such an sform makes every volume in mL wrong by the voxel volume. When
    the sform's sizes disagree with pixdim, the qform is used if it agrees; otherwise the
    sform keeps its directions and origin and takes its voxel sizes from pixdim. Returns the
    ``(i, j, k)`` affine and a note of the repair (None when nothing was changed).
    """
    header = img.header
    aff = np.asarray(img.affine, dtype=float)
    # pixdim[1:4], not get_zooms(): a 2-D file's zooms stop at two, but its pixdim[3] is the
    # slice thickness its sform's third column also holds
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    norms = np.linalg.norm(aff[:3, :3], axis=0)
    if int(header["sform_code"]) <= 0 or np.any(zooms <= 0) or np.allclose(norms, zooms, rtol=1e-3):
        return aff, None
    fmt = lambda v: " x ".join(f"{float(x):.4g}" for x in v)  # noqa: E731
    what = f"sform voxel size {fmt(norms)} mm disagrees with pixdim {fmt(zooms)} mm"
    if int(header["qform_code"]) > 0:
        q = np.asarray(header.get_qform(), dtype=float)
        if np.allclose(np.linalg.norm(q[:3, :3], axis=0), zooms, rtol=1e-3):
            return q, what + "; used the qform, which agrees with pixdim"
    if np.any(norms == 0):
        return np.asarray(header.get_base_affine(), dtype=float), what + "; used pixdim alone"
    fixed = aff.copy()
    fixed[:3, :3] = aff[:3, :3] / norms * zooms
    return fixed, what + "; kept the sform's directions and origin with pixdim's voxel size"


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
        hdr.set_xyzt_units("mm", hdr.get_xyzt_units()[1])   # the affine is in mm, whatever the source's unit
    else:
        hdr.set_xyzt_units("mm", "sec")

    sform_code = int(meta.get("sform_code") or 0)
    qform_code = int(meta.get("qform_code") or 0)
    sform_code = sform_code or qform_code or 1
    qform_code = qform_code or sform_code
    img.set_sform(affine_ijk, code=sform_code)
    img.set_qform(affine_ijk, code=qform_code)

    if has_time and meta.get("time_step"):
        t_unit = hdr.get_xyzt_units()[1]
        if t_unit not in _MS_PER_TIME_UNIT:
            hdr.set_xyzt_units(hdr.get_xyzt_units()[0], "sec")
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
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"cannot read {path}: {_one_line(exc)}") from None
    dim = img.GetDimension()
    if dim not in (2, 3) or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"cannot read {path}: only 2-D/3-D scalar images are supported "
                         f"(got {dim}-D with {img.GetNumberOfComponentsPerPixel()} components)")
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
    """SeriesInstanceUID of a DICOM image file, or ``None`` if it is not a DICOM image."""
    header = _read_slice_header(Path(path))
    return None if header is None else header.series_uid


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


def _float_or_none(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int_or_none(value: Any) -> int | None:
    f = _float_or_none(value)
    return None if f is None else int(f)


def _read_slice_header(path: Path) -> _SliceHeader | None:
    """Header of one file, or None for files that are not DICOM images."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not is_dicom_file(path):
        return None
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:
        raise ValueError(f"cannot read DICOM file {path}: {_one_line(exc)}") from None
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS or "Rows" not in ds or "Columns" not in ds:
        return None  # DICOMDIR, structured reports, presentation states: not images

    def vec(name: str, n: int) -> np.ndarray | None:
        v = ds.get(name)
        if v is None:
            return None
        try:
            arr = np.asarray([float(x) for x in v], dtype=float)
        except (TypeError, ValueError):
            return None
        return arr if arr.shape == (n,) else None

    ps = vec("PixelSpacing", 2)
    spacing_tag = _float_or_none(ds.get("SpacingBetweenSlices")) or _float_or_none(ds.get("SliceThickness"))
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
        orientation=vec("ImageOrientationPatient", 6),
        pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
        trigger_time=_float_or_none(ds.get("TriggerTime")),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        frames=_int_or_none(ds.get("NumberOfFrames")) or 1,
        samples_per_pixel=_int_or_none(ds.get("SamplesPerPixel")) or 1,
        slice_spacing_tag=spacing_tag,
        sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
        palette=str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR",
    )


def _scan_series(folder: str | os.PathLike, skip_video: bool = False) -> dict[str, list[_SliceHeader]]:
    """DICOM image headers in ``folder`` grouped by SeriesInstanceUID, series in
    SeriesNumber order (without clips when ``skip_video``). Raises ``ValueError`` when there
    are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    groups: dict[str, list[_SliceHeader]] = {}
    seen: dict[tuple[str, str], Path] = {}
    copies: list[tuple[Path, Path]] = []
    for p in _candidate_files(folder):
        h = _read_slice_header(p)
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
        raise ValueError(f"no DICOM files in {folder}")
    if copies:
        warnings.warn(f"{folder}: {len(copies)} file(s) repeat an image already read (same SOPInstanceUID, "
                      f"e.g. {copies[0][0].name} = {copies[0][1].name}); each image is used once",
                      stacklevel=3)

    def order(uid: str) -> tuple:
        n = groups[uid][0].series_number
        return (n is None, n if n is not None else 0, uid)

    return {uid: groups[uid] for uid in sorted(groups, key=order)}


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
        raise fail(f"{len(missing)} file(s) lack ImagePositionPatient, ImageOrientationPatient "
                   f"or PixelSpacing (e.g. {missing[0]})")
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
    """
    folder = Path(folder)
    groups = _scan_series(folder, skip_video=skip_video)
    if not skip_invalid:
        plans = [_plan_series(h) for h in groups.values()]  # fail fast, before reading pixels
        return [_load_series(h, folder, plan) for h, plan in zip(groups.values(), plans)]
    volumes, first_error = [], None
    for headers in groups.values():
        try:
            volumes.append(_load_series(headers, folder))
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
    groups = _scan_series(folder)
    if series_uid is not None:
        if series_uid not in groups:
            raise ValueError(f"no DICOM series with UID {series_uid} in {folder}")
        return _load_series(groups[series_uid], folder)
    if len(groups) > 1:
        names = "; ".join(_series_label(h) for h in groups.values())
        raise ValueError(f"{folder} holds {len(groups)} DICOM series, expected one: {names}")
    return _load_series(next(iter(groups.values())), folder)


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

"""Writing a :class:`~napari_medlearn.imaging.volume.Volume` as a DICOM series.

One single-frame file per slice (and per phase of a ``(t, z, y, x)`` cine), the way scanners
export short-axis cines, so a result can go back to a PACS or a DICOM viewer and so the DICOM
reader (:func:`napari_medlearn.imaging.io.read_dicom_series`) can be tested against files whose
geometry is known. The geometry follows DICOM PS3.3 C.7.6.2.1.1 ("Image Position and Image
Orientation"): the affine's x column gives the row direction cosines and the column spacing,
its y column the column direction cosines and the row spacing, and slice ``k`` sits at
``origin + k * (z column)``; everything is converted from the Volume's RAS to DICOM's LPS.
SliceLocation is the position projected on the slice normal (row x column cosines), so it is
correct, but readers should not need it. File names come from the SOPInstanceUIDs, so their
order says nothing about slice or phase order (as with many scanners).

Pixels are stored as 16-bit integers (PS3.5 explicit VR little endian): integer arrays as they
are (uint16 if every value fits, else int16), float arrays linearly rescaled to the full
uint16 range with RescaleSlope/RescaleIntercept, so a reader gets the values back to within
half a slope.

Only numpy and pydicom are imported here: no torch, napari or Qt.
"""

from __future__ import annotations

import datetime
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import is_dicom_file
from .volume import Volume

__all__ = ["write_dicom_series", "SOP_CLASS_UIDS"]

#: Storage SOP classes written for each supported modality.
SOP_CLASS_UIDS = {
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
}

# DICOM's patient frame is LPS; Volume's is RAS. The flip is its own inverse.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Row and column cosines must be orthogonal for ImageOrientationPatient to describe them.
_ORTHOGONALITY_TOLERANCE = 1e-4
# Longest value of a LO (long string) element, e.g. PatientID or SeriesDescription.
_LO_MAX = 64
_UINT16_MAX = 65535
# Float data use one level fewer than uint16 offers, so the slope rounded to a 16-character
# decimal string can never push the maximum past 65535.
_FLOAT_LEVELS = 65534


@dataclass(frozen=True)
class _Pixels:
    """Stored pixels ``(t, z, rows, cols)`` and how to turn them back into values."""

    stored: np.ndarray          # uint16 or int16
    slope: str | None           # DS strings; None when values are stored as they are
    intercept: str | None
    window: tuple[str, str]     # WindowCenter, WindowWidth in modality values


@dataclass(frozen=True)
class _Geometry:
    """Where each slice sits, in DICOM's LPS frame."""

    positions: np.ndarray       # (n_z, 3) ImagePositionPatient
    orientation: list[str]      # ImageOrientationPatient: row (x) cosines then column (y) cosines
    pixel_spacing: list[str]    # (row spacing = dy, column spacing = dx)
    slice_spacing: float        # along the slice normal
    slice_locations: np.ndarray  # (n_z,) positions projected on the normal


def _ds(value: float) -> str:
    """A decimal string (DS) of at most 16 characters, as precise as that allows."""
    from pydicom.valuerep import format_number_as_ds

    v = float(value)
    if v == 0.0:
        return "0"  # also turns -0.0 into "0"
    return format_number_as_ds(v)


def _as_tnzyx(volume: Volume) -> tuple[np.ndarray, bool]:
    """The array as ``(t, z, rows, cols)`` and whether it is a cine (has a t axis)."""
    data = np.asarray(volume.data)
    axes = tuple(volume.axes)
    if data.ndim > 4:
        raise ValueError(f"cannot write a {data.ndim}-D array {data.shape} as DICOM: at most "
                         "4 dimensions (t, z, y, x)")
    if data.ndim < 2:
        raise ValueError(f"cannot write a {data.ndim}-D array {data.shape} as DICOM: need at "
                         "least an image (y, x)")
    if data.size == 0:
        raise ValueError(f"cannot write an empty array {data.shape} as DICOM")
    known = {("y", "x"): (False, False), ("z", "y", "x"): (False, True),
             ("t", "y", "x"): (True, False), ("t", "z", "y", "x"): (True, True)}
    if axes not in known:
        raise ValueError(f"cannot write axes {axes} as a DICOM series: expected ([t,] [z,] y, x)")
    cine, has_z = known[axes]
    if not has_z:
        data = data[:, None] if cine else data[None]
    if not cine:
        data = data[None]
    return data, cine


def _encode_pixels(data: np.ndarray, modality: str) -> _Pixels:
    """Integers as they are (uint16 or int16); floats rescaled to uint16 with slope/intercept."""
    dt = data.dtype
    if dt == bool:
        data, dt = data.astype(np.uint16), np.dtype(np.uint16)
    if np.iscomplexobj(data) or not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise ValueError(f"cannot write a {dt} array as DICOM: need real integers or floats")
    if np.issubdtype(dt, np.floating) and not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"cannot write the image as DICOM: {n_bad} value(s) are NaN or infinite")
    lo, hi = data.min(), data.max()

    if np.issubdtype(dt, np.integer):
        lo, hi = int(lo), int(hi)
        if lo >= 0 and hi <= _UINT16_MAX:
            stored = data.astype("<u2")
        elif lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
            stored = data.astype("<i2")
        else:
            raise ValueError(f"cannot write integers from {lo} to {hi} as DICOM: they must fit "
                             "uint16 (0..65535) or int16 (-32768..32767); convert to float to "
                             "store them rescaled")
        # CT Image Storage requires the rescale tags; identity values keep the reader's dtype
        slope, intercept = ("1", "0") if modality == "CT" else (None, None)
        return _Pixels(stored, slope, intercept, (_ds((lo + hi) / 2), _ds(max(hi - lo, 1))))

    lo, hi = float(lo), float(hi)
    intercept = _ds(lo)
    slope = _ds((hi - lo) / _FLOAT_LEVELS) if hi > lo else "1"
    # quantise with the values as written, so the reader's slope * q + intercept is what we meant
    q = np.rint((data.astype(np.float64) - float(intercept)) / float(slope))
    stored = np.clip(q, 0, _UINT16_MAX).astype("<u2")
    return _Pixels(stored, slope, intercept, (_ds((lo + hi) / 2), _ds(max(hi - lo, float(slope)))))


def _geometry(affine: np.ndarray, n_z: int) -> _Geometry:
    """Slice positions, orientation and spacings from a ``(k_z, j_y, i_x)`` -> RAS affine."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=float)
    z_step, y_step, x_step, origin = lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3]
    dy, dx = float(np.linalg.norm(y_step)), float(np.linalg.norm(x_step))
    if not (dy > 0 and dx > 0) or not np.all(np.isfinite(lps)):
        raise ValueError(f"cannot write DICOM geometry: the affine's in-plane columns must be "
                         f"finite and non-zero (got pixel spacing {dy:g} x {dx:g} mm)")
    row, col = x_step / dx, y_step / dy
    if abs(float(row @ col)) > _ORTHOGONALITY_TOLERANCE:
        angle = float(np.degrees(np.arccos(np.clip(row @ col, -1, 1))))
        raise ValueError(f"cannot write DICOM geometry: the in-plane axes are {angle:.3f} degrees "
                         "apart, ImageOrientationPatient needs them perpendicular")
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along = float(z_step @ normal)
    if n_z > 1 and abs(along) < 1e-6:
        raise ValueError("cannot write DICOM geometry: the affine's slice axis lies in the image "
                         "plane, so all slices would sit at the same position")
    # a single slice's z column only gives its thickness; a zero one falls back to 1 mm
    slice_spacing = abs(along) if abs(along) > 1e-6 else (float(np.linalg.norm(z_step)) or 1.0)
    positions = origin[None, :] + np.arange(n_z)[:, None] * z_step[None, :]
    return _Geometry(
        positions=positions,
        orientation=[_ds(v) for v in np.concatenate([row, col])],
        pixel_spacing=[_ds(dy), _ds(dx)],
        slice_spacing=slice_spacing,
        slice_locations=positions @ normal,
    )


def _check_lo(name: str, value: str) -> str:
    value = str(value)
    if len(value) > _LO_MAX or "\\" in value or any(c in value for c in "\r\n"):
        raise ValueError(f"{name} must be at most {_LO_MAX} characters on one line without "
                         f"backslashes, got {value!r}")
    return value


def _check_target(folder: Path, overwrite: bool) -> None:
    """Refuse a path that is a file, a non-empty folder (unless ``overwrite``), or, even with
    ``overwrite``, a folder holding anything but DICOM files: replacing it deletes it."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    entries = list(folder.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"{folder} already exists and is not empty "
                              "(use overwrite=True to replace it)")
    # a folder's OS litter (Finder's .DS_Store and ._ companions) goes with it; any other file
    # that is not DICOM, hidden or not, is somebody's and stops the replacement
    foreign = [p for p in entries
               if not (p.is_file() and (p.name == ".DS_Store" or p.name.startswith("._") or is_dicom_file(p)))]
    if foreign:
        raise FileExistsError(f"refusing to replace {folder}: it holds {foreign[0].name}, which is "
                              "not a DICOM file (only folders of DICOM files are overwritten)")


def _save_dataset(ds, path: Path) -> None:
    """Write one dataset as a DICOM Part 10 file (preamble, file meta, explicit VR LE)."""
    import pydicom

    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished ``tmp`` folder to ``folder``, setting an existing one aside first
    and deleting it only once the new one is in place."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.old")
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_dicom_series(
    volume: Volume,
    folder: str | os.PathLike,
    series_description: str = "napari-medlearn",
    patient_id: str = "ANON",
    modality: str = "MR",
    overwrite: bool = False,
    *,
    series_number: int = 1,
) -> list[Path]:
    """Write a volume as a DICOM series, one single-frame file per slice and phase.

    Parameters
    ----------
    volume
        Axes ``(t, z, y, x)`` (a cine), ``(z, y, x)``, ``(t, y, x)`` or ``(y, x)`` (written as
        one slice). Integer (or bool) data must fit uint16 or int16 and are stored exactly;
        float data are rescaled to uint16. ``meta['time_step']`` (ms) of a cine gives each
        phase ``t`` the TriggerTime ``t * time_step``; without it phases are ordered by
        InstanceNumber only.
    folder
        The series folder to create. Its parent is created if needed.
    series_description, patient_id
        SeriesDescription, and PatientID (also used as PatientName); at most 64 characters.
    modality
        ``"MR"`` (MR Image Storage) or ``"CT"`` (CT Image Storage).
    overwrite
        Replace an existing non-empty ``folder``. Even then only a folder holding nothing but
        DICOM files is replaced, since replacing deletes it.
    series_number
        SeriesNumber (orders several series in one study).

    Returns
    -------
    list of Path
        The files written, phase-major: file ``t * n_z + z`` holds phase ``t`` of slice ``z``.
        Their names are ``<SOPInstanceUID>.dcm``, in no particular order.

    Raises
    ------
    ValueError
        More than 4 or fewer than 2 dimensions, axes other than ``([t,] [z,] y, x)``, an empty
        array, NaN or infinite values, integers outside uint16/int16, complex data, an affine
        whose in-plane axes are not perpendicular or whose slices do not advance along the
        slice normal, an unsupported modality, or a description/ID longer than 64 characters.
    FileExistsError
        ``folder`` is a file, or a non-empty folder and ``overwrite`` is false, or holds
        files that are not DICOM.

    Notes
    -----
    The series is written into a hidden sibling folder and renamed to ``folder`` when
    complete, so ``folder`` never holds part of a series. UIDs (study, series, frame of
    reference, instances) are new on every call. Reading the folder back with
    :func:`napari_medlearn.imaging.io.read_dicom_folder` gives the same values (exactly for
    integers, within half the RescaleSlope for floats; integers come back as uint16 or
    int16, floats as float32), affine and ``time_step``, with two exceptions that follow
    from DICOM itself: a ``(y, x)`` image comes back as ``(1, y, x)``, and a volume whose
    slice axis points against the slice normal (row cosines x column cosines) comes back
    with its slices in the opposite order and an affine describing the same voxels in the
    same places. A slice axis oblique to the normal is written as it is (each file's
    ImagePositionPatient is exact), but the reader assumes slices stacked along the normal
    and warns.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    modality = str(modality).upper()
    if modality not in SOP_CLASS_UIDS:
        raise ValueError(f"modality {modality!r} not supported; use one of {sorted(SOP_CLASS_UIDS)}")
    series_description = _check_lo("series_description", series_description)
    patient_id = _check_lo("patient_id", patient_id)
    data, cine = _as_tnzyx(volume)
    n_t, n_z, rows, cols = data.shape
    pixels = _encode_pixels(data, modality)
    geometry = _geometry(volume.affine, n_z)
    time_step = volume.meta.get("time_step") if cine else None
    if time_step is not None and not (np.isfinite(float(time_step)) and float(time_step) > 0):
        raise ValueError(f"meta['time_step'] must be a positive number of ms, got {time_step!r}")

    folder = Path(folder)
    _check_target(folder, overwrite)

    sop_class = SOP_CLASS_UIDS[modality]
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    signed = pixels.stored.dtype == np.int16
    common = {
        # patient, study, series, equipment, frame of reference
        "PatientName": patient_id, "PatientID": patient_id, "PatientBirthDate": "",
        "PatientSex": "", "StudyInstanceUID": study_uid, "StudyDate": date, "StudyTime": time,
        "StudyID": "", "AccessionNumber": "", "ReferringPhysicianName": "",
        "SeriesInstanceUID": series_uid, "SeriesNumber": int(series_number),
        "SeriesDescription": series_description, "SeriesDate": date, "SeriesTime": time,
        "Modality": modality, "PatientPosition": "", "Manufacturer": "napari-medlearn",
        "FrameOfReferenceUID": frame_uid, "PositionReferenceIndicator": "",
        # image
        "ImageType": ["DERIVED", "SECONDARY"], "ContentDate": date, "ContentTime": time,
        "ImageOrientationPatient": geometry.orientation, "PixelSpacing": geometry.pixel_spacing,
        "SliceThickness": _ds(geometry.slice_spacing),
        "SpacingBetweenSlices": _ds(geometry.slice_spacing),
        "Rows": rows, "Columns": cols, "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16,
        "HighBit": 15, "PixelRepresentation": int(signed),
        "WindowCenter": pixels.window[0], "WindowWidth": pixels.window[1],
    }
    if pixels.slope is not None:
        common["RescaleSlope"], common["RescaleIntercept"] = pixels.slope, pixels.intercept
    if modality == "MR":  # type 1/2 attributes of the MR Image module; nothing is known of them
        common.update({"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "",
                       "MRAcquisitionType": "2D", "EchoTime": "", "EchoTrainLength": ""})
    else:
        common.update({"KVP": "", "AcquisitionNumber": 1})
    if cine:
        common.update({"CardiacNumberOfImages": n_t, "NumberOfTemporalPositions": n_t})

    # Latin-1 when the text fits it (what every viewer reads), else UTF-8, so no name is lost
    try:
        (series_description + patient_id).encode("latin-1")
        charset = "ISO_IR 100"
    except UnicodeEncodeError:
        charset = "ISO_IR 192"

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.partial")
    tmp.mkdir()
    names: list[str] = []
    try:
        for t in range(n_t):
            for z in range(n_z):
                sop_uid = generate_uid()
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = sop_class
                meta.MediaStorageSOPInstanceUID = sop_uid
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
                ds = Dataset()
                ds.file_meta = meta
                ds.SpecificCharacterSet = charset
                ds.SOPClassUID = sop_class
                ds.SOPInstanceUID = sop_uid
                for keyword, value in common.items():
                    setattr(ds, keyword, value)
                # slice-major numbering, as many scanners do: phases of a slice are consecutive
                ds.InstanceNumber = 1 + z * n_t + t
                ds.ImagePositionPatient = [_ds(v) for v in geometry.positions[z]]
                ds.SliceLocation = _ds(geometry.slice_locations[z])
                if cine:
                    ds.TemporalPositionIdentifier = t + 1
                    if time_step is not None:
                        ds.TriggerTime = _ds(t * float(time_step))
                ds.PixelData = np.ascontiguousarray(pixels.stored[t, z]).tobytes()
                name = f"{sop_uid}.dcm"
                _save_dataset(ds, tmp / name)
                names.append(name)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [folder / n for n in names]

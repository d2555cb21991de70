"""Enhanced (multi-frame) MR and CT, and single DICOM files, for the series reader.

An enhanced MR/CT image (PS3.3 C.7.6.16, "Multi-frame Functional Groups") holds a whole
series in one file: each frame's ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
rescale and temporal position sit in its Per-Frame Functional Groups, or once for all frames
in the Shared Functional Groups. :func:`frame_headers` turns the file into one header per
frame, the same headers a classic series has one file each of, so
:mod:`napari_medlearn.imaging.io` orders, checks and places them with the very code it uses
for classic series (slices by position along the normal, phases by trigger time, gaps and
missing phases refused): an enhanced file and the classic series of the same content open
with the same array and affine.

Temporal position of a frame: NominalCardiacTriggerDelayTime (Cardiac Synchronization) or,
in a legacy-converted file, the frame's TriggerTime; order within a slice otherwise by
TemporalPositionIndex (Frame Content), else the frame number.

A file without any geometry (pydicom's ``emri_small.dcm`` has no functional groups at all)
still opens, as a stack along z, with a warning naming what was assumed: 1 mm pixels, the
file's SpacingBetweenSlices (else 1 mm) between frames, axial orientation.

:func:`read_dicom_file` opens a DICOM file the way a user means it: its whole series from
its folder, unless that series is no complete series (images of one position without any
temporal position, as when the same image is stored in several transfer syntaxes, or files
whose geometry does not make one stack): then the file alone, named by its series
description, with a warning. A series the reader refuses for a damaged file that may be one
of its images stays refused, for any of its files.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["is_enhanced", "frame_headers", "read_dicom_file"]


def is_enhanced(header) -> bool:
    """A multi-frame image that is a series in one file (enhanced / legacy-converted MR, CT,
    or any multi-frame grey image that is not a clip)."""
    from .io import _is_video

    return header.frames > 1 and not _is_video(header)


def _item(seq_holder, keyword: str):
    seq = seq_holder.get(keyword) if seq_holder is not None else None
    return seq[0] if seq else None


def _vec(ds, keyword: str, n: int) -> np.ndarray | None:
    if ds is None or ds.get(keyword) is None:
        return None
    try:
        v = np.asarray([float(x) for x in ds.get(keyword)], dtype=float)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) else None


def _num(ds, keyword: str) -> float | None:
    from .io import _float_or_none

    return None if ds is None else _float_or_none(ds.get(keyword))


#: derived objects with Rows and Columns that are no slices of a series: Segmentation and
#: Parametric Map (read by imaging.dicom_seg and imaging.dicom_sr)
DERIVED_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30")


def series_headers(header) -> list:
    """What a multi-frame or SEG file adds to its series: a header per frame of an enhanced
    MR/CT, nothing for a SEG or a parametric map, itself for a clip (see ``io.is_dicom_video``)."""
    import pydicom

    if header.modality == "SEG":
        return []
    try:
        meta = pydicom.filereader.read_file_meta_info(str(header.path))
        sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    except Exception:
        sop_class = ""
    if sop_class in DERIVED_SOP_CLASSES:
        return []
    if not is_enhanced(header):
        return [header]
    try:
        return frame_headers(header)
    except ValueError:
        raise
    except Exception as exc:      # a damaged functional group: one line, as for any damaged file
        from .io import _one_line

        raise ValueError(f"cannot read the frames of enhanced DICOM file {header.path}: {_one_line(exc)}") from None


def frame_headers(header) -> list:
    """One ``io._SliceHeader`` per frame of an enhanced file (``frame`` set to its index)."""
    import pydicom

    ds = pydicom.dcmread(str(header.path), stop_before_pixels=True)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = header.frames
    if per_frame and len(per_frame) != n:
        raise ValueError(f"enhanced DICOM file {header.path}: {len(per_frame)} per-frame functional "
                         f"groups for {n} frames")

    def group(i: int, keyword: str):
        """A functional group of frame ``i``: its own, else the shared one."""
        own = _item(per_frame[i], keyword) if per_frame else None
        return own if own is not None else _item(shared, keyword)

    out, missing = [], False
    spacing_tag = header.slice_spacing_tag
    for i in range(n):
        pos = _vec(group(i, "PlanePositionSequence"), "ImagePositionPatient", 3)
        iop = _vec(group(i, "PlaneOrientationSequence"), "ImageOrientationPatient", 6)
        measures = group(i, "PixelMeasuresSequence")
        ps = _vec(measures, "PixelSpacing", 2)
        pos = pos if pos is not None else header.position
        iop = iop if iop is not None else header.orientation
        ps = ps if ps is not None else (None if header.pixel_spacing is None else np.asarray(header.pixel_spacing))
        if pos is None or iop is None or ps is None:
            missing = True
        rescale = group(i, "PixelValueTransformationSequence")
        slope, intercept = _num(rescale, "RescaleSlope"), _num(rescale, "RescaleIntercept")
        content = group(i, "FrameContentSequence")
        converted = _item(per_frame[i], "UnassignedPerFrameConvertedAttributesSequence") if per_frame else None
        trigger = _num(group(i, "CardiacSynchronizationSequence"), "NominalCardiacTriggerDelayTime")
        trigger = trigger if trigger is not None else _num(converted, "TriggerTime")
        temporal = _num(content, "TemporalPositionIndex")
        temporal = temporal if temporal is not None else _num(converted, "TemporalPositionIdentifier")
        thickness = _num(measures, "SpacingBetweenSlices") or _num(measures, "SliceThickness")
        out.append(dataclasses.replace(
            header, position=pos, orientation=iop,
            pixel_spacing=None if ps is None else (float(ps[0]), float(ps[1])),
            trigger_time=trigger, instance_number=int(temporal) if temporal is not None else i + 1,
            slope=header.slope if slope is None else slope,
            intercept=header.intercept if intercept is None else intercept,
            slice_spacing_tag=thickness or spacing_tag, frame=i))
    if missing:
        if any(h.position is not None for h in out):
            return out              # partly placed: the series planner names what is missing
        step = float(spacing_tag or 1.0)
        warnings.warn(f"{header.path.name}: an enhanced DICOM file without frame positions or "
                      f"orientation; read as an axial stack of 1 mm pixels, {step:g} mm apart", stacklevel=3)
        out = [dataclasses.replace(h, position=np.array([0.0, 0.0, i * step]),
                                   orientation=np.array([1.0, 0, 0, 0, 1.0, 0]),
                                   pixel_spacing=h.pixel_spacing or (1.0, 1.0), slice_spacing_tag=step)
               for i, h in enumerate(out)]
    return out


def _is_seg_file(path: Path) -> bool:
    from .dicom_seg import is_dicom_seg

    return is_dicom_seg(path)


def _has_temporal_tags(path: Path) -> bool:
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True,
                         specific_tags=["TriggerTime", "TemporalPositionIdentifier", "CardiacNumberOfImages",
                                        "NumberOfTemporalPositions"])
    return any(ds.get(k) not in (None, "") for k in ("TriggerTime", "TemporalPositionIdentifier",
                                                    "CardiacNumberOfImages", "NumberOfTemporalPositions"))


def read_dicom_file(path: str | os.PathLike, series_uid: str | None = None) -> Any:
    """A DICOM image file as the user means it: its series (from its folder) when that is a
    complete series, else the file alone (see the module docstring)."""
    from .io import _load_series, _plan_series, _read_slice_header, _scan_series

    path = Path(path)
    own = _read_slice_header(path)
    if own is None:
        raise ValueError(f"cannot read {path}: not a DICOM image file")
    if _is_seg_file(path):
        from .dicom_seg import read_seg

        return read_seg(path).volume()                     # a SEG: its labels, on its own geometry
    if not series_headers(own):
        raise ValueError(f"cannot read {path} as an image: a DICOM parametric map (a derived object)")
    with warnings.catch_warnings(record=True) as caught:     # the folder's other files are not asked for
        warnings.simplefilter("always")
        scan = _scan_series(path.parent)
    uid = series_uid or own.series_uid
    # the reader's scan is a dict of series, or (with damaged-file checks) an object holding one
    # and the series refused for a damaged file, whose one line is kept
    refused = getattr(scan, "refused", {})
    headers = getattr(scan, "groups", scan).get(uid, [])
    for w in caught:
        if str(w.message).startswith(f"{path.name}:"):
            warnings.warn(str(w.message), stacklevel=2)
    if uid in refused:        # a damaged file that may be one of its images: never read without it
        raise ValueError(refused[uid])
    mine = [h for h in headers if h.path == path] or series_headers(own)
    if is_enhanced(own) and {h.path for h in headers} <= {path}:
        return _load_series(mine, path.parent)                   # one enhanced file: itself
    alone = None
    try:
        plan = _plan_series(headers)
        n_t = len(plan.files[0])
        distinct_files = len({h.path for h in headers}) > 1
        if n_t > 1 and distinct_files and not any(_has_temporal_tags(h.path) for h in headers):
            alone = (f"{len({h.path for h in headers})} files of its series hold images of the same "
                     "positions without any temporal position (copies, not a cine)")
    except ValueError as exc:
        if len(headers) <= 1:
            raise
        alone = f"its series cannot be assembled ({exc})"
    if alone is None:
        return _load_series(headers, path.parent, plan)
    volume = _load_series(mine, path)
    volume.meta["series"] = own.description or path.stem
    volume.meta["source"] = str(path)
    warnings.warn(f"{path.name}: opened alone: {alone}", stacklevel=2)
    return volume

"""DICOM Segmentation (SEG) objects out of labels results, and back in, with highdicom.

A labels result goes back to the hospital as a DICOM SEG (PS3.3 A.51) written by
`highdicom <https://highdicom.readthedocs.io>`_: one BINARY segment per structure, with its
name, SNOMED CT category and type codes, the plugin's display colour and either the model
that produced it (name, version, weights sha256: algorithm type AUTOMATIC), SEMIAUTOMATIC once
it was edited by hand, or MANUAL. Each frame references the exact source instance it was
drawn on; highdicom copies that instance's Frame of Reference, ImagePositionPatient and
ImageOrientationPatient, so a viewer places the SEG on its series without resampling.

Cines: one SEG instance per phase, all in one SEG series (InstanceNumber = phase + 1).
A SEG places frames by plane position only, and highdicom (rightly) refuses two frames at
the same position, which every phase of a cine slice has; a temporal dimension index would
be legal but OHIF and 3D Slicer ignore it and stack the phases at one place. A per-phase
SEG is a plain 3-D stack that every viewer shows on the phase it references.

Empty frames are kept (``omit_empty_frames=False``): a BINARY frame costs rows x columns / 8
bytes, and a complete stack reads back on the source grid with no gap to guess.

Label values are not stored in a SEG (segments are numbered 1, 2, ... in order); reading maps
a segment back to the plugin's value by its SNOMED type code (:data:`CARDIAC_STRUCTURES`,
:data:`LESION_STRUCTURES`), else keeps its segment number.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic import atomic_path

__all__ = ["Structure", "Algorithm", "CARDIAC_STRUCTURES", "LESION_STRUCTURES", "SegResult",
           "SEG_SOP_CLASS_UID", "write_seg", "read_seg", "read_seg_series", "is_dicom_seg",
           "seg_files"]

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# geometry of labels and source series agree within this (mm)
_GEOMETRY_TOL_MM = 1e-3


@dataclass(frozen=True)
class Structure:
    """One segment: its label value in the plugin's arrays, name, SNOMED CT codes, colour.

    ``category`` and ``type`` are ``(code value, scheme, meaning)`` triples (CID 7150 / 7151).
    ``color`` is RGB in 0..1, the plugin's display colour (stored as CIELab).
    """

    value: int
    label: str
    category: tuple[str, str, str]
    type: tuple[str, str, str]
    color: tuple[float, float, float]


_ANATOMY = ("91723000", "SCT", "Anatomical Structure")
_ALTERED = ("49755003", "SCT", "Morphologically Altered Structure")

#: cardiac labels (1 LV cavity, 2 myocardium, 3 RV cavity) with the cardiac widget's colours
#: (``widgets.cardiac.LABEL_COLORS``; a test keeps them equal). SNOMED has no "cavity of left
#: ventricle" concept in DICOM's CID 7151: the LV and RV segments are typed "Left ventricle" /
#: "Right ventricle", as TotalSegmentator's SEG exports do, and named "LV cavity" / "RV cavity".
CARDIAC_STRUCTURES: dict[int, Structure] = {
    1: Structure(1, "LV cavity", _ANATOMY, ("87878005", "SCT", "Left ventricle"), (1.0, 0.25, 0.25)),
    2: Structure(2, "myocardium", _ANATOMY,
                 ("49848007", "SCT", "Myocardium of left ventricle"), (0.3, 0.85, 0.3)),
    3: Structure(3, "RV cavity", _ANATOMY, ("53085002", "SCT", "Right ventricle"), (0.3, 0.55, 1.0)),
}

#: brain-tumour labels (BraTS values 1, 2, 4) with the lesion widget's colours
#: (``samples.brain_lesions.LABEL_COLORS``)
LESION_STRUCTURES: dict[int, Structure] = {
    1: Structure(1, "necrotic core", _ALTERED, ("6574001", "SCT", "Necrosis"), (0.95, 0.2, 0.2)),
    2: Structure(2, "oedema", _ALTERED, ("79654002", "SCT", "Edema"), (0.25, 0.85, 0.3)),
    4: Structure(4, "enhancing tumour", _ALTERED, ("108369006", "SCT", "Neoplasm"), (1.0, 0.9, 0.15)),
}

_KNOWN_TYPES = {(s.type[0], s.type[1]): s.value
                for table in (CARDIAC_STRUCTURES, LESION_STRUCTURES) for s in table.values()}


@dataclass(frozen=True)
class Algorithm:
    """Who made the labels: a model (``name``, ``version``, ``sha256`` of its weights), with
    ``edited`` once a person changed them (SEMIAUTOMATIC); ``name=""`` for hand-drawn
    labels (MANUAL)."""

    name: str = ""
    version: str = ""
    sha256: str = ""
    edited: bool = False

    @property
    def segment_algorithm_type(self) -> str:
        if not self.name:
            return "MANUAL"
        return "SEMIAUTOMATIC" if self.edited else "AUTOMATIC"


@dataclass(frozen=True)
class SegResult:
    """A SEG read back: labels on the SEG's grid and what its segments are.

    ``labels`` is ``(z, y, x)`` (``(t, z, y, x)`` from :func:`read_seg_series`) holding the
    plugin's label values; ``affine`` maps ``(k_z, j_y, i_x)`` to RAS mm with slices ordered
    along the normal (row x column cosines), as :func:`~napari_medlearn.imaging.io.read_dicom_series`
    orders them, so a SEG of a series lands on the same grid. ``segments`` has one dict per
    segment: ``number``, ``value``, ``label``, ``color`` (RGB 0..1), ``type`` and
    ``category`` (code triples), ``algorithm_type`` and ``algorithm`` (name, or "").
    """

    labels: np.ndarray
    affine: np.ndarray
    segments: list[dict[str, Any]]
    series_uid: str
    referenced_series_uid: str
    frame_of_reference_uid: str
    meta: dict[str, Any] = field(default_factory=dict)

    def volume(self):
        """The labels as a :class:`~napari_medlearn.imaging.volume.Volume`."""
        from .volume import Volume

        axes = ("t", "z", "y", "x") if self.labels.ndim == 4 else ("z", "y", "x")
        meta = {"source": self.meta.get("source", ""), "series": self.meta.get("series", ""),
                **({"time_step": self.meta["time_step"]} if "time_step" in self.meta else {}),
                "series_uid": self.series_uid, "referenced_series_uid": self.referenced_series_uid,
                "segments": self.segments}
        return Volume(self.labels, self.affine, axes, meta)


def _code(triple: tuple[str, str, str]):
    from highdicom.sr import CodedConcept

    return CodedConcept(*triple)


def _source_plan(source: str | os.PathLike | Sequence[str | os.PathLike]):
    """The source series' files ``[slice][phase]`` and affine, ordered exactly as the reader
    orders them (so labels read from the series index the right files)."""
    from .io import _candidate_files, _plan_series, _read_slice_header

    if isinstance(source, (str, os.PathLike)):
        src = Path(source)
        paths = _candidate_files(src) if src.is_dir() else [src]
    else:
        paths = [Path(p) for p in source]
    headers = [h for h in (_read_slice_header(p) for p in paths) if h is not None]
    headers = [h for h in headers if not is_dicom_seg(h.path)]
    if not headers:
        raise ValueError(f"no DICOM source images in {source}")
    uids = {h.series_uid for h in headers}
    if len(uids) > 1:
        raise ValueError(f"the source files belong to {len(uids)} series; a SEG references one")
    plan = _plan_series(headers)
    return plan


def _check_labels(labels: np.ndarray, plan, affine: np.ndarray | None) -> np.ndarray:
    lab = np.asarray(labels)
    n_z, n_t = len(plan.files), len(plan.files[0])
    h = plan.files[0][0]
    want = (n_z, h.rows, h.columns) if n_t == 1 else (n_t, n_z, h.rows, h.columns)
    if lab.ndim == 3 and n_t > 1 and lab.shape == want[1:]:
        raise ValueError(f"labels {lab.shape} are one phase of a {n_t}-phase cine: pass (t, z, y, x) {want}")
    if lab.shape != want:
        raise ValueError(f"labels of shape {lab.shape} do not match the source series {want}")
    if not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == bool):
        raise ValueError(f"labels must be integers, got {lab.dtype}")
    if affine is not None and not np.allclose(affine, plan.affine, atol=_GEOMETRY_TOL_MM):
        raise ValueError("the labels' geometry (affine) differs from the source series': "
                         "a SEG must be drawn on its source images' grid")
    return lab


def _segment_descriptions(structures: Sequence[Structure], algorithm: Algorithm):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algo = None
    if algorithm.name:
        params = {"weights_sha256": algorithm.sha256} if algorithm.sha256 else None
        algo = hd.AlgorithmIdentificationSequence(name=algorithm.name[:64],
                                                  family=codes.DCM.ArtificialIntelligence,
                                                  version=(algorithm.version or "unknown")[:64],
                                                  source="napari-medlearn", parameters=params)
    out = []
    for number, s in enumerate(structures, start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=s.label[:64],
            segmented_property_category=_code(s.category), segmented_property_type=_code(s.type),
            algorithm_type=algorithm.segment_algorithm_type, algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=s.label[:64],
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in s.color))))
    return out


def write_seg(
    labels: Any,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    structures: Mapping[int, Structure] | Sequence[Structure],
    algorithm: Algorithm,
    out: str | os.PathLike,
    *,
    series_description: str = "napari-medlearn segmentation",
    series_number: int = 300,
    overwrite: bool = False,
) -> list[Path]:
    """Write labels drawn on a DICOM series as DICOM SEG.

    Parameters
    ----------
    labels
        ``(z, y, x)`` or, for a cine, ``(t, z, y, x)`` integer array (or a
        :class:`~napari_medlearn.imaging.volume.Volume`, whose affine must then be the source's)
        on the source series' grid as :func:`~napari_medlearn.imaging.io.read_dicom_folder`
        returns it.
    source
        The source series: its folder or its files (one series).
    structures
        The segments to write (e.g. :data:`CARDIAC_STRUCTURES`), in segment order; a label
        value without a structure is refused, a structure absent from the labels is written
        empty (a viewer then shows that nothing was found).
    algorithm
        The model, or ``Algorithm()`` for hand-drawn labels.
    out
        The SEG file. A cine gives one file per phase, ``<stem>_t01.dcm`` ... beside it.
    overwrite
        Replace existing files (each is written atomically).

    Returns
    -------
    list of Path
        The files written, in phase order.
    """
    import highdicom as hd

    volume_affine = getattr(labels, "affine", None)
    data = getattr(labels, "data", labels)
    structures = list(structures.values()) if isinstance(structures, Mapping) else list(structures)
    if not structures:
        raise ValueError("no structures given: a SEG needs at least one segment")
    plan = _source_plan(source)
    lab = _check_labels(data, plan, volume_affine)
    values = {int(s.value) for s in structures}
    unknown = sorted(set(np.unique(lab).tolist()) - values - {0})
    if unknown:
        raise ValueError(f"labels hold values {unknown[:5]} that no structure describes "
                         f"(known: {sorted(values)})")
    phases = lab[None] if lab.ndim == 3 else lab
    n_t = phases.shape[0]
    out = Path(out)
    targets = [out] if n_t == 1 else [out.with_name(f"{out.stem}_t{t + 1:02d}{out.suffix or '.dcm'}")
                                       for t in range(n_t)]
    if not overwrite:
        for p in targets:
            if p.exists():
                raise FileExistsError(f"{p} exists (use overwrite to replace it)")
    descriptions = _segment_descriptions(structures, algorithm)
    series_uid = hd.UID()
    import pydicom

    written = []
    for t in range(n_t):
        files = [plan.files[z][t].path for z in range(len(plan.files))]
        sources = [pydicom.dcmread(str(p)) for p in files]
        # one boolean channel per segment, frames in the sources' (reader's) slice order
        masks = np.stack([phases[t] == s.value for s in structures], axis=-1)
        with warnings.catch_warnings():
            # a one-component PatientName ("ANON") copied from the source is not ours to fix
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=masks, segmentation_type="BINARY",
                segment_descriptions=descriptions, series_instance_uid=series_uid,
                series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=t + 1,
                manufacturer="napari-medlearn", manufacturer_model_name=algorithm.name or "manual",
                software_versions=_version(), device_serial_number="0",
                content_description=(f"phase {t + 1} of {n_t}" if n_t > 1 else None),
                content_label="SEGMENTATION", omit_empty_frames=False)
        seg.SeriesDescription = series_description[:64]
        with atomic_path(targets[t]) as tmp:
            seg.save_as(str(tmp), enforce_file_format=True)
        written.append(targets[t])
    return written


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-medlearn")
    except Exception:  # pragma: no cover - not installed
        return "0"


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True for a DICOM SEG file (by its SOP class)."""
    import pydicom

    from .io import is_dicom_file

    if not is_dicom_file(path):
        return False
    try:
        meta = pydicom.filereader.read_file_meta_info(str(path))
    except Exception:
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == SEG_SOP_CLASS_UID


def seg_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM SEG files in ``folder`` (not its subfolders)."""
    from .io import _candidate_files

    return [p for p in _candidate_files(Path(folder)) if is_dicom_seg(p)]


def _rgb(desc) -> tuple[float, float, float] | None:
    lab = desc.get("RecommendedDisplayCIELabValue")
    if lab is None:
        return None
    import highdicom as hd

    r, g, b = hd.color.CIELabColor.from_dicom_value(lab).to_rgb()
    return (r / 255.0, g / 255.0, b / 255.0)


def read_seg(path: str | os.PathLike) -> SegResult:
    """Read a DICOM SEG (BINARY or FRACTIONAL, thresholded at half) as a label map.

    Geometry comes from the SEG's own plane positions and orientation (highdicom's volume
    geometry), slices ordered along the normal like the series reader's. A SEG whose frames
    do not form a regular stack is refused with one line.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise ValueError(f"cannot read {path} as DICOM SEG: {_one_line(exc)}") from None
    try:
        vol = seg.get_volume(combine_segments=True, skip_overlap_checks=True)
    except Exception as exc:
        raise ValueError(f"cannot place the frames of DICOM SEG {path}: {_one_line(exc)}") from None
    numbers = np.asarray(vol.array)
    affine = _LPS_TO_RAS @ np.asarray(vol.affine, dtype=float)
    # highdicom may stack slices against the normal; the series reader stacks them along it
    lps = np.asarray(vol.affine, dtype=float)
    normal = np.cross(lps[:3, 2], lps[:3, 1])   # row (x) cosines x column (y) cosines
    if numbers.shape[0] > 1 and float(lps[:3, 0] @ normal) < 0:
        numbers = numbers[::-1]
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1.0, numbers.shape[0] - 1
        affine = affine @ flip
    segments, lut = [], np.arange(max(seg.get_segment_numbers(), default=0) + 1)
    for number in seg.get_segment_numbers():
        d = seg.get_segment_description(number)
        ptype = d.segmented_property_type
        value = _KNOWN_TYPES.get((str(ptype.value), str(ptype.scheme_designator)), number)
        algo = d.get("SegmentationAlgorithmIdentificationSequence")
        segments.append({
            "number": number, "value": int(value), "label": str(d.segment_label),
            "color": _rgb(d), "algorithm_type": str(d.algorithm_type.value),
            "algorithm": str(getattr(d.algorithm_identification[0], "AlgorithmName", "")) if algo else "",
            "type": (str(ptype.value), str(ptype.scheme_designator), str(ptype.meaning)),
            "category": tuple(str(x) for x in (d.segmented_property_category.value,
                                               d.segmented_property_category.scheme_designator,
                                               d.segmented_property_category.meaning)),
        })
        lut[number] = value
    if len({s["value"] for s in segments}) < len(segments):   # two segments of one structure
        for s in segments:
            s["value"] = s["number"]
            lut[s["number"]] = s["number"]
    dtype = np.uint8 if lut.max(initial=0) <= 255 else np.uint16
    labels = lut.astype(dtype)[numbers.astype(np.intp)]
    first_source = ""
    try:
        first_source = str(seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
                           .SourceImageSequence[0].ReferencedSOPInstanceUID)
    except (AttributeError, IndexError):
        pass
    ref_series = ""
    refs = seg.get("ReferencedSeriesSequence")
    if refs:
        ref_series = str(refs[0].SeriesInstanceUID)
    return SegResult(labels=np.ascontiguousarray(labels), affine=affine, segments=segments,
                     series_uid=str(seg.SeriesInstanceUID), referenced_series_uid=ref_series,
                     frame_of_reference_uid=str(seg.get("FrameOfReferenceUID", "")),
                     meta={"source": str(path), "series": str(seg.get("SeriesDescription", "") or ""),
                           "instance_number": int(seg.get("InstanceNumber", 1) or 1),
                           "first_source_uid": first_source})


def read_seg_series(paths: Sequence[str | os.PathLike]) -> SegResult:
    """Several SEG instances of one SEG series (the phases of a cine, by InstanceNumber) as one
    ``(t, z, y, x)`` label map; a single instance as ``(z, y, x)``."""
    results = sorted((read_seg(p) for p in paths), key=lambda r: r.meta["instance_number"])
    if not results:
        raise ValueError("no DICOM SEG files given")
    if len(results) == 1:
        return results[0]
    first = results[0]
    for r in results[1:]:
        if r.series_uid != first.series_uid:
            raise ValueError(f"{r.meta['source']} belongs to another SEG series than {first.meta['source']}")
        if r.labels.shape != first.labels.shape or not np.allclose(r.affine, first.affine, atol=_GEOMETRY_TOL_MM):
            raise ValueError(f"the phases of SEG series {first.series_uid} do not share one grid "
                             f"({r.meta['source']} differs)")
    return SegResult(labels=np.stack([r.labels for r in results]), affine=first.affine,
                     segments=first.segments, series_uid=first.series_uid,
                     referenced_series_uid=first.referenced_series_uid,
                     frame_of_reference_uid=first.frame_of_reference_uid,
                     meta={**first.meta, "phases": [r.meta["source"] for r in results],
                           "phase_source_uids": [r.meta["first_source_uid"] for r in results]})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def seg_layer_data(paths: Sequence[str | os.PathLike], trigger_times: Mapping[str, float] | None = None) -> tuple:
    """A napari labels ``LayerData`` for one SEG series (a SEG file, or a cine's phases):
    placed by the SEG's geometry, coloured by its segments' recommended display colours,
    named after its series, with each value's structure name in ``features``. A cine's time
    step (which a SEG does not hold) comes from its source instances' TriggerTime when
    ``trigger_times`` (SOPInstanceUID -> ms) has them, so it lines up with its cine layer."""
    result = read_seg_series(paths)
    refs = result.meta.get("phase_source_uids") or []
    times = [trigger_times.get(u) for u in refs] if trigger_times else []
    if len(times) > 1 and all(t is not None for t in times):
        step = float(np.median(np.diff(times)))
        if step > 0:
            result.meta["time_step"] = step
    colours: dict[Any, tuple] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for s in result.segments:
        if s["color"] is not None:
            colours[s["value"]] = (*s["color"], 1.0)
    name = result.meta.get("series") or "DICOM SEG"
    data, kwargs, kind = result.volume().to_layer_data(name=name, layer_type="labels",
                                                       colormap=colours, opacity=0.5)
    kwargs["features"] = {"index": [0] + [s["value"] for s in result.segments],
                          "structure": ["background"] + [s["label"] for s in result.segments]}
    kwargs["metadata"] = {**kwargs.get("metadata", {}),
                          "label_names": {s["value"]: s["label"] for s in result.segments}}
    return data, kwargs, kind


def seg_layers(folder: str | os.PathLike) -> list[tuple]:
    """One labels layer per SEG series in ``folder`` (see :func:`seg_layer_data`)."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    for p in seg_files(folder):
        uid = str(pydicom.dcmread(str(p), stop_before_pixels=True,
                                  specific_tags=["SeriesInstanceUID"]).get("SeriesInstanceUID", ""))
        groups.setdefault(uid, []).append(p)
    times: dict[str, float] = {}
    if any(len(paths) > 1 for paths in groups.values()):
        from .io import _candidate_files, _read_slice_header

        for p in _candidate_files(Path(folder)):
            h = _read_slice_header(p)
            if h is not None and h.trigger_time is not None:
                times[h.sop_uid] = h.trigger_time
    return [seg_layer_data(paths, times) for paths in groups.values()]

"""Measures as a DICOM SR measurement report (TID 1500) and uncertainty as a parametric map.

The measures the plugin reports (cardiac LVEDV ... RVEF, tumour sub-region volumes) go back
to the hospital as a Comprehensive 3D SR built with highdicom's TID 1500 templates: one
volumetric measurement group (TID 1411) per segmented structure and time point, each group
referencing the SEG segment it was computed from (:mod:`napari_medlearn.imaging.dicom_seg`),
each measurement with its UCUM unit (``ml``, ``g``, ``%``) and the algorithm that made the
labels (model name, version, weights sha256). Values are written as the CSV rows hold them
(:func:`napari_medlearn.methods.report.measures_row` rounds to 3 decimals), so the report and
``measures.csv`` say the same numbers.

Concept names: LOINC or SNOMED CT codes where DICOM's dictionaries have the exact measure
(LVEDV LN 18026-5, LVESV LN 18148-7, LVEF by MR LN 8811-2, RVEF by MR LN 8818-7, stroke
volume SCT 90096001, volume SCT 118565006); the others (LVM, RVEDV, RVESV) use the local
coding scheme ``99MEDLEARN`` (PS3.16 8.2 allows "99"-prefixed private schemes) with the
measure's own name, rather than a code that means something else.

The uncertainty map (an ensemble's voxel-wise disagreement) is written as a Parametric Map
(PS3.3 A.75) on its source instances, float32 values with a real-world value mapping, which
OHIF and 3D Slicer display over the series.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .atomic import atomic_path
from .dicom_seg import Algorithm

__all__ = ["MEASURE_CONCEPTS", "MeasurementGroup", "write_measurement_report", "read_measurement_report",
           "cardiac_groups", "lesion_groups", "write_parametric_map"]

LOCAL_SCHEME = "99MEDLEARN"
_UNITS = {"mL": ("ml", "UCUM", "milliliter"), "g": ("g", "UCUM", "gram"), "pct": ("%", "UCUM", "percent")}

#: CSV key -> concept name (code value, scheme, meaning); the unit follows the key's suffix
MEASURE_CONCEPTS: dict[str, tuple[str, str, str]] = {
    "LVEDV_mL": ("18026-5", "LN", "Left Ventricular End Diastolic Volume"),
    "LVESV_mL": ("18148-7", "LN", "Left Ventricular End Systolic Volume"),
    "LVSV_mL": ("90096001", "SCT", "Stroke Volume"),
    "LVEF_pct": ("8811-2", "LN", "Left ventricular ejection fraction by MR"),
    "LVM_g": ("LVM", LOCAL_SCHEME, "Left ventricular myocardial mass"),
    "RVEDV_mL": ("RVEDV", LOCAL_SCHEME, "Right ventricular end diastolic volume"),
    "RVESV_mL": ("RVESV", LOCAL_SCHEME, "Right ventricular end systolic volume"),
    "RVSV_mL": ("90096001", "SCT", "Stroke Volume"),
    "RVEF_pct": ("8818-7", "LN", "Right ventricular ejection fraction by MR"),
    "necrotic_core_mL": ("118565006", "SCT", "Volume"),
    "oedema_mL": ("118565006", "SCT", "Volume"),
    "enhancing_mL": ("118565006", "SCT", "Volume"),
}


@dataclass(frozen=True)
class MeasurementGroup:
    """Measures of one segment of one SEG instance: ``measures`` maps CSV keys
    (``LVEDV_mL``) to values; ``name`` is the group's tracking identifier (``LV cavity at ED``)."""

    seg: Any                      # a SEG file path or pydicom Dataset
    segment_number: int
    name: str
    measures: Mapping[str, float | None]


def _concept(triple):
    from highdicom.sr import CodedConcept

    return CodedConcept(*triple)


def _unit(key: str):
    suffix = key.rpartition("_")[2]
    if suffix not in _UNITS:
        raise ValueError(f"measure {key!r} has no known unit suffix (_mL, _g, _pct)")
    return _concept(_UNITS[suffix])


def _dataset(obj):
    import pydicom

    return obj if isinstance(obj, pydicom.Dataset) else pydicom.dcmread(str(obj))


def cardiac_groups(row: Mapping[str, Any], ed_seg: Any, es_seg: Any) -> list[MeasurementGroup]:
    """The cardiac measures of a CSV row as groups on the ED and ES phase SEGs (segments
    1 LV cavity, 2 myocardium, 3 RV cavity as :data:`~napari_medlearn.imaging.dicom_seg.CARDIAC_STRUCTURES`
    numbers them): LVEDV, LVSV, LVEF on the LV at ED; LVESV at ES; LVM on the myocardium at ED;
    RV likewise."""
    pick = lambda *keys: {k: row.get(k) for k in keys}   # noqa: E731
    return [
        MeasurementGroup(ed_seg, 1, "LV cavity at ED", pick("LVEDV_mL", "LVSV_mL", "LVEF_pct")),
        MeasurementGroup(es_seg, 1, "LV cavity at ES", pick("LVESV_mL")),
        MeasurementGroup(ed_seg, 2, "myocardium at ED", pick("LVM_g")),
        MeasurementGroup(ed_seg, 3, "RV cavity at ED", pick("RVEDV_mL", "RVSV_mL", "RVEF_pct")),
        MeasurementGroup(es_seg, 3, "RV cavity at ES", pick("RVESV_mL")),
    ]


def lesion_groups(volumes: Mapping[str, Any], seg: Any) -> list[MeasurementGroup]:
    """Tumour sub-region volumes (``necrotic_core_mL``, ``oedema_mL``, ``enhancing_mL``) on the
    segments 1, 2, 3 of a SEG written with :data:`~napari_medlearn.imaging.dicom_seg.LESION_STRUCTURES`."""
    return [MeasurementGroup(seg, n, name, {key: volumes.get(key)})
            for n, name, key in ((1, "necrotic core", "necrotic_core_mL"), (2, "oedema", "oedema_mL"),
                                 (3, "enhancing tumour", "enhancing_mL"))]


def write_measurement_report(
    groups: Sequence[MeasurementGroup],
    algorithm: Algorithm,
    out: str | os.PathLike,
    *,
    procedure: tuple[str, str, str] = ("363679005", "SCT", "Imaging procedure"),
    series_description: str = "napari-medlearn measurements",
    series_number: int = 301,
    overwrite: bool = False,
) -> Path:
    """Write measures as a TID 1500 Comprehensive 3D SR referencing their SEG segments.

    Missing values (None, NaN: e.g. ES volumes of a single frame) are left out of their group;
    a group left empty is left out. Returns ``out``, written atomically.
    """
    import highdicom as hd
    from highdicom.sr import (AlgorithmIdentification, DeviceObserverIdentifyingAttributes, FindingSite,
                              Measurement, MeasurementReport, ObservationContext, ObserverContext,
                              ReferencedSegment, SourceSeriesForSegmentation, TrackingIdentifier,
                              VolumetricROIMeasurementsAndQualitativeEvaluations)
    from pydicom.sr.codedict import codes

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use overwrite to replace it)")
    if not groups:
        raise ValueError("no measurement groups to report")
    params = [f"weights_sha256={algorithm.sha256}"] if algorithm.sha256 else None
    algo = (AlgorithmIdentification(name=algorithm.name[:64], version=(algorithm.version or "unknown")[:64],
                                    parameters=params) if algorithm.name else None)
    segs: dict[str, Any] = {}
    content = []
    for g in groups:
        seg = _dataset(g.seg)
        segs.setdefault(str(seg.SOPInstanceUID), seg)
        numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
        if g.segment_number not in numbers:
            raise ValueError(f"SEG {seg.SOPInstanceUID} has no segment {g.segment_number} (it has {numbers})")
        desc = seg.SegmentSequence[numbers.index(g.segment_number)]
        site = desc.SegmentedPropertyTypeCodeSequence[0]
        finding_site = FindingSite(anatomic_location=_concept((site.CodeValue, site.CodingSchemeDesignator,
                                                               site.CodeMeaning)))
        measurements = []
        for key, value in g.measures.items():
            if key not in MEASURE_CONCEPTS:
                raise ValueError(f"unknown measure {key!r}; known: {', '.join(MEASURE_CONCEPTS)}")
            if value is None or not np.isfinite(float(value)):
                continue
            measurements.append(Measurement(name=_concept(MEASURE_CONCEPTS[key]), value=float(value),
                                            unit=_unit(key), algorithm_id=algo))
        if not measurements:
            continue
        content.append(VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=g.name[:64]),
            # the source series by UID: the SR's evidence is the SEG alone, not every slice
            referenced_segment=ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
                segment_number=g.segment_number,
                source_series=SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
            finding_sites=[finding_site], measurements=measurements, algorithm_id=algo))
    if not content:
        raise ValueError("every measure is missing: nothing to report")
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=(algorithm.name or "napari-medlearn")[:64], manufacturer_name="napari-medlearn"))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=observer),
                               procedure_reported=_concept(procedure), imaging_measurements=content)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(segs.values()), content=report[0], series_instance_uid=hd.UID(),
            series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="napari-medlearn", is_complete=True)
    sr.SeriesDescription = series_description[:64]
    with atomic_path(out) as tmp:
        sr.save_as(str(tmp), enforce_file_format=True)
    return out


def _key_for(name, unit, site) -> str:
    """The CSV key of a measurement read back: its concept, disambiguated by the finding site
    (stroke volume of the LV or the RV) and the unit."""
    matches = [k for k, c in MEASURE_CONCEPTS.items() if (c[0], c[1]) == (str(name.value), str(name.scheme_designator))
               and _UNITS[k.rpartition("_")[2]][0] == str(unit.value)]
    if len(matches) > 1 and site is not None:
        side = {"87878005": ("LV", "myocardium"), "49848007": ("LV",), "53085002": ("RV",),
                "6574001": ("necrotic",), "79654002": ("oedema",), "108369006": ("enhancing",)}
        prefixes = side.get(str(site.value), ())
        narrowed = [k for k in matches if k.startswith(prefixes)]
        matches = narrowed or matches
    return matches[0] if len(matches) == 1 else f"{name.meaning} ({unit.value})"


def _algorithm_name(measurement) -> str:
    """The Algorithm Name (DCM 111001) under a measurement's numeric item, or ""."""
    for item in measurement[0].get("ContentSequence", []):
        concept = item.ConceptNameCodeSequence[0]
        if (concept.CodeValue, concept.CodingSchemeDesignator) == ("111001", "DCM"):
            return str(item.TextValue)
    return ""


def read_measurement_report(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The measurement groups of a TID 1500 SR: per group ``name`` (tracking identifier),
    ``seg_uid`` and ``segment_number`` (the SEG segment referenced), ``algorithm`` and
    ``measures`` (CSV key -> value; unit as UCUM code in ``units``)."""
    import highdicom as hd

    path = Path(path)
    try:
        sr = hd.sr.srread(str(path))
        groups = sr.content.get_volumetric_roi_measurement_groups()
    except Exception as exc:
        raise ValueError(f"cannot read {path} as a TID 1500 measurement report: {exc}") from None
    out = []
    for g in groups:
        ref = g.referenced_segment
        sites = g.finding_sites
        site = sites[0].value if sites else None
        measures, units, algorithm = {}, {}, ""
        for m in g.get_measurements():
            key = _key_for(m.name, m.unit, site)
            measures[key] = float(m.value)
            units[key] = str(m.unit.value)
            if not algorithm:
                algorithm = _algorithm_name(m)
        out.append({"name": str(g.tracking_identifier), "seg_uid": str(ref.referenced_sop_instance_uid),
                    "segment_number": int(ref.referenced_segment_numbers[0]),
                    "measures": measures, "units": units, "algorithm": algorithm})
    return out


def write_parametric_map(
    values: np.ndarray,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    label: str = "uncertainty",
    unit: tuple[str, str, str] = ("1", "UCUM", "no units"),
    algorithm: Algorithm | None = None,
    series_number: int = 302,
    overwrite: bool = False,
) -> Path:
    """Write a ``(z, y, x)`` float map (e.g. the ensemble's uncertainty) on a DICOM series as a
    Parametric Map referencing each source instance; float32, real-world value map 1:1."""
    import highdicom as hd
    import pydicom

    from .dicom_seg import _source_plan

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use overwrite to replace it)")
    plan = _source_plan(source)
    vals = np.asarray(getattr(values, "data", values), dtype=np.float32)
    n_z, h = len(plan.files), plan.files[0][0]
    if len(plan.files[0]) != 1 or vals.shape != (n_z, h.rows, h.columns):
        raise ValueError(f"a parametric map of shape {vals.shape} does not match the source series "
                         f"({n_z}, {h.rows}, {h.columns}) (one 3-D series)")
    if not np.all(np.isfinite(vals)):
        raise ValueError("the map holds NaN or infinite values")
    sources = [pydicom.dcmread(str(plan.files[z][0].path)) for z in range(n_z)]
    lo, hi = float(vals.min()), float(vals.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=label[:16], lut_explanation=label[:64], unit=_concept(unit),
        value_range=(lo, hi if hi > lo else lo + 1.0), slope=1.0, intercept=0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        pm = hd.pm.ParametricMap(
            source_images=sources, pixel_array=vals, series_instance_uid=hd.UID(),
            series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="napari-medlearn",
            manufacturer_model_name=(algorithm.name if algorithm and algorithm.name else "napari-medlearn")[:64],
            software_versions="napari-medlearn", device_serial_number="0",
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=(lo + hi) / 2,
                                                             window_width=max(hi - lo, 1e-6))])
    pm.SeriesDescription = label[:64]
    with atomic_path(out) as tmp:
        pm.save_as(str(tmp), enforce_file_format=True)
    return out


# ---------------------------------------------------------------------------------------
# a job's results as DICOM, beside its NIfTI/CSV outputs
# ---------------------------------------------------------------------------------------
#: file names a job writes when its input was DICOM (shell patterns, as jobs.existing_outputs takes)
DICOM_OUTPUTS = ("seg.dcm", "seg_t*.dcm", "sr.dcm", "uncertainty_pm.dcm")


def dicom_source(path: str | os.PathLike) -> list[Path] | None:
    """The files of the DICOM series a job read from ``path`` (a series folder, or one file of a
    series), or None when ``path`` is not DICOM (NIfTI, NRRD, ...)."""
    from .io import _candidate_files, dicom_series_uid, folder_has_dicom, is_dicom_file

    p = Path(path)
    if p.is_dir():
        return _candidate_files(p) if folder_has_dicom(p) else None
    if not is_dicom_file(p):
        return None
    uid = dicom_series_uid(p)
    return [f for f in _candidate_files(p.parent) if is_dicom_file(f) and dicom_series_uid(f) == uid]


def write_cardiac_dicom(out: str | os.PathLike, source: Sequence[Path], labels, row: Mapping[str, Any],
                        algorithm: Algorithm) -> dict[str, Path]:
    """SEG (one per phase for a cine) and the TID 1500 report of a cardiac run on a DICOM cine."""
    from .dicom_seg import CARDIAC_STRUCTURES, write_seg

    out = Path(out)
    segs = write_seg(labels, source, CARDIAC_STRUCTURES, algorithm, out / "seg.dcm", overwrite=True)
    paths = {f"seg_{i + 1}": p for i, p in enumerate(segs)}
    if not any(row.get(k) is not None and np.isfinite(float(row[k])) for k in MEASURE_CONCEPTS if k in row):
        return paths                      # nothing measured (no heart found): the SEG says so alone
    ed, es = row.get("ED_frame"), row.get("ES_frame")
    ed_seg = segs[int(ed)] if ed is not None and len(segs) > 1 else segs[0]
    es_seg = segs[int(es)] if es is not None and len(segs) > 1 else segs[0]
    paths["sr"] = write_measurement_report(cardiac_groups(row, ed_seg, es_seg), algorithm, out / "sr.dcm",
                                           procedure=("241620005", "SCT", "Cardiac MRI"), overwrite=True)
    return paths


def write_lesion_dicom(out: str | os.PathLike, source: Sequence[Path], labels, volumes: Mapping[str, Any],
                       algorithm: Algorithm, uncertainty=None) -> dict[str, Path]:
    """SEG, TID 1500 report and (for an ensemble) the uncertainty parametric map of a lesion run
    whose FLAIR was a DICOM series."""
    from .dicom_seg import LESION_STRUCTURES, write_seg

    out = Path(out)
    [seg] = write_seg(labels, source, LESION_STRUCTURES, algorithm, out / "seg.dcm", overwrite=True)
    paths = {"seg": seg, "sr": write_measurement_report(lesion_groups(volumes, seg), algorithm, out / "sr.dcm",
                                                        overwrite=True)}
    if uncertainty is not None:
        paths["uncertainty_pm"] = write_parametric_map(uncertainty, source, out / "uncertainty_pm.dcm",
                                                       algorithm=algorithm, overwrite=True)
    return paths

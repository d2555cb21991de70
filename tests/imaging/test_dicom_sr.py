"""DICOM SR (TID 1500) measurement reports and parametric maps: the values read back are the
CSV's, each group references its SEG segment, and the map sits on its source instances."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest

from napari_medlearn.imaging.dicom_seg import CARDIAC_STRUCTURES, LESION_STRUCTURES, Algorithm, write_seg
from napari_medlearn.imaging.dicom_sr import (
    MeasurementGroup, cardiac_groups, lesion_groups, read_measurement_report, write_measurement_report,
    write_parametric_map,
)
from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.imaging.measures import CARDIAC_MEASURES, cardiac_measures
from napari_medlearn.imaging.volume import Volume, affine_from_spacing

MODEL = Algorithm("bai-fcn", "1.0", "ef" * 32)


@pytest.fixture(scope="module")
def cine_segs(tmp_path_factory):
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    ph = cardiac_cine_phantom(seed=4, n_frames=4, matrix=40)
    image, labels = ph.volumes()
    root = tmp_path_factory.mktemp("sr")
    write_dicom_series(image, root / "cine")
    segs = write_seg(labels, root / "cine", CARDIAC_STRUCTURES, MODEL, root / "seg" / "seg.dcm")
    return root, labels, segs


def test_cardiac_report_values_equal_measures_csv(cine_segs, tmp_path):
    from napari_medlearn.methods.report import measures_row, write_measures_csv

    root, labels, segs = cine_segs
    m = cardiac_measures(labels.data, labels.spacing)
    assert m["ED_frame"] != m["ES_frame"]
    row = measures_row(m, model_name=MODEL.name, sha256=MODEL.sha256)
    csv_path = write_measures_csv([row], tmp_path / "measures.csv")
    with open(csv_path, newline="") as f:
        written = next(csv.DictReader(f))
    ed, es = segs[m["ED_frame"]], segs[m["ES_frame"]]
    sr = write_measurement_report(cardiac_groups(row, ed, es), MODEL, tmp_path / "sr.dcm")
    groups = read_measurement_report(sr)
    values = {k: v for g in groups for k, v in g["measures"].items()}
    assert sorted(values) == sorted(CARDIAC_MEASURES)
    for key in CARDIAC_MEASURES:
        assert values[key] == float(written[key]), key          # to the CSV's written precision
    units = {k: u for g in groups for k, u in g["units"].items()}
    assert units["LVEDV_mL"] == "ml" and units["LVEF_pct"] == "%" and units["LVM_g"] == "g"
    uids = {p: pydicom.dcmread(p).SOPInstanceUID for p in (ed, es)}
    refs = {g["name"]: (g["seg_uid"], g["segment_number"]) for g in groups}
    assert refs["LV cavity at ED"] == (uids[ed], 1)
    assert refs["LV cavity at ES"] == (uids[es], 1)
    assert refs["myocardium at ED"] == (uids[ed], 2)
    assert refs["RV cavity at ES"] == (uids[es], 3)
    assert {g["algorithm"] for g in groups} == {"bai-fcn"}
    ds = pydicom.dcmread(sr)
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # the SEGs are the evidence of the report, in the same study
    evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence == set(uids.values())


def test_missing_values_left_out_and_unknown_measures_refused(cine_segs, tmp_path):
    root, labels, segs = cine_segs
    row = {k: None for k in CARDIAC_MEASURES}
    row.update(LVEDV_mL=120.5, LVM_g=float("nan"))
    groups = read_measurement_report(write_measurement_report(cardiac_groups(row, segs[0], segs[1]), MODEL,
                                                              tmp_path / "one.dcm"))
    assert [g["measures"] for g in groups] == [{"LVEDV_mL": 120.5}]
    with pytest.raises(ValueError, match="unknown measure 'LVEDV'"):
        write_measurement_report([MeasurementGroup(segs[0], 1, "x", {"LVEDV": 1.0})], MODEL, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="has no segment 9"):
        write_measurement_report([MeasurementGroup(segs[0], 9, "x", {"LVEDV_mL": 1.0})], MODEL, tmp_path / "x.dcm")
    with pytest.raises(FileExistsError):
        write_measurement_report(cardiac_groups({"LVEDV_mL": 1.0}, segs[0], segs[1]), MODEL, tmp_path / "one.dcm")


@pytest.fixture
def small_series(tmp_path):
    """A 4-slice oblique-free series and lesion labels (BraTS values) on it."""
    rng = np.random.default_rng(0)
    image = Volume(rng.random((4, 16, 12)).astype(np.float32), affine_from_spacing((3.0, 1.5, 1.2)),
                   ("z", "y", "x"))
    write_dicom_series(image, tmp_path / "flair")
    labels = np.zeros((4, 16, 12), np.uint8)
    labels[1:3, 4:10, 3:8] = 2
    labels[1:3, 6:8, 4:6] = 4
    labels[2, 7, 5] = 1
    return tmp_path / "flair", labels


def test_lesion_volumes_reference_their_segments(small_series, tmp_path):
    folder, labels = small_series
    [seg] = write_seg(labels, folder, LESION_STRUCTURES, MODEL, tmp_path / "seg.dcm")
    vox = 3.0 * 1.5 * 1.2 / 1000
    volumes = {"necrotic_core_mL": round(float((labels == 1).sum() * vox), 3),
               "oedema_mL": round(float((labels == 2).sum() * vox), 3),
               "enhancing_mL": round(float((labels == 4).sum() * vox), 3)}
    groups = read_measurement_report(write_measurement_report(lesion_groups(volumes, seg), MODEL,
                                                              tmp_path / "sr.dcm"))
    got = {g["name"]: (g["segment_number"], g["measures"]) for g in groups}
    assert got == {"necrotic core": (1, {"necrotic_core_mL": volumes["necrotic_core_mL"]}),
                   "oedema": (2, {"oedema_mL": volumes["oedema_mL"]}),
                   "enhancing tumour": (3, {"enhancing_mL": volumes["enhancing_mL"]})}


def test_uncertainty_parametric_map_on_its_source(small_series, tmp_path):
    folder, _ = small_series
    values = np.linspace(0, 0.7, 4 * 16 * 12, dtype=np.float32).reshape(4, 16, 12)
    out = write_parametric_map(values, folder, tmp_path / "uncertainty.dcm", label="uncertainty")
    pm = pydicom.dcmread(out)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    sources = {s.SOPInstanceUID: s for s in (pydicom.dcmread(p) for p in folder.iterdir())}
    frames = np.asarray(pm.pixel_array, dtype=np.float32)
    normal = np.cross(*np.asarray(next(iter(sources.values())).ImageOrientationPatient, float).reshape(2, 3))
    order = sorted(sources, key=lambda u: float(np.asarray(sources[u].ImagePositionPatient, float) @ normal))
    for i, fg in enumerate(pm.PerFrameFunctionalGroupsSequence):
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(np.asarray(fg.PlanePositionSequence[0].ImagePositionPatient, float),
                                   np.asarray(sources[ref].ImagePositionPatient, float), atol=1e-4)
        np.testing.assert_array_equal(frames[i], values[order.index(ref)])
    with pytest.raises(ValueError, match="does not match the source series"):
        write_parametric_map(values[:2], folder, tmp_path / "bad.dcm")
    # beside its series, the map is no slice of it
    import shutil

    from napari_medlearn.imaging.io import read_dicom_series

    shutil.copy(out, folder / "uncertainty.dcm")
    assert len(read_dicom_series(folder)) == 1


def test_segment_heart_on_a_dicom_cine_writes_seg_and_sr_matching_its_nifti_and_csv(tmp_path):
    """DICOM in, DICOM out: the job's SEG holds labels.nii.gz, its SR the numbers of measures.csv
    (the shipped phantom model, which finds the phantom's heart)."""
    from napari_medlearn.cli import main
    from napari_medlearn.imaging.dicom_seg import read_seg_series
    from napari_medlearn.imaging.io import read_nifti
    from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom

    image, _ = cardiac_cine_phantom(seed=4, n_frames=3, matrix=(40, 48), in_plane_spacing=6.0).volumes()
    write_dicom_series(image, tmp_path / "cine")
    out = tmp_path / "out"
    assert main(["segment-heart", str(tmp_path / "cine"), "--out", str(out), "--model", "cardiac-fcn-phantom",
                 "--quiet", "--device", "cpu"]) == 0
    segs = sorted(out.glob("seg_t*.dcm"))
    assert len(segs) == 3 and (out / "sr.dcm").exists()
    np.testing.assert_array_equal(read_seg_series(segs).labels, read_nifti(out / "labels.nii.gz").data)
    with open(out / "measures.csv", newline="") as f:
        written = next(csv.DictReader(f))
    values = {k: v for g in read_measurement_report(out / "sr.dcm") for k, v in g["measures"].items()}
    assert written["LVEDV_mL"] and written["LVEF_pct"]               # the heart was found
    assert values == {k: float(written[k]) for k in CARDIAC_MEASURES if written[k] != ""}
    algo = pydicom.dcmread(segs[0]).SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert written["model_sha256"] in str(algo.AlgorithmParameters)
    # a second run without --overwrite refuses to replace the DICOM outputs too
    (out / "labels.nii.gz").unlink()
    assert main(["segment-heart", str(tmp_path / "cine"), "--out", str(out), "--model", "cardiac-fcn-phantom",
                 "--quiet", "--device", "cpu"]) == 2

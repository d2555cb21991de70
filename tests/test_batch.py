"""Cohorts (``napari_medlearn.batch`` and ``medlearn batch``): folder layouts and manifests,
one folder per case plus cohort.csv, a bad case recorded while the rest run, resuming,
nothing of a user's replaced, dask workers giving the same results. Tiny untrained models."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.batch import Case, find_cases, run_batch
from napari_medlearn.cli import main
from napari_medlearn.imaging import Volume
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.jobs import InputError
from napari_medlearn.nets.deepmedic import DeepMedic


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----- finding cases -------------------------------------------------------------------------

def test_a_folder_of_images_and_case_folders(tmp_path):
    root = tmp_path / "cohort"
    _touch(root / "a.nii.gz")
    _touch(root / "b.nrrd")
    _touch(root / "README.md")                                   # not a case
    _touch(root / "acdc001" / "acdc001_4d.nii.gz")                # ACDC with its 4D cine
    _touch(root / "acdc001" / "acdc001_frame01.nii.gz")
    _touch(root / "acdc001" / "acdc001_frame01_gt.nii.gz")
    _touch(root / "acdc002" / "acdc002_frame01.nii.gz")           # ACDC with ED and ES frames only
    _touch(root / "acdc002" / "acdc002_frame07.nii.gz")
    _touch(root / "acdc002" / "acdc002_frame07_gt.nii.gz")
    _touch(root / "acdc002" / "Info.cfg")
    _touch(root / "dicom_series" / "IM0001")                      # a DICOM folder: the folder is the input
    cases = {c.name: c for c in find_cases("segment-heart", root)}
    assert list(cases) == ["a", "acdc001", "acdc002", "b", "dicom_series"]
    assert cases["a"].inputs == {"image": str(root / "a.nii.gz")}
    assert cases["acdc001"].inputs["image"] == str(root / "acdc001" / "acdc001_4d.nii.gz")
    assert cases["acdc002"].inputs["image"] == [str(root / "acdc002" / f"acdc002_frame{f}.nii.gz") for f in ("01", "07")]
    assert cases["dicom_series"].inputs["image"] == str(root / "dicom_series")
    # the same folder for a one-image job: two images in a case folder are ambiguous, not guessed
    masks = {c.name: c for c in find_cases("correct-mask", root)}
    assert "several images" in masks["acdc002"].error and "manifest" in masks["acdc002"].error
    stacks = {c.name: c for c in find_cases("super-resolve", root)}
    assert len(stacks["acdc002"].inputs["image"]) == 2                # several stacks of a case are fused


@pytest.mark.parametrize("names, mask", [
    (("BraTS2021_00001_flair.nii.gz", "BraTS2021_00001_t1ce.nii.gz", "BraTS2021_00001_t1.nii.gz",
      "BraTS2021_00001_t2.nii.gz", "BraTS2021_00001_seg.nii.gz"), False),
    (("BraTS-GLI-00000-000-t2f.nii.gz", "BraTS-GLI-00000-000-t1c.nii.gz", "BraTS-GLI-00000-000-t1n.nii.gz",
      "BraTS-GLI-00000-000-t2w.nii.gz", "BraTS-GLI-00000-000-seg.nii.gz"), False),
    (("Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "brainmask.nii.gz", "OTMultiClass.nii.gz"), True),
])
def test_lesion_sessions_are_found_by_their_file_names(tmp_path, names, mask):
    for n in names:
        _touch(tmp_path / "s1" / n)
    (case,) = find_cases("segment-lesions", tmp_path)
    assert case.name == "s1"
    assert os.path.basename(case.inputs["flair"]) == names[0]
    assert os.path.basename(case.inputs["t1c"]) == names[1]
    assert ("mask" in case.inputs) == mask


def test_a_session_without_t1c_is_reported_not_guessed(tmp_path):
    _touch(tmp_path / "s1" / "x_flair.nii.gz")
    _touch(tmp_path / "s1" / "x_t1.nii.gz")
    (case,) = find_cases("segment-lesions", tmp_path)
    assert "no T1c" in case.error


def test_manifest_with_relative_paths(tmp_path):
    _touch(tmp_path / "data" / "f.nii.gz")
    _touch(tmp_path / "data" / "t.nii.gz")
    manifest = tmp_path / "cohort.csv"
    manifest.write_text("case,flair,t1c,mask\nP1,data/f.nii.gz,data/t.nii.gz,\n,data/f.nii.gz,,\n")
    p1, p2 = find_cases("segment-lesions", manifest)
    assert p1 == Case("P1", {"flair": str(tmp_path / "data" / "f.nii.gz"), "t1c": str(tmp_path / "data" / "t.nii.gz")})
    assert p2.name == "f" and "line 3: no t1c" in p2.error
    bad = tmp_path / "bad.csv"
    bad.write_text("case,image\nP1,data/f.nii.gz\n")
    with pytest.raises(InputError, match="flair, t1c"):
        find_cases("segment-lesions", bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("case,image\nP1,data/f.nii.gz\nP1,data/t.nii.gz\n")
    with pytest.raises(InputError, match="two cases named"):
        find_cases("segment-heart", twice)
    with pytest.raises(InputError, match="no cases found"):
        find_cases("segment-heart", _touch(tmp_path / "empty" / "notes.txt").parent)


# ----- running -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cine_cohort(tmp_path_factory):
    from helpers import write_cine_cohort

    return write_cine_cohort(tmp_path_factory.mktemp("cohort"))


def test_a_cohort_runs_each_case_and_records_the_bad_one(cine_cohort, tiny_cardiac, tmp_path):
    out = tmp_path / "out"
    seen = []
    result = run_batch("segment-heart", cine_cohort, out, model=str(tiny_cardiac), device="cpu",
                       progress=lambda *a: seen.append(a))
    assert [(o.case, o.status) for o in result.outcomes] == [("case1", "done"), ("case2", "done"), ("flat", "failed")]
    assert "2-D" in result.failed[0].error
    assert seen[-1][:2] == (3, 3)
    rows = _rows(out / "cohort.csv")
    assert [r["case"] for r in rows] == ["case1", "case2", "flat"]
    assert "LVEDV_mL" in rows[0] and rows[0]["model"] == "tiny-cardiac (file tiny-cardiac.pt)" and rows[2]["model"] == ""
    assert "2-D" in rows[2]["error"] and rows[0]["error"] == ""
    for name in ("case1", "case2"):
        lab = read_nifti(out / name / "labels.nii.gz")
        np.testing.assert_array_equal(lab.affine, read_nifti(cine_cohort / f"{name}.nii.gz").affine)
        assert json.loads((out / name / "case.json").read_text())["status"] == "done"
    assert not (out / "flat").exists()                         # a bad case leaves nothing behind

    # again: the finished cases are skipped, the failed one is tried again
    before = (out / "case1" / "labels.nii.gz").stat().st_mtime_ns
    again = run_batch("segment-heart", cine_cohort, out, model=str(tiny_cardiac), device="cpu")
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "failed"]
    assert (out / "case1" / "labels.nii.gz").stat().st_mtime_ns == before
    assert _rows(out / "cohort.csv")[0]["LVEDV_mL"] == rows[0]["LVEDV_mL"]
    # a changed input or other options run that case again
    os.utime(cine_cohort / "case2.nii.gz", ns=(1, 1))
    assert [o.status for o in run_batch("segment-heart", cine_cohort, out, model=str(tiny_cardiac),
                                        device="cpu").outcomes] == ["skipped", "done", "failed"]


def test_files_a_batch_did_not_write_are_left_alone(cine_cohort, tiny_cardiac, tmp_path):
    out = tmp_path / "out"
    _touch(out / "case1" / "labels.nii.gz").write_bytes(b"precious")
    result = run_batch("segment-heart", [Case("case1", {"image": str(cine_cohort / "case1.nii.gz")})], out,
                       model=str(tiny_cardiac), device="cpu")
    assert result.outcomes[0].status == "failed" and "not written by a batch" in result.outcomes[0].error
    assert (out / "case1" / "labels.nii.gz").read_bytes() == b"precious"
    result = run_batch("segment-heart", [Case("case1", {"image": str(cine_cohort / "case1.nii.gz")})], out,
                       model=str(tiny_cardiac), device="cpu", overwrite=True)
    assert result.outcomes[0].status == "done"


def test_an_interrupted_case_is_run_again_not_taken_for_the_users(cine_cohort, tiny_cardiac, tmp_path, monkeypatch):
    from napari_medlearn import batch, jobs

    out = tmp_path / "out"
    case = [Case("case1", {"image": str(cine_cohort / "case1.nii.gz")})]
    real = jobs.write_cardiac_outputs

    def interrupted(folder, *args, **kwargs):       # Ctrl-C after the labels, before the rest
        real(folder, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "write_cardiac_outputs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_batch("segment-heart", case, out, model=str(tiny_cardiac), device="cpu")
    assert json.loads((out / "case1" / "case.json").read_text())["status"] == "running"
    monkeypatch.setattr(jobs, "write_cardiac_outputs", real)
    assert run_batch("segment-heart", case, out, model=str(tiny_cardiac), device="cpu").outcomes[0].status == "done"
    assert batch.case_folder(out, "cohort.csv").name != "cohort.csv"     # a case never takes the table's place


def test_an_output_folder_inside_the_cohort_is_not_a_case(cine_cohort, tiny_cardiac, tmp_path):
    import shutil

    root = tmp_path / "cohort"
    root.mkdir()
    shutil.copy(cine_cohort / "case1.nii.gz", root / "case1.nii.gz")
    for _ in range(2):
        result = run_batch("segment-heart", root, root / "results", model=str(tiny_cardiac), device="cpu")
        assert [o.case for o in result.outcomes] == ["case1"] and not result.failed


def test_cancel_between_cases_keeps_the_finished_ones(cine_cohort, tiny_cardiac, tmp_path):
    out = tmp_path / "out"
    calls = iter([False, True])
    with pytest.raises(InterruptedError, match="1 of 3"):
        run_batch("segment-heart", cine_cohort, out, model=str(tiny_cardiac), device="cpu",
                  cancelled=lambda: next(calls))
    assert [r["case"] for r in _rows(out / "cohort.csv")] == ["case1"]
    assert json.loads((out / "case1" / "case.json").read_text())["status"] == "done"


def test_dask_workers_give_the_same_results(cine_cohort, tiny_cardiac, tmp_path):
    serial = run_batch("segment-heart", cine_cohort, tmp_path / "serial", model=str(tiny_cardiac), device="cpu")
    seen = []
    parallel = run_batch("segment-heart", cine_cohort, tmp_path / "dask", model=str(tiny_cardiac), device="cpu",
                         workers=2, scheduler="processes", progress=lambda *a: seen.append(a))
    assert [(o.case, o.status) for o in parallel.outcomes] == [(o.case, o.status) for o in serial.outcomes]
    assert len(seen) == 3 and seen[-1][:2] == (3, 3)
    for name in ("case1", "case2"):
        np.testing.assert_array_equal(read_nifti(tmp_path / "dask" / name / "labels.nii.gz").data,
                                      read_nifti(tmp_path / "serial" / name / "labels.nii.gz").data)
    with pytest.raises(ValueError, match="scheduler"):
        run_batch("segment-heart", cine_cohort, tmp_path / "x", model=str(tiny_cardiac), workers=2, scheduler="gpu")


def test_cli_batch_exit_status_and_one_line_per_failed_case(cine_cohort, tiny_cardiac, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "napari_medlearn.cli", "batch", "segment-heart", str(cine_cohort),
                        "--out", str(out), "--model", str(tiny_cardiac), "--device", "cpu", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("medlearn: case")]
    assert failed == [ln for ln in failed if "flat" in ln] and len(failed) == 1
    assert "2 done" in r.stdout and "1 failed" in r.stdout
    # an option of another job is refused before anything runs
    assert main(["batch", "segment-heart", str(cine_cohort), "--out", str(tmp_path / "o2"), "--factor", "4"]) == 2
    assert not (tmp_path / "o2").exists()


TINY_LESIONS = dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], subsample_factors=[3],
                    fc_fms=[6, 6])


def test_lesion_sessions_and_reconstruction_cohorts(tmp_path, capsys):
    from napari_medlearn.nets import DeepCascade

    torch.manual_seed(0)
    model = tmp_path / "tiny-lesions.pt"
    zoo.save_checkpoint(DeepMedic(**TINY_LESIONS), model, "deepmedic", TINY_LESIONS, card={
        "name": "tiny-lesions", "task": "brain-lesion-segmentation", "n_classes": 4,
        "label_values": [0, 1, 2, 4], "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2, 2, 2]}})
    rng = np.random.default_rng(0)
    shape, aff = (12, 16, 14), np.diag([2.0, 2.0, 2.0, 1.0])
    brain = np.zeros(shape, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    for s in ("s1", "s2"):
        (tmp_path / "brats" / s).mkdir(parents=True)
        for m in ("flair", "t1ce"):
            data = np.where(brain, rng.normal(1, 0.3, shape), 0).astype(np.float32)
            write_nifti(Volume(data, aff, ("z", "y", "x"), {}), tmp_path / "brats" / s / f"{s}_{m}.nii.gz")
    out = tmp_path / "lesions"
    assert main(["batch", "segment-lesions", str(tmp_path / "brats"), "--out", str(out), "--model", str(model),
                 "--device", "cpu", "--quiet"]) == 0
    rows = _rows(out / "cohort.csv")
    assert [r["case"] for r in rows] == ["s1", "s2"] and {"whole_tumour_mL", "oedema_mL"} <= set(rows[0])
    assert read_nifti(out / "s1" / "labels.nii.gz").data.shape == shape
    # a hand correction: 10 voxels of oedema (2 mm voxels: 0.08 mL) and nothing else
    from napari_medlearn.batch import record_correction

    fixed = np.zeros(shape, np.uint8)
    fixed[5, 5, 2:12] = 2
    row = record_correction(out, "s1", fixed)
    assert row["whole_tumour_mL"] == pytest.approx(0.08) and row["oedema_mL"] == pytest.approx(0.08)
    table = {r["case"]: r for r in _rows(out / "cohort.csv")}
    assert float(table["s1"]["whole_tumour_mL"]) == pytest.approx(0.08) and table["s2"]["corrected"] == ""
    np.testing.assert_array_equal(read_nifti(out / "s1" / "labels_corrected.nii.gz").data, fixed)
    with pytest.raises(ValueError, match="differ in shape"):
        record_correction(out, "s1", fixed[1:])
    with pytest.raises(ValueError, match="no finished result"):
        record_correction(out, "s3", fixed)
    assert main(["batch", "segment-lesions", str(tmp_path / "brats"), "--out", str(out), "--model", str(model),
                 "--device", "cpu", "--quiet"]) == 0                       # resumed: the correction stays
    assert float(_rows(out / "cohort.csv")[0]["whole_tumour_mL"]) == pytest.approx(0.08)

    # reconstruction: an image (simulated at the acceleration asked for) and acquired k-space + mask
    args = {"dims": 2, "n_cascades": 1, "n_layers": 2, "width": 4}
    recon = tmp_path / "tiny-recon.pt"
    zoo.save_checkpoint(DeepCascade(**args), recon, "deep_cascade", args,
                        card={"name": "tiny-recon", "task": "mri-reconstruction-2d"})
    images = tmp_path / "images"
    img = np.zeros((2, 32, 24), np.float32)
    img[:, 8:24, 6:18] = 1.0
    write_nifti(Volume(img, np.eye(4), ("z", "y", "x"), {}), images / "slices.nii.gz")
    from napari_medlearn.imaging import kspace as K

    k, m = K.simulate_acquisition(img, 4, "cartesian", 4, seed=0)
    np.save(images / "raw.npy", k)
    manifest = tmp_path / "recon.csv"
    manifest.write_text(f"case,image,mask\nsim,{images / 'slices.nii.gz'},\nraw,{images / 'raw.npy'},"
                        f"{_save_mask(images / 'raw_mask.npy', m)}\n")
    result = run_batch("reconstruct", manifest, tmp_path / "recon", options={"acceleration": 2.0,
                       "centre_lines": 4}, model=str(recon), device="cpu")
    assert [o.status for o in result.outcomes] == ["done", "done"], result.failed
    rows = _rows(tmp_path / "recon" / "cohort.csv")
    assert float(rows[0]["acceleration"]) == pytest.approx(2.0) and rows[0]["PSNR_dB"] != ""
    assert float(rows[1]["acceleration"]) == pytest.approx(K.acceleration_of(m)) and rows[1]["PSNR_dB"] == ""
    with pytest.raises(ValueError, match="takes no option 'factor'"):
        run_batch("reconstruct", manifest, tmp_path / "x", options={"factor": 2})


def _save_mask(path, mask):
    np.save(path, mask)
    return path


def test_batch_needs_no_napari():
    code = ("import sys, napari_medlearn.batch, napari_medlearn.jobs\n"
            "sys.exit(1 if any(m in sys.modules for m in ('napari', 'qtpy', 'torch')) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

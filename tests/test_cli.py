import csv
import subprocess
import sys

import numpy as np
import pytest

from napari_medlearn.cli import main
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom


@pytest.fixture(scope="module")
def cine_nifti(tmp_path_factory):
    ph = cardiac_cine_phantom(seed=4, n_frames=3, matrix=(40, 48), in_plane_spacing=6.0)
    image, _ = ph.volumes()
    path = tmp_path_factory.mktemp("in") / "cine.nii.gz"
    write_nifti(image, path)
    return path


def test_segment_heart_writes_labels_in_the_input_geometry(cine_nifti, tiny_cardiac, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment-heart", str(cine_nifti), "--out", str(out), "--model", str(tiny_cardiac), "--quiet"]) == 0
    src, lab = read_nifti(cine_nifti), read_nifti(out / "labels.nii.gz")
    assert lab.data.shape == src.data.shape and np.issubdtype(lab.data.dtype, np.integer)
    np.testing.assert_array_equal(lab.affine, src.affine)
    with open(out / "measures.csv") as f:
        row = next(csv.DictReader(f))
    for col in ("LVEDV_mL", "LVESV_mL", "LVSV_mL", "LVEF_pct", "LVM_g", "RVEDV_mL", "RVESV_mL",
                "RVSV_mL", "RVEF_pct", "qc", "model", "model_sha256"):
        assert col in row
    assert (out / "measures.json").exists()
    assert "LVEDV" in capsys.readouterr().out


def test_existing_outputs_are_not_overwritten(cine_nifti, tiny_cardiac, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.nii.gz").write_bytes(b"precious")
    assert main(["segment-heart", str(cine_nifti), "--out", str(out), "--model", str(tiny_cardiac)]) == 2
    assert (out / "labels.nii.gz").read_bytes() == b"precious"
    assert "--overwrite" in capsys.readouterr().err
    # an input inside --out with an output's name is never replaced, even with --overwrite
    inside = out / "labels.nii.gz"
    inside.write_bytes(cine_nifti.read_bytes())
    assert main(["segment-heart", str(inside), "--out", str(out), "--model", str(tiny_cardiac), "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err and inside.read_bytes() == cine_nifti.read_bytes()
    # a model for another task is named as such
    assert main(["segment-heart", str(cine_nifti), "--out", str(tmp_path / "o2"), "--model", "sr-cardiac-x4"]) == 2
    assert "mr-super-resolution model; this needs a cardiac-segmentation model" in capsys.readouterr().err


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b"not an image"), ""),
    (lambda p: write_nifti(read_nifti_2d(p), p), "2-D"),
])
def test_bad_input_gives_one_line_and_status_2(make, match, tmp_path, tiny_cardiac):
    bad = tmp_path / "bad.nii.gz"
    make(bad)
    r = subprocess.run([sys.executable, "-m", "napari_medlearn.cli", "segment-heart", str(bad), "--out",
                        str(tmp_path / "o"), "--model", str(tiny_cardiac)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("medlearn: error:") and match in lines[0]
    assert not (tmp_path / "o" / "labels.nii.gz").exists()


def read_nifti_2d(path):
    from napari_medlearn.imaging import Volume

    return Volume.from_spacing(np.zeros((32, 32), np.float32), (1.5, 1.5))


def test_missing_file_and_empty_folder(tmp_path, capsys):
    assert main(["segment-heart", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "o")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment-heart", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "no DICOM" in err


def test_unknown_preset_and_models_listing(capsys):
    assert main(["train", "no-such-preset"]) == 2
    assert "not supported" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "cardiac-fcn-phantom" in capsys.readouterr().out


def test_reader_warnings_are_one_line_each(cine_nifti, tiny_cardiac, tmp_path):
    import nibabel as nib

    img = nib.load(str(cine_nifti))
    header = img.header.copy()
    header["sform_code"] = 1
    header["srow_x"] = [np.nan] * 4                   # the reader falls back to the qform, with a warning
    odd = tmp_path / "odd.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header), str(odd))
    r = subprocess.run([sys.executable, "-m", "napari_medlearn.cli", "segment-heart", str(odd), "--out",
                        str(tmp_path / "o"), "--model", str(tiny_cardiac), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert any(ln.startswith("medlearn: warning:") and "used the qform" in ln for ln in lines), r.stderr
    assert all(ln.startswith("medlearn: warning:") for ln in lines), r.stderr


def test_backend_option_recorded_refused_in_one_line_and_passed_by_batch(cine_nifti, tiny_cardiac, tmp_path, capsys,
                                                                         monkeypatch):
    import json

    from napari_medlearn import inference

    out = tmp_path / "t"
    assert main(["segment-heart", str(cine_nifti), "--out", str(out), "--model", str(tiny_cardiac), "--quiet",
                 "--backend", "torch"]) == 0
    assert json.loads((out / "measures.json").read_text())["backend"] == "torch"
    capsys.readouterr()
    assert main(["segment-heart", str(cine_nifti), "--out", str(tmp_path / "x"), "--backend", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown backend" in err and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
    monkeypatch.setattr(inference, "runtime_installed", lambda: False)
    assert main(["segment-heart", str(cine_nifti), "--out", str(tmp_path / "y"), "--backend", "onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert inference.INSTALL in err and len(err.splitlines()) == 1
    assert main(["batch", "reconstruct", str(tmp_path), "--out", str(tmp_path / "z"), "--backend", "torch"]) == 2
    assert "--backend is an option of" in capsys.readouterr().err
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "case1.nii.gz").write_bytes(cine_nifti.read_bytes())
    assert main(["batch", "segment-heart", str(cohort), "--out", str(tmp_path / "b"), "--model", str(tiny_cardiac),
                 "--backend", "torch", "--quiet"]) == 0
    assert json.loads((tmp_path / "b" / "case1" / "measures.json").read_text())["backend"] == "torch"

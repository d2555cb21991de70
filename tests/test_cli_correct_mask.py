import subprocess
import sys

import numpy as np
import pytest

from acnn_helpers import ring_labels, tiny_acnn_checkpoint
from napari_medlearn.cli import main
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.imaging.volume import Volume, affine_from_spacing


@pytest.fixture(scope="module")
def tiny_acnn(tmp_path_factory):
    return tiny_acnn_checkpoint(tmp_path_factory.mktemp("acnn-cli"))


@pytest.fixture(scope="module")
def labels_nifti(tmp_path_factory):
    lab = ring_labels(shape=(6, 40, 36), spacing=(8.0, 2.0, 2.0))
    lab[3, 18:21, 16:19] = 0
    aff = affine_from_spacing((8.0, 2.0, 2.0))
    aff[:3, 3] = (-30.0, 12.0, 5.0)
    path = tmp_path_factory.mktemp("in") / "labels.nii.gz"
    write_nifti(Volume(lab, aff, ("z", "y", "x"), {}), path)
    return path


def test_correct_mask_keeps_geometry_and_prints_plausibility(labels_nifti, tiny_acnn, tmp_path, capsys):
    out = tmp_path / "fixed.nii.gz"
    before = labels_nifti.read_bytes()
    assert main(["correct-mask", str(labels_nifti), "--out", str(out), "--model", str(tiny_acnn), "--quiet"]) == 0
    src, res = read_nifti(labels_nifti), read_nifti(out)
    assert res.data.shape == src.data.shape and np.issubdtype(res.data.dtype, np.integer)
    np.testing.assert_array_equal(res.affine, src.affine)
    assert (res.data[3, 18:21, 16:19] == 1).all()          # the hole is filled
    assert labels_nifti.read_bytes() == before
    text = capsys.readouterr().out
    assert "plausibility before" in text and "after" in text
    assert main(["correct-mask", str(labels_nifti), "--out", str(out), "--model", str(tiny_acnn)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["correct-mask", str(labels_nifti), "--out", str(out), "--model", str(tiny_acnn), "--quiet",
                 "--overwrite"]) == 0


def test_float_labels_give_one_line_and_status_2(tmp_path, tiny_acnn):
    bad = tmp_path / "float.nii.gz"
    write_nifti(Volume(np.full((4, 20, 20), 0.5, np.float32), affine_from_spacing((8.0, 2.0, 2.0)),
                       ("z", "y", "x"), {}), bad)
    r = subprocess.run([sys.executable, "-m", "napari_medlearn.cli", "correct-mask", str(bad), "--out",
                        str(tmp_path / "o.nii.gz"), "--model", str(tiny_acnn)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "integers" in lines[0]
    assert not (tmp_path / "o.nii.gz").exists()

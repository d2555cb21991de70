"""``medlearn segment-heart`` on DICOM folders: a cine folder, a folder with two series, no DICOM."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_medlearn.cli import main
from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.imaging.io import read_dicom_folder, read_nifti
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom


@pytest.fixture(scope="module")
def phantom_image():
    ph = cardiac_cine_phantom(seed=4, n_frames=3, matrix=(40, 48), in_plane_spacing=6.0)
    image, _ = ph.volumes()
    return image


def test_segment_heart_on_a_dicom_cine_folder(phantom_image, tiny_cardiac, tmp_path):
    folder, out = tmp_path / "cine", tmp_path / "out"
    paths = write_dicom_series(phantom_image, folder, series_description="cine SA")
    assert [p.name for p in paths] != sorted(p.name for p in paths)  # names say nothing of order
    src = read_dicom_folder(folder)
    assert src.data.shape == phantom_image.data.shape
    np.testing.assert_allclose(src.affine, phantom_image.affine, atol=1e-4)

    assert main(["segment-heart", str(folder), "--out", str(out), "--model", str(tiny_cardiac),
                 "--quiet"]) == 0
    labels = read_nifti(out / "labels.nii.gz")
    assert labels.data.shape == phantom_image.data.shape  # (t, z, y, x)
    assert np.issubdtype(labels.data.dtype, np.integer)
    np.testing.assert_allclose(labels.affine, src.affine, rtol=0, atol=1e-5)  # float32 sform


def test_folder_with_two_series(phantom_image, tmp_path, tiny_cardiac, capsys):
    folder = tmp_path / "exam"
    write_dicom_series(phantom_image, folder, series_description="cine SA")
    other = phantom_image.with_data(phantom_image.data[:1, :2])
    write_dicom_series(other, tmp_path / "lge", series_description="LGE", series_number=2)
    for p in (tmp_path / "lge").iterdir():
        shutil.move(p, folder / p.name)

    code = main(["segment-heart", str(folder), "--out", str(tmp_path / "out"), "--model",
                 str(tiny_cardiac), "--quiet"])
    assert code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cine SA" in lines[0] and "LGE" in lines[0]
    assert not (tmp_path / "out" / "labels.nii.gz").exists()


def test_folder_without_dicom(tmp_path, tiny_cardiac, capsys):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "IM0001.dcm").write_bytes(bytes(range(256)) * 4)  # a .dcm name is not enough
    code = main(["segment-heart", str(folder), "--out", str(tmp_path / "out"), "--model",
                 str(tiny_cardiac), "--quiet"])
    assert code == 2
    assert "no DICOM" in capsys.readouterr().err

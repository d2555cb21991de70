"""``medlearn segment-heart`` on damaged inputs: one line on stderr, exit 2, no outputs."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_medlearn.cli import main
from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom


@pytest.fixture(scope="module")
def cine_folder(tmp_path_factory):
    image, _ = cardiac_cine_phantom(seed=4, n_frames=2, matrix=(40, 48), in_plane_spacing=6.0).volumes()
    folder = tmp_path_factory.mktemp("cine") / "SA cine"
    write_dicom_series(image, folder, series_description="SA cine")
    return folder, image.data.shape


def _end_slice_files(folder, n_t: int, last: bool):
    """The files of the first (or last) slice: InstanceNumber = 1 + z * n_t + t."""
    numbers = {p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in folder.iterdir()}
    z = (max(numbers.values()) - 1) // n_t if last else 0
    return [p for p, i in numbers.items() if (i - 1) // n_t == z]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("medlearn: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("keep", [0, 700, -100])
def test_a_cine_with_a_truncated_end_slice_is_refused(cine_folder, tmp_path, tiny_cardiac, capsys, last, keep):
    import shutil

    src, shape = cine_folder
    folder = tmp_path / "SA cine"
    shutil.copytree(src, folder)
    victim = _end_slice_files(folder, shape[0], last)[0]
    victim.write_bytes(victim.read_bytes()[:keep])
    out = tmp_path / "out"
    code = main(["segment-heart", str(folder), "--out", str(out), "--model", str(tiny_cardiac), "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "'SA cine'" in line and victim.name in line and "damaged" in line and "refusing" in line
    assert not out.exists() or not any(out.iterdir())


def test_a_lying_nifti_header_is_one_line(tmp_path, tiny_cardiac, capsys):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2000, 2000, 1000, 2))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    path = tmp_path / "cine.nii.gz"
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 604))
    code = main(["segment-heart", str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_cardiac),
                 "--quiet"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "claims shape (2000, 2000, 1000, 2) int16" in line

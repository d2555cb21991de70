"""NIfTI headers damaged in the fields that place voxels: read with a repaired, stated geometry
(never a NaN or singular affine) or refused in one line. Each case was found by
tests/faults/test_fuzz_readers.py."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_medlearn.imaging.io import read_nifti


def _save(tmp_path, edit, name="img.nii"):
    """A 2 x 3 x 4 mm image whose header (edited by ``edit``) is patched into the file as is
    (nibabel's save would write its own sform and qform from the image's affine)."""
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.diag([2.0, 3.0, 4.0, 1.0]))
    img.set_qform(img.affine, code=1)
    path = tmp_path / name
    nib.save(img, path)
    blob = path.read_bytes()
    header = nib.Nifti1Header(blob[:348])
    edit(header)
    path.write_bytes(header.binaryblock + blob[348:])
    return path


def test_an_undefined_unit_code_reads_as_unknown(tmp_path):
    path = _save(tmp_path, lambda h: h.__setitem__("xyzt_units", 6))    # 6: no NIfTI unit
    vol = read_nifti(path)
    np.testing.assert_allclose(vol.spacing, (4.0, 3.0, 2.0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_a_non_finite_or_absurd_sform_falls_back_to_the_qform(tmp_path, bad):
    def edit(h):
        h.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), code=2)
        srow = h["srow_y"].copy()
        srow[2] = bad
        h["srow_y"] = srow

    with pytest.warns(UserWarning, match="not a geometry.*used the qform"):
        vol = read_nifti(_save(tmp_path, edit))
    np.testing.assert_allclose(vol.spacing, (4.0, 3.0, 2.0))
    assert np.all(np.isfinite(vol.affine))


@pytest.mark.parametrize("pixdim3", [np.nan, 1e-30])   # (0 nibabel itself reads as 1)
def test_a_damaged_voxel_size_without_a_transform_becomes_1mm_and_is_said(tmp_path, pixdim3):
    def edit(h):
        h.set_sform(None, code=0)
        h.set_qform(None, code=0)
        pix = h["pixdim"].copy()
        pix[3] = pixdim3
        h["pixdim"] = pix

    with pytest.warns(UserWarning, match="1 mm for voxel sizes that are not sizes"):
        vol = read_nifti(_save(tmp_path, edit))
    assert abs(np.linalg.det(vol.affine[:3, :3])) > 0
    np.testing.assert_allclose(vol.spacing, (1.0, 3.0, 2.0))


def test_an_sform_repaired_into_a_singular_matrix_falls_back(tmp_path):
    def edit(h):                                 # sform's z column (0, 1e30, 2): finite, "repaired"
        aff = np.diag([2.0, 3.0, 4.0, 1.0])      # to (0, 4, 8e-30), parallel to y
        aff[1, 2] = 1e30
        h.set_sform(aff, code=2)
        h.set_qform(None, code=0)

    with pytest.warns(UserWarning, match="used pixdim alone"):
        vol = read_nifti(_save(tmp_path, edit))
    np.testing.assert_allclose(vol.spacing, (4.0, 3.0, 2.0))

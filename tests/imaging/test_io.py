"""NIfTI (and NRRD) reading and writing: axis order, affine columns, bit-identical round trips."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_medlearn.imaging.io import read_itk_image, read_nifti, read_volume, write_nifti
from napari_medlearn.imaging.volume import Volume

EXAMPLE4D = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "example4d.nii.gz")

# oblique, float32-representable (as NIfTI stores the sform), with a negative x axis
OBLIQUE = np.array([
    [-0.875, 0.25, 0.5, 12.5],
    [0.125, 1.75, -0.375, -40.25],
    [0.0625, 0.5, 2.5, 7.0],
    [0.0, 0.0, 0.0, 1.0],
])


def _same_file_content(a: str, b: str) -> None:
    img_a, img_b = nib.load(a), nib.load(b)
    arr_a, arr_b = np.asanyarray(img_a.dataobj), np.asanyarray(img_b.dataobj)
    assert arr_a.dtype == arr_b.dtype
    assert img_a.get_data_dtype() == img_b.get_data_dtype()
    np.testing.assert_array_equal(arr_a, arr_b)
    assert np.array_equal(img_a.affine, img_b.affine)


def test_example4d_round_trip_is_bit_identical(tmp_path):
    vol = read_nifti(EXAMPLE4D)
    src = nib.load(EXAMPLE4D)
    raw = np.asanyarray(src.dataobj)
    assert vol.axes == ("t", "z", "y", "x")
    assert vol.data.shape == raw.shape[::-1]
    assert vol.data.dtype == raw.dtype == np.int16
    # napari order and affine columns agree with nibabel's (i, j, k, t)
    i, j, k, t = 100, 7, 19, 1
    assert vol.data[t, k, j, i] == raw[i, j, k, t]
    np.testing.assert_array_equal(vol.affine @ [k, j, i, 1], src.affine @ [i, j, k, 1])
    # pixdim[4] = 2000 with unit "sec" in this file
    assert vol.meta["time_step"] == pytest.approx(2000.0 * 1000.0)

    out = tmp_path / "copy.nii.gz"
    write_nifti(vol, out)
    _same_file_content(EXAMPLE4D, str(out))
    hdr = nib.load(out).header
    assert hdr.get_xyzt_units() == src.header.get_xyzt_units()
    assert hdr["pixdim"][4] == src.header["pixdim"][4]
    assert (hdr["sform_code"], hdr["qform_code"]) == (1, 1)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 3), (np.int16, 3), (np.int16, 700)])
def test_oblique_labels_round_trip(tmp_path, dtype, top):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, top + 1, size=(7, 5, 3)).astype(dtype)
    src = tmp_path / "case_gt.nii.gz"
    img = nib.Nifti1Image(labels, OBLIQUE)
    img.set_data_dtype(dtype)
    img.header.set_qform(OBLIQUE, code=1)
    img.header.set_sform(OBLIQUE, code=2)
    nib.save(img, src)

    vol = read_nifti(src)
    assert vol.data.dtype == dtype and vol.is_labels
    assert vol.data.shape == (3, 5, 7)
    np.testing.assert_array_equal(vol.affine[:, :3], OBLIQUE[:, [2, 1, 0]])
    out = tmp_path / "copy_gt.nii"
    write_nifti(vol, out)
    _same_file_content(str(src), str(out))
    hdr = nib.load(out).header
    assert (int(hdr["sform_code"]), int(hdr["qform_code"])) == (2, 1)


def test_predicted_labels_are_narrowed_and_keep_geometry(tmp_path):
    vol = Volume(np.zeros((3, 5, 7), np.float32), OBLIQUE[:, [2, 1, 0, 3]], ("z", "y", "x"))
    pred = np.zeros((3, 5, 7), np.int64)
    pred[1, 2:4, 3:6] = 2
    out = tmp_path / "pred.nii.gz"
    write_nifti(vol.with_data(pred), out)
    img = nib.load(out)
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), pred.T)
    np.testing.assert_array_equal(img.affine, OBLIQUE)
    big = pred.copy()
    big[0, 0, 0] = 300
    write_nifti(vol.with_data(big), out, overwrite=True)
    assert nib.load(out).get_data_dtype() == np.int16


def test_float64_affine_is_stored_to_float32_precision(tmp_path):
    aff = OBLIQUE.copy()
    aff[0, 3] = 12.3456789012345
    vol = Volume(np.ones((2, 3, 4), np.float32), aff, ("z", "y", "x"))
    write_nifti(vol, tmp_path / "f.nii")
    back = read_nifti(tmp_path / "f.nii")
    np.testing.assert_allclose(back.affine, aff, rtol=1e-6)
    assert back.data.dtype == np.float32


def test_2d_and_singleton_z(tmp_path):
    plane = np.arange(20, dtype=np.float32).reshape(5, 4)  # NIfTI (x, y)
    nib.save(nib.Nifti1Image(plane, np.diag([0.5, 0.75, 1.0, 1.0])), tmp_path / "p.nii.gz")
    vol = read_nifti(tmp_path / "p.nii.gz")
    assert vol.axes == ("y", "x") and vol.data.shape == (4, 5)
    assert vol.data[3, 1] == plane[1, 3]
    assert vol.spacing == pytest.approx((0.75, 0.5))
    write_nifti(vol, tmp_path / "p2.nii.gz")
    _same_file_content(str(tmp_path / "p.nii.gz"), str(tmp_path / "p2.nii.gz"))

    flat = plane[:, :, None]
    nib.save(nib.Nifti1Image(flat, np.diag([0.5, 0.75, 3.0, 1.0])), tmp_path / "s.nii.gz")
    vol = read_nifti(tmp_path / "s.nii.gz")
    assert vol.axes == ("z", "y", "x") and vol.data.shape == (1, 4, 5)
    write_nifti(vol, tmp_path / "s2.nii.gz")
    _same_file_content(str(tmp_path / "s.nii.gz"), str(tmp_path / "s2.nii.gz"))
    assert nib.load(tmp_path / "s2.nii.gz").shape == (5, 4, 1)


def test_cine_maps_t_z_y_x_to_x_y_z_t(tmp_path):
    t, z, y, x = np.indices((3, 2, 4, 5))
    cine = (1000 * t + 100 * z + 10 * y + x).astype(np.float32)
    vol = Volume.from_spacing(cine, (8.0, 1.5, 1.25), meta={"time_step": 40.0})
    assert vol.axes == ("t", "z", "y", "x")
    out = tmp_path / "cine.nii.gz"
    write_nifti(vol, out)
    img = nib.load(out)
    assert img.shape == (5, 4, 2, 3)
    assert np.asanyarray(img.dataobj)[4, 3, 1, 2] == cine[2, 1, 3, 4] == 2134
    assert img.header.get_xyzt_units() == ("mm", "sec")
    assert img.header["pixdim"][4] == pytest.approx(0.04)
    # voxel (z=1, y=0, x=0) is 8 mm superior of the origin
    np.testing.assert_array_equal(img.affine @ [0, 0, 1, 1], [0, 0, 8, 1])
    back = read_nifti(out)
    np.testing.assert_array_equal(back.data, cine)
    np.testing.assert_array_equal(back.affine, vol.affine)
    assert back.time_step == pytest.approx(40.0)


def test_a_cine_without_a_time_step_reads_back_without_one(tmp_path):
    vol = Volume.from_spacing(np.zeros((2, 3, 4, 5), np.uint8), (8.0, 1.5, 1.25))       # e.g. ED + ES frames
    write_nifti(vol, tmp_path / "frames.nii.gz")
    back = read_nifti(tmp_path / "frames.nii.gz")
    assert vol.time_step is None and back.time_step is None                 # not a made-up 1 s step
    assert back.layer_kwargs()["scale"][0] == 1.0


def test_scaled_file_reads_as_float32(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, tmp_path / "scaled.nii")
    vol = read_nifti(tmp_path / "scaled.nii")
    assert vol.data.dtype == np.float32
    assert vol.data[3, 2, 1] == pytest.approx((1 * 12 + 2 * 4 + 3) * 0.5 - 3.0)
    # written back as the float32 values it was read as, not rescaled a second time
    write_nifti(vol, tmp_path / "again.nii")
    again = nib.load(tmp_path / "again.nii")
    assert again.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(again.dataobj), vol.data.T)


def test_2d_cine_gets_a_singleton_z(tmp_path):
    video = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)  # (t, y, x)
    vol = Volume.from_spacing(video, (0.5, 0.25), meta={"time_step": 33.0})
    assert vol.axes == ("t", "y", "x")
    write_nifti(vol, tmp_path / "video.nii.gz")
    back = read_nifti(tmp_path / "video.nii.gz")
    assert back.axes == ("t", "z", "y", "x") and back.data.shape == (3, 1, 4, 5)
    np.testing.assert_array_equal(back.data[:, 0], video)
    assert back.time_step == pytest.approx(33.0)


def test_write_refuses_to_overwrite_and_leaves_no_temp_files(tmp_path):
    vol = Volume.from_spacing(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 1.0))
    out = tmp_path / "a.nii.gz"
    write_nifti(vol, out)
    with pytest.raises(FileExistsError):
        write_nifti(vol.with_data(np.ones((2, 3, 4), np.uint8)), out)
    assert nib.load(out).get_fdata().max() == 0
    write_nifti(vol.with_data(np.ones((2, 3, 4), np.uint8)), out, overwrite=True)
    assert nib.load(out).get_fdata().min() == 1
    assert sorted(os.listdir(tmp_path)) == ["a.nii.gz"]
    with pytest.raises(ValueError, match=r"\.nii"):
        write_nifti(vol, tmp_path / "a.png")


def test_bad_files_raise_value_error_naming_the_file(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        read_volume(broken)
    short = tmp_path / "short.nii"
    short.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="short.nii"):
        read_nifti(short)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt") as err:
        read_volume(text)
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "absent.nii.gz")


def test_nrrd_affine_matches_itk_physical_points(tmp_path):
    import SimpleITK as sitk

    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.25, 1.5, 5.0))
    img.SetOrigin((-20.5, 30.25, 12.0))
    img.SetDirection((0.6, 0.0, 0.8, 0.0, 1.0, 0.0, -0.8, 0.0, 0.6))
    path = tmp_path / "vol.nrrd"
    sitk.WriteImage(img, str(path))
    vol = read_itk_image(path)
    np.testing.assert_array_equal(vol.data, arr)
    lps = np.array(img.TransformIndexToPhysicalPoint((3, 2, 1)))  # (i=x, j=y, k=z)
    np.testing.assert_allclose((vol.affine @ [1, 2, 3, 1])[:3], lps * [-1, -1, 1], atol=1e-9)


def test_io_imports_no_torch_napari_or_qt():
    code = ("import sys, napari_medlearn.imaging.io; "
            "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt5') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        os.path.join(os.path.dirname(__file__), "..", "..", "src"), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_sform_with_wrong_voxel_size_is_repaired_from_pixdim(tmp_path):
    """Files like the public ACDC copies: a unit-scaled sform beside the real pixdim."""
    import nibabel as nib

    from napari_medlearn.imaging.io import read_nifti

    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    img = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms((1.7578125, 1.7578125, 10.0))
    img.header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    img.header.set_qform(None, code=0)
    path = tmp_path / "acdc_like.nii.gz"
    nib.save(img, path)
    img = nib.load(path)
    assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 1.0)   # nibabel trusts the sform
    with pytest.warns(UserWarning, match="disagrees with pixdim"):
        vol = read_nifti(path)
    assert vol.spacing == pytest.approx((10.0, 1.7578125, 1.7578125))
    assert np.allclose(vol.direction, np.asarray(vol.affine[:3, :3]) / vol.spacing)
    assert "geometry_repaired" in vol.meta


def test_2d_file_keeps_its_slice_thickness(tmp_path):
    aff = np.diag([0.7, 0.8, 4.5, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((9, 7), np.float32), aff), tmp_path / "slice.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a consistent file is not "repaired"
        vol = read_nifti(tmp_path / "slice.nii.gz")
    write_nifti(vol, tmp_path / "out.nii.gz")
    assert nib.load(tmp_path / "out.nii.gz").affine[2, 2] == pytest.approx(4.5)


@pytest.mark.parametrize("unit, factor", [("micron", 1e-3), ("meter", 1e3), ("mm", 1.0), ("unknown", 1.0)])
def test_spatial_units_become_mm(tmp_path, unit, factor):
    img = nib.Nifti1Image(np.zeros((4, 5, 3), np.float32), np.diag([500.0, 500.0, 2000.0, 1.0]))
    img.header.set_xyzt_units(unit)
    nib.save(img, tmp_path / "u.nii.gz")
    vol = read_nifti(tmp_path / "u.nii.gz")
    assert vol.spacing == pytest.approx((2000 * factor, 500 * factor, 500 * factor))
    write_nifti(vol, tmp_path / "mm.nii.gz")
    back = nib.load(tmp_path / "mm.nii.gz")
    assert back.header.get_xyzt_units()[0] == "mm"
    assert np.allclose(back.affine, np.diag([500 * factor, 500 * factor, 2000 * factor, 1.0]))


def test_colour_nifti_is_refused_clearly(tmp_path):
    rgb = np.zeros((4, 3), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "photo.nii.gz")
    with pytest.raises(ValueError, match="photo.nii.gz.*colour"):
        read_nifti(tmp_path / "photo.nii.gz")


def test_labels_beyond_int32_are_written_as_int64(tmp_path):
    lab = np.array([[[0, 2**40]]], dtype=np.int64)
    write_nifti(Volume.from_spacing(lab, (1.0, 1.0, 1.0)), tmp_path / "big.nii.gz")
    assert read_nifti(tmp_path / "big.nii.gz").data.max() == 2**40

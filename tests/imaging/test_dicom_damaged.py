"""A DICOM series is never read without one of its images: damaged files are named, and a
stack that would be a slice short at an end is refused (or, on weaker evidence, warned of)."""

from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.uid import generate_uid
from test_dicom import NORMAL, ORIGIN_LPS, SLICE_GAP, expected_pixels, write_series, write_slice

from napari_medlearn.imaging.io import dicom_series_uid, read_dicom_folder, read_dicom_series, read_volume


def _cut(path, n: int) -> None:
    """Keep the first n bytes of a file (all but the last -n when n < 0)."""
    path.write_bytes(path.read_bytes()[:n])


def _ends(files, n_z):
    return {"first": [p for (t, z), p in files.items() if z == 0],
            "last": [p for (t, z), p in files.items() if z == n_z - 1]}


# (files of 954 bytes: SeriesInstanceUID at byte 576, Rows at 770, the pixel data from 846)
# 0 and 100: before the DICM marker; 131: a zero preamble and "DIC"; 500: the header is cut before
# the series UID; 700: after it, before Rows; -50: inside the pixel data
@pytest.mark.parametrize("cut", [0, 100, 131, 500, 700, -50])
@pytest.mark.parametrize("end", ["first", "last"])
def test_a_truncated_end_slice_refuses_the_series_naming_the_file(tmp_path, cut, end):
    files = write_series(tmp_path, n_t=1, n_z=4)
    (victim,) = _ends(files, 4)[end]
    _cut(victim, cut)
    with pytest.raises(ValueError) as err:
        read_dicom_folder(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("DICOM series 'cine SA'") and str(tmp_path) in msg and victim.name in msg
    assert "damaged" in msg and "refusing a stack" in msg
    if cut == -50:
        assert "truncated pixel data" in msg and "1 image(s) short" in msg
    with pytest.raises(ValueError, match="damaged"):     # a file of the series brings its series
        read_volume(next(p for p in files.values() if p != victim))


def test_a_cut_file_that_does_not_tell_its_series_says_to_remove_it_if_junk(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=3)
    _cut(files[(0, 2)], 500)
    with pytest.raises(ValueError, match=r"may be an image of this series.*remove the file if"):
        read_dicom_folder(tmp_path)


def test_a_truncated_phase_of_a_cine_refuses_the_cine(tmp_path):
    files = write_series(tmp_path, n_t=3, n_z=3)
    _cut(files[(2, 0)], -10)
    with pytest.raises(ValueError, match=rf"{files[(2, 0)].name} \(truncated pixel data: \d+ of 96 bytes\)"):
        read_dicom_series(tmp_path)


def test_pixel_data_shorter_than_rows_and_columns_say_is_damaged(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=3)
    ds = pydicom.dcmread(files[(0, 1)])
    ds.Rows = ds.Rows * 2
    ds.save_as(files[(0, 1)])
    with pytest.raises(ValueError, match=r"pixel data hold 96 bytes, fewer than 12 x 8 x 16-bit need \(192\)"):
        read_dicom_folder(tmp_path)


def test_only_the_series_of_a_damaged_file_is_refused(tmp_path):
    write_series(tmp_path, n_t=1, n_z=3)
    lge = write_series(tmp_path, n_t=1, n_z=3, description="LGE", series_number=7, seed=1)
    _cut(lge[(0, 0)], -50)
    with pytest.raises(ValueError, match="'LGE'.*damaged"):
        read_dicom_series(tmp_path)
    with pytest.warns(UserWarning, match=f"skipped DICOM series 'LGE'.*{lge[(0, 0)].name}"):
        vols = read_dicom_series(tmp_path, skip_invalid=True)
    assert [v.meta["series"] for v in vols] == ["cine SA"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uid = dicom_series_uid(next(p for p in tmp_path.iterdir() if p not in lge.values()))
        assert read_dicom_folder(tmp_path, series_uid=uid).data.shape == (3, 6, 8)


def test_a_file_of_unknown_series_refuses_every_series_of_the_folder(tmp_path):
    write_series(tmp_path, n_t=1, n_z=3)
    lge = write_series(tmp_path, n_t=1, n_z=3, description="LGE", series_number=7, seed=1)
    _cut(lge[(0, 1)], 0)
    with pytest.raises(ValueError, match="'cine SA'.*may be an image of this series"):
        read_dicom_series(tmp_path, skip_invalid=True)


def test_files_named_like_their_neighbours_count_as_dicom(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=4)
    for i, p in enumerate(sorted(files.values())):
        p.rename(tmp_path / f"IM_{i + 1:04d}")
    (tmp_path / "notes").write_bytes(b"")                 # another name: ignored
    assert read_dicom_folder(tmp_path).data.shape == (4, 6, 8)
    (tmp_path / "IM_0005").write_bytes(b"")
    with pytest.raises(ValueError, match=r"IM_0005 \(it looks like DICOM by its name, numbered like the "
                                         r"DICOM files beside it but is empty\)"):
        read_dicom_folder(tmp_path)


def test_a_dcm_file_that_is_not_dicom_is_named_in_a_warning(tmp_path):
    write_series(tmp_path, n_t=1, n_z=3)
    (tmp_path / "junk.dcm").write_bytes(bytes(range(256)) * 2)
    with pytest.warns(UserWarning, match=r"junk\.dcm looks like DICOM by its \.dcm name but is not a DICOM file"):
        assert read_dicom_folder(tmp_path).data.shape == (3, 6, 8)


def test_a_middle_slice_truncated_or_absent_is_refused(tmp_path):
    files = write_series(tmp_path / "cut", n_t=1, n_z=5)
    _cut(files[(0, 2)], 700)
    with pytest.raises(ValueError, match="damaged"):
        read_dicom_folder(tmp_path / "cut")
    files = write_series(tmp_path / "gone", n_t=1, n_z=5)
    files[(0, 2)].unlink()
    with pytest.raises(ValueError, match="missing slice"):
        read_dicom_folder(tmp_path / "gone")


def _numbered_series(folder, n_t, n_z, number, images_in_acquisition=None):
    """A cine whose InstanceNumbers follow number(t, z); TriggerTime orders the phases."""
    folder.mkdir()
    uid = generate_uid()
    out = {}
    for t in range(n_t):
        for z in range(n_z):
            path = folder / f"f{t}_{z}.dcm"
            write_slice(path, expected_pixels(t, z), series_uid=uid, description="SA", series_number=3,
                        position=ORIGIN_LPS + z * SLICE_GAP * NORMAL, instance_number=number(t, z),
                        trigger_time=40.0 * t)
            if images_in_acquisition is not None:
                ds = pydicom.dcmread(path)
                ds.ImagesInAcquisition = images_in_acquisition
                ds.save_as(path)
            out[(t, z)] = path
    return out


@pytest.mark.parametrize("gone", [0, 3])
def test_an_absent_end_slice_of_a_cine_numbered_phase_by_phase_is_refused(tmp_path, gone):
    files = _numbered_series(tmp_path / "s", 3, 4, lambda t, z: 1 + t * 4 + z)
    assert read_dicom_folder(tmp_path / "s").data.shape == (3, 4, 6, 8)
    for t in range(3):
        files[(t, gone)].unlink()
    with pytest.raises(ValueError, match=r"blocks of 4 but each phase has 3 slices .*refusing a stack with a slice"):
        read_dicom_folder(tmp_path / "s")


def test_an_absent_first_slice_is_refused_when_images_in_acquisition_agrees(tmp_path):
    files = _numbered_series(tmp_path / "s", 2, 4, lambda t, z: 1 + z * 2 + t, images_in_acquisition=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_dicom_folder(tmp_path / "s").data.shape == (2, 4, 6, 8)
    files[(0, 0)].unlink()
    files[(1, 0)].unlink()
    with pytest.raises(ValueError, match=r"start at 3, after 1 slice\(s\) of 2 image\(s\), and ImagesInAcquisition"):
        read_dicom_folder(tmp_path / "s")


def test_an_absent_first_slice_without_a_count_is_warned_of(tmp_path):
    files = _numbered_series(tmp_path / "s", 2, 4, lambda t, z: 1 + z * 2 + t)
    files[(0, 0)].unlink()
    files[(1, 0)].unlink()
    with pytest.warns(UserWarning, match=r"InstanceNumbers start at 3.*first slice\(s\) may be missing"):
        assert read_dicom_folder(tmp_path / "s").data.shape == (2, 3, 6, 8)


def test_the_napari_reader_refuses_a_damaged_series(tmp_path):
    from napari_medlearn._io_plugin import read_layers

    files = write_series(tmp_path, n_t=1, n_z=3)
    _cut(files[(0, 0)], 700)
    with pytest.raises(ValueError, match=f"{files[(0, 0)].name}.*damaged"):
        read_layers(str(tmp_path))
    with pytest.raises(ValueError, match="damaged"):
        read_layers(str(files[(0, 1)]))               # a file of the series brings its series
    with pytest.raises(ValueError, match=f"cannot read .*{files[(0, 0)].name}: it is a damaged DICOM file"):
        read_layers(str(files[(0, 0)]))


@pytest.mark.parametrize("keyword, value", [
    ("PixelSpacing", ["0", "0"]), ("PixelSpacing", ["nan", "1"]), ("ImageOrientationPatient", ["0"] * 6),
    ("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]), ("ImagePositionPatient", ["inf", "0", "0"]),
])
def test_geometry_tags_that_place_no_pixel_are_refused(tmp_path, keyword, value):
    files = write_series(tmp_path, n_t=1, n_z=3)
    for p in files.values():
        ds = pydicom.dcmread(p)
        setattr(ds, keyword, value)
        ds.save_as(p)
    with pytest.raises(ValueError, match="3 file.* lack a valid ImagePositionPatient, ImageOrientationPatient"):
        read_dicom_folder(tmp_path)


def test_a_non_finite_rescale_is_refused(tmp_path):
    files = write_series(tmp_path, n_t=1, n_z=3, slope=2.0, intercept=1.0)
    ds = pydicom.dcmread(files[(0, 1)])
    ds.RescaleSlope = "nan"
    ds.save_as(files[(0, 1)])
    with pytest.raises(ValueError, match="RescaleSlope or RescaleIntercept that is not a finite number"):
        read_dicom_folder(tmp_path)


@pytest.mark.parametrize("value", ["1e308", "99999999999"])
def test_an_absurd_instance_number_is_no_number(tmp_path, value):
    files = write_series(tmp_path, n_t=1, n_z=3)
    ds = pydicom.dcmread(files[(0, 1)])
    ds.InstanceNumber = value
    ds.save_as(files[(0, 1)])
    assert read_dicom_folder(tmp_path).data.shape == (3, 6, 8)


@pytest.mark.parametrize("name", ["image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_RLE.dcm", "JPEG2000.dcm", "CT_small.dcm", "liver.dcm"])
def test_pydicom_files_of_every_kind_are_not_taken_for_damaged(tmp_path, name):
    import shutil

    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file(name), tmp_path / name)
    try:
        read_dicom_series(tmp_path)
    except ValueError as exc:        # multi-frame files are refused, and so are undecodable pixels
        assert "damaged" not in str(exc), str(exc)

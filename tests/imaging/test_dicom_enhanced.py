"""Enhanced multi-frame MR in, and single DICOM files that are no complete series.

The enhanced files are made from classic series by highdicom's legacy conversion (every
frame's position, orientation, spacing and temporal position in its functional groups), so the
classic series is the reference the enhanced file must match exactly."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest

from napari_medlearn.imaging.dicom_write import write_dicom_series
from napari_medlearn.imaging.io import read_dicom_folder, read_dicom_series, read_volume
from napari_medlearn.imaging.volume import Volume, affine_from_spacing


def _oblique_cine() -> Volume:
    a, b = 0.4, -0.9
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ ry @ affine_from_spacing((6.0, 1.4, 1.1))[:3, :3]
    aff[:3, 3] = (12.5, -30.0, 8.0)
    data = np.random.default_rng(1).integers(0, 3000, (3, 5, 10, 8)).astype(np.uint16)
    return Volume(data, aff, ("t", "z", "y", "x"), {"time_step": 35.0})


def _enhanced_from(folder, out, standard_groups: bool, shuffle: bool = False):
    """Convert a classic series into one enhanced MR file. ``standard_groups``: temporal
    positions moved to where scanners put them (Cardiac Synchronization, Frame Content)
    instead of the legacy converter's unassigned attributes; ``shuffle``: frames stored in a
    random order, so only the functional groups can put them back."""
    import highdicom as hd

    sources = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enh = hd.legacy.LegacyConvertedEnhancedMRImage(sources, hd.UID(), 9, hd.UID(), 1)
    groups = list(enh.PerFrameFunctionalGroupsSequence)
    frames = enh.pixel_array.reshape(len(groups), enh.Rows, enh.Columns)
    if standard_groups:
        from pydicom.dataset import Dataset

        for fg in groups:
            old = fg.UnassignedPerFrameConvertedAttributesSequence[0]
            sync = Dataset()
            sync.NominalCardiacTriggerDelayTime = old.TriggerTime
            fg.CardiacSynchronizationSequence = [sync]
            fg.FrameContentSequence[0].TemporalPositionIndex = int(old.TemporalPositionIdentifier)
            del fg.UnassignedPerFrameConvertedAttributesSequence
    if shuffle:
        order = np.random.default_rng(7).permutation(len(groups))
        groups = [groups[i] for i in order]
        frames = frames[order]
        enh.PixelData = np.ascontiguousarray(frames).tobytes()
    enh.PerFrameFunctionalGroupsSequence = groups
    out.mkdir()
    enh.save_as(out / "enhanced.dcm", enforce_file_format=True)
    return out / "enhanced.dcm"


@pytest.mark.parametrize("standard_groups, shuffle", [(False, False), (True, True)],
                         ids=["legacy-converted", "scanner-groups-shuffled"])
def test_enhanced_cine_equals_its_classic_series(tmp_path, standard_groups, shuffle):
    cine = _oblique_cine()
    write_dicom_series(cine, tmp_path / "classic")
    classic = read_dicom_folder(tmp_path / "classic")
    path = _enhanced_from(tmp_path / "classic", tmp_path / "enh", standard_groups, shuffle)
    for enhanced in (read_volume(path), read_volume(path.parent), read_dicom_series(path.parent)[0]):
        assert enhanced.axes == ("t", "z", "y", "x")
        np.testing.assert_array_equal(enhanced.data, classic.data)
        np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-5)
        assert enhanced.meta["time_step"] == pytest.approx(35.0)


def test_enhanced_with_a_missing_frame_is_refused_like_a_classic_series(tmp_path):
    cine = _oblique_cine()
    files = write_dicom_series(Volume(cine.data[0], cine.affine, ("z", "y", "x")), tmp_path / "classic")
    files[2].unlink()                                   # a slice inside the stack
    with pytest.raises(ValueError, match="missing slice"):
        read_dicom_folder(tmp_path / "classic")
    path = _enhanced_from(tmp_path / "classic", tmp_path / "enh", standard_groups=False)
    with pytest.raises(ValueError, match="missing slice"):
        read_volume(path)


def _testdata(name: str):
    pytest.importorskip("data_store", reason="pydicom-data (test extra) is not installed")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in pydicom-data")
    return path


def test_emri_small_opens_with_the_geometry_of_a_classic_series_of_the_same_content(tmp_path):
    """pydicom's enhanced MR test file has no functional groups at all: it opens as an axial
    stack (with a warning saying so), the same as a classic series of its frames placed so."""
    src = _testdata("emri_small.dcm")
    (tmp_path / "e").mkdir()
    shutil.copy(src, tmp_path / "e" / "emri_small.dcm")
    with pytest.warns(UserWarning, match="without frame positions or orientation"):
        enhanced = read_volume(tmp_path / "e" / "emri_small.dcm")
    frames = pydicom.dcmread(src).pixel_array
    assert enhanced.data.shape == frames.shape == (10, 64, 64)
    np.testing.assert_array_equal(enhanced.data, frames)
    # the same frames as a classic series at the assumed places: 1 mm pixels, 1.2 mm apart, axial
    lps_to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([[0, 0, 1.2], [0, 1.0, 0], [1.0, 0, 0]])
    write_dicom_series(Volume(frames, lps_to_ras @ lps, ("z", "y", "x")), tmp_path / "classic")
    classic = read_dicom_folder(tmp_path / "classic")
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-6)
    np.testing.assert_array_equal(enhanced.data, classic.data)
    # beside a copy of itself in another transfer syntax (same series, as in pydicom-data's
    # folder) it still opens as itself
    shutil.copy(_testdata("emri_small_big_endian.dcm"), tmp_path / "e")
    with pytest.warns(UserWarning, match="opened alone"):
        assert read_volume(tmp_path / "e" / "emri_small.dcm").data.shape == (10, 64, 64)


def test_mr2_uncr_opens_as_one_image_named_by_its_series(tmp_path):
    """MR2_UNCR.dcm shares its series UID and position with the same image in other transfer
    syntaxes (MR2_J2KI, ...): that is no cine, so the file opens alone."""
    from napari_medlearn._io_plugin import read_layers

    folder = tmp_path / "mr2"
    folder.mkdir()
    for name in ("MR2_UNCR.dcm", "MR2_UNCI.dcm", "MR2_J2KI.dcm", "MR2_J2KR.dcm"):
        shutil.copy(_testdata(name), folder / name)
    src = folder / "MR2_UNCR.dcm"
    assert read_dicom_series(folder)[0].data.shape[0] == 3      # the folder: a 3-"phase" pseudo-cine
    with pytest.warns(UserWarning, match="opened alone"):
        volume = read_volume(src)
    assert volume.data.shape == (1, 1024, 1024)
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(src)
    np.testing.assert_allclose(volume.data[0], apply_modality_lut(ds.pixel_array, ds), rtol=1e-6)
    assert volume.meta["series"] == "MR2_UNCR"        # no SeriesDescription: the file's name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = read_layers(str(src))
    assert len(layers) == 1 and layers[0][0].shape == (1, 1024, 1024) and layers[0][1]["name"] == "MR2_UNCR"


def test_a_file_of_a_complete_cine_still_opens_the_whole_cine(tmp_path):
    cine = _oblique_cine()
    files = write_dicom_series(cine, tmp_path / "classic")
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # and without an "opened alone" warning
        volume = read_volume(files[3])
    assert volume.data.shape == cine.data.shape

import numpy as np
import pytest

from napari_medlearn.imaging.measures import cardiac_measures
from napari_medlearn.samples.cardiac_phantom import cardiac_cine_phantom


@pytest.fixture(scope="module")
def phantom():
    return cardiac_cine_phantom(seed=3, n_frames=12, matrix=(96, 112), in_plane_spacing=2.5)


def test_shapes_types_and_labels(phantom):
    t, z, y, x = phantom.image.shape
    assert (t, y, x) == (12, 96, 112) and 8 <= z <= 16
    assert phantom.labels.shape == phantom.image.shape
    assert phantom.image.dtype == np.float32 and phantom.labels.dtype == np.uint8
    assert set(np.unique(phantom.labels)) == {0, 1, 2, 3}
    assert 8.0 <= phantom.spacing[0] <= 10.0 and phantom.spacing[1:] == (2.5, 2.5)


def test_same_seed_same_phantom_other_seed_differs():
    a = cardiac_cine_phantom(seed=7, n_frames=2, matrix=48, in_plane_spacing=5.0)
    b = cardiac_cine_phantom(seed=7, n_frames=2, matrix=48, in_plane_spacing=5.0)
    c = cardiac_cine_phantom(seed=8, n_frames=2, matrix=48, in_plane_spacing=5.0)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels) or a.image.shape != c.image.shape


def test_blood_is_bright_and_myocardium_dark(phantom):
    img, lab = phantom.image, phantom.labels
    assert np.median(img[lab == 1]) > 1.8 * np.median(img[lab == 2])
    assert np.median(img[lab == 3]) > 1.8 * np.median(img[lab == 2])


def test_ejection_fraction_close_to_target_and_mass_conserved():
    ph = cardiac_cine_phantom(seed=11, n_frames=20, in_plane_spacing=1.5, matrix=200)
    m = cardiac_measures(ph.labels, ph.spacing)
    assert abs(m["LVEF_pct"] - ph.params["target_LVEF_pct"]) < 8
    myo = np.asarray(m["MYO_volume_mL"])
    assert myo.std() / myo.mean() < 0.12   # the wall thickens, its volume stays
    assert m["ED_frame"] == 0 and 0 < m["ES_frame"] < 20
    assert 40 < m["LVEDV_mL"] < 300 and m["RVEDV_mL"] > 20


def test_bad_arguments():
    with pytest.raises(ValueError):
        cardiac_cine_phantom(n_frames=0)

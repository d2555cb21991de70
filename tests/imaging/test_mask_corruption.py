import numpy as np
import pytest

from acnn_helpers import ring_labels
from napari_medlearn.imaging.mask_corruption import CORRUPTIONS, corrupt
from napari_medlearn.imaging.shape_grid import foreground_centre, from_canonical, grid_map, onehot, to_canonical

SP = (8.0, 2.0, 2.0)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_corruption_damages_a_copy_and_keeps_label_values(kind):
    lab = ring_labels(shape=(6, 64, 64), spacing=SP)
    before = lab.copy()
    changed = 0
    for seed in range(3):
        bad = corrupt(lab, SP, kind, np.random.default_rng(seed))
        assert bad.shape == lab.shape and bad.dtype == lab.dtype
        assert set(np.unique(bad)) <= {0, 1, 2, 3}
        changed += int((bad != lab).sum())
    np.testing.assert_array_equal(lab, before)
    assert changed > 0


def test_specific_damage():
    lab = ring_labels(shape=(6, 64, 64), spacing=SP)
    rng = np.random.default_rng(0)
    lost = corrupt(lab, SP, "lost_slice", rng)
    emptied = [z for z in range(6) if lab[z].any() and not lost[z].any()]
    assert len(emptied) == 1 and emptied[0] not in (1, 4)      # never the first or last heart slice
    bitten = corrupt(lab, SP, "bitten_ring", rng)
    assert set(np.unique(lab[bitten != lab])) == {2} and set(np.unique(bitten[bitten != lab])) == {0}
    far = corrupt(lab, SP, "islands", rng)
    new = (far != lab)
    assert new.any() and not (lab[new] > 0).any()               # islands only on background
    with pytest.raises(ValueError, match="not supported"):
        corrupt(lab, SP, "melted", rng)


def test_canonical_grid_round_trip_keeps_the_mask_and_the_input_grid():
    lab = ring_labels(shape=(6, 60, 50), spacing=(8.0, 1.5, 1.5), r_lv=18.0, wall=8.0)
    gmap = grid_map(lab.shape, (8.0, 1.5, 1.5), foreground_centre(lab, (8.0, 1.5, 1.5)),
                    grid=(8, 32, 32), grid_spacing=(8.0, 3.0, 3.0))
    canon = to_canonical(lab, gmap, 4)
    assert canon.shape == (4, 8, 32, 32)
    np.testing.assert_allclose(canon.sum(axis=0), 1.0, atol=1e-5)
    back = from_canonical(canon, gmap)
    assert back.shape == (4,) + lab.shape
    agree = (back.argmax(axis=0) == lab)[lab > 0].mean()
    assert agree > 0.9
    # an exactly invertible map for matching spacings: identity on the voxels the box covers
    g2 = grid_map(lab.shape, (8.0, 1.5, 1.5), np.array([2.5, 29.5, 24.5]) * (8.0, 1.5, 1.5),
                  grid=(6, 48, 48), grid_spacing=(8.0, 1.5, 1.5))
    b2 = from_canonical(to_canonical(lab, g2, 4), g2).argmax(axis=0)
    np.testing.assert_array_equal(b2[:, 6:54, 1:49], lab[:, 6:54, 1:49])
    np.testing.assert_array_equal(onehot(lab, 4).argmax(axis=0), lab)

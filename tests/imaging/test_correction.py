import numpy as np
import pytest

from napari_medlearn.imaging import correction


def disc(shape, centre, radius_mm, spacing=(1.0, 1.0)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) * spacing[0]) ** 2 + ((xx - centre[1]) * spacing[1]) ** 2 <= radius_mm**2


def equivalent_radius(mask2d, spacing=(1.0, 1.0)):
    return float(np.sqrt(mask2d.sum() * spacing[0] * spacing[1] / np.pi))


def test_interpolation_between_two_discs_grows_their_radius_linearly():
    lab = np.zeros((11, 64, 64), np.uint8)
    lab[0][disc((64, 64), (32, 32), 10)] = 2
    lab[10][disc((64, 64), (32, 32), 20)] = 2
    out = correction.interpolate_slices(lab, 2, (4.0, 1.0, 1.0))
    radii = [equivalent_radius(out[k] == 2) for k in range(11)]
    for k in range(1, 10):
        assert radii[k] == pytest.approx(10 + k, abs=0.6)
    assert np.array_equal(out[0], lab[0]) and np.array_equal(out[10], lab[10])
    assert lab[5].sum() == 0  # the input is untouched


def test_interpolation_moves_a_shifted_shape_halfway_and_spares_other_labels():
    lab = np.zeros((5, 40, 60), np.uint8)
    lab[0][disc((40, 60), (20, 15), 6)] = 1
    lab[4][disc((40, 60), (20, 45), 6)] = 1
    lab[2, :, :30] = 3  # another structure already drawn in the gap
    out = correction.interpolate_slices(lab, 1, (8.0, 1.0, 1.0))
    ys, xs = np.nonzero(out[2] == 1)
    assert xs.mean() > 30 - 1e-9  # only the background half of the middle slice took label 1
    assert np.all(out[2][:, :30] == 3)
    assert np.nonzero(out[1] == 1)[1].mean() == pytest.approx(22.5, abs=1.5)


def test_interpolation_along_another_axis():
    lab = np.zeros((30, 5, 30), np.uint8)
    lab[:, 0][disc((30, 30), (15, 15), 5)] = 1
    lab[:, 4][disc((30, 30), (15, 15), 5)] = 1
    out = correction.interpolate_slices(lab, 1, (1.0, 3.0, 1.0), axis=1)
    for k in (1, 2, 3):
        assert np.array_equal(out[:, k] == 1, lab[:, 0] == 1)


def test_interpolation_with_one_drawn_slice_or_no_gap_says_why():
    lab = np.zeros((6, 20, 20), np.uint8)
    lab[2, 5:10, 5:10] = 1
    with pytest.raises(ValueError, match="at least two slices"):
        correction.interpolate_slices(lab, 1, (1, 1, 1))
    lab[3, 5:10, 5:10] = 1
    with pytest.raises(ValueError, match="no empty slice"):
        correction.interpolate_slices(lab, 1, (1, 1, 1))
    with pytest.raises(ValueError, match="label 2 is not drawn"):
        correction.interpolate_slices(lab, 2, (1, 1, 1))


def test_islands_removed_by_volume_in_ml_on_anisotropic_voxels():
    lab = np.zeros((10, 50, 50), np.uint8)
    lab[2:8, 10:30, 10:30] = 1        # 6*20*20 voxels * 2 mm^3 = 4.8 mL
    lab[5, 40:43, 40:43] = 1          # 9 voxels = 0.018 mL
    lab[1:3, 40:45, 2:7] = 1          # 50 voxels = 0.1 mL
    lab[5, 45:48, 45:48] = 2          # small piece of another label: never touched
    spacing = (2.0, 1.0, 1.0)
    out = correction.remove_islands(lab, 1, spacing, min_volume_ml=0.05)
    assert out[5, 41, 41] == 0 and out[2, 42, 4] == 1 and out[4, 20, 20] == 1
    assert np.all(out[5, 45:48, 45:48] == 2)
    out = correction.remove_islands(lab, 1, spacing, keep_largest=True)
    assert (out == 1).sum() == 6 * 20 * 20
    with pytest.raises(ValueError, match="above 0 mL"):
        correction.remove_islands(lab, 1, spacing)


def test_fill_holes_only_fills_background_inside_the_label():
    lab = np.zeros((3, 30, 30), np.uint8)
    ring = disc((30, 30), (15, 15), 10) & ~disc((30, 30), (15, 15), 5)
    lab[:, ring] = 2
    lab[:, 15, 15] = 0
    lab[1][disc((30, 30), (15, 15), 5)] = 1      # slice 1: the cavity is labelled LV
    out = correction.fill_holes(lab, 2)
    assert np.all(out[0][disc((30, 30), (15, 15), 5)] == 2)
    assert np.all(out[1][disc((30, 30), (15, 15), 5)] == 1)


def test_smoothing_removes_a_spur_and_keeps_a_disc():
    lab = np.zeros((1, 60, 60), np.uint8)
    lab[0][disc((60, 60), (30, 30), 15)] = 3
    lab[0, 30, 45:55] = 3                      # a one-voxel spur
    out = correction.smooth(lab, 3, (8.0, 1.0, 1.0), sigma_mm=1.5)
    assert np.all(out[0, 30, 48:55] == 0)
    area = (lab == 3).sum() - 10
    assert abs(int((out == 3).sum()) - area) < 0.03 * area


def test_margin_grows_the_asked_mm_on_anisotropic_voxels():
    lab = np.zeros((9, 41, 41), np.uint8)
    lab[4, 20, 20] = 1
    spacing = (8.0, 1.0, 0.5)
    out = correction.grow_shrink(lab, 1, spacing, 2.0)
    m = out == 1
    assert m[4, 20].nonzero()[0].min() == 20 - 4 and m[4, 20].nonzero()[0].max() == 20 + 4   # 2 mm / 0.5 mm
    assert m[4, :, 20].nonzero()[0].min() == 18 and m[4, :, 20].nonzero()[0].max() == 22      # 2 mm / 1 mm
    assert not m[3].any() and not m[5].any()                                                   # 8 mm slices
    grown = correction.grow_shrink(lab, 1, spacing, 8.0)
    assert grown[3, 20, 20] == 1 and grown[5, 20, 20] == 1


def test_shrink_removes_the_outer_layers_and_spares_other_labels():
    lab = np.zeros((1, 30, 30), np.uint8)
    lab[0, 5:25, 5:25] = 1
    lab[0, 0:5, :] = 2
    out = correction.grow_shrink(lab, 1, (5.0, 1.0, 1.0), -2.0)
    assert np.array_equal(np.nonzero(out[0] == 1)[0][[0, -1]], [7, 22])
    assert np.all(out[0, 0:5] == 2)
    grown = correction.grow_shrink(lab, 1, (5.0, 1.0, 1.0), 3.0)
    assert np.all(grown[0, 0:5] == 2)  # growing never takes another label's voxels


def test_margin_larger_than_the_volume_or_below_a_voxel_is_refused():
    lab = np.zeros((4, 10, 10), np.uint8)
    lab[2, 5, 5] = 1
    with pytest.raises(ValueError, match="larger than the volume"):
        correction.grow_shrink(lab, 1, (2.0, 1.0, 1.0), 500)
    with pytest.raises(ValueError, match="nothing would change"):
        correction.grow_shrink(lab, 1, (2.0, 1.0, 1.0), 0.3)


def test_window_keeps_only_the_stroke_voxels_inside_the_intensity_range():
    image = np.zeros((1, 20, 20), np.float32)
    image[0, :, 10:] = 100.0
    before = np.zeros((1, 20, 20), np.uint8)
    before[0, :5, :] = 2
    after = before.copy()
    after[0, 3:15, 5:15] = 1                 # a stroke over dark and bright, over label 2 too
    stroke = after != before
    out = correction.restrict_to_window(after, 1, image, 50, 150, region=stroke, previous=before)
    assert np.all(out[0, 5:15, 10:15] == 1)
    assert np.all(out[0, 5:15, 5:10] == 0)
    assert np.all(out[0, 3:5, 5:10] == 2)    # painted over label 2 in the dark part: restored
    with pytest.raises(ValueError, match="not on one grid"):
        correction.restrict_to_window(after, 1, image[:, :10], 0, 1)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="integers"):
        correction.fill_holes(np.zeros((3, 3, 3), float), 1)
    with pytest.raises(ValueError, match="choose a label"):
        correction.fill_holes(np.ones((3, 3, 3), np.uint8), 0)
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 3, 3\)"):
        correction.fill_holes(np.ones((2, 3, 3, 3), np.uint8), 1)

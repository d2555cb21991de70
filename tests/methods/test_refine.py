"""Hint-driven refinement on tiny synthetic cases (no network: posteriors given)."""

import numpy as np
import pytest

from napari_medlearn.methods import Hint, refine_labels

SP_CARDIAC = (8.0, 1.5, 1.5)


def _disc(shape, centre, r):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r ** 2


def _case():
    """A 3-slice cardiac-like stack: a bright LV disc (label 1) that the model missed on slice 1,
    and a second bright disc far away labelled RV (3) that nobody hints at."""
    z, h, w = 3, 64, 64
    image = np.full((z, h, w), 100.0, np.float32)
    lv = _disc((h, w), (20, 20), 7)
    far = _disc((h, w), (50, 50), 5)
    truth = np.zeros((z, h, w), np.uint8)
    for k in range(z):
        image[k][lv] = 400.0
        image[k][far] = 400.0
        truth[k][lv] = 1
        truth[k][far] = 3
    image += np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32)
    labels = truth.copy()
    labels[1][lv] = 0                       # missed on slice 1
    probs = np.zeros((4,) + labels.shape, np.float32)
    probs[0] = 0.7
    probs[1][truth == 1] = 0.4              # the model half-saw it
    probs[0][truth == 1] = 0.6
    probs[3][truth == 3] = 0.9
    probs[0][truth == 3] = 0.1
    return image, labels, truth, probs


def test_a_positive_click_adds_the_missed_region_and_nothing_far_away():
    image, labels, truth, probs = _case()
    before = labels.copy()
    r = refine_labels(image, labels, SP_CARDIAC, [Hint((1, 20, 20), 1, True)], probabilities=probs)
    added = r.labels[1] == 1
    lv = truth[1] == 1
    assert (added & lv).sum() >= 0.9 * lv.sum()
    assert (added & ~lv).sum() <= 0.1 * lv.sum()
    np.testing.assert_array_equal(labels, before)              # input untouched
    np.testing.assert_array_equal(r.labels[[0, 2]], labels[[0, 2]])  # other slices untouched
    np.testing.assert_array_equal(r.labels[1, 40:, 40:], labels[1, 40:, 40:])  # the far disc untouched
    np.testing.assert_array_equal(r.changed, r.labels != labels)


def test_a_negative_click_removes_a_spurious_blob():
    image, labels, truth, probs = _case()
    labels = truth.copy()
    blob = _disc(labels.shape[1:], (45, 15), 4)
    labels[2][blob] = 1                      # spurious LV, on background intensity
    r = refine_labels(image, labels, SP_CARDIAC, [Hint((2, 45, 15), 1, False)], probabilities=probs)
    assert not (r.labels[2][blob] == 1).any()
    np.testing.assert_array_equal(r.labels[2][~blob], labels[2][~blob])


def test_voxels_far_from_a_hint_never_change_even_when_the_model_disagrees():
    image, labels, truth, probs = _case()
    probs = probs.copy()
    probs[1][:, 50:, :10] = 0.99             # the model wants LV far away: not asked, so not done
    probs[0][:, 50:, :10] = 0.01
    r = refine_labels(image, labels, SP_CARDIAC, [Hint((1, 20, 20), 1, True)], probabilities=probs, crop_mm=15)
    ys, xs = np.nonzero(r.changed[1])
    assert r.changed[1].any() and ys.max() <= 20 + 10 + 1 and xs.max() <= 20 + 10 + 1


def test_a_scribble_adds_its_label_around_it():
    image, labels, truth, probs = _case()
    scribble = np.zeros(labels.shape, bool)
    scribble[1, 18:23, 20] = True
    r = refine_labels(image, labels, SP_CARDIAC, [{1: scribble}], probabilities=probs)
    assert (r.labels[1][truth[1] == 1] == 1).mean() > 0.9


def test_a_cine_is_refined_in_the_hinted_frame_only():
    image, labels, truth, probs = _case()
    cine, lab4 = np.stack([image, image]), np.stack([labels, labels])
    p4 = np.stack([probs, probs], axis=1)
    r = refine_labels(cine, lab4, SP_CARDIAC, [Hint((1, 1, 20, 20), 1, True)], probabilities=p4)
    assert r.changed[1].any() and not r.changed[0].any()


@pytest.mark.parametrize("hint, message", [
    (Hint((1, 20, 99), 1, True), "outside the volume"),
    (Hint((1, 20), 1, True), "coordinates"),
    (Hint((1, 20, 20), 5, True), "not one of this task's labels"),
    ({1: np.ones((2, 2, 2), bool)}, "not the labels' grid"),
])
def test_bad_hints_are_refused_with_one_clear_message(hint, message):
    image, labels, truth, probs = _case()
    with pytest.raises(ValueError, match=message):
        refine_labels(image, labels, SP_CARDIAC, [hint], probabilities=probs)


def test_lesion_channels_on_another_grid_are_refused():
    image, labels, truth, probs = _case()
    with pytest.raises(ValueError, match="not on one grid"):
        refine_labels(np.stack([image[:, :32], image[:, :32]]), labels, (1.0, 1.0, 1.0),
                      [Hint((1, 20, 20), 1, True)], probabilities=probs, label_values=(0, 1, 2, 4))


def test_isotropic_lesion_session_is_refined_in_3d():
    image, labels, truth, probs = _case()
    img = np.repeat(image, 6, axis=0)[:16]          # 16 slices of 1 mm: a 3-D box
    tr = np.repeat(truth, 6, axis=0)[:16]
    tr[tr == 3] = 4
    lab = np.where(tr == 1, 0, tr).astype(np.uint8)   # the whole "core" missed
    p = np.repeat(probs, 6, axis=1)[:, :16]
    r = refine_labels(np.stack([img, img]), lab, (1.0, 1.0, 1.0), [Hint((8, 20, 20), 1, True)],
                      probabilities=p, label_values=(0, 1, 2, 4))
    got = r.labels == 1
    assert (got & (tr == 1)).sum() > 0.8 * (tr == 1).sum()
    assert len(np.unique(np.nonzero(got)[0])) > 5        # spread through-plane
    assert (r.labels[tr == 4] == 4).all()


def test_a_positive_click_leaves_a_neighbour_the_model_is_sure_of_and_a_negative_one_erases():
    image, labels, truth, probs = _case()
    rv = np.zeros(labels.shape[1:], bool)
    rv[16:25, 27:33] = True                   # same intensity as the LV, touching it
    image, labels, probs = image.copy(), labels.copy(), probs.copy()
    image[1][rv] = 400.0
    labels[1][rv & (labels[1] == 0)] = 3
    probs[:, 1][:, rv] = np.array([0.05, 0.4, 0.0, 0.55])[:, None]   # the LV's posterior runs on into it
    r = refine_labels(image, labels, SP_CARDIAC, [Hint((1, 20, 20), 1, True)], probabilities=probs)
    assert (r.labels[1][truth[1] == 1] == 1).mean() > 0.8
    np.testing.assert_array_equal(r.labels[1][rv & (labels[1] == 3)], 3)
    r = refine_labels(image, labels, SP_CARDIAC, [Hint((1, 20, 30), 3, False)], probabilities=probs)
    assert set(np.unique(r.labels[r.changed])) == {0}


def test_a_negative_click_in_3d_stays_near_the_click():
    rng = np.random.default_rng(2)
    lab = np.zeros((24, 48, 48), np.uint8)
    lab[2:22, 4:44, 4:44] = 2                  # a large oedema, one intensity
    img = np.where(lab > 0, 2.0, 0.0).astype(np.float32) + rng.normal(0, 0.05, lab.shape).astype(np.float32)
    probs = np.zeros((4,) + lab.shape, np.float32)
    probs[0], probs[2] = np.where(lab > 0, 0.5, 0.9), np.where(lab > 0, 0.5, 0.1)
    r = refine_labels(np.stack([img, img]), lab, (1.0, 1.0, 1.0), [Hint((12, 24, 24), 2, False)],
                      probabilities=probs, label_values=(0, 1, 2, 4))
    assert 0 < r.changed.sum() < 0.3 * (lab == 2).sum()

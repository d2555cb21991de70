import numpy as np
import pytest

from acnn_helpers import ring_labels, tiny_acnn_checkpoint
from napari_medlearn.imaging.labels import clean_labels
from napari_medlearn.methods import MaskResult, correct_mask, plausibility
from napari_medlearn.methods.acnn import prior_guided_cleanup

SP = (8.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def tiny_acnn(tmp_path_factory):
    return tiny_acnn_checkpoint(tmp_path_factory.mktemp("acnn"))


def test_result_is_on_the_input_grid_and_the_input_is_untouched(tiny_acnn):
    lab = ring_labels(shape=(6, 50, 37), spacing=SP).astype(np.int16)
    lab[2, 5:8, 5:8] = 3                         # an island
    before = lab.copy()
    res = correct_mask(lab, SP, model=str(tiny_acnn))
    assert isinstance(res, MaskResult)
    assert res.labels.shape == lab.shape and res.labels.dtype == lab.dtype
    np.testing.assert_array_equal(lab, before)
    np.testing.assert_array_equal(res.changed, res.labels != lab)
    assert 0.0 <= res.plausibility <= 1.0 and 0.0 <= res.plausibility_before <= 1.0
    assert res.model_name == "tiny-acnn (file tiny-acnn.pt)" and len(res.model_sha256) == 64


def test_without_prior_overrule_only_the_damage_can_change(tiny_acnn):
    lab = ring_labels(shape=(6, 50, 40), spacing=SP)
    damaged = lab.copy()
    damaged[3, 22:25, 18:21] = 0                 # a hole in the LV cavity
    damaged[2, 2:5, 2:5] = 1                     # an island
    res = correct_mask(damaged, SP, model=str(tiny_acnn), threshold=0.0, smooth_mm=0.0)
    assert (res.labels[3, 22:25, 18:21] == 1).all()          # the hole is filled
    outside = np.ones(lab.shape, bool)
    outside[3, 22:25, 18:21] = outside[2, 2:5, 2:5] = False
    np.testing.assert_array_equal(res.labels[outside], damaged[outside])


def test_cleanup_asks_the_prior_before_deleting_a_component():
    lab = np.zeros((5, 20, 20), np.uint8)
    lab[0:2, 5:15, 5:15] = 1                     # the main part
    lab[3:5, 5:12, 5:12] = 1                     # cut off by a lost slice (z=2)
    lab[3, 17:19, 17:19] = 1                     # a far island
    lab[1, 9:11, 9:11] = 0                       # a hole
    prob = np.zeros((4,) + lab.shape, np.float32)
    prob[1, :, 4:16, 4:16] = 0.9                 # the prior's LV covers the main part and the cut-off part
    out = prior_guided_cleanup(lab, prob)
    assert (out[3:5, 5:12, 5:12] == 1).all()
    assert (out[3, 17:19, 17:19] == 0).all()
    assert (out[1, 9:11, 9:11] == 1).all()
    ref = clean_labels(lab, values=(1,))         # plain morphology loses the cut-off part
    assert (ref[3:5, 5:12, 5:12] == 0).all()


def test_cine_is_corrected_frame_by_frame(tiny_acnn):
    a = ring_labels(shape=(5, 40, 40), spacing=SP)
    b = ring_labels(shape=(5, 40, 40), spacing=SP, r_lv=8.0)
    b[2, 1:3, 1:3] = 2
    res = correct_mask(np.stack([a, b]), SP, model=str(tiny_acnn))
    one = correct_mask(b, SP, model=str(tiny_acnn))
    np.testing.assert_array_equal(res.labels[1], one.labels)
    assert len(res.frame_plausibility) == 2
    assert res.frame_plausibility[1] == pytest.approx(one.plausibility)
    p = plausibility(b, SP, model=str(tiny_acnn))
    assert p == pytest.approx(one.plausibility_before)


@pytest.mark.parametrize("labels, spacing, match", [
    (np.zeros((4, 20, 20), np.float32), SP, "integers"),
    (np.full((4, 20, 20), 7, np.uint8), SP, r"unknown label values \[7\]"),
    (np.zeros((20, 20), np.uint8), (2.0, 2.0), "2D"),
    (np.zeros((4, 20, 20), np.uint8), None, "spacing is missing"),
    (np.zeros((4, 20, 20), np.uint8), (8.0, 0.0, 2.0), "positive"),
    (np.zeros((4, 20, 20), np.uint8), (8.0, 2.0), "three"),
    (np.zeros((4, 96, 96), np.uint8), (0.05, 0.01, 0.01), "field of view of 0.96"),   # metres read as mm
])
def test_bad_input_names_the_problem(tiny_acnn, labels, spacing, match):
    with pytest.raises(ValueError, match=match):
        correct_mask(labels, spacing, model=str(tiny_acnn))
    with pytest.raises(ValueError, match=match):
        plausibility(labels, spacing, model=str(tiny_acnn))


def test_the_prior_only_adds_structure_drawn_voxels_stay(tiny_acnn):
    lab = ring_labels(shape=(6, 50, 40), spacing=SP)
    res = correct_mask(lab, SP, model=str(tiny_acnn), threshold=0.5, smooth_mm=0.0)
    np.testing.assert_array_equal(res.labels[lab > 0], lab[lab > 0])


def test_anatomy_faults_count_what_an_expert_mask_does_not_have():
    from napari_medlearn.methods.acnn import anatomy_faults, fault_factor, lost_slices

    lab = ring_labels(shape=(6, 48, 40))
    assert anatomy_faults(lab) == {"islands": 0, "holes": 0, "lost_slices": 0, "exposed_lv": 0}
    assert fault_factor(lab) == 1.0
    bad = lab.copy()
    bad[0, 2:5, 2:5] = 3                       # an island
    bad[3, 22:25, 16:19] = 0                   # a hole in the LV cavity
    assert anatomy_faults(bad)["islands"] == 1 and anatomy_faults(bad)["holes"] >= 1   # (cavity and ring)
    lost = lab.copy()
    lost[2] = 0
    assert lost_slices(lost) == [2] and anatomy_faults(lost)["lost_slices"] == 1
    bitten = lab.copy()
    ring = bitten[3] == 2
    bitten[3][ring & (np.arange(40)[None, :] < 14)] = 0          # the ring's left side gone
    assert anatomy_faults(bitten)["exposed_lv"] == 1
    assert fault_factor(bitten) < fault_factor(lab)


def test_labels_outside_the_prior_box_lower_the_agreement():
    from napari_medlearn.imaging.shape_grid import foreground_centre, grid_map, to_canonical
    from napari_medlearn.methods.acnn import agreement, outside_box

    lab = ring_labels(shape=(6, 48, 40))
    sp = (8.0, 2.0, 2.0)
    gmap = grid_map(lab.shape, sp, foreground_centre(lab, sp), (4, 8, 8), (8.0, 6.0, 6.0))
    assert outside_box(lab, gmap, 4).sum() > 0          # a 48 mm box cannot hold the ring + RV
    canon = to_canonical(lab, gmap, 4)
    assert agreement(canon, canon, outside_box(lab, gmap, 4)) < agreement(canon, canon)
    far = np.zeros((6, 48, 40), np.uint8)
    far[2:4, 20:26, 18:24] = 1
    g2 = grid_map(far.shape, sp, foreground_centre(far, sp), (4, 16, 16), (8.0, 6.0, 6.0))
    assert outside_box(far, g2, 4).sum() == 0


def test_the_gate_keeps_prior_additions_inside_the_heart_footprint(tiny_acnn):
    """With a gate of 0 mm nothing can be added outside the drawn footprint's concavities; the
    concavity map covers a bite and a hole but not the far field."""
    from napari_medlearn.methods.acnn import concavities

    lab = ring_labels(shape=(6, 48, 40))
    bitten = lab.copy()
    bite = (bitten[3] == 2) & (np.arange(40)[None, :] < 14) & (np.abs(np.arange(48) - 24)[:, None] < 3)
    bitten[3][bite] = 0
    cav = concavities(bitten, (8.0, 2.0, 2.0), 12.0)
    assert cav[3][bite].any() and not cav[:, 0, 0].any() and not cav[0].any()
    # a bite through the outer wall: the slices around it cover it
    assert concavities(bitten, (8.0, 2.0, 2.0), 12.0, neighbours=True)[3][bite].all()
    res = correct_mask(bitten, (8.0, 2.0, 2.0), model=tiny_acnn, threshold=0.5, gate_mm=12.0)
    assert not (res.changed & ~concavities(bitten, (8.0, 2.0, 2.0), 12.0) & (bitten == 0)).any()


def test_review_flags_a_shrinking_or_vanishing_structure_and_a_flat_plausibility():
    from napari_medlearn.methods.acnn import review_proposal

    before = np.zeros((2, 4, 20, 20), np.uint8)
    before[:, :, 5:15, 5:15] = 2
    before[:, :, 8:12, 8:12] = 1
    before[:, :, 0:4, 0:10] = 3
    after = before.copy()
    after[1, :2][after[1, :2] == 3] = 0           # frame 1 loses half its RV
    after[0][after[0] == 1] = 2                    # frame 0's LV turned to myocardium
    r = review_proposal(before, after, (8.0, 1.5, 1.5), 0.3, 0.3)
    assert any("frame 0: LV cavity removed entirely" in w for w in r.warnings)
    assert any("frame 1: RV cavity shrinks" in w and "-50 %" in w for w in r.warnings)
    assert any("plausibility does not rise" in w for w in r.warnings)
    assert r.flagged == {(0, 1), (1, 3)}
    assert set(np.unique(r.changes)) == {0, 2, 3}
    assert (r.changes == 3).sum() == 4 * 16 and (r.changes == 2).sum() == 2 * 40
    ok = review_proposal(before, before, (8.0, 1.5, 1.5), 0.3, 0.9)
    assert ok.warnings == ()
    assert review_proposal(before, before, (8.0, 1.5, 1.5), 0.95, 0.95).warnings == ()   # plausible already
    assert "plausibility falls" in review_proposal(before, before, (8.0, 1.5, 1.5), 0.95, 0.5).warnings[0] and r.volumes[1][3] == (pytest.approx(160 * 18 / 1000), pytest.approx(80 * 18 / 1000))

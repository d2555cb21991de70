import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.methods import segment_lesions
from napari_medlearn.methods.lesions import (correct_class_priors, ensemble_uncertainty, normalise_channels,
                                             remove_small_lesions, segment_lesions_steps,
                                             sliding_window_probabilities)
from napari_medlearn.nets import FCN3D, DeepMedic, UNet3D

CARD = {"task": "brain-lesion-segmentation", "n_classes": 4, "label_values": [0, 1, 2, 4],
        "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2.0, 2.0, 2.0]}}


def _settle(net, shape):
    """Move BN statistics off their defaults so outputs vary between voxels and classes."""
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 2, *shape))
    return net.eval()


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    dm = DeepMedic(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], subsample_factors=[3],
                   fc_fms=[6, 6])
    _settle(dm, dm.segment_size(3))
    un = _settle(UNet3D(2, 4, base=3, levels=3), (8, 8, 8))
    fc = _settle(FCN3D(2, 4, base=3, fc=6), (8, 8, 8))
    for net, name in ((dm, "tiny-dm"), (un, "tiny-unet"), (fc, "tiny-fcn")):
        net.card = {**CARD, "name": name, "inference": {"roi": 16}}
        net.zoo_name = name
    return [dm, un, fc]


def _case(shape=(14, 20, 18), seed=0):
    rng = np.random.default_rng(seed)
    ch = np.full((2,) + shape, -3.0, np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 3:-3, 2:-3] = True
    ch[:, mask] = rng.normal(1.0, 0.5, size=(2, int(mask.sum())))
    return ch, mask


def test_ensemble_mean_uncertainty_and_members(members):
    ch, mask = _case()
    res = segment_lesions(ch, (2.0, 2.0, 2.0), model=members)
    singles = [segment_lesions(ch, (2.0, 2.0, 2.0), model=m) for m in members]
    np.testing.assert_allclose(res.probabilities, np.mean([s.probabilities for s in singles], axis=0), atol=1e-5)
    assert res.members == ("tiny-dm", "tiny-unet", "tiny-fcn")
    assert res.uncertainty.shape == mask.shape and res.uncertainty.dtype == np.float32
    assert 0.0 <= res.uncertainty.min() and res.uncertainty.max() <= 1.0 + 1e-6
    assert not res.uncertainty[~mask].any()          # certain background outside the brain
    for name, s in zip(res.members, singles):
        assert np.array_equal(res.extras["member_labels"][name], s.labels)
        assert res.extras["member_volumes_ml"][name] == s.volumes_ml
    mi, var = res.extras["mutual_information"], res.extras["variance"]
    assert mi.shape == var.shape == mask.shape and np.all(mi <= res.uncertainty + 1e-6)


def test_class_prior_correction_known_answers():
    p = np.zeros((4, 2, 1, 1), np.float32)
    p[:, 0, 0, 0] = [0.25, 0.25, 0.25, 0.25]
    p[:, 1, 0, 0] = [0.4, 0.6, 0.0, 0.0]
    # trained with tumour classes 4x over-represented: a uniform posterior was in truth mostly background
    q = correct_class_priors(p.copy(), [4.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(q[:, 0, 0, 0], [4 / 7, 1 / 7, 1 / 7, 1 / 7], rtol=1e-6)
    np.testing.assert_allclose(q[:, 1, 0, 0], [1.6 / 2.2, 0.6 / 2.2, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(correct_class_priors(p.copy(), [2.0] * 4), p)     # equal priors: no change
    with pytest.raises(ValueError, match="3 class weights for 4"):
        correct_class_priors(p, [1.0, 1.0, 1.0])


def test_card_prior_correction_applies_to_members(members):
    ch, mask = _case()
    net = members[2]
    raw = segment_lesions(ch, (2.0, 2.0, 2.0), model=net)
    try:
        net.card = {**net.card, "prior_correction": {"training_prior": [0.5, 0.2, 0.2, 0.1],
                                                     "target_prior": [0.9, 0.04, 0.04, 0.02]}}
        fixed = segment_lesions(ch, (2.0, 2.0, 2.0), model=net)
        inside = mask
        w = np.array([1.8, 0.2, 0.2, 0.2], np.float32)
        want = raw.probabilities[:, inside] * w[:, None]
        np.testing.assert_allclose(fixed.probabilities[:, inside], want / want.sum(0), rtol=1e-4, atol=1e-6)
        assert (fixed.labels > 0).sum() <= (raw.labels > 0).sum()
        net.card = {**net.card, "prior_correction": {"training_prior": [0.5, 0.5], "target_prior": [0.9, 0.1]}}
        with pytest.raises(ValueError, match="tiny-fcn.*prior_correction"):
            segment_lesions(ch, (2.0, 2.0, 2.0), model=net)
    finally:
        net.card = {k: v for k, v in net.card.items() if k != "prior_correction"}


def test_uncertainty_known_answers():
    K, shape = 4, (2, 3, 3)
    same = np.zeros((K,) + shape, np.float32)
    same[1] = 1.0
    u = ensemble_uncertainty([same, same, same])
    assert np.allclose(u["entropy"], 0) and np.allclose(u["mutual_information"], 0) and np.allclose(u["variance"], 0)
    # members that are each sure of a different class: the mean is uniform over 3 of 4 classes
    ps = []
    for k in (1, 2, 3):
        p = np.zeros((K,) + shape, np.float32)
        p[k] = 1.0
        ps.append(p)
    u = ensemble_uncertainty(ps)
    np.testing.assert_allclose(u["entropy"], np.log(3) / np.log(4), rtol=1e-5)
    np.testing.assert_allclose(u["mutual_information"], u["entropy"], rtol=1e-5)   # all disagreement
    np.testing.assert_allclose(u["variance"], 3 * (1 / 3) * (2 / 3), rtol=1e-5)


def test_members_with_different_label_sets_are_refused(members):
    odd = UNet3D(2, 4, base=3, levels=3).eval()
    odd.card = {**CARD, "name": "odd", "label_values": [0, 1, 2, 3]}
    ch, _ = _case()
    with pytest.raises(ValueError, match="different label sets"):
        segment_lesions(ch, (2.0, 2.0, 2.0), model=[members[0], odd])
    three = UNet3D(3, 4, base=3, levels=3).eval()
    three.card = {**CARD, "name": "three", "input": {"channels": ["FLAIR", "T1c", "T2"]}}
    with pytest.raises(ValueError, match="different modalities"):
        segment_lesions(ch, (2.0, 2.0, 2.0), model=[members[0], three])
    with pytest.raises(ValueError, match="at least 2 members"):
        segment_lesions(ch, (2.0, 2.0, 2.0), model=[members[0]])


def test_ensemble_bad_input_names_the_problem(members):
    ch, _ = _case()
    ch[0, 5, 5, 5] = np.nan
    with pytest.raises(ValueError, match="FLAIR image contains NaN"):
        segment_lesions(ch, (2.0, 2.0, 2.0), model=members)


def test_sliding_windows_cover_the_brain_and_report_progress(members):
    ch, mask = _case((14, 40, 36))
    img = normalise_channels(ch, mask)
    steps = sliding_window_probabilities(members[1], img, mask, roi=16, overlap=0.25)
    seen = []
    try:
        while True:
            seen.append(next(steps))
    except StopIteration as stop:
        probs = stop.value
    total = seen[0][1]
    assert total > 1 and seen[-1][:2] == (total, total)
    assert probs.shape == (4,) + mask.shape
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # the same as MONAI's sliding windows on the whole volume, inside the brain's box
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        ref = sliding_window_inference(torch.from_numpy(img)[None], [16, 16, 16], 1,
                                       lambda x: torch.softmax(members[1](x), 1), overlap=0.25,
                                       mode="gaussian")[0].numpy()
    inside = np.argwhere(mask)
    lo, hi = inside.min(0), inside.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    # windows are placed on a different grid (box vs volume), so compare loosely but in the brain
    assert np.mean(np.argmax(probs[(slice(None),) + box], 0) == np.argmax(ref[(slice(None),) + box], 0)) > 0.8


def test_sliding_window_cancel(members):
    ch, mask = _case()
    steps = segment_lesions_steps(ch, (2.0, 2.0, 2.0), model=members[1], cancelled=lambda: True)
    with pytest.raises(InterruptedError):
        for _ in steps:
            pass


def test_remove_small_lesions_keeps_components_by_size():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1:5, 1:5, 1:5] = 2          # 64 voxels
    lab[2:4, 2:4, 2:4] = 4
    lab[7:9, 7:9, 7:9] = 2          # 8 voxels, 1/8 of the largest
    lab[0, 9, 0] = 1                # 1 voxel
    out = remove_small_lesions(lab, 0.1)
    assert out[7:9, 7:9, 7:9].all() and out[0, 9, 0] == 0 and np.array_equal(out[1:5, 1:5, 1:5], lab[1:5, 1:5, 1:5])
    assert not remove_small_lesions(lab, 0.5)[7:9, 7:9, 7:9].any()
    assert np.array_equal(remove_small_lesions(lab, 0.0), lab) and lab[0, 9, 0] == 1   # input untouched
    with pytest.raises(ValueError, match="min_fraction"):
        remove_small_lesions(lab, 1.5)


def test_ensemble_card_in_the_zoo(members, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path))
    for m in members:
        arch = {DeepMedic: "deepmedic", UNet3D: "unet3d", FCN3D: "fcn3d"}[type(m)]
        args = {"deepmedic": dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5],
                                  subsample_factors=[3], fc_fms=[6, 6]),
                "unet3d": dict(in_channels=2, n_classes=4, base=3, levels=3),
                "fcn3d": dict(in_channels=2, n_classes=4, base=3, fc=6)}[arch]
        sha = zoo.save_checkpoint(m, tmp_path / f"{m.zoo_name}.pt", arch, args, card=m.card)
        zoo.write_json_atomic({**m.card, "sha256": sha}, tmp_path / f"{m.zoo_name}.json")
    zoo.write_json_atomic({"name": "tiny-emma", "kind": "ensemble", "task": CARD["task"],
                           "members": ["tiny-dm", "tiny-unet", "tiny-fcn"]}, tmp_path / "tiny-emma.json")
    assert "tiny-emma" in zoo.available(CARD["task"])
    ch, _ = _case()
    res = segment_lesions(ch, (2.0, 2.0, 2.0), model="tiny-emma")
    assert res.model == "tiny-emma" and res.members == ("tiny-dm", "tiny-unet", "tiny-fcn")
    assert res.extras["postprocess"] == {"decision": "argmax", "min_component_fraction": 0.0, "fill_holes": False}
    # the ensemble card's label post-processing applies to the ensemble and its members' labels
    from napari_medlearn.methods.lesions import postprocess_labels

    post = {"min_component_fraction": 0.5, "fill_holes": True}
    zoo.write_json_atomic({"name": "tiny-emma", "kind": "ensemble", "task": CARD["task"], "postprocess": post,
                           "members": ["tiny-dm", "tiny-unet", "tiny-fcn"]}, tmp_path / "tiny-emma.json")
    done = segment_lesions(ch, (2.0, 2.0, 2.0), model="tiny-emma")
    assert done.extras["postprocess"] == {"decision": "argmax", **post}
    assert np.array_equal(done.labels, postprocess_labels(res.labels, **post))
    for name, lab in res.extras["member_labels"].items():
        assert np.array_equal(done.extras["member_labels"][name], postprocess_labels(lab, **post))
    raw = segment_lesions(ch, (2.0, 2.0, 2.0), model="tiny-emma", min_component_fraction=0, fill_holes=False)
    assert np.array_equal(raw.labels, res.labels)
    # ... and so does its label decision, to the ensemble's and each member's probabilities
    from napari_medlearn.methods.lesions import decide_labels

    zoo.write_json_atomic({"name": "tiny-emma", "kind": "ensemble", "task": CARD["task"],
                           "postprocess": {"decision": "expected_dice"},
                           "members": ["tiny-dm", "tiny-unet", "tiny-fcn"]}, tmp_path / "tiny-emma.json")
    ed = segment_lesions(ch, (2.0, 2.0, 2.0), model="tiny-emma")
    lab, t = decide_labels(res.probabilities, res.label_values, res.brain_mask, "expected_dice")
    assert np.array_equal(ed.labels, lab) and ed.extras["postprocess"]["whole_tumour_threshold"] == t
    assert ed.extras["postprocess"]["decision"] == "expected_dice"
    assert set(ed.extras["member_labels"]) == set(res.extras["member_labels"])
    with pytest.raises(ValueError, match="label decision"):
        segment_lesions(ch, (2.0, 2.0, 2.0), model="tiny-emma", decision="median")
    (tmp_path / "tiny-fcn.pt").unlink()
    assert "tiny-emma" not in zoo.available(CARD["task"])


def test_expected_dice_threshold_known_answers():
    from napari_medlearn.methods.lesions import expected_dice_threshold

    # sets of the most probable voxels: {0.9}: 1.8/3.1, {0.9, 0.8}: 3.4/4.1 (best), + 0.3: 4.0/5.1, all: 4.2/6.1
    assert expected_dice_threshold(np.array([0.1, 0.9, 0.3, 0.8])) == pytest.approx(0.8)
    # ten voxels at 0.45: none is more likely tumour than not, yet taking all ten is the best guess
    q = np.zeros((4, 5, 5), np.float32)
    q[1, 1:3, :] = 0.45
    assert expected_dice_threshold(q) == pytest.approx(0.45)
    assert expected_dice_threshold(np.zeros((3, 3))) == 1.0
    assert expected_dice_threshold(np.full((3, 3), 0.005)) == 1.0


def test_decide_labels_expected_dice_takes_the_likely_tumour_the_argmax_leaves_out():
    from napari_medlearn.methods.lesions import LABEL_VALUES, decide_labels

    p = np.zeros((4, 2, 4, 4), np.float32)
    p[0] = 1.0
    p[:, 0, :2, :] = np.array([0.55, 0.05, 0.30, 0.10])[:, None, None]    # tumour 0.45, mostly oedema
    p[:, 0, 2, :] = np.array([0.1, 0.5, 0.1, 0.3])[:, None]                # core
    mask = np.ones(p.shape[1:], bool)
    mask[0, 0, 0] = False
    arg, t0 = decide_labels(p, LABEL_VALUES, mask)
    assert t0 is None and set(np.unique(arg)) == {0, 1} and arg[0, 2].tolist() == [1, 1, 1, 1]
    lab, t = decide_labels(p, LABEL_VALUES, mask, "expected_dice")
    assert t == pytest.approx(0.45, abs=1e-6)
    assert (lab[0, :2] == 2).sum() == 7 and lab[0, 0, 0] == 0          # outside the brain mask: 0
    assert lab[0, 2].tolist() == [1, 1, 1, 1] and not lab[1].any() and not lab[0, 3].any()
    assert p[0, 0, 0, 0] == pytest.approx(0.55)                          # the probabilities are untouched
    with pytest.raises(ValueError, match="label decision"):
        decide_labels(p, LABEL_VALUES, mask, "mode")

import numpy as np
import pytest
import torch

from napari_medlearn.imaging.measures import dice
from napari_medlearn.methods import segment_lesions
from napari_medlearn.training.deepmedic import prepare_case
from napari_medlearn.training.emma import (MEMBER_RECIPES, calibration_bins, calibration_summary, class_priors,
                                           evaluate_with_calibration, flair_threshold_floor, save_reliability_figure,
                                           train_member, uncertainty_auroc)


def _case(seed, shape=(24, 28, 26)):
    """A bright oedema blob with an enhancing centre in noise, inside a box-shaped brain."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    c = rng.integers(8, 16, size=3)
    zz, yy, xx = np.indices(shape)
    r = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
    lab = np.where(r < 5, 2, 0).astype(np.uint8)
    lab[r < 2.5] = 4
    ch = np.zeros((2,) + shape, np.float32)
    ch[:, mask] = rng.normal(0.0, 0.6, size=(2, int(mask.sum())))
    ch[0][lab > 0] += 2.0
    ch[1][lab == 4] += 2.0
    return ch, lab, (2.0, 2.0, 2.0), mask, f"case {seed}"


def test_calibration_known_answers():
    rng = np.random.default_rng(0)
    p = rng.random(200_000).astype(np.float32)
    calibrated = calibration_summary([calibration_bins(p, rng.random(p.size) < p, 10)])
    assert calibrated["ece"] < 0.01
    overconfident = calibration_summary([calibration_bins(np.where(p > 0.5, 1.0, 0.0), rng.random(p.size) < p, 10)])
    assert overconfident["ece"] == pytest.approx(0.25, abs=0.01)
    halves = calibration_summary([calibration_bins(p[:1000], p[:1000] > 0.5), calibration_bins(p[1000:], p[1000:] > 0.5)])
    whole = calibration_summary([calibration_bins(p, p > 0.5)])
    assert halves["ece"] == pytest.approx(whole["ece"]) and halves["count"] == whole["count"]


def test_uncertainty_auroc():
    mask = np.ones((4, 4, 4), bool)
    wrong = np.zeros_like(mask)
    wrong[0] = True
    assert uncertainty_auroc(wrong.astype(np.float32), wrong, mask) == pytest.approx(1.0)
    assert uncertainty_auroc(1.0 - wrong, wrong, mask) == pytest.approx(0.0)
    assert np.isnan(uncertainty_auroc(np.ones((4, 4, 4)), np.zeros_like(mask), mask))


def test_flair_threshold_floor_finds_bright_lesions():
    floor = flair_threshold_floor([_case(0), _case(1)], [_case(2)])
    assert floor["dice_whole_tumour_mean"] > 0.6 and floor["cases"][0]["case"] == "case 2"


@pytest.mark.parametrize("member", ["emma-unet", "emma-fcn"])
def test_member_learns(member, tmp_path):
    recipe = {**MEMBER_RECIPES[member], "patch": 16, "batch_size": 4, "inference": {"roi": 32}}
    cases = [prepare_case(*_case(s)[:4], name=str(s)) for s in range(3)]
    torch.manual_seed(0)
    model, args, cfg, hist = train_member(recipe, cases, tmp_path, epochs=5, iters_per_epoch=30, width=0.5,
                                          lr=8e-3, progress=False)
    model.card = {"input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2.0, 2.0, 2.0]}, "label_values": [0, 1, 2, 4],
                  "inference": recipe["inference"]}
    assert hist["loss"][-1] < 0.8 * hist["loss"][0], hist["loss"]
    held = _case(7)
    res = segment_lesions(held[0], held[2], model=model, brain_mask=held[3])
    assert dice(res.labels > 0, held[1] > 0) > 0.6
    ev = evaluate_with_calibration(model, [held], tmp_path / "rel.png")
    assert 0 <= ev["calibration"]["ece"] <= 1 and (tmp_path / "rel.png").stat().st_size > 1000
    assert sum(ev["calibration"]["count"]) == held[3].sum()          # every brain voxel, once
    ens = evaluate_with_calibration([model, model], [held])
    assert "uncertainty_auroc_mean" in ens["summary"]


def test_member_recipe_with_spatial_augmentation(tmp_path):
    from napari_medlearn.training.emma import recipe_spatial

    recipe = {**MEMBER_RECIPES["emma-unet"], "patch": 16, "batch_size": 2,
              "spatial": {"p": 0.5, "rotation_deg": 10, "scale_range": [0.9, 1.1]}}
    assert recipe_spatial(MEMBER_RECIPES["emma-unet"]) == {}
    assert recipe_spatial(recipe) == {"spatial_p": 0.5, "rotation_deg": 10.0, "scale_range": (0.9, 1.1)}
    cases = [prepare_case(*_case(s)[:4], name=str(s)) for s in range(2)]
    _, _, cfg, hist = train_member(recipe, cases, tmp_path, epochs=1, iters_per_epoch=3, width=0.5, progress=False)
    assert cfg.extra["spatial_augmentation"]["spatial_p"] == 0.5 and np.isfinite(hist["loss"]).all()


def test_class_priors_of_tumour_centred_sampling():
    from napari_medlearn.training.deepmedic import sampler_geometry
    from napari_medlearn.nets import UNet3D

    cases = [prepare_case(*_case(s)[:4], name=str(s)) for s in range(2)]
    geo = sampler_geometry(UNet3D(2, 4, base=2, levels=2), 9, 8)
    pc = class_priors(cases, geo, fg_fraction=0.5, batch_size=4, n_batches=40)
    train, target = np.array(pc["training_prior"]), np.array(pc["target_prior"])
    assert train.sum() == pytest.approx(1.0, abs=1e-5) and target.sum() == pytest.approx(1.0, abs=1e-5)
    # half the 8^3 patches centred on 5-voxel-radius lesions: tumour far above its share of the brain
    assert train[2] + train[3] > 3 * (target[2] + target[3]) and train[1] == pytest.approx(1e-6)
    brain = sum(c.mask.sum() for c in cases)
    assert target[3] == pytest.approx(sum(((c.classes == 3) & c.mask).sum() for c in cases) / brain, rel=1e-6)
    none = class_priors(cases, geo, fg_fraction=0.0, batch_size=4, n_batches=40)
    assert none["training_prior"][2] + none["training_prior"][3] < train[2] + train[3]


def test_synthetic_share_of_member_batches_and_priors():
    from napari_medlearn.training.deepmedic import SegmentSampler, sampler_geometry
    from napari_medlearn.training.emma import mixed_batches
    from napari_medlearn.nets import UNet3D

    geo = sampler_geometry(UNet3D(2, 4, base=2, levels=2), 9, 8)
    real = [prepare_case(*_case(s)[:4], name=str(s)) for s in range(2)]
    # "synthetic" cases whose brains are all 100: a batch tells which sampler it came from
    syn = [prepare_case(*_case(s)[:4], name=str(s)) for s in (5, 6)]
    for c in syn:
        c.image[:, c.mask] = 100.0
    rs, ss = SegmentSampler(real, geo, 0.5), SegmentSampler(syn, geo, 0.5)
    rng = np.random.default_rng(0)
    for share, lo, hi in ((0.0, 0, 0), (0.25, 0.18, 0.32), (1.0, 1, 1)):
        draw = mixed_batches(rs, ss, share, 2)
        frac = np.mean([float(draw(rng, "cpu")[0].max()) > 50 for _ in range(400)])
        assert lo <= frac <= hi, (share, frac)
    with pytest.raises(ValueError, match="between 0 and 1"):
        mixed_batches(rs, ss, 1.5, 2)
    with pytest.raises(ValueError, match="needs synthetic"):
        mixed_batches(rs, None, 0.25, 2)
    # the prior learnt is the mixture of both samplers'; whole scans keep the real brains' prior
    for c in syn:          # synthetic brains with twice the lesion
        c.classes[c.classes == 0] = np.where(np.random.default_rng(1).random((c.classes == 0).sum()) < 0.3, 2, 0)
    plain = class_priors(real, geo, 0.5, 4, n_batches=40)
    mixed = class_priors(real, geo, 0.5, 4, n_batches=40, synthetic=syn, synthetic_share=0.5)
    only = class_priors(syn, geo, 0.5, 4, n_batches=40)
    np.testing.assert_allclose(mixed["training_prior"],
                               0.5 * np.array(plain["training_prior"]) + 0.5 * np.array(only["training_prior"]), atol=1e-6)
    assert mixed["target_prior"] == plain["target_prior"] and "synthetic" in mixed["estimated_from"]


def test_reliability_figure(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    c = calibration_summary([calibration_bins(p, rng.random(p.size) < p, 10)])
    out = save_reliability_figure({"a": c, "b": c}, tmp_path / "r.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_calibration_goes_into_a_card_without_touching_the_rest(tmp_path):
    from napari_medlearn.training.emma import calibrate_lesion_card

    rng = np.random.default_rng(0)
    p = rng.random(4000)
    cal = calibration_summary([calibration_bins(p, rng.random(p.size) < p, 10)])
    card = {"name": "m", "sha256": "abc", "training": {"never_seen": ["s1"]},
            "evaluation": {"summary": {"dice_whole_tumour_mean": 0.8}, "cases": [1]}}
    out = calibrate_lesion_card("m", calibration=cal, card=card, out_dir=tmp_path)
    assert out["evaluation"]["calibration"]["ece"] == cal["ece"] and "s1" in out["evaluation"]["calibration"]["data"]
    assert out["evaluation"]["summary"] == {"dice_whole_tumour_mean": 0.8, "ece_whole_tumour": cal["ece"]}
    assert out["sha256"] == "abc" and out["evaluation"]["cases"] == [1] and card["evaluation"]["cases"] == [1]
    assert (tmp_path / "m_reliability.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "m.json").exists()
    with pytest.raises(ValueError, match="never-seen"):
        calibrate_lesion_card("m", card={"name": "m", "training": {}})


def _evaluation(names, seed, power):
    rng = np.random.default_rng(seed)
    p = rng.random(3000)
    rows = [{"case": n, "dice_whole_tumour": 0.5 + 0.1 * i, "hd95_whole_tumour_mm": 4.0 * (i + 1)}
            for i, n in enumerate(names)]
    return {"cases": rows, "calibration": calibration_summary([calibration_bins(p, rng.random(p.size) < p ** power, 10)])}


def test_folds_pool_into_one_evaluation():
    from napari_medlearn.training.emma import pool_evaluations

    a, b = _evaluation(["s1", "s2"], 0, 2.0), _evaluation(["s3"], 1, 0.5)     # over- and under-confident
    pooled = pool_evaluations([a, b])
    assert [r["case"] for r in pooled["cases"]] == ["s1", "s2", "s3"]
    assert pooled["summary"]["dice_whole_tumour_mean"] == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert pooled["calibration"]["count"] == [x + y for x, y in zip(a["calibration"]["count"], b["calibration"]["count"])]
    # the pooled ECE is that of all voxels binned together (not a mean of the folds' ECEs)
    rng0, rng1 = np.random.default_rng(0), np.random.default_rng(1)
    p0, p1 = rng0.random(3000), rng1.random(3000)
    y0, y1 = rng0.random(3000) < p0 ** 2, rng1.random(3000) < p1 ** 0.5
    whole = calibration_summary([calibration_bins(np.r_[p0, p1], np.r_[y0, y1], 10)])
    assert pooled["summary"]["ece_whole_tumour"] == pytest.approx(whole["ece"], abs=1e-4)
    assert pooled["summary"]["ece_whole_tumour"] < 0.5 * (a["calibration"]["ece"] + b["calibration"]["ece"]) / 2
    with pytest.raises(ValueError, match="overlapping"):
        pool_evaluations([a, a])


def _write_brats(root, n=4, shape=(48, 48, 48)):
    """A BraTS-like folder (FLAIR, T1c, labels, brain mask per subject) of :func:`_case` volumes."""
    import nibabel as nib

    from napari_medlearn.training.deepmedic import BRATS_FILES

    names = []
    for s in range(n):
        ch, lab, sp, mask, _ = _case(s, shape)
        d = root / f"brats_2013_pat{s:04d}_1"
        d.mkdir(parents=True)
        aff = np.diag([*sp, 1.0])
        for key, arr in (("FLAIR", ch[0]), ("T1c", ch[1]), ("labels", lab), ("mask", mask.astype(np.uint8))):
            # files are x, y, z; the arrays z, y, x
            nib.save(nib.Nifti1Image(np.ascontiguousarray(arr.transpose(2, 1, 0)), aff), str(d / BRATS_FILES[key]))
        names.append(d.name)
    return names


def test_emma_cross_validation_over_two_folds(tmp_path, capsys):
    import json

    from napari_medlearn.cli import main
    from napari_medlearn.training.emma import run_emma_member

    data = tmp_path / "brats"
    names = _write_brats(data)
    folds = {"a": names[:2], "b": names[2:]}
    members = ["emma-unet", "emma-fcn"]                     # two of the three keep the test short
    for f, train_on in folds.items():
        for m in members:
            run_emma_member(tmp_path / f / m, m, epochs=1, iters_per_epoch=2, data=str(data),
                            train_subjects=train_on, width=0.25, device="cpu", progress=False,
                            synthetic={"share": 0.5, "n_cases": 1, "spacing_mm": 4.0})
            card = json.loads((tmp_path / f / m / "model.json").read_text())
            assert card["training"]["synthetic"]["share"] == 0.5 and "synthetic" in card["training"]["data"]
            assert card["training"]["never_seen"] == [n for n in names if n not in train_on]
            assert "--train-subjects" in card["training"]["command"]
    common = ["train", "emma", "--data", str(data), "--device", "cpu"]
    # fold b's members cannot judge fold a's held-out subjects (they were trained on them)
    assert main([*common, "--train-subjects", *folds["a"], "--run-dir", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    from napari_medlearn.training.emma import run_emma

    (tmp_path / "x").mkdir(exist_ok=True)
    for m in members:
        (tmp_path / "x" / m).symlink_to(tmp_path / "b" / m)
    with pytest.raises(ValueError, match="cannot judge"):
        run_emma(tmp_path / "x", members=members, data=str(data), train_subjects=folds["a"], progress=False)
    a = run_emma(tmp_path / "a", members=members, data=str(data), train_subjects=folds["a"], progress=False)
    assert [r["case"] for r in a["evaluation"]["cases"]] == folds["b"] and "cross_validation" not in a
    with pytest.raises(ValueError, match="judges"):
        run_emma(tmp_path / "a", members=members, data=str(data), train_subjects=folds["a"],
                 with_fold=tmp_path / "a" / "emma.json", progress=False)
    b = run_emma(tmp_path / "b", members=members, data=str(data), train_subjects=folds["b"],
                 with_fold=tmp_path / "a" / "emma.json", progress=False)
    cv = b["cross_validation"]
    assert [f["trained_on"] for f in cv["folds"]] == [folds["b"], folds["a"]]
    assert sorted(r["case"] for r in cv["emma"]["cases"]) == names
    assert sorted(r["case"] for r in cv["emma-fcn"]["cases"]) == names
    assert len(cv["flair_threshold_floor"]["cases"]) == 4
    # b's label post-processing was chosen on a's held-out rows, a's on b's; each fold's rows are its
    # raw rows after its own choice
    from napari_medlearn.training.deepmedic import choose_postprocess, postprocess_of

    key_b, key_a = choose_postprocess(a["evaluation"]["cases"]), choose_postprocess(b["evaluation"]["cases"])
    assert {k: b["postprocess"][k] for k in ("decision", "min_component_fraction", "fill_holes")} == postprocess_of(key_b)
    assert b["postprocess"]["chosen_on"] == folds["b"]
    assert cv["postprocess_per_fold"] == [postprocess_of(key_b), postprocess_of(key_a)]
    for r in b["evaluation"]["cases"]:
        assert r["dice_whole_tumour"] == r["clean"][key_b]["dice_whole_tumour"]
    assert set(b["evaluation"]["postprocess_variants"]) == set(b["evaluation"]["cases"][0]["clean"])
    assert {"0.1+fill", "0.1+fill+ed", "0+ed"} <= set(b["evaluation"]["postprocess_variants"])
    # the members are reported under the ensemble's post-processing, raw figures kept beside
    for m in members:
        ev_m = b["evaluation"]["members"][m]
        assert [r["dice_whole_tumour"] for r in ev_m["cases"]] == [r["clean"][key_b]["dice_whole_tumour"]
                                                                 for r in ev_m["cases"]]
        assert "dice_whole_tumour_mean" in b["evaluation"]["members_without_postprocess"][m]
    assert b["evaluation"]["without_postprocess"]["dice_whole_tumour_mean"] == pytest.approx(
        b["evaluation"]["postprocess_variants"]["0"]["dice_whole_tumour_mean"])
    dice = ([r["clean"][key_a]["dice_whole_tumour"] for r in a["evaluation"]["cases"]]
            + [r["dice_whole_tumour"] for r in b["evaluation"]["cases"]])
    assert cv["emma"]["summary"]["dice_whole_tumour_mean"] == pytest.approx(np.mean(dice))
    assert sum(cv["emma"]["calibration"]["count"]) == sum(a["evaluation"]["calibration"]["count"]) + sum(
        b["evaluation"]["calibration"]["count"])


def test_cross_validation_of_adaptation_cards():
    from napari_medlearn.training.emma import cross_validation

    def card(train, judged, seed):
        ev = _evaluation(judged, seed, 1.0)
        return {"training": {"subjects": train}, "evaluation": {**ev, "baseline_source_only": {
            "name": "lesions-synthetic", **_evaluation(judged, seed + 10, 2.0)}}}

    cv = cross_validation([card(["s1", "s2"], ["s3", "s4"], 0), card(["s3", "s4"], ["s1", "s2"], 1)],
                          ["lesions-uda", "baseline_source_only"])
    assert [f["judged"] for f in cv["folds"]] == [["s3", "s4"], ["s1", "s2"]]
    assert cv["lesions-uda"]["summary"]["n_cases"] == 4 == cv["baseline_source_only"]["summary"]["n_cases"]
    assert cv["baseline_source_only"]["summary"]["ece_whole_tumour"] > cv["lesions-uda"]["summary"]["ece_whole_tumour"]


def test_postprocess_choice_prefers_less_on_ties():
    from napari_medlearn.training.deepmedic import choose_component_fraction, choose_postprocess, postprocess_of

    def row(**dice):
        return {"clean": {k.replace("_", ".").replace("fill", "+fill"): {"dice_whole_tumour": v}
                          for k, v in dice.items()}}

    rows = [row(**{"0": 0.5, "0_1": 0.7, "0fill": 0.7, "0_1fill": 0.7})]
    assert choose_postprocess(rows) == "0.1" and choose_component_fraction(rows) == 0.1
    rows = [row(**{"0": 0.5, "0_1": 0.6, "0fill": 0.55, "0_1fill": 0.8}), row(**{"0": 0.9, "0_1": 0.9, "0fill": 0.9, "0_1fill": 0.9})]
    assert choose_postprocess(rows) == "0.1+fill"
    assert postprocess_of("0.1+fill") == {"decision": "argmax", "min_component_fraction": 0.1, "fill_holes": True}
    assert postprocess_of("0") == {"decision": "argmax", "min_component_fraction": 0.0, "fill_holes": False}
    assert postprocess_of("0.05+fill+ed") == {"decision": "expected_dice", "min_component_fraction": 0.05,
                                              "fill_holes": True}
    assert postprocess_of("0+ed")["decision"] == "expected_dice"
    for bad in ("0.1+dilate", "0.1+ed+fill", "0.1+fill+fill"):
        with pytest.raises(ValueError, match="post-processing"):
            postprocess_of(bad)
    # ties go to the argmax before the expected-Dice labels
    assert choose_postprocess([{"clean": {"0": {"dice_whole_tumour": 0.7}, "0+ed": {"dice_whole_tumour": 0.7}}}]) == "0"


def test_member_training_length_defaults_to_its_recipe(tmp_path, monkeypatch):
    from napari_medlearn.training import emma as emma_module

    data = tmp_path / "brats"
    names = _write_brats(data)
    seen = {}

    def stop(recipe, cases, run_dir, epochs, *args, **kwargs):
        seen[recipe["arch"]] = epochs
        raise RuntimeError("stop before training")

    monkeypatch.setattr(emma_module, "train_member", stop)
    for member in ("emma-fcn", "emma-unet"):
        with pytest.raises(RuntimeError, match="stop before training"):
            emma_module.run_emma_member(tmp_path / member, member, data=str(data), train_subjects=names[:2],
                                        synthetic={"share": 0}, progress=False)
    assert seen == {"fcn3d": 24, "unet3d": 12}


def test_member_recipe_spacing_sets_its_training_and_inference_grid(tmp_path, monkeypatch):
    import json

    from napari_medlearn.training import emma as emma_module

    data = tmp_path / "brats"
    names = _write_brats(data, n=3, shape=(40, 40, 40))          # 2 mm voxels
    recipe = {**MEMBER_RECIPES["emma-fcn"], "spacing_mm": 4.0, "patch": 16, "batch_size": 2, "inference": {"roi": 32}}
    monkeypatch.setitem(emma_module.MEMBER_RECIPES, "emma-fcn", recipe)
    seen = {}
    train = emma_module.train_member

    def spy(recipe, cases, *args, synthetic=(), **kwargs):
        seen["real"] = [c.image.shape for c in cases]
        seen["synthetic"] = [c.image.shape for c in synthetic]
        return train(recipe, cases, *args, synthetic=synthetic, **kwargs)

    monkeypatch.setattr(emma_module, "train_member", spy)
    emma_module.run_emma_member(tmp_path / "m", "emma-fcn", epochs=1, iters_per_epoch=2, data=str(data),
                                train_subjects=names[:2], width=0.25, device="cpu", progress=False,
                                synthetic={"share": 0.5, "n_cases": 1})
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert seen["real"] == [(2, 20, 20, 20)] * 2                   # 40 voxels of 2 mm on a 4 mm grid
    assert card["input"]["spacing_mm"] == [4.0, 4.0, 4.0] and card["training"]["synthetic"]["spacing_mm"] == 4.0
    assert "4 mm" in card["training"]["data"] and card["evaluation"]["cases"][0]["case"] == names[2]
    with pytest.raises(ValueError, match="spacing_mm"):
        emma_module.recipe_spacing({"spacing_mm": 0})

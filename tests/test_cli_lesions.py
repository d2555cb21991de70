import csv
import json

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.cli import main
from napari_medlearn.imaging import Volume
from napari_medlearn.imaging.io import read_nifti, write_nifti
from napari_medlearn.nets.deepmedic import DeepMedic

TINY = dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], subsample_factors=[3], fc_fms=[6, 6])


@pytest.fixture(scope="module")
def tiny_lesion_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-lesions.pt"
    zoo.save_checkpoint(DeepMedic(**TINY), path, "deepmedic", TINY, card={
        "name": "tiny-lesions", "task": "brain-lesion-segmentation", "n_classes": 4,
        "label_values": [0, 1, 2, 4], "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2, 2, 2]}})
    return str(path)


@pytest.fixture()
def modalities(tmp_path):
    rng = np.random.default_rng(0)
    shape = (12, 16, 14)
    aff = np.array([[0, 0, -2.0, 90], [0, 2.0, 0, -120], [2.0, 0, 0, -70], [0, 0, 0, 1]])
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    paths = {}
    for name in ("flair", "t1c"):
        data = np.where(mask, rng.normal(1, 0.3, shape), 0).astype(np.float32)
        paths[name] = tmp_path / f"{name}.nii.gz"
        write_nifti(Volume(data, aff, ("z", "y", "x"), {}), paths[name])
    paths["mask"] = tmp_path / "mask.nii.gz"
    write_nifti(Volume(mask.astype(np.uint8), aff, ("z", "y", "x"), {}), paths["mask"])
    return paths, aff


def test_segment_lesions_writes_labels_probabilities_and_volumes(modalities, tiny_lesion_model, tmp_path, capsys):
    paths, aff = modalities
    out = tmp_path / "out"
    rc = main(["segment-lesions", "--flair", str(paths["flair"]), "--t1c", str(paths["t1c"]),
               "--mask", str(paths["mask"]), "--out", str(out), "--model", tiny_lesion_model, "--quiet"])
    assert rc == 0
    lab = read_nifti(out / "labels.nii.gz")
    np.testing.assert_allclose(lab.affine, aff, atol=1e-5)
    assert lab.data.shape == (12, 16, 14) and set(np.unique(lab.data)) <= {0, 1, 2, 4}
    for name in ("necrotic_core", "oedema", "enhancing"):
        p = read_nifti(out / f"probability_{name}.nii.gz").data
        assert p.shape == (12, 16, 14) and 0 <= p.min() and p.max() <= 1
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert {"necrotic_core_mL", "oedema_mL", "enhancing_mL", "whole_tumour_mL"} <= set(rows[0])
    assert "whole tumour" in capsys.readouterr().out
    assert json.loads((out / "lesions.json").read_text())["postprocess"]["decision"] == "argmax"
    ed = tmp_path / "ed"
    assert main(["segment-lesions", "--flair", str(paths["flair"]), "--t1c", str(paths["t1c"]), "--mask",
                 str(paths["mask"]), "--out", str(ed), "--model", tiny_lesion_model, "--quiet",
                 "--decision", "expected_dice"]) == 0
    post = json.loads((ed / "lesions.json").read_text())["postprocess"]
    assert post["decision"] == "expected_dice" and 0 < post["whole_tumour_threshold"] <= 1
    # outputs are never silently replaced
    rc = main(["segment-lesions", "--flair", str(paths["flair"]), "--t1c", str(paths["t1c"]),
               "--out", str(out), "--model", tiny_lesion_model, "--quiet"])
    assert rc == 2 and "already exists" in capsys.readouterr().err


def test_scans_that_look_not_skull_stripped_give_a_warning_on_stderr(modalities, tiny_lesion_model, tmp_path,
                                                                     capsys, monkeypatch):
    from napari_medlearn.methods import lesions as lesion_method

    paths, _ = modalities
    # the fixture's 2 mm "brain" is 7.7 mL; a limit below it stands in for a whole head
    monkeypatch.setattr(lesion_method, "BRAIN_VOLUME_LIMIT_ML", 5.0)
    out = tmp_path / "out"
    assert main(["segment-lesions", "--flair", str(paths["flair"]), "--t1c", str(paths["t1c"]),
                 "--out", str(out), "--model", tiny_lesion_model, "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medlearn: warning: the brain region is 8 mL")
    assert "skull-stripped" in json.loads((out / "lesions.json").read_text())["warnings"][0]
    assert (out / "labels.nii.gz").exists()                  # a warning, not an error


def _stored_reversed(vol: Volume) -> Volume:
    """The same voxels in the same place, stored with y and x reversed and z and x swapped."""
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, vol.data.shape[1] - 1
    flip[2, 2], flip[2, 3] = -1, vol.data.shape[2] - 1
    data = np.ascontiguousarray(np.swapaxes(vol.data[:, ::-1, ::-1], 0, 2))
    return Volume(data, vol.affine @ flip @ np.eye(4)[[2, 1, 0, 3]], ("z", "y", "x"), {})


def test_modalities_on_other_grids_meet_on_the_flair_grid(modalities, tiny_lesion_model, tmp_path, capsys):
    paths, aff = modalities
    common = ["--flair", str(paths["flair"]), "--model", tiny_lesion_model, "--quiet"]
    assert main(["segment-lesions", *common, "--t1c", str(paths["t1c"]), "--mask", str(paths["mask"]),
                 "--out", str(tmp_path / "same")]) == 0
    assert "resampled" not in capsys.readouterr().out
    # the T1c and the mask written on other grids of the same scanner frame (as a 3D T1c beside a
    # 2D FLAIR would be): read back onto the FLAIR's grid, so the result is the same
    t1c, mask = tmp_path / "t1c_other.nii.gz", tmp_path / "mask_other.nii.gz"
    write_nifti(_stored_reversed(read_nifti(paths["t1c"])), t1c)
    write_nifti(_stored_reversed(read_nifti(paths["mask"])), mask)
    assert main(["segment-lesions", *common, "--t1c", str(t1c), "--mask", str(mask),
                 "--out", str(tmp_path / "other")]) == 0
    out = capsys.readouterr().out
    assert "note: T1c (14, 16, 12) at 2x2x2 mm resampled onto the FLAIR grid (12, 16, 14)" in out
    assert "brain mask" in out
    a, b = read_nifti(tmp_path / "same" / "labels.nii.gz"), read_nifti(tmp_path / "other" / "labels.nii.gz")
    np.testing.assert_allclose(b.affine, aff, atol=1e-5)
    np.testing.assert_array_equal(a.data, b.data)


def test_bad_input_gives_one_line_and_status_2(modalities, tiny_lesion_model, tmp_path, capsys):
    paths, aff = modalities
    other = tmp_path / "elsewhere.nii.gz"
    far = aff.copy()
    far[:3, 3] += 400.0
    write_nifti(Volume(np.ones((12, 16, 14), np.float32), far, ("z", "y", "x"), {}), other)
    flat = tmp_path / "flat.nii.gz"
    write_nifti(Volume.from_spacing(np.ones((16, 14), np.float32), (2.0, 2.0)), flat)
    nan = tmp_path / "nan.nii.gz"
    d = read_nifti(paths["t1c"]).data.copy()
    d[5, 5, 5] = np.nan
    write_nifti(Volume(d, aff, ("z", "y", "x"), {}), nan)
    for t1c, match in ((other, "register them first"), (flat, "2-D"), (nan, "NaN"),
                       (tmp_path / "missing.nii.gz", "no such file")):
        rc = main(["segment-lesions", "--flair", str(paths["flair"]), "--t1c", str(t1c), "--out",
                   str(tmp_path / "o"), "--model", tiny_lesion_model, "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


@pytest.fixture()
def user_zoo_with_ensemble(tmp_path, monkeypatch):
    """Two tiny members and an ensemble card in a temporary user zoo."""
    zdir = tmp_path / "zoo"
    monkeypatch.setenv("MEDLEARN_ZOO", str(zdir))
    card = {"task": "brain-lesion-segmentation", "n_classes": 4, "label_values": [0, 1, 2, 4],
            "architecture": "deepmedic", "arch_args": TINY,
            "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2, 2, 2]}}
    for seed, name in ((0, "tiny-a"), (1, "tiny-b")):
        torch.manual_seed(seed)
        c = {**card, "name": name}
        sha = zoo.save_checkpoint(DeepMedic(**TINY), zdir / f"{name}.pt", "deepmedic", TINY, card=c)
        zoo.write_json_atomic({**c, "sha256": sha}, zdir / f"{name}.json")
    zoo.write_json_atomic({"name": "tiny-ens", "kind": "ensemble", "task": card["task"],
                           "members": ["tiny-a", "tiny-b"]}, zdir / "tiny-ens.json")
    return zdir


def test_segment_lesions_with_an_ensemble_writes_uncertainty_and_members(modalities, user_zoo_with_ensemble,
                                                                          tmp_path):
    paths, aff = modalities
    out = tmp_path / "ens"
    assert main(["segment-lesions", "--flair", str(paths["flair"]), "--t1c", str(paths["t1c"]),
                 "--mask", str(paths["mask"]), "--model", "tiny-ens", "--out", str(out), "--quiet"]) == 0
    u = read_nifti(out / "uncertainty.nii.gz")
    assert np.allclose(u.affine, aff) and 0 <= u.data.min() and u.data.max() <= 1
    rows = list(csv.DictReader(open(out / "volumes.csv")))
    assert [r["model"] for r in rows] == ["tiny-ens", "member tiny-a", "member tiny-b"]


def test_adapt_command(modalities, user_zoo_with_ensemble, capsys):
    paths, _ = modalities
    card = zoo.card("tiny-a")
    card["adaptation_source"] = {"generator": "samples.brain_lesions.synthetic_lesion_case", "domain": "A",
                                 "seeds": [0, 1], "spacing_mm": 4.0}
    zoo.write_json_atomic(card, user_zoo_with_ensemble / "tiny-a.json")
    args = ["adapt", "--model", "tiny-a", "--flair", str(paths["flair"]), "--t1c", str(paths["t1c"]),
            "--name", "tiny-a-site2", "--epochs", "1", "--iters", "2", "--quiet"]
    assert main(args) == 0
    assert "adapted model tiny-a-site2" in capsys.readouterr().out
    assert "tiny-a-site2" in zoo.available()
    # the same name again: refused, one line on stderr, nothing overwritten
    before = zoo.sha256_of(user_zoo_with_ensemble / "tiny-a-site2.pt")
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists already" in err[0]
    assert zoo.sha256_of(user_zoo_with_ensemble / "tiny-a-site2.pt") == before
    # scans that look not skull-stripped: warned on stderr before the training, which still runs
    from napari_medlearn.methods import lesions as lesion_method

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lesion_method, "BRAIN_VOLUME_LIMIT_ML", 5.0)        # below the fixture's 7.7 mL
        assert main(args[:7] + ["--name", "tiny-a-head", "--epochs", "1", "--iters", "1", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medlearn: warning: scan 1 (") and "skull-stripped" in err[0]
    assert zoo.card("tiny-a-head")["adaptation"]["target_warnings"]
    with pytest.raises(SystemExit):      # argparse: a T1c per FLAIR is required
        main(["adapt", "--model", "tiny-a", "--flair", str(paths["flair"]), "--t1c"])
    assert main(["adapt", "--model", "tiny-a", "--flair", str(paths["flair"]), str(paths["flair"]),
                 "--t1c", str(paths["t1c"])]) != 0
    assert "2 FLAIR files but 1 T1c" in capsys.readouterr().err
    # then self-training: recorded on the new model's card; a bad portion is one line on stderr
    assert main(args[:7] + ["--name", "tiny-a-st", "--epochs", "1", "--iters", "1", "--quiet",
                            "--self-training", "0.5"]) == 0
    assert zoo.card("tiny-a-st")["adaptation"]["self_training"]["portions"] == [0.5]
    capsys.readouterr()
    assert main(args[:7] + ["--name", "tiny-a-bad", "--quiet", "--self-training", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "portions must be in (0, 1]" in err[0] and "tiny-a-bad" not in zoo.available()


@pytest.mark.parametrize("argv, message", [
    (["train", "lesions-brats", "--train-subjects", "s1"], "--train-subjects is for"),
    (["train", "emma-fcn", "--train-subjects", "s1", "--ship"], "--ship installs"),
    (["train", "emma-fcn", "--with-fold", "card.json"], "--with-fold is for"),
    (["train", "emma-fcn", "--domain", "ABC"], "--domain is for"),
    (["train", "lesions-synthetic", "--domain", "AX"], "unknown scanner domain(s) 'X'"),
])
def test_train_split_options_are_refused_where_they_do_not_apply(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_same_session_stored_in_another_orientation_gives_the_same_result(tmp_path):
    """A model that learnt BraTS-oriented arrays (SPL) reads a RAS-stored session (SAR) its way."""
    torch.manual_seed(1)
    net = DeepMedic(**TINY)
    path = tmp_path / "tiny-spl.pt"
    zoo.save_checkpoint(net, path, "deepmedic", TINY, card={
        "name": "tiny-spl", "task": "brain-lesion-segmentation", "n_classes": 4, "label_values": [0, 1, 2, 4],
        "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2, 2, 2], "orientation": "SPL"}})
    rng = np.random.default_rng(3)
    shape = (12, 16, 14)
    spl = np.array([[0, 0, -2.0, 20], [0, -2.0, 0, 30], [2.0, 0, 0, -10], [0, 0, 0, 1]])      # z->S, y->P, x->L
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    data = {n: np.where(mask, rng.normal(1, 0.3, shape), 0).astype(np.float32) for n in ("flair", "t1c")}
    data["flair"][4:7, 5:9, 5:8] += 1.5
    sar = spl.copy()
    sar[:3, 1] *= -1                                             # y flipped: the same voxels seen from A
    sar[:3, 2] *= -1
    sar[:3, 3] = spl[:3, 3] + spl[:3, 1] * (shape[1] - 1) + spl[:3, 2] * (shape[2] - 1)
    results = {}
    for tag, aff, flip in (("spl", spl, lambda a: a), ("sar", sar, lambda a: a[:, ::-1, ::-1])):
        d = tmp_path / tag
        d.mkdir()
        for n in ("flair", "t1c"):
            write_nifti(Volume(np.ascontiguousarray(flip(data[n])), aff, ("z", "y", "x"), {}), d / f"{n}.nii.gz")
        write_nifti(Volume(np.ascontiguousarray(flip(mask)).astype(np.uint8), aff, ("z", "y", "x"), {}), d / "mask.nii.gz")
        assert main(["segment-lesions", "--flair", str(d / "flair.nii.gz"), "--t1c", str(d / "t1c.nii.gz"),
                     "--mask", str(d / "mask.nii.gz"), "--out", str(d / "out"), "--model", str(path), "--quiet"]) == 0
        lab = read_nifti(d / "out" / "labels.nii.gz")
        np.testing.assert_allclose(lab.affine, aff, atol=1e-5)
        results[tag] = flip(lab.data)                              # back to the SPL voxel order
    assert results["spl"].any()
    np.testing.assert_array_equal(results["sar"], results["spl"])

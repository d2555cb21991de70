import json

import numpy as np
import pytest
import torch

from napari_medlearn import zoo
from napari_medlearn.methods import adapt, adapt_steps, segment_lesions
from napari_medlearn.nets import DeepMedic

ARGS = dict(in_channels=2, n_classes=4, fms_normal=[3, 3, 4, 4, 4, 4, 5, 5], subsample_factors=[3], fc_fms=[6, 6])


def _case(seed, shape=(20, 24, 22), offset=0.0):
    rng = np.random.default_rng(seed)
    ch = np.zeros((2,) + shape, np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    ch[:, mask] = rng.normal(0.0, 1.0, size=(2, int(mask.sum())))
    lab = np.zeros(shape, np.uint8)
    lab[8:13, 9:15, 8:14] = 2
    lab[9:12, 10:13, 9:12] = 4
    ch[0][lab > 0] += 2.0
    ch[1][lab == 4] += 2.0
    ch[:, mask] += offset
    return ch, lab, mask


@pytest.fixture
def user_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLEARN_ZOO", str(tmp_path))
    torch.manual_seed(0)
    net = DeepMedic(**ARGS)
    card = {"name": "tiny-parent", "task": "brain-lesion-segmentation", "architecture": "deepmedic",
            "arch_args": ARGS, "n_classes": 4, "label_values": [0, 1, 2, 4],
            "input": {"channels": ["FLAIR", "T1c"], "spacing_mm": [2.0, 2.0, 2.0]}}
    sha = zoo.save_checkpoint(net, tmp_path / "tiny-parent.pt", "deepmedic", ARGS, card=card)
    zoo.write_json_atomic({**card, "sha256": sha}, tmp_path / "tiny-parent.json")
    return tmp_path


def test_adapt_makes_a_new_model_and_keeps_the_parent(user_zoo):
    before = zoo.sha256_of(user_zoo / "tiny-parent.pt")
    source = [(*_case(s)[:2], (2.0, 2.0, 2.0), _case(s)[2]) for s in range(2)]
    targets = [_case(10 + s, offset=1.5)[0] for s in range(2)]
    steps = []
    name = adapt("tiny-parent", targets, (2.0, 2.0, 2.0), name="tiny-site-b", source=source, epochs=2,
                 iters_per_epoch=3, batch_size=4, progress=lambda *s: steps.append(s))
    assert name == "tiny-site-b" and name in zoo.available("brain-lesion-segmentation")
    assert zoo.sha256_of(user_zoo / "tiny-parent.pt") == before
    assert steps[-1][:2] == (6, 6)
    card = json.loads((user_zoo / "tiny-site-b.json").read_text())
    assert card["parent"]["name"] == "tiny-parent" and "no label used" in card["adaptation"]["target"]
    assert len(card["adaptation"]["task_loss_per_epoch"]) == 2
    assert card["adaptation"]["settings"]["batchnorm"].startswith("frozen")     # the parent's statistics kept
    assert (user_zoo / "runs" / "tiny-site-b" / "last.pt").exists()        # checkpoint per epoch
    assert card["adaptation"]["target_warnings"] == []                       # 46 mL of "brain" each
    res = segment_lesions(targets[0], (2.0, 2.0, 2.0), model=name)
    assert res.model == name and res.labels.shape == targets[0].shape[1:]
    with pytest.raises(ValueError, match="exists already"):
        adapt("tiny-parent", targets, (2.0, 2.0, 2.0), name="tiny-site-b", source=source, epochs=1,
              iters_per_epoch=1)


def test_adapted_copy_gets_the_class_prior_of_its_own_training(user_zoo):
    card = json.loads((user_zoo / "tiny-parent.json").read_text())
    card["prior_correction"] = {"training_prior": [0.25] * 4, "target_prior": [0.25] * 4}
    zoo.write_json_atomic(card, user_zoo / "tiny-parent.json")
    source = [(*_case(s)[:2], (2.0, 2.0, 2.0), _case(s)[2]) for s in range(2)]
    adapt("tiny-parent", [_case(10, offset=1.5)[0]], (2.0, 2.0, 2.0), name="tiny-pc", source=source, epochs=1,
          iters_per_epoch=2, batch_size=4)
    pc = json.loads((user_zoo / "tiny-pc.json").read_text())["prior_correction"]
    train, brain = np.array(pc["training_prior"]), np.array(pc["target_prior"])
    lab, mask = _case(0)[1], _case(0)[2]
    assert brain[0] == pytest.approx(((lab == 0) & mask).sum() / mask.sum(), rel=1e-6)
    assert train[0] < brain[0] and train.sum() == pytest.approx(1.0, abs=1e-5)   # half the segments on tumour


def test_adapt_regenerates_a_synthetic_source_from_the_card(user_zoo):
    card = json.loads((user_zoo / "tiny-parent.json").read_text())
    card["adaptation_source"] = {"generator": "samples.brain_lesions.synthetic_lesion_case", "domain": "A",
                                 "seeds": [0, 1], "spacing_mm": 4.0}
    (user_zoo / "tiny-parent.json").write_text(json.dumps(card))
    name = adapt("tiny-parent", [_case(3)[0]], (2.0, 2.0, 2.0), name="tiny-gen", epochs=1, iters_per_epoch=2,
                 batch_size=4)
    assert "synthetic cases 0..0" in zoo.card(name)["adaptation"]["source"]


def test_a_source_of_several_scanners_cycles_through_them(monkeypatch):
    import importlib

    from napari_medlearn.samples import brain_lesions
    from napari_medlearn.training.deepmedic import domains_text, scanner_domains

    assert scanner_domains("A") == ("A",) and scanner_domains("ABC") == ("A", "B", "C")
    assert domains_text("A") == "domain 'A'" and domains_text("BC") == "domains 'B', 'C' in turn"
    for bad in ("AZ", ""):
        with pytest.raises(ValueError, match="scanner domain"):
            scanner_domains(bad)
    drawn = []
    real = brain_lesions.synthetic_lesion_case
    monkeypatch.setattr(brain_lesions, "synthetic_lesion_case",
                        lambda seed, domain="A", spacing_mm=2.0, **kw: drawn.append((seed, domain)) or real(
                            seed=seed, domain=domain, spacing_mm=4.0, n_lesions=1))
    card = {"adaptation_source": {"generator": "samples.brain_lesions.synthetic_lesion_case", "domain": "ABC",
                                  "seeds": [5, 9], "spacing_mm": 4.0}}
    adapt_mod = importlib.import_module("napari_medlearn.methods.adapt")    # the module, not the function
    cases, text = adapt_mod._source_cases(card, None, ("FLAIR", "T1c"), (4.0, 4.0, 4.0))
    assert drawn == [(5, "A"), (6, "B"), (7, "C"), (8, "A")] and len(cases) == 4 and "domains 'A', 'B', 'C' in turn" in text


@pytest.mark.parametrize("targets, match", [
    ([np.zeros((3, 20, 24, 22), np.float32)], "target scan 1 has 3 channels; the model takes 2"),
    ([np.full((2, 20, 24, 22), np.nan, np.float32)], "target scan 1: the FLAIR and T1c image contains NaN"),
    ([np.zeros((2, 1, 24, 22), np.float32)], "target scan 1: a 2D image"),
    ([], "non-empty list"),
])
def test_bad_targets_are_refused_before_anything_is_written(user_zoo, targets, match):
    with pytest.raises(ValueError, match=match):
        adapt("tiny-parent", targets, (2.0, 2.0, 2.0), name="never", source=[], epochs=1, iters_per_epoch=1)
    assert not (user_zoo / "never.json").exists() and not (user_zoo / "runs" / "never").exists()


def test_no_source_and_no_recipe_is_explained(user_zoo):
    with pytest.raises(ValueError, match="adaptation_source"):
        adapt("tiny-parent", [_case(3)[0]], (2.0, 2.0, 2.0), name="x", epochs=1, iters_per_epoch=1)
    with pytest.raises(ValueError, match="not an ensemble"):
        adapt(["tiny-parent", "tiny-parent"], [_case(3)[0]], (2.0, 2.0, 2.0))


def test_cancel_keeps_no_model(user_zoo):
    source = [(*_case(0)[:2], (2.0, 2.0, 2.0), _case(0)[2])]
    gen = adapt_steps("tiny-parent", [_case(3)[0]], (2.0, 2.0, 2.0), name="halted", source=source, epochs=1,
                      iters_per_epoch=50, batch_size=2, cancelled=lambda: True)
    with pytest.raises(InterruptedError):
        for _ in gen:
            pass
    assert "halted" not in zoo.available()


def test_adapt_can_self_train_after_the_adversarial_stage(user_zoo):
    source = [(*_case(s)[:2], (2.0, 2.0, 2.0), _case(s)[2]) for s in range(2)]
    targets = [_case(10 + s, offset=1.5)[0] for s in range(2)]
    steps = []
    name = adapt("tiny-parent", targets, (2.0, 2.0, 2.0), name="tiny-st", source=source, epochs=1,
                 iters_per_epoch=2, batch_size=4, self_training=(0.5, 0.7), progress=lambda *s: steps.append(s))
    card = json.loads((user_zoo / f"{name}.json").read_text())
    st = card["adaptation"]["self_training"]
    assert [r["portion"] for r in st["rounds"]] == [0.5, 0.7] and len(st["target_loss_per_epoch"]) == 4
    assert st["batchnorm"].startswith("frozen") and "self-training" in card["description"]
    assert steps[-1][:2] == (8, 8) and "self-training" in steps[-1][2]
    assert (user_zoo / "runs" / "tiny-st" / "self_training.pt").exists()
    plain = json.loads((user_zoo / "tiny-parent.json").read_text())
    assert "adaptation" not in plain
    with pytest.raises(ValueError, match="portions"):
        adapt("tiny-parent", targets, (2.0, 2.0, 2.0), name="tiny-st2", source=source, epochs=1,
              iters_per_epoch=1, self_training=(1.5,))
    assert not (user_zoo / "tiny-st2.json").exists()


def test_targets_that_look_not_skull_stripped_are_recorded_on_the_card(user_zoo, monkeypatch):
    from napari_medlearn.methods import lesions as lesion_method

    monkeypatch.setattr(lesion_method, "BRAIN_VOLUME_LIMIT_ML", 20.0)       # between the targets' volumes
    source = [(*_case(s)[:2], (2.0, 2.0, 2.0), _case(s)[2]) for s in range(2)]
    targets = [_case(10)[0], _case(11, shape=(12, 16, 14))[0]]              # 46 mL and 7.7 mL
    adapt("tiny-parent", targets, (2.0, 2.0, 2.0), name="tiny-heads", source=source, epochs=1,
          iters_per_epoch=1, batch_size=4)
    (w,) = zoo.card("tiny-heads")["adaptation"]["target_warnings"]
    assert w.startswith("target scan 1: the brain region is 46 mL") and "skull-stripped" in w

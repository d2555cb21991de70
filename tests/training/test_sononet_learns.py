"""The sononet-phantom recipe learns: a tiny SonoNet trained for a few seconds on tiny phantom
sweeps classifies held-out sweeps (other seeds) far better than chance and than always answering
Background; its card and checkpoint load through the zoo."""

import numpy as np
import pytest

from napari_medlearn import methods, zoo
from napari_medlearn.nets import SONONET_CLASSES
from napari_medlearn.training.presets import PRESETS

pytest.importorskip("napari_medlearn.samples.fetal_phantom")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import torch

    from napari_medlearn.training.sononet import run_sononet_phantom

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("sononet-run")
    card = run_sononet_phantom(run, epochs=4, iters_per_epoch=50, n_train=8, n_eval=2, n_frames=40, width=6,
                               blocks=(1, 1, 1, 1, 1), input_size=(48, 64), render_shape=(96, 128),
                               batch_size=16, lr=3e-3, device="cpu", progress=False)
    return run, card


def test_tiny_model_learns_and_generalises(tiny_run):
    run, card = tiny_run
    loss = card["training"]["loss_per_epoch"]
    assert loss[-1] < 0.85 * loss[0], loss
    ev = card["evaluation"]
    bg = ev["per_class"]["Background"]["n"] / ev["n_frames"]
    assert ev["accuracy"] > bg + 0.1, (ev["accuracy"], bg)          # better than "always Background"
    assert ev["mean_f1_planes"] > 0.35, ev["per_class"]             # chance is about 1/8
    assert ev["seeds"] == [10000, 10001]
    conf = np.array(ev["confusion"]["rows_truth_cols_predicted"])
    assert conf.sum() == ev["n_frames"] and np.trace(conf) / conf.sum() == pytest.approx(ev["accuracy"])


def test_card_and_checkpoint(tiny_run):
    run, card = tiny_run
    assert card["task"] == "us-standard-planes" and card["class_names"] == list(SONONET_CLASSES)
    assert card["input"]["size"] == [48, 64] and card["sha256"] == zoo.sha256_of(run / "model.pt")
    assert "sononet-phantom" in PRESETS
    sweep_frames = np.random.default_rng(0).random((3, 96, 128)).astype(np.float32)
    res = methods.detect_planes(sweep_frames, model=run / "model.pt")
    assert res.probabilities.shape == (3, 14) and res.saliency.shape == (3, 96, 128)

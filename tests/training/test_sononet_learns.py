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
                               batch_size=16, lr=3e-3, volume_views_per_seed=24, n_eval_volumes=0,
                               device="cpu", progress=False)
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


def test_volume_views_are_labelled_by_pose():
    """Views cut from the 3D phantom: the right size, every class they claim is a phantom plane,
    and both planes and Background occur (the plane search needs both)."""
    from napari_medlearn.samples.fetal_phantom import PHANTOM_PLANES, volume_views

    views, labels = volume_views(5, 60, (40, 52), 1.6, volume_shape=(64, 80, 96), spacing_mm=2.0)
    assert views.shape == (60, 40, 52) and views.dtype == np.float32 and np.isfinite(views).all()
    names = {SONONET_CLASSES[i] for i in labels}
    assert "Background" in names and names - {"Background"}, names
    assert names <= set(PHANTOM_PLANES) | {"Background"}


def test_plane_pose_errors_of_the_truth_are_zero():
    from types import SimpleNamespace

    from napari_medlearn.samples.fetal_phantom import fetal_volume
    from napari_medlearn.training.sononet import plane_pose_errors

    vol = fetal_volume(3, shape=(32, 40, 48), spacing_mm=4.0)
    for name in ("4CH", "Femur"):
        t = vol.planes[name]
        same = SimpleNamespace(normal=np.cross(t.axes[0], t.axes[1]), centre=t.centre)
        assert plane_pose_errors(same, vol, name) == pytest.approx((0.0, 0.0), abs=1e-6)
    t = vol.planes["4CH"]
    n = np.cross(t.axes[0], t.axes[1])
    tilted = SimpleNamespace(normal=np.cos(0.5) * n + np.sin(0.5) * t.axes[0], centre=t.centre + 2 * n / 4.0)
    ang, dist = plane_pose_errors(tilted, vol, "4CH")
    assert ang == pytest.approx(np.degrees(0.5), abs=1e-4) and dist == pytest.approx(2.0, abs=1e-6)
